//! Other dataplanes' socket-layer load balancers: a program on connect() that rewrites a
//! ClusterIP to a backend before any nldns hook or TC program sees the ClusterIP; and
//! whether the pods' hooks run before them ([`pod_hook_order`]).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use nldns_common::program_names;
use nldns_sys::{AttachType, Target, BPF_F_ALLOW_MULTI, BPF_F_QUERY_EFFECTIVE};
use serde::Serialize;

use super::{inspect::program_names_by_id, Cgroup, HOOKS};

/// A program of someone else that rewrites addresses in connect(): Cilium's kube-proxy
/// replacement and Calico's eBPF dataplane do, and then a host process's query leaves
/// connect() already aimed at a kube-dns pod, never at the ClusterIP.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ForeignSocketProgram {
    pub cgroup: String,
    pub hook: &'static str,
    pub program_id: u32,
    pub program_name: String,
    /// Who it most likely belongs to, from its name.
    pub dataplane: &'static str,
}

/// Programs of others that run on connect() for the processes of `cgroup` (its own and
/// those inherited from its ancestors, where a CNI attaches them: the hierarchy's root).
pub fn foreign_socket_programs(cgroup: &Cgroup) -> Vec<ForeignSocketProgram> {
    let names = program_names_by_id();
    let mut found = Vec::new();
    let connect_hooks = HOOKS.iter().filter(|h| {
        [
            AttachType::BPF_CGROUP_INET4_CONNECT,
            AttachType::BPF_CGROUP_INET6_CONNECT,
        ]
        .contains(&h.attach_type)
    });
    for hook in connect_hooks {
        let Ok(ids) = nldns_sys::prog_query(
            Target::Fd(cgroup.fd()),
            hook.attach_type,
            BPF_F_QUERY_EFFECTIVE,
        ) else {
            continue;
        };
        for id in ids {
            let name = names.get(&id).cloned().unwrap_or_default();
            if name.starts_with(program_names::PREFIX) {
                continue;
            }
            found.push(ForeignSocketProgram {
                cgroup: cgroup.path.display().to_string(),
                hook: hook.label,
                program_id: id,
                dataplane: dataplane_of(&name),
                program_name: name,
            });
        }
    }
    found
}

/// Where the pods' hooks stand against other programs on the hooks that pick a
/// destination (connect, sendmsg), for the processes of the pods' cgroup.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PodHookOrder {
    pub cgroup: String,
    /// Our pods' programs are on the pods' cgroup (this or another agent's).
    pub attached: bool,
    /// Attached, and no foreign program runs before them for any pod: a pod's ClusterIP
    /// reaches nldns first.
    pub runs_first: bool,
    /// Foreign programs on the pods' cgroup's ancestors that run after ours: the
    /// dataplane's own socket load balancer, which nldns is meant to precede.
    pub after_ours: Vec<ForeignSocketProgram>,
    /// What breaks the order, each with the reason.
    pub problems: Vec<OrderProblem>,
}

/// A foreign program that runs before the pods' hooks, or that they would replace.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct OrderProblem {
    pub program: ForeignSocketProgram,
    pub reason: &'static str,
}

impl std::fmt::Display for OrderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.program;
        write!(
            f,
            "{} program {} (id {}, likely {}) on {} is {}",
            p.hook, p.program_name, p.program_id, p.dataplane, p.cgroup, self.reason
        )
    }
}

/// Reason: an ancestor's program attached without BPF_F_ALLOW_MULTI.
pub const OVERRIDABLE_ANCESTOR: &str = "attached on an ancestor without BPF_F_ALLOW_MULTI: \
     a program on the pods' cgroup would replace it for every pod, so the pods' hooks are \
     not attached";
/// Reason: on the pods' cgroup, attached before ours.
pub const SAME_CGROUP_EARLIER: &str =
    "on the pods' cgroup, attached before nldns's hooks: it runs first";
/// Reason: on a cgroup below the pods' cgroup.
pub const BELOW_PODS: &str = "on a cgroup below the pods' cgroup: it runs first for the pods there";

/// How many cgroups below the pods' cgroup [`pod_hook_order`] looks at, at most (a node
/// has one per pod and one per container: a few hundred).
const MAX_CGROUPS_SCANNED: usize = 5000;

/// Programs on `pods`'s ancestors (up to and including `hierarchy_root`) that ours on
/// `pods` would replace instead of precede: the kernel runs an ancestor's programs after a
/// descendant's only when the ancestor attached them with BPF_F_ALLOW_MULTI (links
/// always are); with BPF_F_ALLOW_OVERRIDE a descendant's program takes their place, and
/// with no flag the kernel refuses the descendant's. Attaching there would switch the
/// dataplane's socket load balancing off for every pod, so the agent does not.
pub fn overridable_ancestors(pods: &Path, hierarchy_root: &Path) -> Vec<OrderProblem> {
    let names = program_names_by_id();
    let mut found = Vec::new();
    let mut dir = pods.parent();
    while let Some(path) = dir {
        if !path.starts_with(hierarchy_root) {
            break;
        }
        if let Ok(cgroup) = Cgroup::open(path) {
            for hook in HOOKS {
                let Ok((flags, ids)) =
                    nldns_sys::prog_query_with_flags(Target::Fd(cgroup.fd()), hook.attach_type, 0)
                else {
                    continue;
                };
                if ids.is_empty() || flags & BPF_F_ALLOW_MULTI != 0 {
                    continue;
                }
                for id in ids {
                    found.push(OrderProblem {
                        program: foreign(&cgroup.path, hook.label, id, &names),
                        reason: OVERRIDABLE_ANCESTOR,
                    });
                }
            }
        }
        if path == hierarchy_root {
            break;
        }
        dir = path.parent();
    }
    found
}

