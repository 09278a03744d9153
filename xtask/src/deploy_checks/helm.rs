//! The Helm chart (deploy/helm/nldns), checked with Helm's own engine: the
//! helm-python-sdk wheel, Helm v4's Go SDK as a shared library, driven by
//! deploy/tests/helm.py from the venv. No cluster, no helm binary.
//!
//! - `helm lint --strict` with the default and the non-default values, for the oldest
//!   and newest Kubernetes versions the schemas cover;
//! - every rendering (default, non-default with a ServiceMonitor, non-default with a
//!   PodMonitor) passes kubernetes-validate --strict for those versions, and its
//!   prometheus-operator objects pass the validators generated from the operator's API
//!   types (deploy/tests/crd-validate.mjs; a bad relabeling must fail them);
//! - the default rendering IS the kustomize base: same objects, field for field, once
//!   the labels Helm adds are taken off (the comparison fails on any drift);
//! - the non-default values land where they should (image, env, capabilities, policy
//!   fields, the monitor objects, the dashboard ConfigMap);
//! - the PrometheusRule: the expected alerts, metric names only from
//!   templates/_metrics.tpl and all documented in docs/operations.md, `promtool check
//!   rules`, and `promtool test rules` (deploy/tests/alerts.test.yaml: each alert fires
//!   on a broken node and not on a healthy one);
//! - values.schema.json and the chart's own checks refuse bad values with a message that
//!   names the key;
//! - the chart's README names every key of values.yaml.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use serde_json::{json, Value};

use super::{
    apt_install, caps, checked, container, env_value, find, tail, works, Checks, Scenario, Tools,
    RUN_FLAGS, SCHEMA_VERSIONS,
};

/// Labels the chart adds to every object besides the base's (templates/_helpers.tpl
/// "nldns.chartLabels"); the comparison with the base takes off exactly these.
const CHART_LABELS: &[&str] = &[
    "helm.sh/chart",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
];

/// Validators generated from prometheus-operator's API types, for the ServiceMonitor,
/// PodMonitor and PrometheusRule (kubernetes-validate has no schemas for them). Pinned.
/// npm warns that its dependencies want node >= 22; the validators are plain
/// JavaScript and run on node 20 (the chart's objects pass, a bad relabeling action
/// fails: both checked below).
const PROMETHEUS_OPERATOR_MODELS: (&str, &str) =
    ("@kubernetes-models/prometheus-operator", "6.0.0");

const ALERTS: &[&str] = &[
    "NldnsAgentDown",
    "NldnsDaemonSetUnavailable",
    "NldnsInterceptionInactive",
    "NldnsFailOpenPasses",
    "NldnsServfailRatio",
    "NldnsLatencyP99",
    "NldnsUpstreamErrors",
];

fn non_default_values(monitor_kind: &str) -> Value {
    json!({
        "image": {"repository": "registry.example:5000/nldns", "tag": "v0.2.0", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "config": {
            "dnsDomain": "cluster.example.",
            "dnsServer": "10.96.0.10,fd00:10:96::a",
            "clusterUpstream": "10.96.0.11,[fd00:10:96::b]:53",
            "stubDomains": {"acme.local": ["1.2.3.4"]},
            "upstreamNameservers": ["8.8.8.8"],
            "cache": {"maxEntries": 300000, "maxTtl": 300},
            "forceTcpZones": ["cluster.example"],
            "prefetch": {"enabled": true, "amount": 3, "percentage": "20%"},
            "serveStale": {"enabled": true, "duration": "30m"},
            "healthPort": 19354,
            "metricsPort": 19353,
            "logLevel": "debug",
            "logFormat": "json",
            "podCgroup": "none"
        },
        "extraEnv": [{"name": "NLDNS_INTERFACES", "value": "cali*"}],
        "legacyKernel": true,
        "upstreamService": {"ipFamilyPolicy": "PreferDualStack"},
        "daemonsetLabels": {"tier": "node"},
        "podAnnotations": {"example.com/team": "dns"},
        "podLabels": {"team": "dns"},
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "10%"}},
        "priorityClassName": "nldns-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "example.com/no-nldns", "operator": "DoesNotExist"}]}]}}},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "dns", "effect": "NoSchedule"}],
        "resources": {"requests": {"cpu": "50m", "memory": "80Mi"}, "limits": {"memory": "256Mi"}},
        "serviceMonitor": {"enabled": true, "kind": monitor_kind, "interval": "15s",
                           "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": true, "labels": {"release": "kube-prometheus-stack"}},
        "dashboard": {"enabled": true, "namespace": "monitoring"}
    })
}

