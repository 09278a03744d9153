"""Plots for `cargo xtask bench`: QPS bars and latency CDFs from <date>.json.

Usage: plot.py RESULTS.json OUT_DIR
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

data = json.load(open(sys.argv[1]))
out = sys.argv[2]
date = data["date"]
configs = [c for c in data["configs"] if c["workloads"]]
workloads = []
for c in configs:
    for w in c["workloads"]:
        if w["workload"] not in workloads:
            workloads.append(w["workload"])


def label(c):
    return "({}) {}".format(c["letter"], c["config"])


# QPS bars: one group per workload, one bar per configuration.
fig, ax = plt.subplots(figsize=(8, 4.5))
width = 0.8 / max(len(configs), 1)
for i, c in enumerate(configs):
    by = {w["workload"]: w["max_qps"] for w in c["workloads"]}
    xs = [j + i * width for j in range(len(workloads))]
    ys = [by.get(w, 0) for w in workloads]
    bars = ax.bar(xs, ys, width, label=label(c))
    for x, y in zip(xs, ys):
        ax.text(x, y, "{:.0f}k".format(y / 1000), ha="center", va="bottom", fontsize=7)
ax.set_xticks([j + width * (len(configs) - 1) / 2 for j in range(len(workloads))])
ax.set_xticklabels(workloads)
ax.set_ylabel("highest QPS with < 0.1% loss")
ax.set_title("DNS QPS sustained, simulated node ({})".format(date))
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(out, "{}-qps.png".format(date)), dpi=110)

# Latency CDFs: one panel per workload.
fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
for ax, wl in zip(axes[0], workloads):
    for c in configs:
        for w in c["workloads"]:
            if w["workload"] != wl or not w["cdf"]:
                continue
            pts = [(lat * 1e3, q) for q, lat in w["cdf"] if lat > 0]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label(c))
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("fraction of queries")
    rate = next((w["latency_rate"] for c in configs for w in c["workloads"]), 0)
    ax.set_title("{} at {} qps".format(wl, rate))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(out, "{}-latency-cdf.png".format(date)), dpi=110)
