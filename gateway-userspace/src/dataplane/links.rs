//! The programs' attachments to interfaces: a TC (tcx) ingress link on every interface, and on interfaces in XDP
//! mode an XDP link in front of it. Links are pinned in the versioned pin directory — TC at
//! `links/<interface>`, XDP at `xdp-links/native/<interface>` or `xdp-links/generic/<interface>` — so a restarted
//! agent adopts them by replacing the program inside (`BPF_LINK_UPDATE`): an interface is never without its
//! program and never has two.
use std::{
    path::{Path, PathBuf},
    str::FromStr,
};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
        SchedClassifier, TcAttachType, Xdp,
    },
    Ebpf,
};
use tracing::warn;

use super::{verifier_message, DataplaneError};

/// How the XDP program runs on an interface in XDP mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XdpMode {
    /// In the driver, before an skb exists (`XDP_FLAGS_DRV_MODE`): the fast one, where the driver supports it.
    Native,
    /// On the skb, for any driver (`XDP_FLAGS_SKB_MODE`).
    Generic,
}

impl XdpMode {
    pub const ALL: [XdpMode; 2] = [XdpMode::Native, XdpMode::Generic];

    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }

    /// The program of the object for this mode (see gateway-ebpf/src/main.rs).
    pub fn program(self) -> &'static str {
        match self {
            XdpMode::Native => "gateway_xdp",
            XdpMode::Generic => "gateway_xdp_generic",
        }
    }

    fn aya(self) -> aya::programs::XdpMode {
        match self {
            XdpMode::Native => aya::programs::XdpMode::Driver,
            XdpMode::Generic => aya::programs::XdpMode::Skb,
        }
    }
}

impl FromStr for XdpMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(XdpMode::Native),
            "generic" => Ok(XdpMode::Generic),
            other => Err(format!(
                "unknown XDP mode {other:?}: expected native or generic"
            )),
        }
    }
}

/// How a link came to be in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A pinned link of a previous agent, now running this agent's program.
    Adopted,
    /// A new link, pinned.
    New,
}

impl Attached {
    pub fn describe(self) -> &'static str {
        match self {
            Attached::Adopted => "adopted pinned link",
            Attached::New => "attached",
        }
    }
}

/// Where interfaces' links are pinned.
pub struct LinkPins {
    tc: PathBuf,
    xdp: PathBuf,
}

impl LinkPins {
    /// The link directories under `pin_dir` (the agent's versioned pin directory), created if missing.
    pub fn new(pin_dir: &Path) -> Result<Self, DataplaneError> {
        let pins = Self {
            tc: pin_dir.join("links"),
            xdp: pin_dir.join("xdp-links"),
        };
        for dir in std::iter::once(pins.tc.clone())
            .chain(XdpMode::ALL.into_iter().map(|m| pins.xdp.join(m.name())))
        {
            std::fs::create_dir_all(&dir)
                .map_err(|e| DataplaneError::Bpffs(format!("creating {}: {e}", dir.display())))?;
        }
        Ok(pins)
    }

    pub fn tc(&self, interface: &str) -> PathBuf {
        self.tc.join(interface)
    }

    pub fn xdp(&self, interface: &str, mode: XdpMode) -> PathBuf {
        self.xdp.join(mode.name()).join(interface)
    }

    /// XDP links pinned here (by this agent or a previous one): interface and mode.
    pub fn pinned_xdp(&self) -> Vec<(String, XdpMode)> {
        let mut out = Vec::new();
        for mode in XdpMode::ALL {
            let dir = self.xdp.join(mode.name());
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                out.push((entry.file_name().to_string_lossy().into_owned(), mode));
            }
        }
        out
    }
}

/// Puts the TC program `program` on `interface`'s ingress: adopts the link pinned at `pin`, or attaches and pins
/// a new one.
pub fn attach_tc(
    ebpf: &mut Ebpf,
    program: &str,
    pin: &Path,
    interface: &str,
) -> Result<Attached, DataplaneError> {
    let attach_err = |reason: String| DataplaneError::Attach {
        interface: interface.to_string(),
        reason,
    };
    let program: &mut SchedClassifier = ebpf
        .program_mut(program)
        .expect("checked at load")
        .try_into()
        .expect("checked at load");
    let adopted = PinnedLink::from_pin(pin).ok().and_then(|old| {
        let link: Result<SchedClassifierLink, _> = FdLink::from(old).try_into();
        match link
            .map_err(|e| e.to_string())
            .and_then(|l| program.attach_to_link(l).map_err(|e| e.to_string()))
        {
            Ok(id) => Some(id),
            Err(e) => {
                // The interface was re-created or the link is defunct: start afresh.
                warn!(interface, error = %e, "could not adopt the pinned TC link; attaching anew");
                let _ = std::fs::remove_file(pin);
                None
            }
        }
    });
    let (id, how) = match adopted {
        Some(id) => (id, Attached::Adopted),
        None => (
            program
                .attach(interface, TcAttachType::Ingress)
                .map_err(|e| attach_err(e.to_string()))?,
            Attached::New,
        ),
    };
    let link = program
        .take_link(id)
        .map_err(|e| attach_err(e.to_string()))?;
    let fd_link: FdLink = link
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| attach_err(e.to_string()))?;
    keep_pinned(fd_link, how, pin).map_err(attach_err)?;
    Ok(how)
}