/// Values that must be refused, and what the message must say.
struct Bad {
    what: &'static str,
    values: Value,
    namespace: &'static str,
    message: &'static [&'static str],
}

fn bad_values() -> Vec<Bad> {
    vec![
        Bad {
            what: "a typo at the top level",
            values: json!({"imagee": {"tag": "v1"}}),
            namespace: "kube-system",
            message: &["additional properties 'imagee' not allowed"],
        },
        Bad {
            what: "a typo in config.cache",
            values: json!({"config": {"cache": {"maxEntrie": 5}}}),
            namespace: "kube-system",
            message: &["/config/cache", "'maxEntrie'"],
        },
        Bad {
            what: "a number as image tag",
            values: json!({"image": {"tag": 5}}),
            namespace: "kube-system",
            message: &["/image/tag", "want string"],
        },
        Bad {
            what: "a port out of range",
            values: json!({"config": {"metricsPort": 70000}}),
            namespace: "kube-system",
            message: &["/config/metricsPort", "65,535"],
        },
        Bad {
            what: "a Service name instead of ClusterIPs",
            values: json!({"config": {"dnsServer": "kube-dns.kube-system"}}),
            namespace: "kube-system",
            message: &["/config/dnsServer", "does not match pattern"],
        },
        Bad {
            what: "an update strategy DaemonSets do not have",
            values: json!({"updateStrategy": {"type": "Recreate"}}),
            namespace: "kube-system",
            message: &["/updateStrategy/type", "RollingUpdate"],
        },
        Bad {
            what: "an alert `for` that is no duration",
            values: json!({"prometheusRule": {"alerts": {"agentDown": {"for": "five minutes"}}}}),
            namespace: "kube-system",
            message: &["/prometheusRule/alerts/agentDown/for"],
        },
        Bad {
            what: "an unknown monitor kind",
            values: json!({"serviceMonitor": {"enabled": true, "kind": "ProbeMonitor"}}),
            namespace: "kube-system",
            message: &["/serviceMonitor/kind", "PodMonitor"],
        },
        Bad {
            what: "a prefetch percentage the agent refuses",
            values: json!({"config": {"prefetch": {"percentage": "0%"}}}),
            namespace: "kube-system",
            message: &["/config/prefetch/percentage", "does not match pattern"],
        },
        Bad {
            what: "a serve-stale duration in days",
            values: json!({"config": {"serveStale": {"duration": "2d"}}}),
            namespace: "kube-system",
            message: &["/config/serveStale/duration", "does not match pattern"],
        },
        Bad {
            what: "a serve-stale duration above the agent's limit",
            values: json!({"config": {"serveStale": {"duration": "200h"}}}),
            namespace: "kube-system",
            message: &["config.serveStale.duration", "168h"],
        },
        Bad {
            what: "a cache TTL out of range",
            values: json!({"config": {"cache": {"maxTtl": 0}}}),
            namespace: "kube-system",
            message: &["/config/cache/maxTtl"],
        },
        Bad {
            what: "a namespace other than kube-system",
            values: json!({}),
            namespace: "dns",
            message: &["must be installed into kube-system", "\"dns\""],
        },
        Bad {
            what: "alerts without a monitor and without a selector",
            values: json!({"prometheusRule": {"enabled": true}}),
            namespace: "kube-system",
            message: &["prometheusRule.selector"],
        },
        Bad {
            what: "an existing ServiceAccount without a name",
            values: json!({"serviceAccount": {"create": false, "name": ""}}),
            namespace: "kube-system",
            message: &["serviceAccount.name"],
        },
    ]
}

struct Helm<'a> {
    root: &'a Path,
    work: PathBuf,
    tools: &'a Tools,
}

