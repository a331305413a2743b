//! HTTPRoute and GRPCRoute rules into the IR's HTTP types ([`crate::ir::HttpRule`]): matches, filters (their
//! JSON configuration interpreted here, once), timeouts and mirror backends. GRPCRoute method matches become
//! HTTP/2 path matches (`/service/method`), so one route table serves both kinds.
use super::backend;
use super::route::{RouteKind, RouteView};
use super::Context;
use crate::ir::{
    Backend, HeaderModifier, HttpBackend, HttpFilter, HttpMatch, HttpRule, Mirror, PathMatch,
    PathModifier, Redirect, StringMatch, UrlRewrite, ValueMatch,
};
use crate::model::{
    GrpcRoute, GrpcRouteMatch, HttpRoute, HttpRouteFilter, HttpRouteMatch, NameValueMatch,
};
use serde_json::Value;

/// The rules of an HTTPRoute or GRPCRoute, with the backends the translation resolved (indexed like the rules
/// and their backendRefs).
pub fn rules(ctx: &Context<'_>, view: &RouteView<'_>, resolved: &[Vec<Backend>]) -> Vec<HttpRule> {
    let ns = view.meta.namespace();
    let backends = |rule: usize, filters: Vec<Vec<HttpFilter>>| -> Vec<HttpBackend> {
        resolved
            .get(rule)
            .into_iter()
            .flatten()
            .zip(filters.into_iter().chain(std::iter::repeat(Vec::new())))
            .map(|(b, filters)| HttpBackend {
                backend: b.clone(),
                filters,
            })
            .collect()
    };
    let convert = |list: &[HttpRouteFilter]| filters(ctx, view.kind, ns, list);
    if let Some(route) = ctx
        .snapshot
        .http_routes
        .iter()
        .find(|r| std::ptr::eq(&r.metadata, view.meta))
    {
        return http_rules(route, &convert, &backends);
    }
    if let Some(route) = ctx
        .snapshot
        .grpc_routes
        .iter()
        .find(|r| std::ptr::eq(&r.metadata, view.meta))
    {
        return grpc_rules(route, &convert, &backends);
    }
    Vec::new()
}

fn http_rules(
    route: &HttpRoute,
    convert: &dyn Fn(&[HttpRouteFilter]) -> Vec<HttpFilter>,
    backends: &dyn Fn(usize, Vec<Vec<HttpFilter>>) -> Vec<HttpBackend>,
) -> Vec<HttpRule> {
    route
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let timeouts = rule.timeouts.as_ref();
            let timeout = |key: &str| {
                timeouts
                    .and_then(|t| t.get(key))
                    .and_then(Value::as_str)
                    .and_then(parse_duration_ms)
                    .filter(|ms| *ms > 0)
            };
            HttpRule {
                matches: rule.matches.iter().map(http_match).collect(),
                filters: convert(&rule.filters),
                backends: backends(
                    i,
                    rule.backend_refs
                        .iter()
                        .map(|b| convert(&b.filters))
                        .collect(),
                ),
                request_timeout_ms: timeout("request"),
                backend_timeout_ms: timeout("backendRequest"),
            }
        })
        .collect()
}

fn grpc_rules(
    route: &GrpcRoute,
    convert: &dyn Fn(&[HttpRouteFilter]) -> Vec<HttpFilter>,
    backends: &dyn Fn(usize, Vec<Vec<HttpFilter>>) -> Vec<HttpBackend>,
) -> Vec<HttpRule> {
    route
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| HttpRule {
            matches: rule.matches.iter().map(grpc_match).collect(),
            filters: convert(&rule.filters),
            backends: backends(
                i,
                rule.backend_refs
                    .iter()
                    .map(|b| convert(&b.filters))
                    .collect(),
            ),
            request_timeout_ms: None,
            backend_timeout_ms: None,
        })
        .collect()
}

fn value_match(m: &NameValueMatch, lower_name: bool) -> ValueMatch {
    ValueMatch {
        name: if lower_name {
            m.name.to_ascii_lowercase()
        } else {
            m.name.clone()
        },
        value: match m.type_.as_deref() {
            Some("RegularExpression") => StringMatch::Regex(m.value.clone()),
            _ => StringMatch::Exact(m.value.clone()),
        },
    }
}

fn http_match(m: &HttpRouteMatch) -> HttpMatch {
    let value = m
        .path
        .as_ref()
        .and_then(|p| p.value.clone())
        .unwrap_or_else(|| "/".into());
    let path = match m.path.as_ref().and_then(|p| p.type_.as_deref()) {
        Some("Exact") => PathMatch::Exact(value),
        Some("RegularExpression") => PathMatch::Regex(value),
        _ => PathMatch::Prefix(value),
    };
    HttpMatch {
        path,
        headers: m.headers.iter().map(|h| value_match(h, true)).collect(),
        query_params: m
            .query_params
            .iter()
            .map(|q| value_match(q, false))
            .collect(),
        method: m.method.clone(),
    }
}

