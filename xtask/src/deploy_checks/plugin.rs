//! `kubectl nldns status` (deploy/kubectl-nldns) against the recording kubectl and its
//! canned answers in deploy/tests/status/, and a check that those canned
//! `nldns status --json` answers have the shape the agent prints: the fields of the
//! Rust structs it serializes and the datapath's counter names.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, ensure, Context as _, Result};
use serde_json::Value;

use super::Scenario;

pub(super) fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            script: "kubectl-nldns",
            name: "status: one table per node, exit 1 when one does not intercept",
            args: &["status"],
            env: &[],
            expect_success: false,
            verify: |run, _| {
                run.expect_order(&[
                    "-n kube-system get pods -l k8s-app=nldns -o json",
                    "exec nldns-aaaaa -c nldns -- /usr/local/bin/nldns status --json",
                    "get --raw /api/v1/namespaces/kube-system/pods/nldns-aaaaa:9353/proxy/metrics",
                    "exec nldns-bbbbb -c nldns",
                    // the metrics port comes from the pod's NLDNS_METRICS_ADDR
                    "pods/nldns-bbbbb:19353/proxy/metrics",
                    "exec nldns-ccccc -c nldns",
                    "exec nldns-ddddd -c nldns",
                ])?;
                // No exec into a pod that is not running, no metrics where exec failed.
                run.expect_none("nldns-eeeee")?;
                run.expect_none("pods/nldns-ccccc:")?;
                let tables = tables(&run.stdout);
                let nodes: Vec<&str> = tables.iter().map(|(t, _)| node_of(t)).collect();
                ensure!(
                    nodes == ["node-a", "node-b", "node-c", "node-d", "node-e"],
                    "one table per node, sorted by node: got {nodes:?}\n{}",
                    run.stdout
                );
                let a = &tables[0].1;
                expect_row(a, "mode", &["tcx"])?;
                expect_row(
                    a,
                    "attachments",
                    &["4 TC on 2 interfaces", "8 socket hooks"],
                )?;
                expect_row(
                    a,
                    "datapath",
                    &["INTERCEPTING", "10.96.0.10, fd00:10:96::a", "10053"],
                )?;
                expect_row(a, "heartbeat", &["12 ms (max 750 ms)"])?;
                expect_row(a, "pod hooks", &["run first", "before cil_sock4_connect"])?;
                expect_row(a, "hit ratio", &["90.0%", "900 hits", "100 misses"])?;
                expect_row(a, "fail-open", &["stale heartbeat: TC 0, socket 0"])?;
                expect_row(
                    a,
                    "kernel answers",
                    &[
                        "on (peer)",
                        "120 of 16384 entries",
                        "answered 700",
                        "agent 60",
                    ],
                )?;
                let b = &tables[1].1;
                ensure!(tables[1].0.contains("not Ready"), "node-b is not Ready");
                expect_row(b, "mode", &["netlink"])?;
                expect_row(b, "datapath", &["fail-open: heartbeat stale"])?;
                expect_row(b, "heartbeat", &["5400 ms", "STALE"])?;
                expect_row(b, "fail-open", &["TC 42"])?;
                expect_row(b, "hit ratio", &["n/a"])?;
                expect_row(b, "kernel answers", &["off"])?;
                expect_row(b, "WARNING", &["cil_sock4_connect", "Cilium"])?;
                let c = &tables[2].1;
                expect_row(c, "error", &["container not found"])?;
                let d = &tables[3].1;
                expect_row(d, "datapath #1", &["not attached", "prog 60"])?;
                expect_row(d, "heartbeat #1", &["never / stopped"])?;
                expect_row(d, "datapath #2", &["INTERCEPTING", "10085"])?;
                expect_row(d, "hit ratio", &["no queries yet"])?;
                let e = &tables[4].1;
                expect_row(e, "error", &["not running"])?;
                ensure!(
                    run.stdout
                        .contains("5 agents: 2 intercepting, 1 not intercepting, 2 unreachable"),
                    "no summary line:\n{}",
                    run.stdout
                );
                Ok(())
            },
        },
        Scenario {
            script: "kubectl-nldns",
            name: "status --node --no-metrics: that node alone, exit 0",
            args: &["status", "--node", "node-a", "--no-metrics"],
            env: &[],
            expect_success: true,
            verify: |run, _| {
                run.expect_order(&[
                    "get pods -l k8s-app=nldns -o json --field-selector spec.nodeName=node-a",
                    "exec nldns-aaaaa -c nldns",
                ])?;
                run.expect_none("get --raw")?;
                ensure!(run.calls.len() == 2, "calls: {:?}", run.calls);
                let tables = tables(&run.stdout);
                ensure!(tables.len() == 1, "one table expected:\n{}", run.stdout);
                expect_row(&tables[0].1, "hit ratio", &["n/a"])?;
                ensure!(
                    run.stdout.contains("1 agent: 1 intercepting"),
                    "{}",
                    run.stdout
                );
                Ok(())
            },
        },
        Scenario {
            script: "kubectl-nldns",
            name: "status --json, -n and -l passed through",
            args: &["status", "--json", "-n", "dns", "-l", "app=nldns"],
            env: &[],
            expect_success: false,
            verify: |run, _| {
                run.expect_order(&["-n dns get pods -l app=nldns -o json"])?;
                ensure!(
                    run.calls.iter().skip(1).all(
                        |c| c.starts_with("-n dns exec") || c.contains("/namespaces/dns/pods/")
                    ),
                    "every call must use namespace dns: {:?}",
                    run.calls
                );
                let report: Value =
                    serde_json::from_str(&run.stdout).context("--json printed no JSON")?;
                let entries = report.as_array().ok_or_else(|| anyhow!("not a list"))?;
                ensure!(entries.len() == 5, "5 entries expected");
                ensure!(
                    entries[0]["node"] == "node-a"
                        && entries[0]["intercepting"] == true
                        && entries[0]["cache_hits"] == 900.0
                        && entries[0]["status"]["instances"][0]["ingress_program_id"] == 41,
                    "node-a entry: {}",
                    entries[0]
                );
                ensure!(entries[1]["intercepting"] == false, "node-b intercepts?");
                ensure!(entries[2]["error"].is_string(), "node-c has no error");
                Ok(())
            },
        },
        Scenario {
            script: "kubectl-nldns",
            name: "status: no agent pods",
            args: &["status"],
            env: &[("FAKE_STATUS_DIR", "/nonexistent")],
            expect_success: false,
            verify: |run, _| {
                ensure!(run.calls.len() == 1, "calls: {:?}", run.calls);
                ensure!(
                    run.stderr
                        .contains("no nldns pods (k8s-app=nldns) in namespace kube-system"),
                    "no message about the missing pods: {}",
                    run.stderr
                );
                Ok(())
            },
        },
        Scenario {
            script: "kubectl-nldns",
            name: "unknown subcommand calls nothing",
            args: &["restart"],
            env: &[],
            expect_success: false,
            verify: |run, _| {
                ensure!(run.calls.is_empty(), "kubectl was called: {:?}", run.calls);
                ensure!(run.stderr.contains("status"), "usage should name `status`");
                Ok(())
            },
        },
    ]
}

