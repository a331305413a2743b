//! The route table of one (address, port): pure matching code, no I/O.
//!
//! A request first picks a listener by its Host (port ignored): exact listener hostname, then wildcards with
//! more labels, then the listener without hostname; a request never falls back to a less specific listener
//! (listener isolation). Inside the listener every (route hostname, rule, match) is one [`Entry`], sorted once
//! by precedence so that lookup is "first entry that matches" — the best match:
//!
//! 1. the most characters in a matching non-wildcard hostname, then the most characters in a matching hostname;
//! 2. Exact path, then RegularExpression path, then the longest PathPrefix;
//! 3. a method match; 4. more header matches; 5. more query parameter matches;
//! 6. the older route (creationTimestamp, then namespace/name); 7. rule order; 8. match order.
use std::{
    borrow::Cow,
    cmp::Reverse,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use http::HeaderMap;
use regex::Regex;

use crate::ir::{self, HttpListener, HttpRule, ObjectRef, PathMatch, StringMatch};
use crate::translate::hostname;

/// Errors building a table.
#[derive(Debug, thiserror::Error)]
pub enum RouteTableError {
    /// A path, header or query regular expression does not compile; its match never matches.
    #[error("route {route}: invalid regular expression {pattern:?}: {source}")]
    Regex {
        route: String,
        pattern: String,
        source: regex::Error,
    },
}

/// What a request is matched on.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    /// Host header (or `:authority`), port allowed; compared without port, case-insensitively.
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a str,
    pub headers: &'a HeaderMap,
}

/// A route as the proxy needs it after a match.
#[derive(Debug)]
pub struct RouteInfo {
    pub route: ObjectRef,
    pub grpc: bool,
    /// `namespace/name` for logs and metrics.
    pub name: String,
}

/// The routes of one listener, sorted by precedence.
#[derive(Debug)]
pub struct ListenerRoutes {
    /// `namespace/gateway/listener`.
    pub name: String,
    /// Position in its [`RouteTable`] ([`RouteTable::listeners`]).
    pub index: usize,
    pub hostname: Option<String>,
    pub port: u16,
    pub tls: bool,
    entries: Vec<Entry>,
    /// Every (route, rule), in the order of [`Match::rule_id`].
    rules: Vec<(Arc<RouteInfo>, Arc<HttpRule>)>,
}

/// One (hostname, rule, match) of a route.
#[derive(Debug)]
struct Entry {
    hostname: String,
    matcher: Matcher,
    route: Arc<RouteInfo>,
    rule: Arc<HttpRule>,
    rule_index: usize,
    /// Position of the (route, rule) in [`ListenerRoutes::rules`].
    rule_id: usize,
    /// Requests that reached this rule so far, shared by the rule's entries: the weighted backend schedule's
    /// position.
    turns: Arc<AtomicU64>,
}

#[derive(Debug)]
enum PathMatcher {
    Exact(String),
    /// Without trailing slashes (`""` matches everything).
    Prefix(String),
    Regex(Regex),
    Never,
}

#[derive(Debug)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
    Never,
}

#[derive(Debug)]
struct Matcher {
    path: PathMatcher,
    source: PathMatch,
    method: Option<String>,
    headers: Vec<(String, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
}

/// The result of a lookup.
#[derive(Debug)]
pub struct Match<'t> {
    pub listener: &'t ListenerRoutes,
    pub route: &'t Arc<RouteInfo>,
    pub rule: &'t Arc<HttpRule>,
    pub rule_index: usize,
    /// Position of the (route, rule) in [`ListenerRoutes::rules`].
    pub rule_id: usize,
    /// The path match that matched (for `ReplacePrefixMatch`).
    pub path_match: &'t PathMatch,
    turns: &'t AtomicU64,
}

impl Match<'_> {
    /// This request's position in the rule's weighted backend schedule (see [`pick_backend`]).
    pub fn next_turn(&self) -> u64 {
        self.turns.fetch_add(1, Ordering::Relaxed)
    }
}

/// Every listener on one (address, port), most specific hostname first.
#[derive(Debug, Default)]
pub struct RouteTable {
    listeners: Vec<ListenerRoutes>,
}

fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

fn value_matcher(m: &StringMatch, route: &str, errors: &mut Vec<RouteTableError>) -> ValueMatcher {
    match m {
        StringMatch::Exact(v) => ValueMatcher::Exact(v.clone()),
        StringMatch::Regex(p) => match anchored(p) {
            Ok(re) => ValueMatcher::Regex(re),
            Err(source) => {
                errors.push(RouteTableError::Regex {
                    route: route.into(),
                    pattern: p.clone(),
                    source,
                });
                ValueMatcher::Never
            }
        },
    }
}

