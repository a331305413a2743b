//! ClientHello reassembly and SNI extraction for TLS passthrough (used by the gateway as
//! `gateway_userspace::passthrough::clienthello`; a crate of its own so the fuzz target builds only this).
//!
//! The proxy buffers the first bytes a client sends and calls [`parse`] after every read. The buffer is read as
//! TLS records (any number, any split across TCP segments), their handshake fragments are concatenated, and once
//! the first handshake message is complete it is parsed with `tls-parser`. The result is either "need more bytes",
//! the ClientHello's SNI, or a [`ClientHelloError`] saying why the connection must be closed without a TLS alert.
//!
//! Rules (also in `docs/tls-passthrough.md`):
//! - records must be handshake records (type 22) with major version 3 and at most 2^14 bytes of fragment;
//! - the first handshake message must be a ClientHello of at most [`MAX_HANDSHAKE_LEN`] bytes;
//! - an SSLv2-style hello (high bit of the first byte set, message type 1) is rejected as such;
//! - at most one `server_name` extension; extension types must not repeat; within it at most one `host_name`
//!   entry; other name types are ignored;
//! - the host name is ASCII letters, digits, `-`, `_` and dots, labels of 1..=63 bytes, at most 253 bytes, not an
//!   IP literal; it is lower-cased and one trailing dot is removed (`Example.COM.` routes as `example.com`).
use tls_parser::{
    parse_tls_client_hello_extension, parse_tls_handshake_client_hello, TlsExtension,
};

/// Largest ClientHello handshake body accepted (RFC 8446 allows 2^24; real hellos, post-quantum ones included,
/// stay below 4 KiB).
pub const MAX_HANDSHAKE_LEN: usize = 16 * 1024;
/// Largest TLS record fragment (RFC 8446 §5.1: 2^14).
pub const MAX_RECORD_LEN: usize = 16 * 1024;
/// Most bytes buffered before a ClientHello must be complete: a maximal handshake split into records of at
/// least 512 bytes, with their headers. Tiny records (a hostile pattern) hit this first and count as oversized.
pub const MAX_BUFFERED: usize = MAX_HANDSHAKE_LEN + 4 + 5 * (MAX_HANDSHAKE_LEN / 512 + 1);

const RECORD_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// What a complete ClientHello told us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// The normalised `host_name` from `server_name`, or `None` when the client sent none.
    pub server_name: Option<String>,
    /// Bytes of the buffer the ClientHello's records occupy (anything after them is early data to forward too).
    pub records_len: usize,
}

/// Why a connection's first bytes cannot be routed. Each variant is a counter reason (see [`Self::reason`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientHelloError {
    /// The first bytes are not a TLS handshake record (plain HTTP, SSH, ...).
    #[error("not a TLS handshake record")]
    NotTls,
    /// An SSLv2-compatible ClientHello (no extensions, so no SNI).
    #[error("SSLv2-style ClientHello")]
    Sslv2,
    /// Inconsistent lengths, a record of another type before the hello, a handshake message other than
    /// ClientHello first, bad extension encoding, repeated extensions.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// A record or handshake message longer than the limits, or too many bytes before the hello completes.
    #[error("ClientHello too large: {0}")]
    Oversized(&'static str),
    /// The client closed (or the buffer ended, in tests) before the ClientHello was complete.
    #[error("ClientHello truncated")]
    Truncated,
    /// More than one `host_name` entry in `server_name`.
    #[error("more than one host_name in server_name")]
    AmbiguousServerName,
    /// A `host_name` that is not a DNS name (IP literal, empty label, bad character, too long).
    #[error("invalid host_name {0:?}")]
    InvalidServerName(String),
}

impl ClientHelloError {
    /// The counter label of this rejection.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotTls => "not_tls",
            Self::Sslv2 => "sslv2",
            Self::Malformed(_) => "malformed",
            Self::Oversized(_) => "oversized",
            Self::Truncated => "truncated",
            Self::AmbiguousServerName => "ambiguous_sni",
            Self::InvalidServerName(_) => "invalid_sni",
        }
    }
}