impl Helm<'_> {
    fn chart(&self) -> PathBuf {
        self.root.join("deploy/helm/nldns")
    }

    fn script(&self) -> Command {
        let mut c = Command::new(&self.tools.python);
        c.arg(self.root.join("deploy/tests/helm.py"));
        c
    }

    /// Renders with `values` into work/NAME.yaml; Err carries Helm's message.
    fn render(&self, name: &str, values: &Value, namespace: &str) -> Result<PathBuf> {
        let out = self.work.join(format!("{name}.yaml"));
        checked(
            self.script()
                .arg("render")
                .arg(self.chart())
                .arg(values.to_string())
                .arg(&out)
                .arg(namespace),
        )?;
        Ok(out)
    }

    fn render_and_validate(&self, name: &str, values: &Value) -> Result<Vec<Value>> {
        let out = self.render(name, values, "kube-system")?;
        self.tools.validate(&out)?;
        let docs = self.tools.to_json(&out)?;
        ensure!(!docs.is_empty(), "{name}: the chart rendered nothing");
        let operator = docs
            .iter()
            .filter(|d| d["apiVersion"] == "monitoring.coreos.com/v1")
            .count();
        if operator > 0 {
            let report = self
                .validate_operator_objects(&docs)
                .with_context(|| format!("{name}: prometheus-operator objects"))?;
            ensure!(
                report.starts_with(&format!("{operator} prometheus-operator objects valid")),
                "{name}: {operator} objects rendered, the validator says {report:?}"
            );
        }
        for d in &docs {
            ensure!(
                d["metadata"]["namespace"].is_string(),
                "{name}: {} {} has no namespace",
                d["kind"],
                d["metadata"]["name"]
            );
        }
        Ok(docs)
    }

    /// deploy/tests/crd-validate.mjs on `docs`, with the models npm-installed into
    /// <root>/target/node when missing. Ok(its summary line) when all are valid.
    fn validate_operator_objects(&self, docs: &[Value]) -> Result<String> {
        let dir = self.root.join("target/node");
        let (package, version) = PROMETHEUS_OPERATOR_MODELS;
        let installed =
            fs::read_to_string(dir.join("node_modules").join(package).join("package.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|p| p["version"] == version);
        if !installed {
            if !works("npm", &["--version"]) {
                apt_install("npm")?;
            }
            fs::create_dir_all(&dir)?;
            eprintln!(
                "deploy-checks: npm install {package}@{version} into {}",
                dir.display()
            );
            checked(
                Command::new("npm")
                    .args([
                        "install",
                        "--no-audit",
                        "--no-fund",
                        "--loglevel=error",
                        "--prefix",
                    ])
                    .arg(&dir)
                    .arg(format!("{package}@{version}")),
            )?;
        }
        let script = dir.join("crd-validate.mjs");
        fs::copy(self.root.join("deploy/tests/crd-validate.mjs"), &script)?;
        let input = dir.join("input.json");
        fs::write(&input, serde_json::to_string(docs)?)?;
        let out = checked(
            Command::new("node")
                .arg(&script)
                .stdin(fs::File::open(&input)?),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn lint(&self, values: &Value) -> Result<()> {
        // The same Kubernetes versions as the schema validation, in helm's `vX.Y.Z` form.
        for v in SCHEMA_VERSIONS.iter().map(|v| format!("v{v}")) {
            checked(
                self.script()
                    .arg("lint")
                    .arg(self.chart())
                    .arg(values.to_string())
                    .arg(&v),
            )
            .with_context(|| format!("helm lint --strict (Kubernetes {v})"))?;
        }
        Ok(())
    }
}

pub(super) fn register(root: &Path, work: &Path, tools: &Tools, checks: &mut Checks) {
    let helm = Helm {
        root,
        work: work.join("helm"),
        tools,
    };
    if let Err(e) = fs::create_dir_all(&helm.work) {
        checks.fail("helm chart", e.into());
        return;
    }
    checks.run(
        "helm chart: lint --strict (default and non-default values)",
        || {
            helm.lint(&json!({}))?;
            helm.lint(&non_default_values("ServiceMonitor"))
        },
    );
    checks.run(
        "helm chart: default values render the kustomize base",
        || {
            let chart = helm.render_and_validate("default", &json!({}))?;
            let base = tools.to_json(&work.join("base.yaml")).context(
                "the kustomize base rendering (work/base.yaml) is needed for the comparison",
            )?;
            same_objects(&chart, &base)
        },
    );
    checks.run("helm chart: non-default values, ServiceMonitor", || {
        let docs =
            helm.render_and_validate("servicemonitor", &non_default_values("ServiceMonitor"))?;
        non_default_policy(&docs)?;
        service_monitor(&docs)?;
        dashboard(root, &docs)
    });
    checks.run("helm chart: non-default values, PodMonitor", || {
        let docs = helm.render_and_validate("podmonitor", &non_default_values("PodMonitor"))?;
        non_default_policy(&docs)?;
        pod_monitor(&docs)
    });
    checks.run(
        "helm chart: PrometheusRule (names, promtool check + test)",
        || {
            let docs = helm.render_and_validate("rules", &non_default_values("ServiceMonitor"))?;
            let podmonitor =
                helm.render_and_validate("rules-podmonitor", &non_default_values("PodMonitor"))?;
            let rule = find(&podmonitor, "PrometheusRule", "nldns")?;
            ensure!(
                rule.to_string().contains(r#"job=\"kube-system/nldns\""#),
                "with a PodMonitor the alerts must select job=\"kube-system/nldns\""
            );
            alerts(root, &helm.work, find(&docs, "PrometheusRule", "nldns")?)
        },
    );
    checks.run(
        "helm chart: prometheus-operator validators refuse a bad monitor",
        || {
            let mut values = non_default_values("ServiceMonitor");
            values["serviceMonitor"]["relabelings"] =
                json!([{"action": "rename", "targetLabel": "node"}]);
            let out = helm.render("bad-relabeling", &values, "kube-system")?;
            let docs = tools.to_json(&out)?;
            match helm.validate_operator_objects(&docs) {
                Ok(report) => bail!("a relabeling with action \"rename\" passed: {report}"),
                Err(e) => ensure!(
                    format!("{e:#}").contains("relabelings/0/action"),
                    "the error does not name the relabeling's action: {e:#}"
                ),
            }
            Ok(())
        },
    );
    checks.run("helm chart: README.md documents every value", || {
        let values = tools.to_json(&root.join("deploy/helm/nldns/values.yaml"))?;
        let readme = fs::read_to_string(root.join("deploy/helm/nldns/README.md"))?;
        let mut missing = Vec::new();
        undocumented(
            "",
            values.first().unwrap_or(&Value::Null),
            &readme,
            &mut missing,
        );
        ensure!(
            missing.is_empty(),
            "deploy/helm/nldns/README.md does not name {missing:?} (as `key`)"
        );
        Ok(())
    });
    checks.run(
        "helm chart: values.schema.json and the chart refuse bad values",
        || {
            for (i, bad) in bad_values().iter().enumerate() {
                match helm.render(&format!("bad-{i}"), &bad.values, bad.namespace) {
                    Ok(_) => bail!("{} ({}) was accepted", bad.what, bad.values),
                    Err(e) => {
                        let msg = format!("{e:#}");
                        for want in bad.message {
                            ensure!(
                                msg.contains(want),
                                "{} ({}): the message does not say {want:?}: {}",
                                bad.what,
                                bad.values,
                                tail(&msg, 800)
                            );
                        }
                    }
                }
            }
            Ok(())
        },
    );
}

/// Value keys the README does not name: a key is documented when `path` appears in
/// backquotes, or when every key under it is.
fn undocumented(prefix: &str, v: &Value, readme: &str, missing: &mut Vec<String>) {
    let Some(map) = v.as_object() else { return };
    for (k, child) in map {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if readme.contains(&format!("`{path}`")) {
            continue;
        }
        match child.as_object() {
            Some(m) if !m.is_empty() => undocumented(&path, child, readme, missing),
            _ => missing.push(path),
        }
    }
}

/// The chart README's uninstall: `helm uninstall` (the DaemonSet is gone, its pods may
/// still be stopping, kube-dns-uncached kept), then `deploy/uninstall.sh --image`.
pub(super) fn scenarios() -> Vec<Scenario> {
    vec![Scenario {
        script: "uninstall.sh",
        name: "after helm uninstall (chart README): waits, cleans up with --image, Service last",
        args: &["--image", "registry.example/nldns:v0.1.0"],
        env: &[("FAKE_PODS_LINGER", "2")],
        expect_success: true,
        verify: |run, _| {
            run.expect_order(&[
                "delete daemonset nldns --ignore-not-found",
                "get pods -l k8s-app=nldns -o name",
                "get pods -l k8s-app=nldns -o name",
                "get pods -l k8s-app=nldns -o name",
                "apply -k",
                "rollout status daemonset/nldns-cleanup",
                "delete service kube-dns-uncached",
            ])?;
            run.expect_last("delete service kube-dns-uncached")?;
            // Without a DaemonSet to read it from, the image is the one given.
            run.expect_none("get daemonset nldns -o jsonpath")?;
            let k = run.file(1, "kustomization.yaml")?;
            ensure!(
                k.contains("newName: registry.example/nldns") && k.contains("\"v0.1.0\""),
                "cleanup does not use --image:\n{k}"
            );
            Ok(())
        },
    }]
}

/// `obj` with the chart's own labels and Helm's own annotations (`helm.sh/...`) taken
/// off its metadata. The pod template gets none of them: a difference there is drift.
fn without_chart_labels(mut obj: Value) -> Value {
    if let Some(map) = obj
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        for l in CHART_LABELS {
            map.remove(*l);
        }
    }
    if let Some(meta) = obj.pointer_mut("/metadata").and_then(Value::as_object_mut) {
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.retain(|k, _| !k.starts_with("helm.sh/"));
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    obj
}

fn key(d: &Value) -> String {
    format!(
        "{}/{}",
        d["kind"].as_str().unwrap_or("?"),
        d["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The chart's default rendering and the base: the same objects, equal field for field
/// after the chart's labels are taken off. Names the first differing path.
fn same_objects(chart: &[Value], base: &[Value]) -> Result<()> {
    let index = |docs: &[Value]| -> BTreeMap<String, Value> {
        docs.iter()
            .map(|d| (key(d), without_chart_labels(d.clone())))
            .collect()
    };
    let (chart, base) = (index(chart), index(base));
    let names = |m: &BTreeMap<String, Value>| m.keys().cloned().collect::<Vec<_>>();
    ensure!(
        names(&chart) == names(&base),
        "the chart renders {:?}, the base {:?}",
        names(&chart),
        names(&base)
    );
    for (k, b) in &base {
        if let Some(path) = first_difference(&chart[k], b, String::new()) {
            bail!("{k} differs from the kustomize base at {path}");
        }
    }
    Ok(())
}

/// The JSON pointer of the first place where `a` and `b` differ, with both values.
fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (va, vb) = (x.get(k), y.get(k));
                match (va, vb) {
                    (Some(va), Some(vb)) => first_difference(va, vb, format!("{at}/{k}")),
                    _ => Some(format!(
                        "{at}/{k} (chart: {}, base: {})",
                        va.map_or("absent".into(), Value::to_string),
                        vb.map_or("absent".into(), Value::to_string)
                    )),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (va, vb))| first_difference(va, vb, format!("{at}/{i}"))),
        _ if a == b => None,
        _ => Some(format!("{at} (chart: {a}, base: {b})")),
    }
}

fn non_default_policy(docs: &[Value]) -> Result<()> {
    let ds = find(docs, "DaemonSet", "nldns")?;
    let pod = &ds["spec"]["template"]["spec"];
    let c = container(ds, "nldns")?;
    ensure!(
        c["image"] == "registry.example:5000/nldns:v0.2.0" && c["imagePullPolicy"] == "Always",
        "image.* not applied: {} {}",
        c["image"],
        c["imagePullPolicy"]
    );
    ensure!(
        pod["imagePullSecrets"] == json!([{"name": "regcred"}]),
        "imagePullSecrets not applied"
    );
    for (name, want) in [
        ("NLDNS_SERVICE_IP", "10.96.0.10,fd00:10:96::a"),
        ("NLDNS_UPSTREAM", "10.96.0.11,[fd00:10:96::b]:53"),
        ("NLDNS_CLUSTER_DOMAIN", "cluster.example"),
        ("NLDNS_HEALTH_ADDR", "127.0.0.1:19354"),
        ("NLDNS_METRICS_ADDR", "0.0.0.0:19353"),
        ("NLDNS_INTERFACES", "cali*"),
        ("RUST_LOG", "debug"),
        ("NLDNS_LOG_FORMAT", "json"),
        ("NLDNS_POD_CGROUP", "none"),
    ] {
        ensure!(
            env_value(c, name) == Some(want),
            "env {name} is {:?}, expected {want:?}",
            env_value(c, name)
        );
    }
    for e in c["env"].as_array().into_iter().flatten() {
        if let Some(flag) = e["name"].as_str().and_then(|n| n.strip_prefix("NLDNS_")) {
            ensure!(
                RUN_FLAGS.contains(&flag),
                "env NLDNS_{flag} is not a flag of `nldns run`"
            );
        }
    }
    let added = caps(c);
    for want in ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE"] {
        ensure!(
            added.iter().any(|a| a == want),
            "legacyKernel: capability {want} missing (have {added:?})"
        );
    }
    let meta = &ds["spec"]["template"]["metadata"];
    ensure!(
        meta["annotations"] == json!({"example.com/team": "dns"}),
        "pod annotations must be podAnnotations alone (no prometheus.io/* with a monitor): {}",
        meta["annotations"]
    );
    ensure!(
        meta["labels"]["team"] == "dns" && meta["labels"]["k8s-app"] == "nldns",
        "podLabels not applied next to k8s-app: {}",
        meta["labels"]
    );
    ensure!(
        ds["spec"]["selector"] == json!({"matchLabels": {"k8s-app": "nldns"}}),
        "the selector must stay {{k8s-app: nldns}} (immutable; the base's)"
    );
    ensure!(
        ds["metadata"]["labels"]["tier"] == "node",
        "daemonsetLabels not applied"
    );
    for (field, want) in [
        ("priorityClassName", json!("nldns-critical")),
        ("nodeSelector", json!({"kubernetes.io/os": "linux"})),
        (
            "tolerations",
            json!([{"key": "dedicated", "operator": "Equal", "value": "dns", "effect": "NoSchedule"}]),
        ),
    ] {
        ensure!(
            pod[field] == want,
            "{field} is {}, expected {want}",
            pod[field]
        );
    }
    ensure!(
        pod["affinity"]["nodeAffinity"].is_object(),
        "affinity not applied"
    );
    ensure!(
        ds["spec"]["updateStrategy"]
            == json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "10%"}}),
        "updateStrategy not applied: {}",
        ds["spec"]["updateStrategy"]
    );
    ensure!(
        c["resources"]
            == json!({"requests": {"cpu": "50m", "memory": "80Mi"}, "limits": {"memory": "256Mi"}}),
        "resources not applied: {}",
        c["resources"]
    );
    let cm = find(docs, "ConfigMap", "nldns")?;
    let cfg: Value = serde_json::from_str(cm["data"]["config.json"].as_str().unwrap_or(""))
        .context("ConfigMap nldns: config.json is not JSON")?;
    ensure!(
        cfg == json!({"cache": {"maxEntries": 300000, "maxTtl": 300,
                                "prefetch": {"enabled": true, "minHits": 3, "percent": 20},
                                "serveStale": {"enabled": true, "maxSeconds": 1800}},
                      "forceTcpZones": ["cluster.example"],
                      "stubDomains": {"acme.local": ["1.2.3.4"]},
                      "upstreamNameservers": ["8.8.8.8"]}),
        "config.json is {cfg}"
    );
    let svc = find(docs, "Service", "kube-dns-uncached")?;
    ensure!(
        svc["spec"]["ipFamilyPolicy"] == "PreferDualStack",
        "upstreamService.ipFamilyPolicy not applied"
    );
    ensure!(
        svc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep",
        "kube-dns-uncached must outlive `helm uninstall` (deploy/uninstall.sh deletes it last)"
    );
    Ok(())
}

