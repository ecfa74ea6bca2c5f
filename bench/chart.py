"""Draw one run of bench-results/results.jsonl as a PNG: jobfarm beside each peer, per backend.

    .bench-venv/bin/python bench/chart.py --run RUN_ID --out docs/performance.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PANELS = [("drain_1_per_s", "drain, 1 worker (jobs/s)"), ("drain_2_per_s", "drain, 2 workers (jobs/s)"),
          ("dispatch_per_s", "single dispatch (jobs/s)"), ("dispatch_many_per_s", "bulk dispatch (jobs/s)"),
          ("latency_p50_ms", "idle latency p50 (ms, lower is better)"), ("idle_rss_mb", "idle worker RSS (MB)")]
ORDER = ["sqlite", "postgresql", "mysql", "amqp", "redis"]
LABELS = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MariaDB", "amqp": "RabbitMQ", "redis": "Redis"}


def load(run: str) -> list[dict]:
    rows = [json.loads(ln) for ln in (ROOT / "bench-results" / "results.jsonl").read_text().splitlines() if ln]
    return [r for r in rows if r.get("run") == run and "error" not in r and r.get("system") != "floor"]


def draw(rows: list[dict], out: Path) -> None:
    bars = sorted(rows, key=lambda r: (ORDER.index(r["backend"]), r["system"] != "jobfarm", r["system"]))
    names = [f"{r['system']} / {LABELS[r['backend']]}" for r in bars]
    colors = ["#2b6cb0" if r["system"] == "jobfarm" else "#a0aec0" for r in bars]
    fig, axes = plt.subplots(3, 2, figsize=(15, 12))
    for ax, (key, title) in zip(axes.flat, PANELS):
        values = [r.get(key, 0) for r in bars]
        ax.bar(range(len(bars)), values, color=colors)
        ax.set_title(title, loc="left", fontsize=10)
        ax.set_xticks(range(len(bars)), names, fontsize=7, rotation=60, ha="right")
        if key != "idle_rss_mb":
            ax.set_yscale("log")
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:,.0f}" if v >= 100 else f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    fig.suptitle("jobfarm (blue) and its peers on the same brokers: one run of scripts/bench --peers", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw(load(args.run), out)


if __name__ == "__main__":
    main()
