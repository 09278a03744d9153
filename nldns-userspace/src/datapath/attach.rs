//! Attaching the programs to interfaces, with TCX where the kernel has it (>= 6.6) and
//! legacy netlink filters below.
//!
//! TCX links are owned by the agent's process: kill -9 and the kernel drops them, so
//! nothing can outlive the agent. Netlink filters outlive it; the heartbeat guard makes
//! them pass-through, and start-up / `nldns cleanup` remove them (see `inspect`).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use aya::{
    programs::{
        tc::{self, NlOptions, SchedClassifier, SchedClassifierLinkId, TcAttachOptions},
        LinkOrder, TcAttachType,
    },
    util::KernelVersion,
};
use nldns_common::program_names;
use serde::Serialize;

use super::loader::Datapath;

/// Priority of nldns's netlink filters: early, so the redirect runs before a CNI's own
/// filters (lower number = earlier).
pub const NETLINK_PRIORITY: u16 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX if the kernel has it (6.6 or later), netlink filters otherwise.
    Auto,
    Tcx,
    Netlink,
}

impl AttachMode {
    /// Turns `Auto` into what this kernel supports; an explicit TCX on an old kernel is
    /// an error the operator should see at start-up.
    pub fn resolve(self) -> Result<AttachMode> {
        let has_tcx = KernelVersion::current()
            .map(|v| v >= KernelVersion::new(6, 6, 0))
            .unwrap_or(false);
        match self {
            AttachMode::Auto if has_tcx => Ok(AttachMode::Tcx),
            AttachMode::Auto => Ok(AttachMode::Netlink),
            AttachMode::Tcx if !has_tcx => bail!("--attach-mode tcx needs kernel 6.6 or later"),
            other => Ok(other),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn tc_type(self) -> TcAttachType {
        match self {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }

    /// The program of `datapath` attached in this direction (ingress: the answering one
    /// with kernel answers on).
    pub fn program(self, datapath: &Datapath) -> &'static str {
        match self {
            Direction::Ingress => datapath.ingress_program(),
            Direction::Egress => program_names::EGRESS,
        }
    }

    fn program_mut(self, datapath: &mut Datapath) -> Result<&mut SchedClassifier> {
        let name = self.program(datapath);
        datapath.program_mut(name)
    }
}

/// The links this agent holds, per interface.
pub struct Attachments {
    mode: AttachMode,
    links: BTreeMap<String, Vec<(Direction, SchedClassifierLinkId)>>,
}

impl Attachments {
    pub fn new(mode: AttachMode) -> Self {
        debug_assert!(mode != AttachMode::Auto, "resolve the mode first");
        Attachments {
            mode,
            links: BTreeMap::new(),
        }
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    pub fn interfaces(&self) -> impl Iterator<Item = &str> {
        self.links.keys().map(String::as_str)
    }

    pub fn is_attached(&self, interface: &str) -> bool {
        self.links.contains_key(interface)
    }

    /// Attaches both programs to `interface`; all or nothing.
    pub fn attach(&mut self, datapath: &mut Datapath, interface: &str) -> Result<()> {
        if self.is_attached(interface) {
            return Ok(());
        }
        if self.mode == AttachMode::Netlink {
            match tc::qdisc_add_clsact(interface) {
                Ok(()) => {}
                Err(tc::TcError::AlreadyAttached) => {}
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e).with_context(|| format!("adding clsact to {interface}")),
            }
        }
        let mut done = Vec::new();
        // Egress first: alone it rewrites nothing (no reply comes from the intercept
        // endpoint before ingress redirects a query), while ingress alone would redirect
        // queries whose replies then reach the pod unrewritten and are dropped by its
        // connected socket: a lost query at every start.
        for direction in [Direction::Egress, Direction::Ingress] {
            let options = match self.mode {
                // First in the chain: ahead of a CNI's programs, and ahead of an older
                // nldns during an upgrade handover, so the newest agent answers.
                AttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::first()),
                _ => TcAttachOptions::Netlink(NlOptions {
                    priority: NETLINK_PRIORITY,
                    ..Default::default()
                }),
            };
            let program = direction.program_mut(datapath)?;
            match program.attach_with_options(interface, direction.tc_type(), options) {
                Ok(id) => done.push((direction, id)),
                Err(err) => {
                    for (direction, id) in done {
                        let _ = direction.program_mut(datapath)?.detach(id);
                    }
                    return Err(err).with_context(|| {
                        format!(
                            "attaching {} to {interface} ({:?})",
                            direction.program(datapath),
                            self.mode
                        )
                    });
                }
            }
        }
        self.links.insert(interface.to_string(), done);
        Ok(())
    }

    /// Forgets an interface that went away (the kernel already dropped its links) or
    /// detaches from one that no longer matches.
    pub fn detach(&mut self, datapath: &mut Datapath, interface: &str) {
        if let Some(links) = self.links.remove(interface) {
            for (direction, id) in links {
                if let Ok(program) = direction.program_mut(datapath) {
                    // Fails harmlessly when the interface is already gone.
                    let _ = program.detach(id);
                }
            }
        }
    }

    /// Detaches one direction everywhere. Shutdown detaches ingress first (new queries
    /// fall back to kube-dns at once), drains, then egress (replies to queries already
    /// taken still get their Service IP source).
    pub fn detach_direction(&mut self, datapath: &mut Datapath, direction: Direction) {
        for links in self.links.values_mut() {
            let (leaving, staying): (Vec<_>, Vec<_>) = std::mem::take(links)
                .into_iter()
                .partition(|(d, _)| *d == direction);
            *links = staying;
            for (d, id) in leaving {
                if let Ok(program) = d.program_mut(datapath) {
                    let _ = program.detach(id);
                }
            }
        }
        self.links.retain(|_, links| !links.is_empty());
    }
}