/// Puts the XDP program of `mode` on `interface`: adopts the link pinned for that mode, or attaches and pins a
/// new one. A link pinned for the other mode must have been detached first (an interface takes one mode).
pub fn attach_xdp(
    ebpf: &mut Ebpf,
    pins: &LinkPins,
    interface: &str,
    mode: XdpMode,
) -> Result<Attached, DataplaneError> {
    let attach_err = |reason: String| DataplaneError::Attach {
        interface: interface.to_string(),
        reason,
    };
    let pin = pins.xdp(interface, mode);
    let program = xdp_program(ebpf, mode)?;
    let adopted = PinnedLink::from_pin(&pin).ok().and_then(|old| {
        let link: Result<XdpLink, _> = FdLink::from(old).try_into();
        match link
            .map_err(|e| e.to_string())
            .and_then(|l| program.attach_to_link(l).map_err(|e| e.to_string()))
        {
            Ok(id) => Some(id),
            Err(e) => {
                warn!(interface, error = %e, "could not adopt the pinned XDP link; attaching anew");
                let _ = std::fs::remove_file(&pin);
                None
            }
        }
    });
    let (id, how) = match adopted {
        Some(id) => (id, Attached::Adopted),
        None => (
            program.attach(interface, mode.aya()).map_err(|e| {
                attach_err(format!(
                    "XDP ({} mode): {e}{}",
                    mode.name(),
                    if mode == XdpMode::Native {
                        " (does the driver support native XDP? generic mode works on any)"
                    } else {
                        ""
                    }
                ))
            })?,
            Attached::New,
        ),
    };
    let link = program
        .take_link(id)
        .map_err(|e| attach_err(e.to_string()))?;
    let fd_link: FdLink = link
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| {
            attach_err(format!("XDP link is not a bpf_link (kernel < 5.9?): {e}"))
        })?;
    keep_pinned(fd_link, how, &pin).map_err(attach_err)?;
    Ok(how)
}

/// Removes `interface`'s XDP link of `mode`, if one is pinned: unpinned and closed, the kernel detaches it.
/// Returns whether there was one.
pub fn detach_xdp(pins: &LinkPins, interface: &str, mode: XdpMode) -> bool {
    let pin = pins.xdp(interface, mode);
    match PinnedLink::from_pin(&pin) {
        Ok(link) => {
            // Dropping the unpinned link closes the last reference: the program leaves the interface.
            if link.unpin().is_err() {
                let _ = std::fs::remove_file(&pin);
            }
            true
        }
        Err(_) => {
            // Not a live link (e.g. its interface is gone): only the file is left.
            std::fs::remove_file(&pin).is_ok()
        }
    }
}

/// The XDP program of `mode`, loaded (and verified) on first use.
pub fn xdp_program(ebpf: &mut Ebpf, mode: XdpMode) -> Result<&mut Xdp, DataplaneError> {
    let name = mode.program();
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| DataplaneError::Load(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(|e| DataplaneError::Load(format!("{name}: {e}")))?;
    if program.fd().is_err() {
        program
            .load()
            .map_err(|e| DataplaneError::Load(verifier_message(name, &e)))?;
    }
    Ok(program)
}

/// A new link is pinned at `pin`; an adopted one already is, and dropping our handle leaves the pin holding it.
fn keep_pinned(link: FdLink, how: Attached, pin: &Path) -> Result<(), String> {
    if how == Attached::New {
        link.pin(pin)
            .map_err(|e| format!("pinning link at {}: {e}", pin.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_name_their_pins() {
        assert_eq!("native".parse::<XdpMode>(), Ok(XdpMode::Native));
        assert_eq!("generic".parse::<XdpMode>(), Ok(XdpMode::Generic));
        assert!("driver".parse::<XdpMode>().is_err());
        let pins = LinkPins {
            tc: PathBuf::from("/sys/fs/bpf/x/links"),
            xdp: PathBuf::from("/sys/fs/bpf/x/xdp-links"),
        };
        assert_eq!(
            pins.xdp("eth0", XdpMode::Generic),
            PathBuf::from("/sys/fs/bpf/x/xdp-links/generic/eth0")
        );
        assert_eq!(pins.tc("eth0"), PathBuf::from("/sys/fs/bpf/x/links/eth0"));
    }
}
