"""Weighted queues: the order a weighted worker hands `reserve` before each claim.

The drivers keep one rule, strict priority over the order given. A weighted worker turns
its weights into an order per claim: the head is chosen by smooth weighted round-robin
(nginx's: every pick adds each queue's weight to its current value, takes the largest and
subtracts the total from it), the rest follow by weight, heaviest first. The driver takes
from the first non-empty queue of that order, so each non-empty queue heads as many claims
as its weight says (within one pick of exact, over any run of picks), and an empty head
costs nothing: its turn falls to the next queue in the same round trip.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence

WEIGHTED_BATCH = 20     # most jobs a weighted worker claims at once: each pick is a few jobs, not 100


class Rotation:
    """Smooth weighted round-robin over fixed queues; deterministic, no clock, no randomness."""

    def __init__(self, names: Sequence[str], weights: Sequence[int]) -> None:
        if len(names) != len(weights) or not names:
            raise ValueError("one positive weight per queue")
        self.names = tuple(names)
        self.weights = dict(zip(names, weights))
        self.current = {n: 0 for n in names}
        # ties by weight are broken by the order written, so the tail is stable too
        self.by_weight = tuple(sorted(self.names, key=lambda n: -self.weights[n]))

    def pick(self, among: Collection[str] | None = None) -> str:
        """The next head among `among` (default: every queue); only those take part in the round."""
        live = [n for n in self.names if among is None or n in among]
        if not live:
            raise ValueError("no queue to pick from")
        total = 0
        for n in live:
            self.current[n] += self.weights[n]
            total += self.weights[n]
        head = max(live, key=lambda n: self.current[n])      # first written wins a tie
        self.current[head] -= total
        return head

    def order(self, among: Collection[str] | None = None) -> tuple[str, ...]:
        """The queues to claim from, in the order to try them: the picked head, then the others
        (of `among`: the ones not paused) by weight, heaviest first."""
        head = self.pick(among)
        return (head,) + tuple(n for n in self.by_weight if n != head and (among is None or n in among))