fn service_monitor(docs: &[Value]) -> Result<()> {
    let svc = find(docs, "Service", "nldns-metrics")?;
    ensure!(
        svc["spec"]["clusterIP"] == "None",
        "nldns-metrics must be headless"
    );
    ensure!(
        svc["spec"]["selector"] == json!({"k8s-app": "nldns"}),
        "nldns-metrics must select the agents"
    );
    let port = svc["spec"]["ports"]
        .as_array()
        .and_then(|p| p.first())
        .ok_or_else(|| anyhow!("nldns-metrics has no port"))?;
    ensure!(
        port["targetPort"] == 19353 && port["port"] == 19353,
        "nldns-metrics must target config.metricsPort (19353): {port}"
    );
    let sm = find(docs, "ServiceMonitor", "nldns")?;
    ensure!(
        sm["apiVersion"] == "monitoring.coreos.com/v1",
        "ServiceMonitor apiVersion"
    );
    ensure!(
        sm["metadata"]["labels"]["release"] == "kube-prometheus-stack",
        "serviceMonitor.labels not applied"
    );
    let selector = sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .ok_or_else(|| anyhow!("ServiceMonitor has no matchLabels"))?;
    for (k, v) in selector {
        ensure!(
            &svc["metadata"]["labels"][k] == v,
            "the ServiceMonitor selects {k}={v}, which nldns-metrics does not carry"
        );
    }
    ensure!(
        sm["spec"]["namespaceSelector"]["matchNames"] == json!(["kube-system"]),
        "the ServiceMonitor must look in kube-system"
    );
    let ep = &sm["spec"]["endpoints"][0];
    ensure!(
        ep["port"] == port["name"] && ep["path"] == "/metrics" && ep["interval"] == "15s",
        "ServiceMonitor endpoint {ep} does not match the Service port {port}"
    );
    ensure!(
        find(docs, "PodMonitor", "nldns").is_err(),
        "kind ServiceMonitor must not render a PodMonitor"
    );
    Ok(())
}