impl ValueMatcher {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatcher::Exact(v) => v == value,
            ValueMatcher::Regex(re) => re.is_match(value),
            ValueMatcher::Never => false,
        }
    }
}

impl PathMatcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(p) => p == path,
            PathMatcher::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathMatcher::Regex(re) => re.is_match(path),
            PathMatcher::Never => false,
        }
    }
}

impl Matcher {
    fn new(m: &ir::HttpMatch, route: &str, errors: &mut Vec<RouteTableError>) -> Self {
        let path = match &m.path {
            PathMatch::Exact(p) => PathMatcher::Exact(p.clone()),
            PathMatch::Prefix(p) => PathMatcher::Prefix(p.trim_end_matches('/').to_string()),
            PathMatch::Regex(p) => match anchored(p) {
                Ok(re) => PathMatcher::Regex(re),
                Err(source) => {
                    errors.push(RouteTableError::Regex {
                        route: route.into(),
                        pattern: p.clone(),
                        source,
                    });
                    PathMatcher::Never
                }
            },
        };
        Matcher {
            path,
            source: m.path.clone(),
            method: m.method.clone(),
            headers: m
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        value_matcher(&h.value, route, errors),
                    )
                })
                .collect(),
            query: m
                .query_params
                .iter()
                .map(|q| (q.name.clone(), value_matcher(&q.value, route, errors)))
                .collect(),
        }
    }

    fn matches(&self, req: &RequestInfo<'_>) -> bool {
        if !self.path.matches(req.path) {
            return false;
        }
        if self.method.as_deref().is_some_and(|m| m != req.method) {
            return false;
        }
        let headers_ok = self.headers.iter().all(|(name, value)| {
            req.headers
                .get_all(name.as_str())
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| value.matches(v)))
        });
        headers_ok
            && self.query.iter().all(|(name, value)| {
                query_param(req.query, name).is_some_and(|v| value.matches(&v))
            })
    }

    /// Precedence key of the match itself (smaller sorts first).
    fn key(&self) -> (u8, Reverse<usize>, bool, Reverse<usize>, Reverse<usize>) {
        let (kind, len) = match &self.source {
            PathMatch::Exact(p) => (0, p.len()),
            PathMatch::Regex(p) => (1, p.len()),
            PathMatch::Prefix(p) => (2, p.trim_end_matches('/').len()),
        };
        (
            kind,
            Reverse(len),
            self.method.is_none(),
            Reverse(self.headers.len()),
            Reverse(self.query.len()),
        )
    }
}

/// The first value of query parameter `name`, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The Host header without port, lower-cased, without a trailing dot (borrowed when it already is).
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Hostname precedence key (smaller sorts first): most characters of a non-wildcard name, then most characters.
fn hostname_key(h: &str) -> (Reverse<usize>, Reverse<usize>) {
    if h == hostname::ANY {
        return (Reverse(0), Reverse(0));
    }
    let exact = if hostname::is_wildcard(h) { 0 } else { h.len() };
    (Reverse(exact), Reverse(h.len()))
}

impl ListenerRoutes {
    /// Builds a listener's sorted entries; problems (bad regexes) are returned alongside.
    pub fn new(name: String, port: u16, listener: &HttpListener) -> (Self, Vec<RouteTableError>) {
        let mut errors = Vec::new();
        let mut entries = Vec::new();
        let mut keys = Vec::new();
        let mut rules = Vec::new();
        for route in &listener.routes {
            let name_ns = format!("{}/{}", route.route.namespace, route.route.name);
            let info = Arc::new(RouteInfo {
                route: route.route.clone(),
                grpc: route.grpc,
                name: name_ns.clone(),
            });
            for (rule_index, rule) in route.rules.iter().enumerate() {
                let shared = Arc::new(rule.clone());
                let rule_id = rules.len();
                rules.push((info.clone(), shared.clone()));
                let turns = Arc::new(AtomicU64::new(0));
                let default = [ir::HttpMatch::default()];
                let matches = if rule.matches.is_empty() {
                    &default[..]
                } else {
                    &rule.matches[..]
                };
                for (match_index, m) in matches.iter().enumerate() {
                    for host in &route.hostnames {
                        let matcher = Matcher::new(m, &name_ns, &mut errors);
                        keys.push((
                            hostname_key(host),
                            matcher.key(),
                            route.age,
                            rule_index,
                            match_index,
                        ));
                        entries.push(Entry {
                            hostname: host.clone(),
                            matcher,
                            route: info.clone(),
                            rule: shared.clone(),
                            rule_index,
                            rule_id,
                            turns: turns.clone(),
                        });
                    }
                }
            }
        }
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by(|a, b| keys[*a].cmp(&keys[*b]));
        let mut slots: Vec<Option<Entry>> = entries.into_iter().map(Some).collect();
        let entries = order.into_iter().filter_map(|i| slots[i].take()).collect();
        let routes = ListenerRoutes {
            name,
            index: 0,
            hostname: listener.hostname.clone(),
            port,
            tls: listener.tls,
            entries,
            rules,
        };
        (routes, errors)
    }

