"""Draw one run of scripts/bench --scale (bench-results/results.jsonl) as a PNG, a panel per section.

    .bench-venv/bin/python bench/scale_chart.py --run RUN_ID --out docs/scale.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["sqlite", "postgresql", "mysql", "amqp", "redis"]
LABELS = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MariaDB", "amqp": "RabbitMQ", "redis": "Redis"}
COLORS = {"sqlite": "#2b6cb0", "postgresql": "#2f855a", "mysql": "#c05621", "amqp": "#6b46c1", "redis": "#c53030"}


def load(run: str) -> dict[str, list[dict]]:
    """The run's rows that did not fail, by section, backends in a fixed order."""
    rows = [json.loads(ln) for ln in (ROOT / "bench-results" / "results.jsonl").read_text().splitlines() if ln]
    rows = sorted((r for r in rows if r.get("run") == run and r.get("figure") == "scale"     # idle keeps the
                   and ("error" not in r or r.get("section") == "idle" and "points" in r)),  # counts it got
                  key=lambda r: ORDER.index(r["backend"]) if r["backend"] in ORDER else 99)
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["section"], []).append(r)
    return out


def lines(ax, rows: list[dict], x: str, series: list[tuple[str, object, str, str]], title: str) -> None:
    """One line per backend and series (key, value, style, name) of each row's points; a point
    at x = 1 belongs to every series (one queue: spread and last are the same drain)."""
    xs = set()
    for r in rows:
        for key, value, style, name in series:
            pts = sorted((p[x], p["per_s"]) for p in r["points"] if p.get(key) == value or p[x] == 1 and x == "queues")
            xs |= {px for px, _ in pts}
            if pts:
                ax.plot(*zip(*pts), style, color=COLORS.get(r["backend"]), marker="o",
                        label=f"{LABELS.get(r['backend'], r['backend'])} {name}")
    ax.set_title(title, loc="left", fontsize=10)
    ax.set_xscale("log")
    ax.set_xticks(sorted(xs), [f"{v:,}" for v in sorted(xs)])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def bars(ax, rows: list[dict], keys: list[tuple[str, str]], title: str) -> None:
    """Grouped bars: a group per backend, a bar per key."""
    width = 0.8 / len(keys)
    for k, (key, name) in enumerate(keys):
        xs = [i + k * width for i in range(len(rows))]
        ax.bar(xs, [r.get(key) or 0 for r in rows], width, label=name)
    ax.set_xticks([i + width * (len(keys) - 1) / 2 for i in range(len(rows))],
                  [LABELS.get(r["backend"], r["backend"]) for r in rows], fontsize=8)
    ax.set_title(title, loc="left", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def idle(ax, rows: list[dict]) -> None:
    for r in rows:
        pts = [(p["workers"], p["worker_cpu_pct"]) for p in r["points"] if "worker_cpu_pct" in p]
        if pts:
            ax.plot(*zip(*pts), color=COLORS.get(r["backend"]), marker="o", label=LABELS.get(r["backend"]))
    ax.set_title("idle: CPU % per idle worker (lower is better)", loc="left", fontsize=10)
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ticks = sorted({p["workers"] for r in rows for p in r["points"]})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def draw(sections: dict[str, list[dict]], out: Path) -> None:
    fig, axes = plt.subplots(3, 2, figsize=(14, 13))
    ax = iter(axes.flat)
    lines(next(ax), sections.get("backlog", []), "jobs", [("workers", 1, "-", "1w"), ("workers", 2, "--", "2w")],
          "backlog: drain rate (jobs/s) by jobs queued; solid 1 worker, dashed 2")
    lines(next(ax), sections.get("queues", []), "queues",
          [("where", "spread", "-", "spread"), ("where", "last", "--", "all on last")],
          "queues: 1-worker drain rate (jobs/s) by queues listened to")
    bars(next(ax), sections.get("delayed", []), [("none_per_s", "alone"), ("behind_per_s", "behind delayed")],
         "delayed: drain rate (jobs/s) of ready jobs, alone and behind delayed ones")
    bars(next(ax), sections.get("delayed", []), [("none_p99_ms", "p99 alone"), ("behind_p99_ms", "p99 behind")],
         "delayed: claim latency p99 (ms, lower is better)")
    idle(next(ax), sections.get("idle", []))
    bars(next(ax), sections.get("rss", []), [("rss_first_mb", "first"), ("rss_peak_mb", "peak"), ("rss_last_mb", "last")],
         "rss: one worker's RSS (MB) over the drain")
    fig.suptitle("jobfarm as the work grows: one run of scripts/bench --scale", fontsize=12)
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