fn pod_monitor(docs: &[Value]) -> Result<()> {
    let pm = find(docs, "PodMonitor", "nldns")?;
    let ds = find(docs, "DaemonSet", "nldns")?;
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    let selector = pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .ok_or_else(|| anyhow!("PodMonitor has no matchLabels"))?;
    for (k, v) in selector {
        ensure!(
            &labels[k] == v,
            "the PodMonitor selects {k}={v}, which the agent pods do not carry"
        );
    }
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    ensure!(
        ep["portNumber"] == 19353 && ep.get("port").is_none(),
        "the PodMonitor must name the port by number (the pods declare none): {ep}"
    );
    ensure!(
        find(docs, "Service", "nldns-metrics").is_err()
            && find(docs, "ServiceMonitor", "nldns").is_err(),
        "kind PodMonitor must render neither nldns-metrics nor a ServiceMonitor"
    );
    Ok(())
}

fn dashboard(root: &Path, docs: &[Value]) -> Result<()> {
    let cm = find(docs, "ConfigMap", "nldns-dashboard")?;
    ensure!(
        cm["metadata"]["namespace"] == "monitoring",
        "dashboard.namespace not applied"
    );
    ensure!(
        cm["metadata"]["labels"]["grafana_dashboard"] == "1",
        "the dashboard ConfigMap must carry grafana_dashboard: \"1\" for the sidecar"
    );
    let shipped: Value = serde_json::from_str(cm["data"]["nldns.json"].as_str().unwrap_or(""))
        .context("the dashboard ConfigMap's nldns.json is not JSON")?;
    let doc: Value = serde_json::from_str(&fs::read_to_string(
        root.join("docs/grafana-dashboard.json"),
    )?)?;
    ensure!(
        shipped == doc,
        "the chart's dashboard is not docs/grafana-dashboard.json (files/grafana-dashboard.json must link to it)"
    );
    Ok(())
}

