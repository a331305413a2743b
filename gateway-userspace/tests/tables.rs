//! Table tests: hostname validity, intersection and precedence; ReferenceGrant matching (including every
//! near-miss grant of the conformance manifests).
mod common;

use gateway_userspace::model::ReferenceGrant;
use gateway_userspace::provider::file::Loader;
use gateway_userspace::translate::hostname::{
    self, effective, intersect, is_valid, matches, precedence,
};
use gateway_userspace::translate::refgrant::{grant_matches, permits, RefFrom, RefTo};
use std::path::Path;

#[test]
fn hostname_intersection_table() {
    let table: &[(Option<&str>, &str, Option<&str>)] = &[
        (None, "foo.com", Some("foo.com")),
        (None, "*.foo.com", Some("*.foo.com")),
        (Some("foo.com"), "foo.com", Some("foo.com")),
        (Some("foo.com"), "bar.com", None),
        (Some("foo.com"), "FOO.com", Some("foo.com")),
        (
            Some("*.example.com"),
            "a.example.com",
            Some("a.example.com"),
        ),
        (
            Some("*.example.com"),
            "a.b.example.com",
            Some("a.b.example.com"),
        ),
        (Some("*.example.com"), "example.com", None),
        (Some("*.example.com"), "anotherexample.com", None),
        (
            Some("a.example.com"),
            "*.example.com",
            Some("a.example.com"),
        ),
        (
            Some("a.b.example.com"),
            "*.example.com",
            Some("a.b.example.com"),
        ),
        (Some("example.com"), "*.example.com", None),
        (Some("*.com"), "*.example.com", Some("*.example.com")),
        (Some("*.example.com"), "*.com", Some("*.example.com")),
        (
            Some("*.example.com"),
            "*.example.com",
            Some("*.example.com"),
        ),
        (Some("*.foo.com"), "*.bar.com", None),
        (Some("*.example.com"), "*.anotherexample.com", None),
        (Some("*.wildcard.io"), "wildcard.io", None),
        (
            Some("very.specific.com"),
            "*.specific.com",
            Some("very.specific.com"),
        ),
        (Some("very.specific.com"), "*.nonmatchingwildcard.io", None),
    ];
    for (listener, route, expected) in table {
        assert_eq!(
            intersect(*listener, route).as_deref(),
            *expected,
            "listener {listener:?} ∩ route {route:?}"
        );
    }
}

#[test]
fn effective_hostnames() {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // A route without hostnames takes the listener's, or matches everything.
    assert_eq!(effective(Some("*.example.com"), &[]), ["*.example.com"]);
    assert_eq!(effective(None, &[]), [hostname::ANY]);
    // Non-intersecting route hostnames are ignored for that listener.
    assert_eq!(
        effective(
            Some("very.specific.com"),
            &names(&["non.matching.com", "very.specific.com"])
        ),
        ["very.specific.com"]
    );
    assert!(effective(
        Some("www.example.com"),
        &names(&["www.nomatch.com", "*.nomatch.com"])
    )
    .is_empty());
    // Duplicates collapse.
    assert_eq!(
        effective(
            Some("a.example.com"),
            &names(&["a.example.com", "*.example.com"])
        ),
        ["a.example.com"]
    );
}

#[test]
fn hostname_precedence_order() {
    let mut names = vec![
        "*.com",
        hostname::ANY,
        "*.example.com",
        "b.example.com",
        "*.foo.example.com",
        "a.b.example.com",
    ];
    names.sort_by_key(|h| precedence(h));
    assert_eq!(
        names,
        [
            "a.b.example.com",
            "b.example.com",
            "*.foo.example.com",
            "*.example.com",
            "*.com",
            hostname::ANY
        ]
    );
}

#[test]
fn hostname_matching_and_validity() {
    let table: &[(&str, &str, bool)] = &[
        ("*.example.com", "a.example.com", true),
        ("*.example.com", "a.b.example.com", true),
        ("*.example.com", "example.com", false),
        ("*.example.com", "aexample.com", false),
        ("abc.example.com", "ABC.example.com", true),
        ("abc.example.com", "abd.example.com", false),
        (hostname::ANY, "anything.org", true),
    ];
    for (pattern, name, expected) in table {
        assert_eq!(matches(pattern, name), *expected, "{pattern} vs {name}");
    }
    for valid in ["foo.com", "*.foo.com", "a-b.c0.io", "localhost"] {
        assert!(is_valid(valid), "{valid}");
    }
    for invalid in [
        "",
        "*",
        "*.",
        "foo.*.com",
        "**.foo.com",
        "1.2.3.4",
        "Foo.com",
        "-a.com",
        "a-.com",
        "a..com",
        "a_b.com",
    ] {
        assert!(!is_valid(invalid), "{invalid:?}");
    }
}

fn grants(manifest: &str) -> Vec<ReferenceGrant> {
    let path = common::conformance_dir().join("tests").join(manifest);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut loader = Loader::new();
    loader.add_text(&path, &common::substitute(&text)).unwrap();
    loader.finish().reference_grants
}

const GROUP: &str = "gateway.networking.k8s.io";
const INFRA: &str = common::INFRA;

