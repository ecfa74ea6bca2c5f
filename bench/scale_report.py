"""The tables of scripts/bench --scale: one per section, a verdict column (ok / MISS) per row
against the goal of issue 19. Figures only: nothing here decides the exit status."""
from __future__ import annotations

from typing import Any, Callable

GOALS = {
    "backlog": "largest backlog's rate >= 80% of the smallest's",
    "delayed": "behind the delayed jobs: rate >= 80%, p50 and p99 <= 120% of the same with none",
    "queues": "rate on the most queues >= 50% of the rate on one",
    "idle": "ops/s per worker constant (at most 1.5x that of 1 worker, or under 1/s) and p99 within the promise",
    "rss": "peak - first <= 5 MB",
    "long": "last round's rate >= 80% of the first's",
    "weights": "shares within 10% of the weights; weighted rate >= 90% of strict order",
}


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.{digits}f}"


def backlog(rows: list[dict], label: Callable[[str], str]) -> None:
    sizes = sorted({p["jobs"] for r in rows for p in r["points"]})
    print(f"{'':12}{'workers':>8}" + "".join(f"{n:>12,}" for n in sizes) + f"{'largest/smallest':>18}  verdict")
    for r in rows:
        for w in sorted({p["workers"] for p in r["points"]}):
            by = {p["jobs"]: p["per_s"] for p in r["points"] if p["workers"] == w}
            ratio = r[f"ratio_{w}w"]
            print(f"{label(r['backend']):12}{w:>8}" + "".join(f"{fmt(by.get(n)):>12}" for n in sizes)
                  + f"{ratio:>17.2f}x  {verdict(ratio >= 0.8)}")


def delayed(rows: list[dict], label: Callable[[str], str]) -> None:
    print(f"{'':12}{'alone/s':>10}{'behind/s':>10}{'ratio':>7}{'p50 ms a/b':>16}{'p99 ms a/b':>16}  verdict")
    for r in rows:
        ok = r["rate_ratio"] >= 0.8 and r["p50_ratio"] <= 1.2 and r["p99_ratio"] <= 1.2
        p50 = f"{fmt(r['none_p50_ms'])} / {fmt(r['behind_p50_ms'])}"
        p99 = f"{fmt(r['none_p99_ms'])} / {fmt(r['behind_p99_ms'])}"
        print(f"{label(r['backend']):12}{fmt(r['none_per_s']):>10}{fmt(r['behind_per_s']):>10}"
              f"{r['rate_ratio']:>6.2f}x{p50:>16}{p99:>16}  {verdict(ok)}")
    print(f"  ({rows[0]['ready']:,} ready jobs; behind {rows[0]['delayed']:,} delayed a day; one worker)")


def queues(rows: list[dict], label: Callable[[str], str]) -> None:
    counts = sorted({p["queues"] for r in rows for p in r["points"]})
    print(f"{'':12}{'jobs on':>8}" + "".join(f"{str(n) + ' q/s':>10}" for n in counts) + f"{'most/1':>9}  verdict")
    for r in rows:
        one = next(p["per_s"] for p in r["points"] if p["queues"] == 1)
        for where in ("spread", "last"):
            if f"ratio_{where}" not in r:
                continue
            by = {p["queues"]: p["per_s"] for p in r["points"] if p["where"] == where}
            by.setdefault(1, one)
            ratio = r[f"ratio_{where}"]
            print(f"{label(r['backend']):12}{where:>8}" + "".join(f"{fmt(by.get(n)):>10}" for n in counts)
                  + f"{ratio:>8.2f}x  {verdict(ratio >= 0.5)}")
    print(f"  ({rows[0]['jobs']:,} jobs; 'spread': evenly over the queues, 'last': all on the lowest priority)")


def idle(rows: list[dict], label: Callable[[str], str]) -> None:
    print(f"{'':12}{'workers':>8}{'ops/s':>9}{'per worker':>11}{'server CPU%':>13}{'workers CPU%':>14}"
          f"{'CPU%/worker':>13}  verdict")
    for r in rows:
        first = r["points"][0].get("ops_per_worker_s")
        for p in r["points"]:
            if "error" in p:
                print(f"{label(r['backend']):12}{p['workers']:>8}  FAILED: {p['error'][:160]}")
                continue
            per = p.get("ops_per_worker_s")
            ok = per is None or first is None or per <= max(1.5 * first, 1.0)
            print(f"{label(r['backend']):12}{p['workers']:>8}{fmt(p.get('ops_per_s'), 2):>9}{fmt(per, 2):>11}"
                  f"{fmt(p.get('server_cpu_pct'), 2):>13}{fmt(p.get('workers_cpu_pct'), 2):>14}"
                  f"{fmt(p.get('worker_cpu_pct'), 2):>13}  {verdict(ok) if per is not None else '-'}")
    for r in rows:
        print(f"  {label(r['backend'])}: {r['unit']} = {r['note']}")
        last = r["points"][-1]
        if "latency_p99_ms" not in last:
            continue
        ok = last["latency_p99_ms"] <= r["latency_goal_ms"]
        seen = "" if last.get("beating", last["workers"]) >= last["workers"] else \
            f" (only {last['beating']} heartbeats seen)"
        print(f"  {label(r['backend'])}: with {last['workers']} idle workers{seen}, {r['latency_jobs']} single jobs: "
              f"p50 {fmt(last['latency_p50_ms'])} ms, p99 {fmt(last['latency_p99_ms'])} ms; goal p99 <= "
              f"{r['latency_goal_ms']:.0f} ms ({r['latency_promise']}): {verdict(ok)}")


