//! Pure filter logic: header modifiers, redirect locations and path rewrites (no I/O).
use http::{header::HeaderName, HeaderMap, HeaderValue};

use crate::ir::{HeaderModifier, PathMatch, PathModifier, Redirect};

/// Applies set (replace), add (append) and remove, in that order. Invalid names or values are skipped.
pub fn modify_headers(m: &HeaderModifier, headers: &mut HeaderMap) {
    for (name, value) in &m.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    for (name, value) in &m.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    for name in &m.remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(n);
        }
    }
}

/// The path after a `ReplaceFullPath` or `ReplacePrefixMatch` modifier; the prefix form needs the rule's
/// PathPrefix match (otherwise the path is unchanged).
pub fn rewrite_path(modifier: &PathModifier, path: &str, matched: &PathMatch) -> String {
    match modifier {
        PathModifier::ReplaceFullPath(p) => p.clone(),
        PathModifier::ReplacePrefixMatch(replacement) => {
            let PathMatch::Prefix(prefix) = matched else {
                return path.to_string();
            };
            let prefix = prefix.trim_end_matches('/');
            let rest = path.get(prefix.len()..).unwrap_or("");
            if rest.is_empty() || rest == "/" {
                if replacement.is_empty() {
                    return "/".into();
                }
                if rest == "/" && !replacement.ends_with('/') {
                    return format!("{replacement}/");
                }
                return replacement.clone();
            }
            let joined = format!("{}{rest}", replacement.trim_end_matches('/'));
            if joined.is_empty() {
                "/".into()
            } else {
                joined
            }
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// The `Location` of a `RequestRedirect`. `scheme` is the request's, `host` the request's Host without port,
/// `listener_port` the port the request arrived on. Port rules (Gateway API): an explicit port wins; else a
/// changed scheme uses its well-known port; else the listener port. Well-known ports are left out.
pub fn redirect_location(
    r: &Redirect,
    scheme: &str,
    host: &str,
    listener_port: u16,
    path: &str,
    query: Option<&str>,
    matched: &PathMatch,
) -> String {
    let scheme_out = r.scheme.as_deref().unwrap_or(scheme);
    let host_out = r.hostname.as_deref().unwrap_or(host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(s)) => default_port(s).or(Some(listener_port)),
        (None, None) => Some(listener_port),
    };
    let port_part = match port {
        Some(p) if Some(p) != default_port(scheme_out) => format!(":{p}"),
        _ => String::new(),
    };
    let path_out = match &r.path {
        Some(m) => rewrite_path(m, path, matched),
        None => path.to_string(),
    };
    let query_part = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{scheme_out}://{host_out}{port_part}{path_out}{query_part}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrites() {
        let m = PathMatch::Prefix("/prefix/one".into());
        let r = |rep: &str, path: &str| {
            rewrite_path(&PathModifier::ReplacePrefixMatch(rep.into()), path, &m)
        };
        assert_eq!(r("/one", "/prefix/one/two"), "/one/two");
        assert_eq!(r("/", "/prefix/one/two"), "/two");
        assert_eq!(r("/", "/prefix/one"), "/");
        assert_eq!(r("/one", "/prefix/one"), "/one");
        assert_eq!(r("/one", "/prefix/one/"), "/one/");
        assert_eq!(r("", "/prefix/one/two"), "/two");
    }

    #[test]
    fn redirect_ports() {
        let any = PathMatch::Prefix("/".into());
        let r = |scheme: Option<&str>, port: Option<u16>| Redirect {
            scheme: scheme.map(Into::into),
            hostname: Some("example.org".into()),
            path: None,
            port,
            status_code: 302,
        };
        let loc = |red: Redirect, lp: u16| {
            redirect_location(&red, "http", "h", lp, "/p", Some("a=1"), &any)
        };
        assert_eq!(loc(r(None, None), 80), "http://example.org/p?a=1");
        assert_eq!(loc(r(None, None), 8080), "http://example.org:8080/p?a=1");
        assert_eq!(loc(r(Some("https"), None), 80), "https://example.org/p?a=1");
        assert_eq!(
            loc(r(Some("https"), Some(8443)), 80),
            "https://example.org:8443/p?a=1"
        );
        assert_eq!(loc(r(None, Some(443)), 80), "http://example.org:443/p?a=1");
    }
}