/// The tables of the plugin's output: (title line, rows as (field, value)).
fn tables(out: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut tables: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in out.lines() {
        if line.starts_with("NODE ") {
            tables.push((line.to_string(), Vec::new()));
        } else if let (Some(rest), Some(t)) = (line.strip_prefix("  "), tables.last_mut()) {
            if rest.starts_with("FIELD") {
                continue;
            }
            // Fields are padded to the widest one and end at the first double space.
            if let Some((k, v)) = rest.split_once("  ") {
                t.1.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    tables
}

fn node_of(title: &str) -> &str {
    title.split_whitespace().nth(1).unwrap_or("")
}

fn expect_row(rows: &[(String, String)], field: &str, want: &[&str]) -> Result<()> {
    let (_, v) = rows
        .iter()
        .find(|(k, _)| k == field)
        .ok_or_else(|| anyhow!("no row {field:?} in {rows:?}"))?;
    for w in want {
        ensure!(v.contains(w), "row {field:?} is {v:?}, lacks {w:?}");
    }
    Ok(())
}

/// Field names of `pub struct NAME` in the .rs files under `dir`, and which of them are
/// optional in the JSON (`skip_serializing_if`).
fn struct_fields(dir: &Path, name: &str) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let mut files = Vec::new();
    rust_files(dir, &mut files)?;
    let head = format!("pub struct {name} {{");
    for f in files {
        let text = fs::read_to_string(&f)?;
        let Some(start) = text.find(&head) else {
            continue;
        };
        let body = &text[start + head.len()..];
        let body = &body[..body.find("\n}").unwrap_or(body.len())];
        let (mut all, mut optional) = (BTreeSet::new(), BTreeSet::new());
        let mut skip_next = false;
        for line in body.lines().map(str::trim) {
            if line.contains("skip_serializing_if") {
                skip_next = true;
            }
            if let Some(field) = line
                .strip_prefix("pub ")
                .and_then(|l| l.split_once(':'))
                .map(|(n, _)| n.trim().to_string())
            {
                if skip_next {
                    optional.insert(field.clone());
                    skip_next = false;
                }
                all.insert(field);
            }
        }
        ensure!(
            !all.is_empty(),
            "{}: struct {name} has no pub fields",
            f.display()
        );
        return Ok((all, optional));
    }
    Err(anyhow!("no `pub struct {name}` under {}", dir.display()))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            rust_files(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    Ok(())
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn expect_shape(
    what: &str,
    v: &Value,
    fields: &(BTreeSet<String>, BTreeSet<String>),
) -> Result<()> {
    let (all, optional) = fields;
    let have = keys(v);
    let required: BTreeSet<String> = all.difference(optional).cloned().collect();
    ensure!(
        have.is_subset(all) && required.is_subset(&have),
        "{what} has fields {have:?}; the agent prints {required:?} (and optionally {optional:?})"
    );
    Ok(())
}

pub(super) fn fixtures_match_the_agent(root: &Path) -> Result<()> {
    // The structs live in the agent crate; search all of it (files move around).
    let src = root.join("nldns-userspace/src");
    let status = struct_fields(&src, "Status")?;
    let instance = struct_fields(&src, "Instance")?;
    let attachment = struct_fields(&src, "Attachment")?;
    let cgroup = struct_fields(&src, "CgroupAttachment")?;
    let conflict = struct_fields(&src, "ForeignSocketProgram")?;
    let pod_hooks = struct_fields(&src, "PodHookOrder")?;
    let stats = fs::read_to_string(root.join("nldns-common/src/stats.rs"))?;
    let counters: BTreeSet<String> = stats
        .lines()
        .filter_map(|l| l.split_once("=> \""))
        .filter_map(|(_, r)| r.split_once('"').map(|(n, _)| n.to_string()))
        .collect();
    ensure!(
        counters.len() >= 12,
        "nldns-common/src/stats.rs: found only {counters:?}"
    );
    let dir = root.join("deploy/tests/status");
    let mut n = 0;
    for e in fs::read_dir(&dir)? {
        let p = e?.path();
        let name = p.file_name().and_then(|f| f.to_str()).unwrap_or("");
        if !name.ends_with(".json") || name == "pods.json" {
            continue;
        }
        n += 1;
        let v: Value = serde_json::from_str(&fs::read_to_string(&p)?)
            .with_context(|| format!("{} is not JSON", p.display()))?;
        expect_shape(name, &v, &status)?;
        for (list, shape) in [
            ("attachments", &attachment),
            ("cgroup_attachments", &cgroup),
            ("socket_lb_conflicts", &conflict),
            ("instances", &instance),
        ] {
            for item in v[list].as_array().into_iter().flatten() {
                expect_shape(&format!("{name} {list}[]"), item, shape)?;
            }
        }
        if !v["pod_hooks"].is_null() {
            expect_shape(&format!("{name} pod_hooks"), &v["pod_hooks"], &pod_hooks)?;
            for item in v["pod_hooks"]["after_ours"]
                .as_array()
                .into_iter()
                .flatten()
            {
                expect_shape(&format!("{name} pod_hooks.after_ours[]"), item, &conflict)?;
            }
        }
        for i in v["instances"].as_array().into_iter().flatten() {
            ensure!(
                keys(&i["counters"]) == counters,
                "{name}: instance counters {:?} are not the datapath's {counters:?}",
                keys(&i["counters"])
            );
        }
    }
    ensure!(
        n >= 3,
        "{}: expected at least 3 status fixtures",
        dir.display()
    );
    Ok(())
}