/// Parses the bytes a client has sent so far. `Ok(None)`: the ClientHello is not complete yet, read more (unless
/// the buffer already holds [`MAX_BUFFERED`] bytes, which this reports as [`ClientHelloError::Oversized`]).
pub fn parse(buf: &[u8]) -> Result<Option<ClientHello>, ClientHelloError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != RECORD_HANDSHAKE {
        // SSLv2 CLIENT-HELLO: 2-byte length with the high bit set, then msg_type 1 (RFC 6101 appendix E.2).
        if first & 0x80 != 0 && buf.get(2).is_none_or(|&t| t == HANDSHAKE_CLIENT_HELLO) {
            return Err(ClientHelloError::Sslv2);
        }
        return Err(ClientHelloError::NotTls);
    }

    // Reassemble the handshake stream from consecutive records until the first message is complete.
    let mut handshake: Vec<u8> = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = buf.get(at..at + 5) else {
            return incomplete(buf);
        };
        if header[0] != RECORD_HANDSHAKE {
            return Err(ClientHelloError::Malformed(
                "non-handshake record before the ClientHello completed",
            ));
        }
        if header[1] != 3 {
            return Err(if at == 0 {
                ClientHelloError::NotTls
            } else {
                ClientHelloError::Malformed("record version")
            });
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len > MAX_RECORD_LEN {
            return Err(ClientHelloError::Oversized("record longer than 2^14"));
        }
        if len == 0 {
            return Err(ClientHelloError::Malformed("empty handshake record"));
        }
        let Some(fragment) = buf.get(at + 5..at + 5 + len) else {
            // Check what we can of the partial record so garbage is rejected early.
            if let Some(partial) = buf.get(at + 5..) {
                let mut peek = handshake.clone();
                peek.extend_from_slice(partial);
                check_handshake_header(&peek)?;
            }
            return incomplete(buf);
        };
        handshake.extend_from_slice(fragment);
        at += 5 + len;
        if let Some(body_len) = check_handshake_header(&handshake)? {
            if handshake.len() >= 4 + body_len {
                let server_name = server_name(&handshake[4..4 + body_len])?;
                return Ok(Some(ClientHello {
                    server_name,
                    records_len: at,
                }));
            }
        }
    }
}

/// Like [`parse`] for a buffer that will not grow (the client closed, or a corpus file): incomplete is truncated.
pub fn parse_complete(buf: &[u8]) -> Result<ClientHello, ClientHelloError> {
    parse(buf)?.ok_or(ClientHelloError::Truncated)
}

fn incomplete(buf: &[u8]) -> Result<Option<ClientHello>, ClientHelloError> {
    if buf.len() >= MAX_BUFFERED {
        return Err(ClientHelloError::Oversized(
            "too many bytes before the ClientHello completed",
        ));
    }
    Ok(None)
}

/// Validates the handshake message header once its 4 bytes are there; returns the body length.
fn check_handshake_header(handshake: &[u8]) -> Result<Option<usize>, ClientHelloError> {
    match handshake.first() {
        None => return Ok(None),
        Some(&HANDSHAKE_CLIENT_HELLO) => {}
        Some(_) => {
            return Err(ClientHelloError::Malformed(
                "first handshake message is not a ClientHello",
            ))
        }
    }
    let Some(len) = handshake.get(1..4) else {
        return Ok(None);
    };
    let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
    if len > MAX_HANDSHAKE_LEN {
        return Err(ClientHelloError::Oversized(
            "ClientHello longer than 16 KiB",
        ));
    }
    Ok(Some(len))
}

