"""Which queues a worker takes from: a list in strict priority order, or names with weights.

One parser for `--queue a,b` / `--queue a:6,b:3,c:1` and one check for the manifest's
`queues:` (a list, or a mapping of name to weight), so both refuse the same things with
the same words, and one writer (`flag`) that renders the weighted form back onto a
command line (supervisord, systemd, cron, Kubernetes, `listen`'s children).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Weights = tuple[int, ...]          # one per queue, in the order of the names; () means strict order


def parse_flag(text: str) -> tuple[tuple[str, ...], Weights]:
    """`a,b` -> ((a, b), ()); `a:6,b:3` -> ((a, b), (6, 3)). ValueError says what is wrong."""
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise ValueError("expected a comma-separated list of queue names")
    pairs = [item.partition(":") for item in items]
    weighted = [sep == ":" for _, sep, _ in pairs]
    if any(weighted) and not all(weighted):
        raise ValueError(f"{text!r}: give every queue a weight (a:6,b:3) or none (a,b)")
    names = tuple(name.strip() for name, _, _ in pairs)
    if not all(weighted):
        return check(names, ()), ()
    weights = tuple(_weight(name, raw.strip()) for name, _, raw in pairs)
    return check(names, weights), weights


def _weight(name: str, raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"queue {name!r}: weight {raw!r} is not a positive integer")
    return int(raw)


def check(names: Sequence[str], weights: Weights) -> tuple[str, ...]:
    """The names, once each; ValueError on an empty or repeated name, or a bad weight."""
    seen: set[str] = set()
    for name in names:
        if not name or ":" in name or "," in name:
            raise ValueError(f"{name!r} is not a queue name")
        if name in seen:
            raise ValueError(f"queue {name!r} is listed twice")
        seen.add(name)
    for name, w in zip(names, weights):
        if not isinstance(w, int) or isinstance(w, bool) or w < 1:
            raise ValueError(f"queue {name!r}: weight {w!r} is not a positive integer")
    return tuple(names)


def from_manifest(value: Any) -> tuple[tuple[str, ...], Weights]:
    """A pipeline's `queues:`: a list (or "a,b" text) keeps strict order; a mapping of name to
    weight makes the worker weighted. ValueError says what is wrong."""
    if isinstance(value, str):
        return parse_flag(value)
    if isinstance(value, dict):
        if not value:
            raise ValueError("expected at least one queue")
        names = tuple(str(k) for k in value)
        weights = tuple(value.values())
        return check(names, weights), weights          # type: ignore[arg-type]
    if isinstance(value, list) and not value:
        return ("default",), ()                         # as an absent `queues:`
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return check(value, ()), ()
    raise ValueError(f"expected a list of names or a mapping of name to weight, got {value!r}")


def flag(names: Sequence[str], weights: Weights = ()) -> str:
    """The `--queue` value: `a,b`, or `a:6,b:3` when weighted."""
    if not weights:
        return ",".join(names)
    return ",".join(f"{n}:{w}" for n, w in zip(names, weights))
