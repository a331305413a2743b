#!/usr/bin/env python3
"""Regenerates the ClientHello corpus (see MANIFEST and ../../clienthello_corpus.rs).

Recorded: runs `openssl s_client` and `curl` against a local socket and keeps the bytes each sends first (up to the
end of its ClientHello). The rustls hello is recorded by `cargo test -p gateway-userspace --test clienthello_corpus
-- --ignored record_rustls_hello`. Hand-made cases are derived from the recorded openssl hello or built from
scratch below. Run from anywhere: python3 make_corpus.py
"""
import os
import random
import socket
import struct
import subprocess
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(20250101)


def write(name, data):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)


def read_hello(conn):
    """Reads TLS records until the first handshake message is complete."""
    conn.settimeout(5)
    buf, hs = b"", b""
    while True:
        while len(buf) < 5 or len(buf) < 5 + struct.unpack(">H", buf[3:5])[0]:
            chunk = conn.recv(65536)
            if not chunk:
                return buf
            buf += chunk
        # consume complete records into hs while tracking everything in `data`
        data, off = buf, 0
        hs = b""
        while off + 5 <= len(data):
            ln = struct.unpack(">H", data[off + 3:off + 5])[0]
            if off + 5 + ln > len(data):
                break
            hs += data[off + 5:off + 5 + ln]
            off += 5 + ln
            if len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4], "big"):
                return data[:off]
        chunk = conn.recv(65536)
        if not chunk:
            return buf
        buf += chunk


def record(argv_for_port, stdin=b""):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    result = {}

    def accept():
        conn, _ = srv.accept()
        result["hello"] = read_hello(conn)
        conn.close()

    t = threading.Thread(target=accept)
    t.start()
    subprocess.run(argv_for_port(port), input=stdin, capture_output=True, timeout=20)
    t.join(10)
    srv.close()
    return result["hello"]


# ---- building blocks -------------------------------------------------------------------------------------------
def ext(t, body):
    return struct.pack(">HH", t, len(body)) + body


def sni(*names):
    lst = b"".join(struct.pack(">BH", t, len(n)) + n for t, n in names)
    return ext(0, struct.pack(">H", len(lst)) + lst)


def hello(exts, ciphers=b"\x13\x01\x13\x02", version=b"\x03\x03"):
    body = version + bytes(rng.randrange(256) for _ in range(32))
    body += b"\x20" + bytes(rng.randrange(256) for _ in range(32))  # session id
    body += struct.pack(">H", len(ciphers)) + ciphers + b"\x01\x00"
    e = b"".join(exts)
    body += struct.pack(">H", len(e)) + e
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(hs, sizes=None):
    """Wraps a handshake message in records of the given fragment sizes (one record by default)."""
    out, off = b"", 0
    for size in sizes or [len(hs)]:
        frag = hs[off:off + size]
        out += b"\x16\x03\x01" + struct.pack(">H", len(frag)) + frag
        off += size
    if off < len(hs):
        frag = hs[off:]
        out += b"\x16\x03\x01" + struct.pack(">H", len(frag)) + frag
    return out


COMMON = [
    ext(10, bytes.fromhex("0006001d00170018")),  # supported_groups
    ext(13, bytes.fromhex("000804030804040105010601")),  # signature_algorithms
    ext(43, bytes.fromhex("020304")),  # supported_versions: TLS 1.3
    ext(51, struct.pack(">HHH", 32 + 4, 0x1D, 32) + bytes(32)),  # key_share x25519
]


