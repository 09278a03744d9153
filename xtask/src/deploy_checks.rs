//! `cargo xtask deploy-checks`: everything about deploy/ that can be checked without a
//! cluster. Each check prints `ok` or `FAILED` with its name; all run, and the error at
//! the end lists the failed ones.
//!
//! - docs/grafana-dashboard.json parses, its queries use only nldns metrics that
//!   docs/operations.md documents, and operations.md documents every metric of the
//!   agent's contract;
//! - `shellcheck` on deploy/*.sh and the kubectl stand-in (apt-installed if missing);
//! - the kustomize base (deploy/) and the cleanup DaemonSet (deploy/cleanup/) render
//!   (with `kustomize`, else `kubectl kustomize`, else deploy/tests/render.py) and pass
//!   `kubernetes-validate --strict` for the oldest and newest schemas it ships
//!   (pip-installed into <root>/target/venv if missing), and the DaemonSet keeps the
//!   properties the design depends on (capabilities, surge, probes, mounts, ...);
//! - install.sh and uninstall.sh run against deploy/tests/kubectl, a recording stand-in,
//!   in several scenarios; the calls, their ORDER and what they applied are checked
//!   (overlays rendered and validated too when a real kustomize is around);
//! - the kubectl plugin deploy/kubectl-nldns against the same stand-in and its canned
//!   `nldns status --json` answers (module `plugin`);
//!
//! - the Helm chart deploy/helm/nldns, with Helm's own engine (module `helm`: the
//!   helm-python-sdk wheel, pip-installed into the same venv);
//!
//! NLDNS_RENDERER=fallback forces the built-in renderer (to test it).

mod helm;
mod plugin;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use serde_json::Value;

/// Pinned so that CI validates against the same schemas every time.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// Helm v4's Go SDK (4.2.3 in 0.2.2) as a shared library with Python bindings: Helm's
/// own chart loader, schema validation, template engine and linter, no helm binary.
const HELM_PYTHON_SDK: &str = "helm-python-sdk==0.2.2";
/// Oldest and newest schema sets kubernetes-validate 1.37 ships. (DaemonSet maxSurge
/// needs 1.22, which is older than any schema it has.)
const SCHEMA_VERSIONS: &[&str] = &["1.25.0", "1.37.0"];

/// The metric names of the agent's contract (docs/operations.md must document each).
const CONTRACT_METRICS: &[&str] = &[
    "nldns_requests_total",
    "nldns_cache_hits_total",
    "nldns_cache_misses_total",
    "nldns_cache_entries",
    "nldns_cache_bytes",
    "nldns_cache_evictions_total",
    "nldns_prefetches_total",
    "nldns_stale_answers_total",
    "nldns_upstream_latency_seconds",
    "nldns_upstream_errors_total",
    "nldns_datapath_queries_redirected_total",
    "nldns_datapath_replies_rewritten_total",
    "nldns_datapath_passed_total",
    "nldns_datapath_fragments_passed_total",
    "nldns_datapath_parse_errors_total",
    "nldns_datapath_fail_open_passes_total",
    "nldns_datapath_rewrite_errors_total",
];

/// `nldns run` flags (the agent's CLI contract), as their NLDNS_<FLAG> env suffixes.
const RUN_FLAGS: &[&str] = &[
    "SERVICE_IP",
    "UPSTREAM",
    "CLUSTER_DOMAIN",
    "RESOLV_CONF",
    "INTERFACES",
    "ATTACH_MODE",
    "LISTEN",
    "HEALTH_ADDR",
    "METRICS_ADDR",
    "CONFIG",
    "PROBE_SOCKET",
    "CGROUP",
    "POD_CGROUP",
    // global (every subcommand): cli.rs `Cli::log_format`
    "LOG_FORMAT",
];

pub fn run(root: &Path) -> Result<()> {
    let work = root.join("target").join("deploy-checks");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work)?;
    let mut checks = Checks::default();

    checks.run("grafana dashboard and metrics reference", || {
        dashboard(root)
    });
    checks.run("shellcheck deploy/*.sh deploy/tests/kubectl", || {
        shellcheck(root)
    });
    checks.run("Containerfile matches the xtask image", || {
        containerfile(root)
    });

    // Everything below needs the venv (kubernetes-validate, PyYAML).
    let tools = match Tools::new(root) {
        Ok(t) => Some(t),
        Err(e) => {
            checks.fail("python venv with kubernetes-validate", e);
            None
        }
    };
    if let Some(tools) = &tools {
        eprintln!(
            "deploy-checks: rendering with {}",
            tools.renderer.describe()
        );
        checks.run("render + validate deploy/ (base)", || {
            let docs = tools.render_and_validate(&root.join("deploy"), &work.join("base.yaml"))?;
            base_policy(&docs)
        });
        checks.run("render + validate deploy/cleanup/", || {
            let docs = tools
                .render_and_validate(&root.join("deploy/cleanup"), &work.join("cleanup.yaml"))?;
            cleanup_policy(&docs)
        });
        helm::register(root, &work, tools, &mut checks);
    }
    if let Some(tools) = tools.as_ref().filter(|t| t.renderer.renders_overlays()) {
        // The fallback renderer must not drift from kustomize while nobody needs it.
        checks.run("deploy/tests/render.py renders like kustomize", || {
            for (dir, name) in [("deploy", "base"), ("deploy/cleanup", "cleanup")] {
                let real = work.join(format!("{name}.yaml"));
                let fallback = work.join(format!("{name}.fallback.yaml"));
                let out = checked(
                    Command::new(&tools.python)
                        .arg(root.join("deploy/tests/render.py"))
                        .arg("build")
                        .arg(root.join(dir)),
                )?;
                fs::write(&fallback, &out.stdout)?;
                let key = |d: &Value| format!("{}/{}", d["kind"], d["metadata"]["name"]);
                let mut a = tools.to_json(&real)?;
                let mut b = tools.to_json(&fallback)?;
                a.sort_by_key(key);
                b.sort_by_key(key);
                ensure!(
                    a == b,
                    "{dir}: render.py and kustomize disagree ({} vs {})",
                    fallback.display(),
                    real.display()
                );
            }
            Ok(())
        });
    }
    checks.run("kubectl-nldns fixtures match `nldns status --json`", || {
        plugin::fixtures_match_the_agent(root)
    });
    for scenario in scenarios()
        .into_iter()
        .chain(helm::scenarios())
        .chain(plugin::scenarios())
    {
        let name = format!("{}: {}", scenario.script, scenario.name);
        checks.run(&name, || scenario.check(root, &work, tools.as_ref()));
    }
    checks.finish()
}

