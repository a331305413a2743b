//! Which of the gateway's programs an interface carries: TC (tcx) ingress programs and the XDP program, as the
//! kernel reports them — what tests of attaching, adopting and switching modes assert.
use anyhow::{Context, Result};

use crate::Netns;

/// How an XDP program is attached (`XDP_ATTACHED_*` in the kernel's netlink answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttached {
    /// In the driver (native).
    Driver,
    /// On the skb (generic).
    Skb,
    Other(u64),
}

/// The programs on one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachments {
    /// TC ingress programs (tcx).
    pub tc_ingress: usize,
    /// The XDP program's attachment, if any.
    pub xdp: Option<XdpAttached>,
}

/// The programs on `interface` in `ns`.
pub fn of(ns: &Netns, interface: &str) -> Result<Attachments> {
    let name = interface.to_string();
    let tc_ingress = ns
        .run(move || {
            aya::programs::SchedClassifier::query_tcx(&name, aya::programs::TcAttachType::Ingress)
                .map(|(_, programs)| programs.len())
        })
        .with_context(|| format!("querying tcx on {interface}"))?;
    let out = ns.ip(&["-j", "-d", "link", "show", "dev", interface])?;
    let json: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("ip -j link: {out}"))?;
    let xdp = json[0]
        .get("xdp")
        .and_then(|x| x["mode"].as_u64())
        .map(|m| match m {
            1 => XdpAttached::Driver,
            2 => XdpAttached::Skb,
            other => XdpAttached::Other(other),
        });
    Ok(Attachments { tc_ingress, xdp })
}
