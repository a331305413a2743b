//! ReferenceGrant: whether a cross-namespace reference is permitted.
//!
//! The grant must live in the target's namespace; one `from` entry must match the referrer's group, kind and
//! namespace exactly, and one `to` entry the target's group and kind (and name, when the entry has one).
use crate::model::ReferenceGrant;

/// The object holding the reference.
#[derive(Clone, Copy, Debug)]
pub struct RefFrom<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
}

/// The object referenced.
#[derive(Clone, Copy, Debug)]
pub struct RefTo<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Whether the reference is allowed: same-namespace references always are, cross-namespace ones need a grant.
pub fn permits(grants: &[ReferenceGrant], from: RefFrom<'_>, to: RefTo<'_>) -> bool {
    from.namespace == to.namespace || grants.iter().any(|grant| grant_matches(grant, from, to))
}

/// Whether this one grant allows the reference.
pub fn grant_matches(grant: &ReferenceGrant, from: RefFrom<'_>, to: RefTo<'_>) -> bool {
    grant.metadata.namespace() == to.namespace
        && grant
            .spec
            .from
            .iter()
            .any(|f| f.group == from.group && f.kind == from.kind && f.namespace == from.namespace)
        && grant.spec.to.iter().any(|t| {
            t.group == to.group
                && t.kind == to.kind
                && t.name.as_deref().is_none_or(|n| n == to.name)
        })
}
