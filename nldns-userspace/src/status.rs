//! `nldns status` and `nldns cleanup`: what nldns has in the kernel (TC attachments,
//! socket hooks, loaded datapaths and their counters), and removing what dead agents left
//! behind; `nldns datapath-log`: the datapath's log level at run time.

use anyhow::{Context, Result};

use crate::datapath::{
    inspect,
    sockhooks::{conflict::PodHookOrder, Scope},
};
use crate::shedding;

pub async fn print_status(
    json: bool,
    cgroup: Option<String>,
    pod_cgroup: Option<String>,
    agent: shedding::MetricsSource,
) -> Result<()> {
    let handle = rtnetlink_handle()?;
    let cgroups = inspect::cgroups_to_inspect(cgroup.as_deref());
    let pods = inspect::pod_cgroup_to_inspect(cgroup.as_deref(), pod_cgroup.as_deref());
    let status = inspect::status(&handle, &cgroups, pods.as_ref()).await?;
    let limits = shedding::read(&agent, std::time::Duration::from_secs(1));
    if json {
        let mut value = serde_json::to_value(&status)?;
        value["limits"] = serde_json::to_value(&limits)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    if status.attachments.is_empty() {
        println!("attachments: none (DNS goes to kube-dns through kube-proxy)");
    } else {
        println!("attachments:");
        println!(
            "  {:<16} {:<8} {:<8} {:>8}  program",
            "interface", "dir", "mode", "prog id"
        );
        for a in &status.attachments {
            println!(
                "  {:<16} {:<8} {:<8} {:>8}  {}",
                a.interface,
                format!("{:?}", a.direction).to_lowercase(),
                format!("{:?}", a.mode).to_lowercase(),
                a.program_id,
                a.program_name
            );
        }
    }
    if status.cgroup_attachments.is_empty() {
        println!("socket hooks: none (host-network DNS goes through kube-proxy)");
    } else {
        println!("socket hooks:");
        println!(
            "  {:<14} {:<5} {:>8}  {:<16} cgroup",
            "hook", "set", "prog id", "program"
        );
        for a in &status.cgroup_attachments {
            let set = match a.scope {
                Scope::Host => "host",
                Scope::Pods => "pods",
            };
            println!(
                "  {:<14} {set:<5} {:>8}  {:<16} {}",
                a.hook, a.program_id, a.program_name, a.cgroup
            );
        }
    }
    print_pod_hooks(status.pod_hooks.as_ref());
    for f in &status.socket_lb_conflicts {
        println!(
            "WARNING: {} program {} (id {}) runs for {}: likely {}; it rewrites ClusterIPs \
             in connect(): host-network processes outside the pods' cgroup may reach \
             kube-dns pods without the cache",
            f.hook, f.program_name, f.program_id, f.cgroup, f.dataplane
        );
    }
    if status.instances.is_empty() {
        println!("datapath: not loaded");
    }
    for i in &status.instances {
        let ips: Vec<String> = i.service_ips.iter().map(|ip| ip.to_string()).collect();
        let age = i
            .heartbeat_age_ms
            .map(|a| format!("{a} ms"))
            .unwrap_or_else(|| "never / stopped".to_string());
        println!(
            "datapath (ingress prog {}): service IPs {} -> intercept port {}+, heartbeat {age} (max {} ms), {}",
            i.ingress_program_id.unwrap_or(0),
            ips.join(", "),
            i.intercept_base_port,
            i.heartbeat_max_age_ms,
            if i.intercepting {
                "INTERCEPTING"
            } else if !i.agent_socket_open {
                "fail-open, no agent socket: passing everything"
            } else {
                "fail-open: passing everything"
            }
        );
        let answers = &i.kernel_answers;
        if answers.mode == "off" {
            println!("  kernel answers: off (every cache hit answered by the agent)");
        } else {
            println!(
                "  kernel answers: on ({} redirect), {} of {} entries",
                answers.mode, answers.entries, answers.capacity
            );
        }
        for (name, value) in &i.counters {
            println!("  {name:<26} {value}");
        }
    }
    shedding::print(&limits);
    Ok(())
}

/// Where the pods' hooks are and whether a pod's ClusterIP reaches them first.
fn print_pod_hooks(order: Option<&PodHookOrder>) {
    let Some(order) = order else {
        println!("pods' socket hooks: no pods' cgroup (pods are intercepted by TC only)");
        return;
    };
    let verdict = if order.runs_first {
        "attached, run first"
    } else if order.attached {
        "attached, NOT first"
    } else {
        "not attached (pods are intercepted by TC only)"
    };
    println!("pods' socket hooks on {}: {verdict}", order.cgroup);
    for f in &order.after_ours {
        println!(
            "  before {} ({} on {}, likely {})",
            f.program_name, f.hook, f.cgroup, f.dataplane
        );
    }
    for problem in &order.problems {
        println!("WARNING: {problem}");
    }
}

pub async fn cleanup(all: bool, cgroup: Option<String>) -> Result<()> {
    let handle = rtnetlink_handle()?;
    let removed = inspect::cleanup(&handle, all).await?;
    // Links (what the agent creates) die with their process; only legacy attachments can
    // be left behind on a cgroup.
    let mut removed_hooks = Vec::new();
    for cgroup in inspect::cgroups_to_inspect(cgroup.as_deref()) {
        removed_hooks.extend(crate::datapath::sockhooks::inspect::cleanup(&cgroup));
    }
    if removed.is_empty() && removed_hooks.is_empty() {
        println!("nothing to remove");
    }
    for h in removed_hooks {
        println!(
            "removed {} hook {} from {}",
            h.hook, h.program_name, h.cgroup
        );
    }
    for a in removed {
        println!(
            "removed {} filter {} on {}",
            format!("{:?}", a.direction).to_lowercase(),
            a.program_name,
            a.interface
        );
    }
    Ok(())
}

pub async fn set_datapath_log(level: u8) -> Result<()> {
    let handle = rtnetlink_handle()?;
    let changed = inspect::set_log_level(&handle, level).await?;
    if changed == 0 {
        anyhow::bail!("no nldns datapath is loaded on this node");
    }
    println!("datapath log level set to {level} in {changed} instance(s)");
    Ok(())
}

fn rtnetlink_handle() -> Result<rtnetlink::Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(connection);
    Ok(handle)
}