/// Whether the pods' hooks on `pods` run before every foreign connect()/sendmsg()
/// program that a pod's socket meets: those on the pods' cgroup itself (run in attach
/// order) and on any cgroup below it (run before ours), from the kernel's effective lists.
pub fn pod_hook_order(pods: &Cgroup, hierarchy_root: &Path) -> PodHookOrder {
    let names = program_names_by_id();
    let ours = |id: &u32| {
        names
            .get(id)
            .is_some_and(|n| HOOKS.iter().any(|h| h.pod_program == n))
    };
    let mut attached = false;
    let mut problems = overridable_ancestors(&pods.path, hierarchy_root);
    let mut after_ours = Vec::new();
    for hook in HOOKS.iter().filter(|h| h.picks_destination()) {
        let Ok(own) = nldns_sys::prog_query(Target::Fd(pods.fd()), hook.attach_type, 0) else {
            continue;
        };
        let Ok(effective) = nldns_sys::prog_query(
            Target::Fd(pods.fd()),
            hook.attach_type,
            BPF_F_QUERY_EFFECTIVE,
        ) else {
            continue;
        };
        let Some(first_ours) = effective.iter().position(ours) else {
            continue;
        };
        attached = true;
        for (position, id) in effective.iter().enumerate() {
            let name = names.get(id).map(String::as_str).unwrap_or("");
            if name.starts_with(program_names::PREFIX) {
                continue;
            }
            let on_pods = own.contains(id);
            let program = foreign(&pods.path, hook.label, *id, &names);
            if position < first_ours && on_pods {
                problems.push(OrderProblem {
                    program,
                    reason: SAME_CGROUP_EARLIER,
                });
            } else if position > first_ours {
                after_ours.push(program);
            }
        }
    }
    problems.extend(programs_below(pods, &names));
    PodHookOrder {
        cgroup: pods.path.display().to_string(),
        attached,
        runs_first: attached && problems.is_empty(),
        after_ours,
        problems,
    }
}

/// Foreign connect()/sendmsg() programs attached directly to a cgroup below `pods`.
fn programs_below(pods: &Cgroup, names: &HashMap<u32, String>) -> Vec<OrderProblem> {
    let mut found = Vec::new();
    let mut pending: Vec<PathBuf> = child_dirs(&pods.path);
    let mut scanned = 0;
    while let Some(path) = pending.pop() {
        scanned += 1;
        if scanned > MAX_CGROUPS_SCANNED {
            log::warn!(
                "more than {MAX_CGROUPS_SCANNED} cgroups under {}: the rest not checked",
                pods.path.display()
            );
            break;
        }
        let Ok(cgroup) = Cgroup::open(&path) else {
            continue;
        };
        for hook in HOOKS.iter().filter(|h| h.picks_destination()) {
            let Ok(ids) = nldns_sys::prog_query(Target::Fd(cgroup.fd()), hook.attach_type, 0)
            else {
                continue;
            };
            for id in ids {
                let name = names.get(&id).map(String::as_str).unwrap_or("");
                if !name.starts_with(program_names::PREFIX) {
                    found.push(OrderProblem {
                        program: foreign(&path, hook.label, id, names),
                        reason: BELOW_PODS,
                    });
                }
            }
        }
        pending.extend(child_dirs(&path));
    }
    found
}

fn child_dirs(path: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn foreign(
    cgroup: &Path,
    hook: &'static str,
    id: u32,
    names: &HashMap<u32, String>,
) -> ForeignSocketProgram {
    let name = names.get(&id).cloned().unwrap_or_default();
    ForeignSocketProgram {
        cgroup: cgroup.display().to_string(),
        hook,
        program_id: id,
        dataplane: dataplane_of(&name),
        program_name: name,
    }
}

/// A guess from the program names these projects use for their connect() hooks.
pub fn dataplane_of(program_name: &str) -> &'static str {
    if program_name.starts_with("cil_") {
        "cilium (kube-proxy replacement / socket LB)"
    } else if program_name.starts_with("calico") || program_name.starts_with("cali_") {
        "calico (eBPF dataplane)"
    } else {
        "unknown"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataplanes_are_named_by_their_program_names() {
        assert!(dataplane_of("cil_sock4_connect").starts_with("cilium"));
        assert!(dataplane_of("calico_connect_v4").starts_with("calico"));
        assert_eq!(dataplane_of("something"), "unknown");
    }
}