#[test]
fn conformance_near_miss_grants_never_match() {
    let cases = [
        (
            "tlsroute-invalid-reference-grant.yaml",
            RefFrom {
                group: GROUP,
                kind: "TLSRoute",
                namespace: INFRA,
            },
            RefTo {
                group: "",
                kind: "Service",
                namespace: common::APP,
                name: "tls-backend",
            },
        ),
        (
            "httproute-invalid-reference-grant.yaml",
            RefFrom {
                group: GROUP,
                kind: "HTTPRoute",
                namespace: INFRA,
            },
            RefTo {
                group: "",
                kind: "Service",
                namespace: common::WEB,
                name: "web-backend",
            },
        ),
        (
            "gateway-secret-invalid-reference-grant.yaml",
            RefFrom {
                group: GROUP,
                kind: "Gateway",
                namespace: INFRA,
            },
            RefTo {
                group: "",
                kind: "Secret",
                namespace: common::WEB,
                name: "certificate",
            },
        ),
    ];
    for (manifest, from, to) in cases {
        let grants = grants(manifest);
        assert_eq!(grants.len(), 7, "{manifest}: seven near-miss grants");
        for grant in &grants {
            assert!(
                !grant_matches(grant, from, to),
                "{manifest}: {} must not permit",
                grant.metadata.name
            );
        }
        assert!(
            !permits(&grants, from, to),
            "{manifest}: all seven together must not permit"
        );
    }
}

#[test]
fn conformance_grants_match() {
    let cases = [
        (
            "tcproute-reference-grant.yaml",
            RefFrom {
                group: GROUP,
                kind: "TCPRoute",
                namespace: INFRA,
            },
            RefTo {
                group: "",
                kind: "Service",
                namespace: common::WEB,
                name: "tcp-reference-grant-backend",
            },
        ),
        (
            "httproute-reference-grant.yaml",
            RefFrom {
                group: GROUP,
                kind: "HTTPRoute",
                namespace: INFRA,
            },
            RefTo {
                group: "",
                kind: "Service",
                namespace: common::WEB,
                name: "web-backend",
            },
        ),
        (
            "gateway-secret-reference-grant-specific.yaml",
            RefFrom {
                group: GROUP,
                kind: "Gateway",
                namespace: INFRA,
            },
            RefTo {
                group: "",
                kind: "Secret",
                namespace: common::WEB,
                name: "certificate",
            },
        ),
        (
            "gateway-secret-reference-grant-all-in-namespace.yaml",
            RefFrom {
                group: GROUP,
                kind: "Gateway",
                namespace: INFRA,
            },
            RefTo {
                group: "",
                kind: "Secret",
                namespace: common::WEB,
                name: "anything",
            },
        ),
    ];
    for (manifest, from, to) in cases {
        assert!(permits(&grants(manifest), from, to), "{manifest}");
    }
}

fn grant(
    namespace: &str,
    from: (&str, &str, &str),
    to: (&str, &str, Option<&str>),
) -> ReferenceGrant {
    let yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata:\n  name: g\n  namespace: {namespace}\nspec:\n  from:\n  - group: {:?}\n    kind: {}\n    namespace: {}\n  to:\n  - group: {:?}\n    kind: {}\n{}",
        from.0,
        from.1,
        from.2,
        to.0,
        to.1,
        to.2.map(|n| format!("    name: {n}\n")).unwrap_or_default()
    );
    let mut loader = Loader::new();
    loader.add_text(Path::new("grant.yaml"), &yaml).unwrap();
    loader.finish().reference_grants.remove(0)
}

#[test]
fn reference_grant_table() {
    let from = RefFrom {
        group: GROUP,
        kind: "UDPRoute",
        namespace: "a",
    };
    let to = RefTo {
        group: "",
        kind: "Service",
        namespace: "b",
        name: "dns",
    };
    let table: &[(ReferenceGrant, bool, &str)] = &[
        (
            grant("b", (GROUP, "UDPRoute", "a"), ("", "Service", Some("dns"))),
            true,
            "exact",
        ),
        (
            grant("b", (GROUP, "UDPRoute", "a"), ("", "Service", None)),
            true,
            "every Service in b",
        ),
        (
            grant("a", (GROUP, "UDPRoute", "a"), ("", "Service", Some("dns"))),
            false,
            "grant in the route's namespace",
        ),
        (
            grant("c", (GROUP, "UDPRoute", "a"), ("", "Service", None)),
            false,
            "grant in a third namespace",
        ),
        (
            grant("b", (GROUP, "TCPRoute", "a"), ("", "Service", None)),
            false,
            "other route kind",
        ),
        (
            grant("b", ("", "UDPRoute", "a"), ("", "Service", None)),
            false,
            "core group for a route",
        ),
        (
            grant("b", (GROUP, "UDPRoute", "c"), ("", "Service", None)),
            false,
            "other source namespace",
        ),
        (
            grant("b", (GROUP, "UDPRoute", "a"), ("core", "Service", None)),
            false,
            "group spelled core",
        ),
        (
            grant("b", (GROUP, "UDPRoute", "a"), ("", "Secret", None)),
            false,
            "other target kind",
        ),
        (
            grant("b", (GROUP, "UDPRoute", "a"), ("", "Service", Some("dns2"))),
            false,
            "other target name",
        ),
        (
            grant("b", (GROUP, "udproute", "a"), ("", "Service", None)),
            false,
            "kinds are case-sensitive",
        ),
    ];
    for (grant, expected, what) in table {
        assert_eq!(grant_matches(grant, from, to), *expected, "{what}");
    }
    // Same-namespace references need no grant.
    let local = RefTo {
        namespace: "a",
        ..to
    };
    assert!(permits(&[], from, local));
    assert!(!permits(&[], from, to));
}