    /// The best matching rule for a request on this listener.
    pub fn lookup(&self, req: &RequestInfo<'_>) -> Option<Match<'_>> {
        self.lookup_host(&normalize_host(req.host), req)
    }

    /// [`ListenerRoutes::lookup`] with the request's host already normalized.
    fn lookup_host(&self, host: &str, req: &RequestInfo<'_>) -> Option<Match<'_>> {
        self.entries
            .iter()
            .find(|e| hostname::matches(&e.hostname, host) && e.matcher.matches(req))
            .map(|e| Match {
                listener: self,
                route: &e.route,
                rule: &e.rule,
                rule_index: e.rule_index,
                rule_id: e.rule_id,
                path_match: &e.matcher.source,
                turns: &e.turns,
            })
    }

    /// Every (route, rule) of this listener, in the order of [`Match::rule_id`].
    pub fn rules(&self) -> &[(Arc<RouteInfo>, Arc<HttpRule>)] {
        &self.rules
    }
}

impl RouteTable {
    /// A table from the listeners on one (address, port), in any order.
    pub fn new(mut listeners: Vec<ListenerRoutes>) -> Self {
        listeners.sort_by(|a, b| {
            let key =
                |l: &ListenerRoutes| hostname::precedence(l.hostname.as_deref().unwrap_or("*"));
            key(a).cmp(&key(b)).then_with(|| a.name.cmp(&b.name))
        });
        for (index, listener) in listeners.iter_mut().enumerate() {
            listener.index = index;
        }
        RouteTable { listeners }
    }

    /// The listener a Host (or SNI) selects: most specific hostname first; `None` when no listener matches.
    pub fn listener(&self, host: &str) -> Option<&ListenerRoutes> {
        self.listener_host(&normalize_host(host))
    }

    fn listener_host(&self, host: &str) -> Option<&ListenerRoutes> {
        self.listeners.iter().find(|l| {
            l.hostname
                .as_deref()
                .is_none_or(|pattern| hostname::matches(pattern, host))
        })
    }

    /// The best rule for a request: listener by Host, then the first matching entry of that listener only.
    pub fn lookup(&self, req: &RequestInfo<'_>) -> Option<Match<'_>> {
        self.resolve(req).1
    }

    /// The listener a request's Host selects and the best rule in it (the host is normalized once).
    pub fn resolve(&self, req: &RequestInfo<'_>) -> (Option<&ListenerRoutes>, Option<Match<'_>>) {
        let host = normalize_host(req.host);
        let listener = self.listener_host(&host);
        (listener, listener.and_then(|l| l.lookup_host(&host, req)))
    }

    pub fn listeners(&self) -> &[ListenerRoutes] {
        &self.listeners
    }
}

/// Picks the backend (its position and itself) for a rule's `turn`-th request: weighted round robin, so every
/// `total weight` consecutive requests give each backend exactly its weight, spread over the cycle rather than
/// in runs (70/30 is not 70 to one then 30 to the other); `None` when every weight is 0.
pub fn pick_backend(backends: &[ir::HttpBackend], turn: u64) -> Option<(usize, &ir::HttpBackend)> {
    /// A prime above any total weight (16 backendRefs of at most 1,000,000 each): multiplying by it permutes
    /// `0..total`, which spreads each backend's share over the cycle.
    const STRIDE: u64 = 2_654_435_761;
    let total: u64 = backends.iter().map(|b| u64::from(b.backend.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = (turn % total) * STRIDE % total;
    for (index, b) in backends.iter().enumerate() {
        let w = u64::from(b.backend.weight);
        if point < w {
            return Some((index, b));
        }
        point -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{HttpBackend, HttpMatch, HttpRoute, ValueMatch};

    fn route(name: &str, age: u64, hostnames: &[&str], rules: Vec<Vec<HttpMatch>>) -> HttpRoute {
        HttpRoute {
            route: ObjectRef {
                kind: "HTTPRoute".into(),
                namespace: "ns".into(),
                name: name.into(),
            },
            grpc: false,
            age,
            hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
            rules: rules
                .into_iter()
                .map(|matches| HttpRule {
                    matches,
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn prefix(p: &str) -> HttpMatch {
        HttpMatch {
            path: PathMatch::Prefix(p.into()),
            ..Default::default()
        }
    }

    fn exact(p: &str) -> HttpMatch {
        HttpMatch {
            path: PathMatch::Exact(p.into()),
            ..Default::default()
        }
    }

    fn table(hostname: Option<&str>, routes: Vec<HttpRoute>) -> ListenerRoutes {
        let listener = HttpListener {
            hostname: hostname.map(Into::into),
            tls: false,
            certificates: Vec::new(),
            routes,
        };
        let (t, errors) = ListenerRoutes::new("ns/gw/http".into(), 80, &listener);
        assert!(errors.is_empty(), "{errors:?}");
        t
    }

    fn get(t: &ListenerRoutes, host: &str, path_and_query: &str) -> Option<(String, usize)> {
        get_with(t, host, path_and_query, "GET", &HeaderMap::new())
    }

    fn get_with(
        t: &ListenerRoutes,
        host: &str,
        path_and_query: &str,
        method: &str,
        headers: &HeaderMap,
    ) -> Option<(String, usize)> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        t.lookup(&RequestInfo {
            host,
            path,
            query,
            method,
            headers,
        })
        .map(|m| (m.route.route.name.clone(), m.rule_index))
    }

    fn hit(name: &str, rule: usize) -> Option<(String, usize)> {
        Some((name.to_string(), rule))
    }

    #[test]
    fn path_prefix_is_segment_wise() {
        let t = table(
            None,
            vec![route("r", 0, &["*"], vec![vec![prefix("/v2/")]])],
        );
        assert_eq!(get(&t, "a", "/v2"), hit("r", 0));
        assert_eq!(get(&t, "a", "/v2/"), hit("r", 0));
        assert_eq!(get(&t, "a", "/v2/x"), hit("r", 0));
        assert_eq!(get(&t, "a", "/v2example"), None);
        assert_eq!(get(&t, "a", "/"), None);
    }

    #[test]
    fn precedence_table() {
        let mut h = HeaderMap::new();
        h.insert("version", "two".parse().unwrap());
        h.insert("color", "red".parse().unwrap());
        let with_headers = |n: usize| HttpMatch {
            headers: [("version", "two"), ("color", "red")][..n]
                .iter()
                .map(|(k, v)| ValueMatch {
                    name: k.to_string(),
                    value: StringMatch::Exact(v.to_string()),
                })
                .collect(),
            ..prefix("/")
        };
        let t = table(
            None,
            vec![
                route(
                    "old",
                    0,
                    &["*"],
                    vec![vec![prefix("/")], vec![prefix("/a")]],
                ),
                route(
                    "new",
                    1,
                    &["*"],
                    vec![
                        vec![prefix("/a")],
                        vec![prefix("/a/b")],
                        vec![exact("/a")],
                        vec![HttpMatch {
                            method: Some("POST".into()),
                            ..prefix("/")
                        }],
                        vec![with_headers(1)],
                        vec![with_headers(2)],
                        vec![HttpMatch {
                            path: PathMatch::Regex("/re/[0-9]+".into()),
                            ..Default::default()
                        }],
                        vec![HttpMatch {
                            query_params: vec![ValueMatch {
                                name: "q".into(),
                                value: StringMatch::Exact("1".into()),
                            }],
                            ..prefix("/")
                        }],
                    ],
                ),
                route("host", 2, &["exact.example.com"], vec![vec![prefix("/")]]),
                route("wild", 3, &["*.example.com"], vec![vec![exact("/a")]]),
            ],
        );
        let none = HeaderMap::new();
        // Exact path beats every prefix, in any route.
        assert_eq!(get(&t, "x", "/a"), hit("new", 2));
        // Longest prefix.
        assert_eq!(get(&t, "x", "/a/b/c"), hit("new", 1));
        // Equal prefixes: the older route wins.
        assert_eq!(get(&t, "x", "/a/z"), hit("old", 1));
        // Method beats headers; more headers beat fewer; headers beat query params.
        assert_eq!(get_with(&t, "x", "/", "POST", &h), hit("new", 3));
        assert_eq!(get_with(&t, "x", "/", "GET", &h), hit("new", 5));
        assert_eq!(get_with(&t, "x", "/?q=1", "GET", &none), hit("new", 7));
        assert_eq!(get_with(&t, "x", "/?q=2", "GET", &none), hit("old", 0));
        // Regex paths are anchored.
        assert_eq!(get(&t, "x", "/re/12"), hit("new", 6));
        assert_eq!(get(&t, "x", "/re/12x"), hit("old", 0));
        // A more specific hostname beats any path precedence; wildcards are below exact names.
        assert_eq!(get(&t, "exact.example.com:8080", "/a"), hit("host", 0));
        assert_eq!(get(&t, "other.example.com", "/a"), hit("wild", 0));
        assert_eq!(get(&t, "other.example.com", "/b"), hit("old", 0));
        assert_eq!(get(&t, "EXACT.example.com.", "/zzz"), hit("host", 0));
    }

    #[test]
    fn hostnames_without_catch_all_give_none() {
        let t = table(
            Some("*.example.com"),
            vec![route("r", 0, &["foo.example.com"], vec![vec![]])],
        );
        assert_eq!(get(&t, "foo.example.com", "/anything"), hit("r", 0));
        assert_eq!(get(&t, "bar.example.com", "/"), None);
    }

    #[test]
    fn listener_isolation() {
        let wild = table(
            Some("*.example.com"),
            vec![route("wild", 0, &["*.example.com"], vec![vec![]])],
        );
        let (exact, _) = ListenerRoutes::new(
            "ns/gw/exact".into(),
            80,
            &HttpListener {
                hostname: Some("foo.example.com".into()),
                routes: vec![route(
                    "exact",
                    1,
                    &["foo.example.com"],
                    vec![vec![exact("/only")]],
                )],
                ..Default::default()
            },
        );
        let any = table(None, vec![]);
        let t = RouteTable::new(vec![any, wild, exact]);
        let req = |host: &'static str, path: &'static str| {
            t.lookup(&RequestInfo {
                host,
                path,
                query: None,
                method: "GET",
                headers: &HeaderMap::new(),
            })
            .map(|m| m.route.route.name.clone())
        };
        assert_eq!(req("foo.example.com", "/only").as_deref(), Some("exact"));
        // Never falls back to the wildcard listener's routes.
        assert_eq!(req("foo.example.com", "/other"), None);
        assert_eq!(req("bar.example.com", "/other").as_deref(), Some("wild"));
        assert_eq!(req("example.org", "/"), None);
    }

    #[test]
    fn query_and_regex_headers() {
        let t = table(
            None,
            vec![route(
                "r",
                0,
                &["*"],
                vec![vec![HttpMatch {
                    headers: vec![ValueMatch {
                        name: "X-Ver".into(),
                        value: StringMatch::Regex("v[12]".into()),
                    }],
                    query_params: vec![ValueMatch {
                        name: "a b".into(),
                        value: StringMatch::Exact("c&d".into()),
                    }],
                    ..Default::default()
                }]],
            )],
        );
        let mut h = HeaderMap::new();
        h.insert("x-ver", "v2".parse().unwrap());
        assert_eq!(get_with(&t, "h", "/?a%20b=c%26d", "GET", &h), hit("r", 0));
        assert_eq!(get_with(&t, "h", "/?a%20b=c", "GET", &h), None);
        h.insert("x-ver", "v3".parse().unwrap());
        assert_eq!(get_with(&t, "h", "/?a%20b=c%26d", "GET", &h), None);
    }

    #[test]
    fn weighted_picks() {
        let b = |name: &str, weight| HttpBackend {
            backend: ir::Backend {
                name: name.into(),
                weight,
                endpoints: Vec::new(),
                valid: true,
                protocol: Default::default(),
            },
            filters: Vec::new(),
        };
        let backends = vec![b("a", 70), b("b", 30), b("c", 0)];
        // Any 100 consecutive turns, wherever the cycle starts, give exactly the weights.
        for start in [0u64, 37, 1_000_003] {
            let mut counts = std::collections::HashMap::new();
            for turn in start..start + 100 {
                *counts
                    .entry(
                        pick_backend(&backends, turn)
                            .unwrap()
                            .1
                            .backend
                            .name
                            .clone(),
                    )
                    .or_insert(0) += 1;
            }
            assert_eq!(counts.get("a"), Some(&70), "from turn {start}");
            assert_eq!(counts.get("b"), Some(&30), "from turn {start}");
            assert_eq!(counts.get("c"), None);
        }
        // Spread, not in runs: b (30%) turns up within every 10 turns.
        let picks: Vec<_> = (0..100u64)
            .map(|t| pick_backend(&backends, t).unwrap().1.backend.name.as_str())
            .collect();
        assert!(
            picks.windows(10).all(|w| w.contains(&"b")),
            "a run of 10 without b: {picks:?}"
        );
        assert!(pick_backend(&[b("z", 0)], 5).is_none());
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Foo.Example.com:8080"), "foo.example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("example.com."), "example.com");
    }
}