/// Parses a complete ClientHello body with tls-parser and extracts the host name.
fn server_name(body: &[u8]) -> Result<Option<String>, ClientHelloError> {
    let (rest, hello) = parse_tls_handshake_client_hello(body)
        .map_err(|_| ClientHelloError::Malformed("ClientHello fields"))?;
    if !rest.is_empty() {
        return Err(ClientHelloError::Malformed("bytes after the extensions"));
    }
    let Some(mut extensions) = hello.ext else {
        return Ok(None);
    };
    let mut seen = std::collections::HashSet::new();
    let mut host_name = None;
    while !extensions.is_empty() {
        let raw = extensions;
        let (rest, extension) = parse_tls_client_hello_extension(raw)
            .map_err(|_| ClientHelloError::Malformed("extension encoding"))?;
        extensions = rest;
        let ext_type = u16::from_be_bytes([raw[0], raw[1]]);
        if !seen.insert(ext_type) {
            return Err(ClientHelloError::Malformed("repeated extension"));
        }
        if ext_type != EXT_SERVER_NAME {
            continue;
        }
        let TlsExtension::SNI(names) = extension else {
            return Err(ClientHelloError::Malformed("server_name"));
        };
        // tls-parser stops at the first entry that does not parse; insist the list was consumed exactly.
        let data = &raw[4..raw.len() - rest.len()];
        let listed = data
            .get(..2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])));
        let parsed: usize = names.iter().map(|(_, n)| 3 + n.len()).sum();
        let list_len = data.len().checked_sub(2);
        if listed.is_none() || listed != list_len || Some(parsed) != list_len || names.is_empty() {
            return Err(ClientHelloError::Malformed("server_name list lengths"));
        }
        let mut hosts = names.iter().filter(|(t, _)| t.0 == NAME_TYPE_HOST_NAME);
        host_name = hosts.next().map(|(_, n)| *n);
        if hosts.next().is_some() {
            return Err(ClientHelloError::AmbiguousServerName);
        }
    }
    host_name.map(normalize_host_name).transpose()
}

/// Lower-cases a `host_name`, removes one trailing dot, and checks it is a DNS name (not an IP literal).
pub fn normalize_host_name(raw: &[u8]) -> Result<String, ClientHelloError> {
    let invalid = || ClientHelloError::InvalidServerName(String::from_utf8_lossy(raw).into_owned());
    let name = std::str::from_utf8(raw).map_err(|_| invalid())?;
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(invalid());
    }
    // IPv4 literals pass the character check; IPv6 ones (with ':') already failed it.
    if name.parse::<std::net::Ipv4Addr>().is_ok()
        || name
            .split('.')
            .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid());
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with the given extensions block contents.
    fn hello(extensions: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(extensions);
        let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1, (hs.len() >> 8) as u8, hs.len() as u8];
        rec.extend_from_slice(&hs);
        rec
    }

    fn sni_ext(names: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (t, n) in names {
            list.push(*t);
            list.extend_from_slice(&(n.len() as u16).to_be_bytes());
            list.extend_from_slice(n);
        }
        let mut ext = vec![0, 0];
        ext.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
        ext.extend_from_slice(&list);
        ext
    }

    #[test]
    fn simple_hello_gives_its_lower_cased_name() {
        let h = hello(&sni_ext(&[(0, b"ABC.Example.com.")]));
        assert_eq!(
            parse_complete(&h).unwrap().server_name.as_deref(),
            Some("abc.example.com")
        );
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(None), "prefix of {cut} bytes");
        }
    }

    #[test]
    fn rejections_by_reason() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ClientHelloError::NotTls));
        assert_eq!(
            parse(&[0x80, 0x2e, 0x01, 0x03, 0x01]),
            Err(ClientHelloError::Sslv2)
        );
        let two = hello(&sni_ext(&[(0, b"a.example.com"), (0, b"b.example.com")]));
        assert_eq!(parse(&two), Err(ClientHelloError::AmbiguousServerName));
        let ip = hello(&sni_ext(&[(0, b"192.0.2.1")]));
        assert_eq!(parse(&ip).unwrap_err().reason(), "invalid_sni");
        let other_type = hello(&sni_ext(&[(7, b"opaque")]));
        assert_eq!(parse_complete(&other_type).unwrap().server_name, None);
        assert_eq!(
            parse(&[22, 3, 1, 0x40, 0x01]).unwrap_err().reason(),
            "oversized"
        );
        assert_eq!(
            parse(&[22, 3, 1, 0, 4, 1, 0x01, 0, 0])
                .unwrap_err()
                .reason(),
            "oversized"
        );
        assert_eq!(
            parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0]).unwrap_err().reason(),
            "malformed"
        );
        // An empty server_name extension (found by the mutation test: a length underflow).
        assert_eq!(
            parse(&hello(&[0, 0, 0, 0])).unwrap_err().reason(),
            "malformed"
        );
    }
}