/// A gRPC method match as a path match on `/service/method`.
fn grpc_match(m: &GrpcRouteMatch) -> HttpMatch {
    let path = match &m.method {
        None => PathMatch::Prefix("/".into()),
        Some(method) => {
            let service = method.service.as_deref().filter(|s| !s.is_empty());
            let name = method.method.as_deref().filter(|s| !s.is_empty());
            match (method.type_.as_deref(), service, name) {
                (Some("RegularExpression"), s, n) => PathMatch::Regex(format!(
                    "/{}/{}",
                    s.unwrap_or("[^/]+"),
                    n.unwrap_or("[^/]+")
                )),
                (_, Some(s), Some(n)) => PathMatch::Exact(format!("/{s}/{n}")),
                (_, Some(s), None) => PathMatch::Regex(format!("/{}/[^/]+", regex_escape(s))),
                (_, None, Some(n)) => PathMatch::Regex(format!("/[^/]+/{}", regex_escape(n))),
                (_, None, None) => PathMatch::Prefix("/".into()),
            }
        }
    };
    HttpMatch {
        path,
        headers: m.headers.iter().map(|h| value_match(h, true)).collect(),
        query_params: Vec::new(),
        method: None,
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn filters(
    ctx: &Context<'_>,
    kind: RouteKind,
    ns: &str,
    list: &[HttpRouteFilter],
) -> Vec<HttpFilter> {
    list.iter()
        .filter_map(|f| match f.type_.as_str() {
            "RequestHeaderModifier" => Some(HttpFilter::RequestHeaderModifier(header_modifier(
                f.request_header_modifier.as_ref()?,
            ))),
            "ResponseHeaderModifier" => Some(HttpFilter::ResponseHeaderModifier(header_modifier(
                f.response_header_modifier.as_ref()?,
            ))),
            "RequestRedirect" => Some(HttpFilter::RequestRedirect(redirect(
                f.request_redirect.as_ref()?,
            ))),
            "URLRewrite" => {
                let v = f.url_rewrite.as_ref()?;
                Some(HttpFilter::UrlRewrite(UrlRewrite {
                    hostname: str_field(v, "hostname"),
                    path: v.get("path").and_then(path_modifier),
                }))
            }
            "RequestMirror" => {
                let m = f.request_mirror.as_ref()?;
                let (backend, _) = backend::resolve(ctx, kind, ns, &m.backend_ref);
                let percent = match (&m.percent, &m.fraction) {
                    (Some(p), _) => *p as f64,
                    (None, Some(fraction)) => {
                        let n = fraction.get("numerator").and_then(Value::as_f64)?;
                        let d = fraction
                            .get("denominator")
                            .and_then(Value::as_f64)
                            .unwrap_or(100.0);
                        if d <= 0.0 {
                            return None;
                        }
                        100.0 * n / d
                    }
                    (None, None) => 100.0,
                };
                Some(HttpFilter::RequestMirror(Mirror {
                    backend,
                    percent: percent.clamp(0.0, 100.0),
                }))
            }
            _ => None,
        })
        .collect()
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn header_modifier(v: &Value) -> HeaderModifier {
    let pairs = |key: &str| -> Vec<(String, String)> {
        v.get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|h| Some((str_field(h, "name")?, h.get("value")?.as_str()?.to_string())))
            .collect()
    };
    HeaderModifier {
        set: pairs("set"),
        add: pairs("add"),
        remove: v
            .get("remove")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect(),
    }
}

fn path_modifier(v: &Value) -> Option<PathModifier> {
    match v.get("type")?.as_str()? {
        "ReplaceFullPath" => Some(PathModifier::ReplaceFullPath(
            v.get("replaceFullPath")?.as_str()?.to_string(),
        )),
        "ReplacePrefixMatch" => Some(PathModifier::ReplacePrefixMatch(
            v.get("replacePrefixMatch")?.as_str()?.to_string(),
        )),
        _ => None,
    }
}

fn redirect(v: &Value) -> Redirect {
    Redirect {
        scheme: str_field(v, "scheme"),
        hostname: str_field(v, "hostname"),
        path: v.get("path").and_then(path_modifier),
        port: v
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok()),
        status_code: v
            .get("statusCode")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(302),
    }
}

/// Parses a Gateway API duration (`1h`, `10s`, `500ms`, `1m30s`; Go `time.ParseDuration` units) into
/// milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1_000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            "ns" => 0.000_001,
            _ => return None,
        };
        total += number * factor;
        rest = &rest[unit_len..];
    }
    Some(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("1s"), Some(1000));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("1m30s"), Some(90_000));
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        assert_eq!(parse_duration_ms("0s"), Some(0));
        assert_eq!(parse_duration_ms("10"), None);
        assert_eq!(parse_duration_ms("s"), None);
    }

    #[test]
    fn grpc_method_matches_become_paths() {
        let m = |t: Option<&str>, s: Option<&str>, n: Option<&str>| {
            grpc_match(&GrpcRouteMatch {
                method: Some(crate::model::GrpcMethodMatch {
                    type_: t.map(Into::into),
                    service: s.map(Into::into),
                    method: n.map(Into::into),
                }),
                headers: Vec::new(),
            })
            .path
        };
        assert_eq!(
            m(None, Some("a.Svc"), Some("Get")),
            PathMatch::Exact("/a.Svc/Get".into())
        );
        assert_eq!(
            m(None, Some("a.Svc"), None),
            PathMatch::Regex("/a\\.Svc/[^/]+".into())
        );
        assert_eq!(
            m(Some("RegularExpression"), None, Some("G.*")),
            PathMatch::Regex("/[^/]+/G.*".into())
        );
    }
}
