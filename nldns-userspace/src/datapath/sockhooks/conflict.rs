//! Other dataplanes' socket-layer load balancers: a program on connect() that rewrites a
//! ClusterIP to a backend before any nldns hook or TC program sees the ClusterIP.

use nldns_common::program_names;
use nldns_sys::{AttachType, Target, BPF_F_QUERY_EFFECTIVE};
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
