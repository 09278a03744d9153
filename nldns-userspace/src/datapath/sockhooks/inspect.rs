//! Our socket hooks as the kernel reports them (BPF_PROG_QUERY, which aya 0.14 has no
//! API for on cgroups), and removing the legacy attachments that outlive their process.

use std::{collections::HashMap, os::fd::AsFd};

use aya::programs::{loaded_programs, ProgramInfo};
use nldns_common::program_names;
use nldns_sys::Target;

use super::{Cgroup, CgroupAttachment, Scope, HOOKS};

/// Our programs attached directly to `cgroup` (links and legacy attachments alike).
pub fn our_attachments(cgroup: &Cgroup) -> Vec<CgroupAttachment> {
    let names = program_names_by_id();
    let mut found = Vec::new();
    for hook in HOOKS {
        let Ok(ids) = nldns_sys::prog_query(Target::Fd(cgroup.fd()), hook.attach_type, 0) else {
            continue;
        };
        for id in ids {
            let Some(name) = names.get(&id) else { continue };
            if name.starts_with(program_names::PREFIX) {
                let scope = if name == hook.pod_program {
                    Scope::Pods
                } else {
                    Scope::Host
                };
                found.push(CgroupAttachment {
                    cgroup: cgroup.path.display().to_string(),
                    scope,
                    hook: hook.label,
                    program_id: id,
                    program_name: name.clone(),
                });
            }
        }
    }
    found
}

/// Removes legacy (BPF_PROG_ATTACH) attachments of ours from `cgroup`: unlike links they
/// outlive their process. The agent itself only creates links, which the kernel removes
/// when the agent dies and which PROG_DETACH cannot touch (ENOENT): a live agent's hooks
/// are never removed here.
pub fn cleanup(cgroup: &Cgroup) -> Vec<CgroupAttachment> {
    let programs: HashMap<u32, ProgramInfo> = loaded_programs()
        .filter_map(|p| p.ok())
        .map(|p| (p.id(), p))
        .collect();
    let mut removed = Vec::new();
    for attachment in our_attachments(cgroup) {
        let Some(hook) = HOOKS.iter().find(|h| h.label == attachment.hook) else {
            continue;
        };
        let Some(program) = programs.get(&attachment.program_id) else {
            continue;
        };
        let Ok(fd) = program.fd() else { continue };
        if nldns_sys::prog_detach(cgroup.fd(), fd.as_fd(), hook.attach_type).is_ok() {
            removed.push(attachment);
        }
    }
    removed
}

/// The names of all loaded programs, by id.
pub(super) fn program_names_by_id() -> HashMap<u32, String> {
    loaded_programs()
        .filter_map(|p| p.ok())
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
        .collect()
}
