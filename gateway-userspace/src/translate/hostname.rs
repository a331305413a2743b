//! Hostnames: validity, listener/route intersection, and the precedence order of exact and wildcard names.
//!
//! A hostname is an RFC 1123 name, optionally prefixed by a single `*.` label. `*.example.com` matches any name
//! with one or more labels in front of `.example.com`, never `example.com` itself. Comparison is
//! case-insensitive (everything is lower-cased). [`ANY`] stands for "every hostname" (a route without hostnames on
//! a listener without hostname).
use std::cmp::Reverse;

/// The effective hostname of a route without hostnames on a listener without hostname: it matches every name.
pub const ANY: &str = "*";

/// Whether `hostname` is a valid Gateway API hostname (a wildcard prefix allowed, IP addresses not).
pub fn is_valid(hostname: &str) -> bool {
    let name = hostname.strip_prefix("*.").unwrap_or(hostname);
    if name.is_empty() || name.len() > 253 || hostname.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    name.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    })
}

/// Whether the name starts with the `*.` wildcard label.
pub fn is_wildcard(hostname: &str) -> bool {
    hostname.starts_with("*.")
}

/// The suffix a wildcard matches, including the leading dot (`*.example.com` → `.example.com`).
fn wildcard_suffix(hostname: &str) -> Option<&str> {
    hostname.strip_prefix('*')
}

/// The intersection of a listener's hostname and one route hostname: the more specific of the two when they
/// overlap, `None` when they do not. A listener without hostname accepts every route hostname.
pub fn intersect(listener: Option<&str>, route: &str) -> Option<String> {
    let route = route.to_ascii_lowercase();
    let Some(listener) = listener else {
        return Some(route);
    };
    let listener = listener.to_ascii_lowercase();
    if route == ANY {
        return Some(listener);
    }
    match (wildcard_suffix(&listener), wildcard_suffix(&route)) {
        (None, None) => (listener == route).then_some(route),
        (Some(suffix), None) => route.ends_with(suffix).then_some(route),
        (None, Some(suffix)) => listener.ends_with(suffix).then_some(listener),
        (Some(l), Some(r)) => {
            if l.ends_with(r) {
                Some(listener)
            } else if r.ends_with(l) {
                Some(route)
            } else {
                None
            }
        }
    }
}

/// The effective hostnames of a route on a listener: the intersections of the route's hostnames with the
/// listener's (non-intersecting route hostnames are ignored), or the listener's hostname (or [`ANY`]) when the
/// route has none. Empty when nothing intersects. Sorted by [`precedence`], without duplicates.
pub fn effective(listener: Option<&str>, route_hostnames: &[String]) -> Vec<String> {
    let mut names: Vec<String> = if route_hostnames.is_empty() {
        vec![listener.map_or_else(|| ANY.to_string(), str::to_ascii_lowercase)]
    } else {
        route_hostnames
            .iter()
            .filter_map(|h| intersect(listener, h))
            .collect()
    };
    names.sort_by(|a, b| precedence(a).cmp(&precedence(b)).then_with(|| a.cmp(b)));
    names.dedup();
    names
}

/// Sort key, most specific first: exact names, then wildcards by descending number of labels, then [`ANY`].
pub fn precedence(hostname: &str) -> (bool, Reverse<usize>) {
    if hostname == ANY {
        return (true, Reverse(0));
    }
    (is_wildcard(hostname), Reverse(hostname.split('.').count()))
}

/// Whether a concrete name (an SNI or a Host header without port) is matched by `pattern`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if pattern == ANY {
        return true;
    }
    match wildcard_suffix(pattern) {
        Some(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
        None => pattern == name,
    }
}

/// Whether two listener hostnames overlap without being equal (`foo.example.com` and `*.example.com`).
pub fn overlaps(a: &str, b: &str) -> bool {
    a != b && intersect(Some(a), b).is_some()
}