/// Metric names in a PromQL expression: identifiers with a metric prefix, and `up{`.
fn promql_metrics(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let mut end = i;
            while end < bytes.len() && ident(bytes[end]) {
                end += 1;
            }
            let word = &expr[i..end];
            let metric = ["nldns_", "coredns_", "kube_", "process_"]
                .iter()
                .any(|p| word.starts_with(p))
                || (word == "up" && expr[end..].trim_start().starts_with('{'));
            // Inside a label matcher or a string a word is not a metric.
            let in_braces = expr[..i].matches('{').count() > expr[..i].matches('}').count();
            let in_quotes = expr[..i].matches('"').count() % 2 == 1;
            if metric && !in_braces && !in_quotes {
                names.push(word.to_string());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// The metric names of templates/_metrics.tpl (its `key: value` lines).
fn metrics_map(root: &Path) -> Result<Vec<String>> {
    let path = root.join("deploy/helm/nldns/templates/_metrics.tpl");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let body = text
        .split(r#"{{- define "nldns.metrics" -}}"#)
        .nth(1)
        .and_then(|b| b.split("{{- end -}}").next())
        .ok_or_else(|| anyhow!("{}: no nldns.metrics definition", path.display()))?;
    let names: Vec<String> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        .collect();
    ensure!(!names.is_empty(), "{}: empty metric map", path.display());
    Ok(names)
}

fn alerts(root: &Path, work: &Path, rule: &Value) -> Result<()> {
    let groups = rule["spec"]["groups"]
        .as_array()
        .ok_or_else(|| anyhow!("PrometheusRule has no spec.groups"))?;
    let rules: Vec<&Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    let names: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    ensure!(names == ALERTS, "alerts are {names:?}, expected {ALERTS:?}");
    ensure!(
        rule["metadata"]["labels"]["release"] == "kube-prometheus-stack",
        "prometheusRule.labels not applied"
    );
    let map = metrics_map(root)?;
    let ops = fs::read_to_string(root.join("docs/operations.md"))?;
    for r in &rules {
        let expr = r["expr"].as_str().unwrap_or("");
        ensure!(
            r["labels"]["severity"].is_string() && r["for"].is_string(),
            "{}: needs for and labels.severity",
            r["alert"]
        );
        ensure!(
            r["annotations"]["summary"].is_string() && r["annotations"]["description"].is_string(),
            "{}: needs a summary and a description",
            r["alert"]
        );
        let used = promql_metrics(expr);
        ensure!(
            !used.is_empty(),
            "{}: no metric found in {expr}",
            r["alert"]
        );
        for name in used {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
            ensure!(
                map.iter().any(|m| m == base),
                "{} uses {name}, which templates/_metrics.tpl does not list (keep every metric name there)",
                r["alert"]
            );
            ensure!(
                base == "up" || ops.contains(base),
                "{} uses {name}, which docs/operations.md does not document",
                r["alert"]
            );
        }
        ensure!(
            r["alert"] == "NldnsDaemonSetUnavailable" || expr.contains(r#"job="nldns-metrics""#),
            "{}: must select the agents' job: {expr}",
            r["alert"]
        );
    }

    if !works("promtool", &["--version"]) {
        apt_install("prometheus")?; // Debian ships promtool in the prometheus package
    }
    let full = work.join("rules.yaml");
    fs::write(&full, serde_json::to_string_pretty(&rule["spec"])?)?;
    checked(Command::new("promtool").args(["check", "rules"]).arg(&full))
        .context("promtool check rules")?;
    // promtool's unit tests compare annotations too; the test asserts labels only, so
    // it runs on a copy without them (check rules above covers their templates).
    let mut bare = rule["spec"].clone();
    for g in bare["groups"].as_array_mut().into_iter().flatten() {
        for r in g["rules"].as_array_mut().into_iter().flatten() {
            if let Some(r) = r.as_object_mut() {
                r.remove("annotations");
            }
        }
    }
    fs::write(
        work.join("rules-bare.yaml"),
        serde_json::to_string_pretty(&bare)?,
    )?;
    let test = work.join("alerts.test.yaml");
    fs::copy(root.join("deploy/tests/alerts.test.yaml"), &test)?;
    checked(Command::new("promtool").args(["test", "rules"]).arg(&test))
        .context("promtool test rules deploy/tests/alerts.test.yaml")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promql_metrics_skips_labels_functions_and_strings() {
        let e = r#"sum by (instance) (rate(nldns_requests_total{job="nldns_x",rcode="SERVFAIL"}[5m])) / up{job="a"} + histogram_quantile(0.99, rate(nldns_upstream_latency_seconds_bucket[5m])) > kube_daemonset_status_number_unavailable"#;
        assert_eq!(
            promql_metrics(e),
            vec![
                "nldns_requests_total",
                "up",
                "nldns_upstream_latency_seconds_bucket",
                "kube_daemonset_status_number_unavailable"
            ]
        );
    }

    #[test]
    fn first_difference_names_the_path() {
        let a = json!({"spec": {"x": [1, {"y": 2}]}, "z": 1});
        let b = json!({"spec": {"x": [1, {"y": 3}]}, "z": 1});
        assert_eq!(
            first_difference(&a, &b, String::new()).as_deref(),
            Some("/spec/x/1/y (chart: 2, base: 3)")
        );
        assert_eq!(first_difference(&a, &a, String::new()), None);
        let c = json!({"spec": {"x": [1, {"y": 2}]}});
        assert!(first_difference(&a, &c, String::new())
            .unwrap()
            .starts_with("/z (chart: 1, base: absent)"));
    }
}