#[derive(Default)]
struct Checks {
    passed: usize,
    failed: Vec<String>,
}

impl Checks {
    fn run(&mut self, name: &str, f: impl FnOnce() -> Result<()>) {
        match f() {
            Ok(()) => {
                eprintln!("deploy-checks: ok      {name}");
                self.passed += 1;
            }
            Err(e) => self.fail(name, e),
        }
    }

    fn fail(&mut self, name: &str, e: anyhow::Error) {
        eprintln!("deploy-checks: FAILED  {name}: {e:#}");
        self.failed.push(format!("{name}: {e:#}"));
    }

    fn finish(self) -> Result<()> {
        eprintln!(
            "deploy-checks: {} passed, {} failed",
            self.passed,
            self.failed.len()
        );
        if self.failed.is_empty() {
            Ok(())
        } else {
            bail!("deploy checks failed:\n  - {}", self.failed.join("\n  - "))
        }
    }
}

// ---------------------------------------------------------------------------------
// helpers

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd`; Ok(output) only if it exits 0, else an error with its stderr/stdout.
fn checked(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    if !out.status.success() {
        let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if msg.is_empty() {
            msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            tail(&msg, 3000)
        );
    }
    Ok(out)
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        s
    } else {
        let mut start = s.len() - n;
        while !s.is_char_boundary(start) {
            start += 1;
        }
        &s[start..]
    }
}

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `apt-get install -y PKG`, with one `apt-get update` retry (a fresh machine has no
/// package lists). Only called when the tool is missing.
fn apt_install(pkg: &str) -> Result<()> {
    eprintln!("deploy-checks: installing {pkg} with apt-get");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", pkg])
            .output()
    };
    if install().map(|o| o.status.success()).unwrap_or(false) {
        return Ok(());
    }
    checked(Command::new("apt-get").args(["update", "-q"]))?;
    checked(Command::new("apt-get").args(["install", "-y", "-q", "--no-install-recommends", pkg]))?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// docs

fn dashboard(root: &Path) -> Result<()> {
    let path = root.join("docs/grafana-dashboard.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let dash: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let ops_path = root.join("docs/operations.md");
    let ops =
        fs::read_to_string(&ops_path).with_context(|| format!("reading {}", ops_path.display()))?;

    for m in CONTRACT_METRICS {
        ensure!(
            ops.contains(m),
            "docs/operations.md does not document metric {m}"
        );
    }
    ensure!(dash["title"].is_string(), "dashboard has no title");
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    ensure!(
        !exprs.is_empty(),
        "dashboard has no queries (targets[].expr)"
    );
    let mut used = Vec::new();
    for expr in &exprs {
        let names = metric_names(expr);
        ensure!(
            !names.is_empty(),
            "dashboard query uses no nldns metric: {expr}"
        );
        used.extend(names);
    }
    for name in &used {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
        ensure!(
            ops.contains(base),
            "dashboard uses {name}, which docs/operations.md does not document"
        );
    }
    for m in [
        "nldns_requests_total",
        "nldns_cache_hits_total",
        "nldns_upstream_latency_seconds",
    ] {
        ensure!(
            used.iter().any(|u| u.starts_with(m)),
            "dashboard has no panel on {m}"
        );
    }
    Ok(())
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("nldns_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.push(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

// ---------------------------------------------------------------------------------
// Containerfile: the daemon build must give the image that `cargo xtask image` writes
// (xtask/src/image.rs: FROM scratch, /usr/local/bin/nldns, entrypoint + `run`).

fn containerfile(root: &Path) -> Result<()> {
    let text = fs::read_to_string(root.join("Containerfile")).context("reading Containerfile")?;
    let last_from = text
        .lines()
        .map(str::trim)
        .rfind(|l| l.starts_with("FROM "));
    ensure!(
        last_from.is_some_and(|l| l.split_whitespace().nth(1) == Some("scratch")),
        "the final stage must be FROM scratch (a static binary needs nothing else)"
    );
    for want in [
        r#"ENTRYPOINT ["/usr/local/bin/nldns"]"#,
        r#"CMD ["run"]"#,
        "x86_64-unknown-linux-musl",
    ] {
        ensure!(text.contains(want), "Containerfile lacks {want}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// shellcheck

fn shellcheck(root: &Path) -> Result<()> {
    if !works("shellcheck", &["--version"]) {
        apt_install("shellcheck")?;
    }
    let deploy = root.join("deploy");
    let mut files: Vec<PathBuf> = fs::read_dir(&deploy)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no deploy/*.sh found");
    files.push(deploy.join("tests/kubectl"));
    checked(
        Command::new("shellcheck")
            .arg("--external-sources")
            .args(&files)
            .current_dir(root),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// rendering and schema validation

enum Renderer {
    Kustomize,
    Kubectl,
    /// deploy/tests/render.py: resources + images only (the base and cleanup/).
    Fallback,
}

impl Renderer {
    fn detect() -> Renderer {
        if std::env::var("NLDNS_RENDERER").as_deref() == Ok("fallback") {
            return Renderer::Fallback;
        }
        if works("kustomize", &["version"]) {
            Renderer::Kustomize
        } else if works("kubectl", &["kustomize", "--help"]) {
            Renderer::Kubectl
        } else {
            Renderer::Fallback
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Renderer::Kustomize => "kustomize build",
            Renderer::Kubectl => "kubectl kustomize",
            Renderer::Fallback => {
                "deploy/tests/render.py (fallback: install overlays are checked as text only)"
            }
        }
    }

    fn renders_overlays(&self) -> bool {
        !matches!(self, Renderer::Fallback)
    }
}

struct Tools {
    root: PathBuf,
    python: PathBuf,
    validate: PathBuf,
    renderer: Renderer,
}

impl Tools {
    /// Makes sure <root>/target/venv has kubernetes-validate (and so PyYAML) and
    /// helm-python-sdk.
    fn new(root: &Path) -> Result<Tools> {
        let venv = root.join("target").join("venv");
        let python = venv.join("bin/python");
        let validate = venv.join("bin/kubernetes-validate");
        let ready = || {
            validate.exists()
                && works(
                    python.to_str().unwrap_or(""),
                    &["-c", "import yaml, kubernetes_validate, helm_python"],
                )
        };
        if !ready() {
            if !python.exists() {
                let python3 = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
                if !works(&python3, &["-m", "venv", "--help"])
                    || checked(Command::new(&python3).arg("-m").arg("venv").arg(&venv)).is_err()
                {
                    // Debian's python3 needs python3-venv for `-m venv`.
                    apt_install("python3-venv")?;
                    let _ = fs::remove_dir_all(&venv);
                    checked(Command::new(&python3).arg("-m").arg("venv").arg(&venv))?;
                }
            }
            eprintln!(
                "deploy-checks: pip install {KUBERNETES_VALIDATE} {HELM_PYTHON_SDK} into {}",
                venv.display()
            );
            checked(Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                KUBERNETES_VALIDATE,
                HELM_PYTHON_SDK,
            ]))?;
            ensure!(
                ready(),
                "kubernetes-validate or helm-python-sdk still missing from {} after pip install",
                venv.display()
            );
        }
        Ok(Tools {
            root: root.to_path_buf(),
            python,
            validate,
            renderer: Renderer::detect(),
        })
    }

    fn render(&self, dir: &Path) -> Result<String> {
        let mut cmd = match self.renderer {
            Renderer::Kustomize => {
                let mut c = Command::new("kustomize");
                c.arg("build").arg(dir);
                c
            }
            Renderer::Kubectl => {
                let mut c = Command::new("kubectl");
                c.arg("kustomize").arg(dir);
                c
            }
            Renderer::Fallback => {
                let mut c = Command::new(&self.python);
                c.arg(self.root.join("deploy/tests/render.py"))
                    .arg("build")
                    .arg(dir);
                c
            }
        };
        let out = checked(&mut cmd).with_context(|| format!("rendering {}", dir.display()))?;
        Ok(String::from_utf8(out.stdout)?)
    }

    fn validate(&self, file: &Path) -> Result<()> {
        for v in SCHEMA_VERSIONS {
            checked(
                Command::new(&self.validate)
                    .args(["--strict", "--quiet", "-k", v])
                    .arg(file),
            )
            .with_context(|| format!("{} is not valid Kubernetes {v}", file.display()))?;
        }
        Ok(())
    }

    fn to_json(&self, file: &Path) -> Result<Vec<Value>> {
        let out = checked(
            Command::new(&self.python)
                .arg(self.root.join("deploy/tests/render.py"))
                .arg("to-json")
                .arg(file),
        )?;
        match serde_json::from_slice(&out.stdout)? {
            Value::Array(docs) => Ok(docs),
            other => bail!("expected a list of documents, got {other}"),
        }
    }

    /// Renders `dir` into `out`, validates it against the schemas, returns the objects.
    fn render_and_validate(&self, dir: &Path, out: &Path) -> Result<Vec<Value>> {
        let yaml = self.render(dir)?;
        fs::write(out, &yaml)?;
        self.validate(out)?;
        let docs = self.to_json(out)?;
        ensure!(!docs.is_empty(), "{} rendered to nothing", dir.display());
        Ok(docs)
    }
}

// ---------------------------------------------------------------------------------
// properties of the rendered objects

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .ok_or_else(|| anyhow!("no {kind} {name} in the rendered manifests"))
}

fn container<'a>(ds: &'a Value, name: &str) -> Result<&'a Value> {
    ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .ok_or_else(|| {
            anyhow!(
                "DaemonSet {} has no container {name}",
                ds["metadata"]["name"]
            )
        })
}

fn env_value<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

fn caps(c: &Value) -> Vec<String> {
    c["securityContext"]["capabilities"]["add"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(|s| s.trim_start_matches("CAP_").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn base_policy(docs: &[Value]) -> Result<()> {
    for d in docs {
        ensure!(
            d["metadata"]["namespace"] == "kube-system",
            "{} {} is not in kube-system",
            d["kind"],
            d["metadata"]["name"]
        );
    }
    // The upstream Service.
    let svc = find(docs, "Service", "kube-dns-uncached")?;
    ensure!(
        svc["spec"]["selector"]["k8s-app"] == "kube-dns",
        "kube-dns-uncached must select k8s-app: kube-dns"
    );
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    for (name, proto) in [("dns", "UDP"), ("dns-tcp", "TCP")] {
        ensure!(
            ports
                .iter()
                .any(|p| p["name"] == name && p["port"] == 53 && p["protocol"] == proto),
            "kube-dns-uncached lacks port {name} 53/{proto}"
        );
    }
    find(docs, "ServiceAccount", "nldns")?;
    let cm = find(docs, "ConfigMap", "nldns")?;
    let cfg = cm["data"]["config.json"]
        .as_str()
        .ok_or_else(|| anyhow!("ConfigMap nldns has no config.json"))?;
    let cfg: Value =
        serde_json::from_str(cfg).context("ConfigMap nldns: config.json is not JSON")?;
    ensure!(
        cfg["stubDomains"].is_object() && cfg["upstreamNameservers"].is_array(),
        "config.json lacks stubDomains/upstreamNameservers"
    );

    // The agent.
    let ds = find(docs, "DaemonSet", "nldns")?;
    let spec = &ds["spec"];
    let pod = &spec["template"]["spec"];
    let ru = &spec["updateStrategy"]["rollingUpdate"];
    ensure!(
        spec["updateStrategy"]["type"] == "RollingUpdate",
        "updateStrategy must be RollingUpdate"
    );
    ensure!(
        ru["maxSurge"] == 1 && ru["maxUnavailable"] == 0,
        "rollingUpdate must be maxSurge 1, maxUnavailable 0 (got {ru})"
    );
    ensure!(
        pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(0) >= 30,
        "terminationGracePeriodSeconds must cover draining (>= 30)"
    );
    ensure!(pod["hostNetwork"] == true, "pod must be hostNetwork");
    ensure!(
        pod["dnsPolicy"] == "Default",
        "dnsPolicy must be Default (the agent must not resolve through itself)"
    );
    ensure!(
        pod["priorityClassName"] == "system-node-critical",
        "priorityClassName must be system-node-critical"
    );
    ensure!(
        pod["serviceAccountName"] == "nldns",
        "serviceAccountName must be nldns"
    );
    let tolerations = pod["tolerations"].as_array().cloned().unwrap_or_default();
    ensure!(
        tolerations.iter().any(|t| t["operator"] == "Exists"
            && t.get("key").is_none()
            && t.get("effect").is_none()),
        "needs a toleration {{operator: Exists}} for every taint"
    );
    let c = container(ds, "nldns")?;
    ensure!(
        c["image"] == "nldns:latest",
        "image must be the placeholder nldns:latest (got {})",
        c["image"]
    );
    let sc = &c["securityContext"];
    ensure!(sc["privileged"] != true, "the agent must not be privileged");
    ensure!(
        sc["allowPrivilegeEscalation"] == false,
        "allowPrivilegeEscalation must be false"
    );
    let added = caps(c);
    for want in ["BPF", "NET_ADMIN", "PERFMON"] {
        ensure!(
            added.iter().any(|a| a == want),
            "capability {want} missing (have {added:?})"
        );
    }
    ensure!(!added.iter().any(|a| a == "SYS_ADMIN"), "CAP_SYS_ADMIN must not be in the base (deploy/patches/legacy-kernel.yaml adds it for kernels < 5.8)");
    let drops = sc["capabilities"]["drop"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        drops.iter().any(|d| d == "ALL"),
        "capabilities must drop ALL first"
    );
    // Surge: any declared port is a hostPort under hostNetwork and blocks the surge pod.
    ensure!(
        c.get("ports").is_none(),
        "no containerPorts: under hostNetwork they become hostPorts and block the maxSurge pod"
    );
    // Probes must reach this pod's agent alone: during a surge the health TCP port is
    // shared with the old agent, the probe socket in the pod's own emptyDir is not.
    for (probe, kind) in [("livenessProbe", "health"), ("readinessProbe", "ready")] {
        let command: Vec<&str> = c[probe]["exec"]["command"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        ensure!(
            command.len() == 3 && command[0].ends_with("/nldns") && command[1..] == ["probe", kind],
            "{probe} must exec `nldns probe {kind}` (got {command:?})"
        );
    }
    let probe_socket = env_value(c, "NLDNS_PROBE_SOCKET").unwrap_or("");
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    let on_empty_dir = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            m["mountPath"]
                .as_str()
                .is_some_and(|p| probe_socket.starts_with(&format!("{}/", p.trim_end_matches('/'))))
        })
        .any(|m| {
            volumes
                .iter()
                .any(|v| v["name"] == m["name"] && v.get("emptyDir").is_some())
        });
    ensure!(
        on_empty_dir,
        "NLDNS_PROBE_SOCKET ({probe_socket:?}) must be in an emptyDir mount: the pod's own"
    );
    let res = &c["resources"];
    ensure!(
        res["requests"]["memory"] == "40Mi"
            && res["limits"]["memory"] == "128Mi"
            && res["requests"]["cpu"] == "25m",
        "resources must be requests 25m/40Mi, limit 128Mi (got {res})"
    );
    for name in [
        "NLDNS_SERVICE_IP",
        "NLDNS_UPSTREAM",
        "NLDNS_CLUSTER_DOMAIN",
        "NLDNS_CONFIG",
        "NLDNS_METRICS_ADDR",
    ] {
        ensure!(
            env_value(c, name).is_some_and(|v| !v.is_empty()),
            "env {name} is not set"
        );
    }
    // Every NLDNS_ variable must be a flag of the agent's CLI contract (`nldns run`).
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or("");
        if let Some(flag) = name.strip_prefix("NLDNS_") {
            ensure!(
                RUN_FLAGS.contains(&flag),
                "env {name} is not a flag of `nldns run` (known: {RUN_FLAGS:?})"
            );
        }
    }
    // The service-link expansion of the base depends on these exact variable names.
    ensure!(
        env_value(c, "NLDNS_SERVICE_IP") == Some("$(KUBE_DNS_SERVICE_HOST)"),
        "base NLDNS_SERVICE_IP must be $(KUBE_DNS_SERVICE_HOST)"
    );
    ensure!(
        env_value(c, "NLDNS_UPSTREAM") == Some("$(KUBE_DNS_UNCACHED_SERVICE_HOST)"),
        "base NLDNS_UPSTREAM must be $(KUBE_DNS_UNCACHED_SERVICE_HOST)"
    );
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    for path in ["/sys/fs/bpf", "/sys/fs/cgroup"] {
        let vol = volumes
            .iter()
            .find(|v| v["hostPath"]["path"] == path)
            .ok_or_else(|| anyhow!("no hostPath volume for {path}"))?;
        let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
        ensure!(
            mounts.iter().any(|m| m["name"] == vol["name"]),
            "hostPath {path} is not mounted in the agent"
        );
    }
    Ok(())
}

fn cleanup_policy(docs: &[Value]) -> Result<()> {
    let ds = find(docs, "DaemonSet", "nldns-cleanup")?;
    let pod = &ds["spec"]["template"]["spec"];
    ensure!(
        pod["hostNetwork"] == true,
        "cleanup must run in the node's network namespace (hostNetwork)"
    );
    let tolerations = pod["tolerations"].as_array().cloned().unwrap_or_default();
    ensure!(
        tolerations
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "cleanup must tolerate every taint"
    );
    let init = pod["initContainers"]
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| anyhow!("cleanup DaemonSet has no init container"))?;
    ensure!(
        init["args"] == serde_json::json!(["cleanup"]),
        "cleanup init container must run `nldns cleanup` (args [cleanup])"
    );
    ensure!(
        init["image"] == "nldns:latest",
        "cleanup image must be the nldns placeholder"
    );
    ensure!(
        caps(init).iter().any(|c| c == "NET_ADMIN"),
        "cleanup needs NET_ADMIN to delete tc filters"
    );
    ensure!(
        init["securityContext"]["privileged"] != true,
        "cleanup must not be privileged"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// install.sh / uninstall.sh against the recording kubectl

const COREFILE: &str = ".:53 {\n    errors\n    health\n    kubernetes cluster.example in-addr.arpa ip6.arpa {\n       pods insecure\n       fallthrough in-addr.arpa ip6.arpa\n    }\n    forward . /etc/resolv.conf\n    cache 30\n}\n";

struct Scenario {
    script: &'static str,
    name: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    expect_success: bool,
    verify: fn(&Run, Option<&Tools>) -> Result<()>,
}

struct Run {
    dir: PathBuf,
    calls: Vec<String>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The directory the stand-in saved for the n-th `apply -k` (1-based).
    fn applied(&self, n: usize) -> Result<PathBuf> {
        let d = self.dir.join(format!("apply-{n}"));
        ensure!(
            d.join("kustomization.yaml").exists(),
            "there was no apply #{n} (calls: {:?})",
            self.calls
        );
        Ok(d)
    }

    fn file(&self, n: usize, name: &str) -> Result<String> {
        let p = self.applied(n)?.join(name);
        fs::read_to_string(&p).with_context(|| format!("apply #{n} has no {name}"))
    }

    /// Index of the first call at or after `from` that contains `needle`.
    fn position(&self, needle: &str, from: usize) -> Option<usize> {
        self.calls
            .iter()
            .skip(from)
            .position(|c| c.contains(needle))
            .map(|i| i + from)
    }

    /// Each needle must match a call, in this order (other calls may come between).
    fn expect_order(&self, needles: &[&str]) -> Result<()> {
        let mut from = 0;
        for needle in needles {
            match self.position(needle, from) {
                Some(i) => from = i + 1,
                None => {
                    let anywhere = self.position(needle, 0);
                    bail!(
                        "expected a call containing {needle:?} {}; calls were:\n      {}",
                        if anywhere.is_some() {
                            "later (it came too early)"
                        } else {
                            "(none)"
                        },
                        self.calls.join("\n      ")
                    )
                }
            }
        }
        Ok(())
    }

    fn expect_none(&self, needle: &str) -> Result<()> {
        if let Some(i) = self.position(needle, 0) {
            bail!("unexpected call #{}: {}", i + 1, self.calls[i]);
        }
        Ok(())
    }

    fn expect_last(&self, needle: &str) -> Result<()> {
        let last = self
            .calls
            .last()
            .ok_or_else(|| anyhow!("no kubectl calls at all"))?;
        ensure!(
            last.contains(needle),
            "the last call must contain {needle:?}, was: {last}"
        );
        let first = self.position(needle, 0).unwrap_or(0);
        ensure!(
            first == self.calls.len() - 1,
            "{needle:?} must come only last, but call #{} already is: {}",
            first + 1,
            self.calls[first]
        );
        Ok(())
    }
}

impl Scenario {
    fn check(&self, root: &Path, work: &Path, tools: Option<&Tools>) -> Result<()> {
        let slug: String = format!("{}-{}", self.script, self.name)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dir = work.join(slug);
        fs::create_dir_all(&dir)?;
        let log = dir.join("calls.log");
        let mut cmd = Command::new(root.join("deploy").join(self.script));
        cmd.args(self.args)
            .current_dir(&dir)
            .env("KUBECTL", root.join("deploy/tests/kubectl"))
            .env("FAKE_KUBECTL_LOG", &log)
            .env("FAKE_KUBECTL_STATE", &dir)
            .env("NLDNS_UNINSTALL_POLL", "0");
        for (k, _) in std::env::vars() {
            if k.starts_with("FAKE_") && k != "FAKE_KUBECTL_LOG" && k != "FAKE_KUBECTL_STATE" {
                cmd.env_remove(k);
            }
        }
        for (k, v) in self.env {
            cmd.env(k, v);
        }
        let out = cmd
            .output()
            .with_context(|| format!("cannot run deploy/{}", self.script))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let calls = fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        ensure!(
            out.status.success() == self.expect_success,
            "deploy/{} {:?} exited with {} (expected {}); stderr:\n{}",
            self.script,
            self.args,
            out.status,
            if self.expect_success {
                "success"
            } else {
                "failure"
            },
            tail(&stderr, 2000)
        );
        (self.verify)(
            &Run {
                dir,
                calls,
                stdout,
                stderr,
            },
            tools,
        )
    }
}

/// Renders (when a real kustomize is around) and validates the n-th applied overlay.
fn render_applied(run: &Run, n: usize, tools: Option<&Tools>) -> Result<Option<Vec<Value>>> {
    let Some(tools) = tools else { return Ok(None) };
    if !tools.renderer.renders_overlays() {
        return Ok(None);
    }
    let out = run.dir.join(format!("apply-{n}.rendered.yaml"));
    tools.render_and_validate(&run.applied(n)?, &out).map(Some)
}

const INSTALL_ORDER: &[&str] = &[
    "get service kube-dns -o jsonpath",
    "apply -k",
    "get service kube-dns-uncached -o jsonpath",
    "apply -k",
    "rollout status daemonset/nldns",
];

fn check_agent_env(
    run: &Run,
    tools: Option<&Tools>,
    service_ip: &str,
    upstream: &str,
    domain: &str,
) -> Result<Option<Vec<Value>>> {
    let patch = run.file(2, "agent-env.yaml")?;
    for v in [service_ip, upstream, domain] {
        ensure!(
            patch.contains(&format!("value: \"{v}\"")),
            "the overlay's env patch lacks {v:?}:\n{patch}"
        );
    }
    let Some(docs) = render_applied(run, 2, tools)? else {
        return Ok(None);
    };
    let c = container(find(&docs, "DaemonSet", "nldns")?, "nldns")?;
    for (name, want) in [
        ("NLDNS_SERVICE_IP", service_ip),
        ("NLDNS_UPSTREAM", upstream),
        ("NLDNS_CLUSTER_DOMAIN", domain),
    ] {
        ensure!(
            env_value(c, name) == Some(want),
            "rendered {name} is {:?}, expected {want:?}",
            env_value(c, name)
        );
    }
    Ok(Some(docs))
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            script: "install.sh",
            name: "single-stack, cluster domain from the CoreDNS Corefile",
            args: &[],
            env: &[("FAKE_COREFILE", COREFILE)],
            expect_success: true,
            verify: |run, tools| {
                run.expect_order(INSTALL_ORDER)?;
                run.expect_order(&[
                    "get service kube-dns -o",
                    "get configmap coredns",
                    "apply -k",
                ])?;
                ensure!(
                    run.calls.iter().filter(|c| c.contains("apply")).count() == 2,
                    "expected exactly 2 applies: {:?}",
                    run.calls
                );
                let first = run.file(1, "kustomization.yaml")?;
                ensure!(
                    first.contains("service-uncached.yaml") && !first.contains("base"),
                    "apply #1 must be the kube-dns-uncached Service alone:\n{first}"
                );
                ensure!(
                    !first.contains("dual-stack"),
                    "single-stack cluster got a dual-stack patch"
                );
                if let Some(docs) = render_applied(run, 1, tools)? {
                    ensure!(
                        docs.len() == 1 && docs[0]["kind"] == "Service",
                        "apply #1 rendered more than the Service"
                    );
                }
                if let Some(docs) =
                    check_agent_env(run, tools, "10.96.0.10", "10.96.0.11", "cluster.example")?
                {
                    base_like(&docs)?;
                    let c = container(find(&docs, "DaemonSet", "nldns")?, "nldns")?;
                    ensure!(
                        c["image"] == "nldns:latest",
                        "image changed without --image: {}",
                        c["image"]
                    );
                }
                ensure!(
                    run.stderr.contains("cluster.example"),
                    "install.sh did not say which cluster domain it uses"
                );
                Ok(())
            },
        },
        Scenario {
            script: "install.sh",
            name: "dual-stack, --cluster-domain, --image, --legacy-kernel",
            args: &[
                "--cluster-domain",
                "corp.internal.",
                "--image",
                "registry.example:5000/nldns:v1.2.3",
                "--legacy-kernel",
            ],
            env: &[
                ("FAKE_COREFILE", COREFILE),
                ("FAKE_KUBE_DNS_IPS", r#"["10.96.0.10","fd00:10:96::a"]"#),
                ("FAKE_UNCACHED_IPS", r#"["10.96.0.11","fd00:10:96::b"]"#),
            ],
            expect_success: true,
            verify: |run, tools| {
                run.expect_order(INSTALL_ORDER)?;
                run.expect_none("get configmap coredns")?;
                run.expect_none("configz")?;
                ensure!(
                    run.file(1, "kustomization.yaml")?
                        .contains("dual-stack.yaml"),
                    "dual-stack kube-dns but kube-dns-uncached was not made dual-stack"
                );
                if let Some(docs) = check_agent_env(
                    run,
                    tools,
                    "10.96.0.10,fd00:10:96::a",
                    "10.96.0.11,fd00:10:96::b",
                    "corp.internal",
                )? {
                    let ds = find(&docs, "DaemonSet", "nldns")?;
                    let c = container(ds, "nldns")?;
                    ensure!(
                        c["image"] == "registry.example:5000/nldns:v1.2.3",
                        "--image not applied: {}",
                        c["image"]
                    );
                    let added = caps(c);
                    for cap in ["SYS_ADMIN", "SYS_RESOURCE", "BPF", "NET_ADMIN", "PERFMON"] {
                        ensure!(
                            added.iter().any(|a| a == cap),
                            "--legacy-kernel: capability {cap} missing ({added:?})"
                        );
                    }
                    let svc = find(&docs, "Service", "kube-dns-uncached")?;
                    ensure!(
                        svc["spec"]["ipFamilyPolicy"] == "PreferDualStack",
                        "the overlay would undo the Service's dual-stack policy"
                    );
                }
                Ok(())
            },
        },
        Scenario {
            script: "install.sh",
            name: "cluster domain from the kubelet's configz wins over the Corefile",
            args: &[],
            env: &[
                ("FAKE_COREFILE", COREFILE),
                (
                    "FAKE_CONFIGZ",
                    r#"{"kubeletconfig":{"enableServer":true,"clusterDomain":"k8s.example","clusterDNS":["10.96.0.10"]}}"#,
                ),
            ],
            expect_success: true,
            verify: |run, tools| {
                run.expect_order(&[
                    "get nodes -o jsonpath",
                    "get --raw /api/v1/nodes/node-a/proxy/configz",
                    "apply -k",
                ])?;
                run.expect_none("get configmap coredns")?;
                check_agent_env(run, tools, "10.96.0.10", "10.96.0.11", "k8s.example")?;
                Ok(())
            },
        },
        Scenario {
            script: "install.sh",
            name: "GKE-like: kube-dns without CoreDNS ConfigMap, default cluster.local",
            args: &["--no-wait"],
            env: &[
                ("FAKE_KUBE_DNS_IPS", r#"["10.23.240.10"]"#),
                ("FAKE_UNCACHED_IPS", r#"["10.23.250.77"]"#),
            ],
            expect_success: true,
            verify: |run, tools| {
                run.expect_order(&[
                    "get service kube-dns -o",
                    "get configmap coredns",
                    "apply -k",
                    "get service kube-dns-uncached",
                    "apply -k",
                ])?;
                run.expect_none("rollout status")?;
                check_agent_env(run, tools, "10.23.240.10", "10.23.250.77", "cluster.local")?;
                Ok(())
            },
        },
        Scenario {
            script: "install.sh",
            name: "--dry-run renders and applies nothing",
            args: &["--dry-run"],
            env: &[],
            expect_success: true,
            verify: |run, _| {
                run.expect_none("apply")?;
                run.expect_none("rollout")?;
                run.expect_order(&["get service kube-dns -o", "kustomize "])?;
                Ok(())
            },
        },
        Scenario {
            script: "install.sh",
            name: "kube-dns missing: fails before applying anything",
            args: &[],
            env: &[("FAKE_KUBE_DNS_IPS", "missing")],
            expect_success: false,
            verify: |run, _| {
                run.expect_none("apply")?;
                ensure!(
                    run.stderr.contains("kube-dns"),
                    "the error does not name kube-dns: {}",
                    run.stderr
                );
                Ok(())
            },
        },
        Scenario {
            script: "install.sh",
            name: "headless kube-dns: fails before applying anything",
            args: &[],
            env: &[("FAKE_KUBE_DNS_IPS", r#"["None"]"#)],
            expect_success: false,
            verify: |run, _| {
                run.expect_none("apply")?;
                ensure!(
                    run.stderr.contains("headless"),
                    "the error does not say headless: {}",
                    run.stderr
                );
                Ok(())
            },
        },
        Scenario {
            script: "install.sh",
            name: "rollout times out: exit status says so",
            args: &["--timeout", "5s"],
            env: &[("FAKE_ROLLOUT_RC", "1")],
            expect_success: false,
            verify: |run, _| {
                run.expect_order(INSTALL_ORDER)?;
                run.expect_order(&["--timeout=5s"])?;
                ensure!(
                    run.stderr.contains("did not roll out"),
                    "no rollout error message: {}",
                    run.stderr
                );
                Ok(())
            },
        },
        Scenario {
            script: "install.sh",
            name: "--help calls nothing",
            args: &["--help"],
            env: &[],
            expect_success: true,
            verify: |run, _| {
                ensure!(
                    run.calls.is_empty(),
                    "kubectl was called for --help: {:?}",
                    run.calls
                );
                Ok(())
            },
        },
        Scenario {
            script: "uninstall.sh",
            name: "--help calls nothing",
            args: &["--help"],
            env: &[],
            expect_success: true,
            verify: |run, _| {
                ensure!(
                    run.calls.is_empty(),
                    "kubectl was called for --help: {:?}",
                    run.calls
                );
                Ok(())
            },
        },
        Scenario {
            script: "install.sh",
            name: "unknown flag is refused",
            args: &["--bogus"],
            env: &[],
            expect_success: false,
            verify: |run, _| {
                ensure!(
                    run.calls.is_empty(),
                    "kubectl was called despite a bad flag: {:?}",
                    run.calls
                );
                Ok(())
            },
        },
        Scenario {
            script: "uninstall.sh",
            name: "order: agents gone, then cleanup, kube-dns-uncached last",
            args: &["--pause-image", "mirror.example:5000/pause:3.10"],
            env: &[
                ("FAKE_DS_IMAGE", "registry.example/nldns:v9"),
                ("FAKE_PODS_LINGER", "2"),
            ],
            expect_success: true,
            verify: |run, tools| {
                run.expect_order(&[
                    "get daemonset nldns -o jsonpath",
                    "delete daemonset nldns ",
                    "get pods -l k8s-app=nldns -o name",
                    "get pods -l k8s-app=nldns -o name",
                    "get pods -l k8s-app=nldns -o name",
                    "apply -k",
                    "rollout status daemonset/nldns-cleanup",
                    "delete daemonset nldns-cleanup",
                    "delete configmap nldns",
                    "delete serviceaccount nldns",
                    "delete service kube-dns-uncached",
                ])?;
                // The cleanup starts only once the last agent is gone (3rd pod listing empty).
                let last_agent_poll = run
                    .calls
                    .iter()
                    .rposition(|c| c.contains("get pods -l k8s-app=nldns -o name"))
                    .unwrap_or(0);
                let apply = run.position("apply -k", 0).unwrap_or(0);
                ensure!(
                    apply > last_agent_poll,
                    "cleanup applied before the agents were gone"
                );
                ensure!(
                    run.calls
                        .iter()
                        .any(|c| c.contains("delete daemonset nldns ")
                            && c.contains("--cascade=foreground")),
                    "the DaemonSet delete must cascade in the foreground"
                );
                run.expect_last("delete service kube-dns-uncached")?;
                let k = run.file(1, "kustomization.yaml")?;
                ensure!(
                    k.contains("registry.example/nldns") && k.contains("v9"),
                    "cleanup does not use the agent's image:\n{k}"
                );
                if let Some(docs) = render_applied(run, 1, tools)? {
                    let ds = find(&docs, "DaemonSet", "nldns-cleanup")?;
                    let init = &ds["spec"]["template"]["spec"]["initContainers"][0];
                    ensure!(
                        init["image"] == "registry.example/nldns:v9",
                        "cleanup image is {}",
                        init["image"]
                    );
                    let pause = &ds["spec"]["template"]["spec"]["containers"][0]["image"];
                    ensure!(
                        pause == "mirror.example:5000/pause:3.10",
                        "--pause-image not applied: {pause}"
                    );
                }
                Ok(())
            },
        },
        Scenario {
            script: "uninstall.sh",
            name: "--skip-cleanup, nothing installed",
            args: &["--skip-cleanup"],
            env: &[],
            expect_success: true,
            verify: |run, _| {
                run.expect_order(&[
                    "delete daemonset nldns ",
                    "get pods -l k8s-app=nldns -o name",
                    "delete service kube-dns-uncached",
                ])?;
                run.expect_none("apply")?;
                run.expect_last("delete service kube-dns-uncached")
            },
        },
        Scenario {
            script: "uninstall.sh",
            name: "agents do not stop: nothing else is removed",
            args: &["--timeout", "1"],
            env: &[
                ("FAKE_PODS_LINGER", "100000"),
                ("NLDNS_UNINSTALL_POLL", "0.2"),
            ],
            expect_success: false,
            verify: |run, _| {
                run.expect_none("apply")?;
                run.expect_none("delete service kube-dns-uncached")?;
                run.expect_none("delete configmap")?;
                ensure!(
                    run.stderr.contains("did not stop"),
                    "no error about the pods: {}",
                    run.stderr
                );
                Ok(())
            },
        },
        Scenario {
            script: "uninstall.sh",
            name: "cleanup times out: still tidies up, Service last, exit 1",
            args: &[],
            env: &[("FAKE_ROLLOUT_RC", "1")],
            expect_success: false,
            verify: |run, _| {
                run.expect_order(&[
                    "apply -k",
                    "rollout status daemonset/nldns-cleanup",
                    "get pods -l k8s-app=nldns-cleanup -o wide",
                    "delete daemonset nldns-cleanup",
                    "delete service kube-dns-uncached",
                ])?;
                run.expect_last("delete service kube-dns-uncached")?;
                ensure!(run.stderr.contains("nldns:latest"), "without a DaemonSet the cleanup image should default to nldns:latest and say so");
                Ok(())
            },
        },
    ]
}

/// What install.sh renders must keep the base's properties apart from the values it sets.
fn base_like(docs: &[Value]) -> Result<()> {
    let mut docs = docs.to_vec();
    for d in &mut docs {
        if d["kind"] == "DaemonSet" {
            if let Some(env) = d["spec"]["template"]["spec"]["containers"][0]["env"].as_array_mut()
            {
                for e in env.iter_mut() {
                    match e["name"].as_str() {
                        Some("NLDNS_SERVICE_IP") => e["value"] = "$(KUBE_DNS_SERVICE_HOST)".into(),
                        Some("NLDNS_UPSTREAM") => {
                            e["value"] = "$(KUBE_DNS_UNCACHED_SERVICE_HOST)".into()
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    base_policy(&docs).context("the rendered install overlay")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_found_whole() {
        let e = "sum(rate(nldns_cache_hits_total[5m])) / sum(rate(xnldns_no[5m])) + histogram_quantile(0.9, nldns_upstream_latency_seconds_bucket)";
        assert_eq!(
            metric_names(e),
            vec![
                "nldns_cache_hits_total",
                "nldns_upstream_latency_seconds_bucket"
            ]
        );
    }
}
