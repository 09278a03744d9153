#!/usr/bin/env python3
"""Helm's own engine for xtask deploy_checks, through the helm-python-sdk wheel (Helm v4's
Go SDK as a shared library: the same loader, values coalescing, values.schema.json
validation, template engine and linter as the helm CLI). Runs with target/venv's python.

  helm.py render CHART VALUES_JSON OUT [NAMESPACE]
        render like `helm template nldns CHART -n NAMESPACE -f VALUES` (an install,
        release name nldns, namespace kube-system by default) into OUT as one
        multi-document YAML file, NOTES.txt left out. Errors (schema, `fail`) go to
        stderr with exit 1.
  helm.py lint CHART VALUES_JSON KUBE_VERSION
        `helm lint --strict` with these values against that Kubernetes version; prints
        the findings, exits 1 on any warning or error.
"""
import json
import logging
import sys

import helm_python as helm

RELEASE = "nldns"


def quiet_native_logs():
    # The loader logs at INFO that files/grafana-dashboard.json is a link it followed.
    logging.getLogger("helm_python.native").setLevel(logging.WARNING)


def render(chart_dir, values_json, out, namespace="kube-system"):
    values = json.loads(values_json)
    with helm.Chart.load(chart_dir) as chart:
        try:
            manifests = chart.render(values, name=RELEASE, namespace=namespace, is_install=True)
        except helm.HelmError as e:
            print(f"helm: {e}", file=sys.stderr)
            sys.exit(1)
    docs = []
    for path in sorted(manifests):
        text = manifests[path]
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        docs.append(f"# Source: {path}\n{text.strip()}\n")
    with open(out, "w") as f:
        f.write("---\n".join(docs))


def lint(chart_dir, values_json, kube_version):
    report = helm.lint(
        chart_dir,
        json.loads(values_json),
        strict=True,
        namespace="kube-system",
        kube_version=kube_version,
    )
    bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    for m in report.get("messages", []):
        print(f"lint: severity {m.get('severity')} {m.get('path')}: {m.get('error')}")
    for e in report.get("errors", []):
        print(f"lint: error: {e}")
    if bad or report.get("errors"):
        sys.exit(1)


def main():
    quiet_native_logs()
    args = sys.argv[1:]
    if len(args) in (4, 5) and args[0] == "render":
        render(*args[1:])
    elif len(args) == 4 and args[0] == "lint":
        lint(*args[1:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