def main():
    openssl = record(lambda p: ["openssl", "s_client", "-connect", f"127.0.0.1:{p}",
                                "-servername", "openssl.example.com"], b"")
    write("openssl_s_client.bin", openssl)
    openssl12 = record(lambda p: ["openssl", "s_client", "-connect", f"127.0.0.1:{p}", "-tls1_2",
                                  "-servername", "tls12.example.com"], b"")
    write("openssl_tls12.bin", openssl12)
    curl = record(lambda p: ["curl", "-sk", "--max-time", "3", "--resolve", f"curl.example.com:{p}:127.0.0.1",
                             f"https://curl.example.com:{p}/"])
    write("curl.bin", curl)

    # Post-quantum-sized: an X25519MLKEM768 (0x11ec) key share of 1216 bytes next to x25519, ~1.8 KB in total,
    # (with 420 bytes of padding, like browsers), so it spans two TCP segments at the default MSS.
    pq_share = struct.pack(">HH", 0x11EC, 1216) + bytes(rng.randrange(256) for _ in range(1216))
    pq_share += struct.pack(">HH", 0x1D, 32) + bytes(32)
    pq = hello([sni((0, b"pq.example.com")), ext(10, bytes.fromhex("0004 11ec 001d".replace(" ", ""))),
                ext(13, bytes.fromhex("000804030804040105010601")), ext(43, bytes.fromhex("020304")),
                ext(51, struct.pack(">H", len(pq_share)) + pq_share), ext(21, bytes(420))])
    write("pq_sized.bin", records(pq))

    base = hello([sni((0, b"split.example.com"))] + COMMON)
    write("record_split.bin", records(base, [40, 3, 100]))
    write("tiny_records.bin", records(base, [1] * len(base)))
    write("byte_split.bin", records(hello([sni((0, b"bytes.example.com"))] + COMMON)))

    grease = hello([ext(0x0A0A, b""), sni((0, b"grease.example.com"))] + COMMON + [ext(0x3A3A, b"\x00")],
                   ciphers=b"\x5a\x5a\x13\x01")
    write("grease.bin", records(grease))

    ech_payload = b"\x00" + struct.pack(">HH", 1, 1) + b"\x2a" + struct.pack(">H", 32) + bytes(32)
    ech_payload += struct.pack(">H", 200) + bytes(rng.randrange(256) for _ in range(200))
    ech = hello([sni((0, b"public.example.com")), ext(0xFE0D, ech_payload)] + COMMON)
    write("ech_outer.bin", records(ech))

    write("two_server_names.bin", records(hello([sni((0, b"a.example.com"), (0, b"b.example.com"))] + COMMON)))
    write("other_name_type_only.bin", records(hello([sni((1, b"opaque-name"))] + COMMON)))
    write("other_name_type_and_host.bin",
          records(hello([sni((7, b"opaque"), (0, b"Mixed.Example.com"))] + COMMON)))
    write("trailing_dot.bin", records(hello([sni((0, b"abc.example.com."))] + COMMON)))
    write("ip_literal.bin", records(hello([sni((0, b"192.0.2.1"))] + COMMON)))
    write("ipv6_literal.bin", records(hello([sni((0, b"2001:db8::1"))] + COMMON)))
    write("empty_host_name.bin", records(hello([sni((0, b""))] + COMMON)))
    write("no_sni.bin", records(hello(COMMON)))
    write("no_extensions.bin", records(hello([])))
    write("duplicate_sni_extension.bin",
          records(hello([sni((0, b"a.example.com")), sni((0, b"b.example.com"))] + COMMON)))
    write("truncated.bin", openssl[: len(openssl) // 2])
    write("truncated_header.bin", openssl[:3])

    over_record = bytearray(records(base))
    over_record[3:5] = struct.pack(">H", 0x4001)
    write("oversized_record_length.bin", bytes(over_record))
    over_hs = bytearray(records(base))
    over_hs[6:9] = (0x010000).to_bytes(3, "big")
    write("oversized_handshake_length.bin", bytes(over_hs))
    bad_ext = hello([sni((0, b"x.example.com"))] + COMMON)
    # Claim a longer extensions block than there is (keep the handshake length consistent).
    i = bad_ext.index(sni((0, b"x.example.com"))) - 2
    bad_ext = bad_ext[:i] + struct.pack(">H", struct.unpack(">H", bad_ext[i:i + 2])[0] + 10) + bad_ext[i + 2:]
    write("extension_length_overflow.bin", records(bad_ext))
    bad_list = hello([ext(0, struct.pack(">H", 40) + struct.pack(">BH", 0, 5) + b"a.com")] + COMMON)
    write("server_name_list_overflow.bin", records(bad_list))
    write("server_hello_first.bin", records(b"\x02" + hello([])[1:]))
    write("alert_record.bin", b"\x15\x03\x03\x00\x02\x02\x28")
    write("not_tls_http.bin", b"GET / HTTP/1.1\r\nHost: abc.example.com\r\n\r\n")
    # SSLv2-compatible CLIENT-HELLO (RFC 6101 E.2): 2-byte length with the high bit, type 1, version 3.1,
    # cipher_spec length 3, session id 0, challenge 16.
    v2 = b"\x01\x03\x01" + struct.pack(">HHH", 3, 0, 16) + b"\x00\x00\x2f" + bytes(16)
    write("sslv2.bin", struct.pack(">H", 0x8000 | len(v2)) + v2)


if __name__ == "__main__":
    main()