def rss(rows: list[dict], label: Callable[[str], str]) -> None:
    print(f"{'':12}{'jobs':>11}{'first MB':>10}{'peak MB':>9}{'last MB':>9}{'growth':>8}  verdict")
    for r in rows:
        if "rss_first_mb" not in r:
            print(f"{label(r['backend']):12}{r['rss_jobs']:>11,}  no sample after the warm-up  MISS")
            continue
        print(f"{label(r['backend']):12}{r['rss_jobs']:>11,}{r['rss_first_mb']:>10.1f}{r['rss_peak_mb']:>9.1f}"
              f"{r['rss_last_mb']:>9.1f}{r['rss_growth_mb']:>8.1f}  {verdict(r['rss_growth_mb'] <= 5.0)}"
              f"   (from {r['rss_from']}; first after {r['rss_first_after']:,} jobs)")


def long(rows: list[dict], label: Callable[[str], str]) -> None:
    for r in rows:
        rates = " ".join(fmt(x["per_s"]) for x in r["rounds"])
        print(f"{label(r['backend']):12}{r['jobs']:,} jobs in rounds of {r['round_jobs']:,}, 2 workers, jobs/s: {rates}")
        print(f"{'':12}last/first {r['ratio']:.2f}x  {verdict(r['ratio'] >= 0.8)}; table {mb(r.get('table_bytes'))}, "
              f"indexes {mb(r.get('indexes_bytes'))}, total {mb(r.get('total_bytes'))}; dead tuples "
              f"{r.get('n_dead_tup')}, VACUUMs by the workers {r.get('vacuum_count')}, autovacuums "
              f"{r.get('autovacuum_count')}; settings {r.get('settings')}")
        sizes = [(x.get("table_bytes"), x.get("indexes_bytes")) for x in r["rounds"]]
        if any(t is not None for t, _ in sizes):
            print(f"{'':12}after each round, table + indexes (MB): "
                  + " ".join(f"{(t or 0) / 1048576:.0f}+{(i or 0) / 1048576:.0f}" for t, i in sizes))


def mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1048576:.1f} MB"


def weights(rows: list[dict], label: Callable[[str], str]) -> None:
    for r in rows:
        shares, wts = r.get("shares") or {}, r.get("weights") or {}
        total = sum(wts.values()) if isinstance(wts, dict) else 0
        close = bool(total) and isinstance(shares, dict) and all(
            abs(shares.get(q, 0) - w / total) <= 0.1 * w / total for q, w in wts.items())
        ratio = r["weighted_per_s"] / r["strict_per_s"] if r.get("strict_per_s") else None
        ok = verdict(close and ratio is not None and ratio >= 0.9) if total and ratio else "-"
        print(f"{label(r['backend']):12}strict {fmt(r.get('strict_per_s'))}/s, weighted {fmt(r.get('weighted_per_s'))}/s"
              f" ({fmt(ratio, 2)}x); shares {shares} for weights {wts}  {ok}")


TABLES: dict[str, Callable[[list[dict], Callable[[str], str]], None]] = {
    "backlog": backlog, "delayed": delayed, "queues": queues, "idle": idle, "rss": rss, "long": long,
    "weights": weights}


def print_table(rows: list[dict], labels: dict[str, str]) -> None:
    """Every section's table, in order; a failed run as one line."""
    def label(b: str) -> str:
        return labels.get(b, b)

    for r in rows:
        if "error" in r:
            print(f"\n{label(r['backend'])} {r.get('section', '?')}: FAILED: {r['error']}")
    for section, table in TABLES.items():      # idle keeps the points it got before one failed
        ok: list[dict[str, Any]] = [r for r in rows if r.get("section") == section
                                    and ("error" not in r or section == "idle" and "points" in r)]
        if ok:
            print(f"\n{section}: goal: {GOALS[section]}")
            table(ok, label)
