"""Chains: jobs run one after another, each only once the one before it succeeded.

The first link's document carries the rest as `"chain": [doc, doc, ...]`, each with its id
assigned at dispatch. When a link succeeds its worker pushes the next (carrying the rest)
before it acks the link. A link that finally fails goes to the failed jobs with `"chain"`
still in its document, so `farmctl retry` of it resumes the chain where it stopped.

The next link is pushed at most once: its push goes with a claim in the store on its
pre-assigned id (`chain:<id>`), so a link run again after its worker died between the push
and the ack does not push it again. On the database driver the claim and the push are one
transaction, on redis one script; on amqp the claim (in the `store:`) comes first, and a
worker killed between the two ends the chain there (README "Chains and batches").
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from . import app, payload
from .drivers.base import Outgoing
from .errors import SerializationError
from .jobs import Job



class Chain:
    """`farm.chain([A(), B(), C()])`: B runs after A succeeded, C after B."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        self.jobs = list(jobs)
        if not self.jobs:
            raise SerializationError("farm.chain() needs at least one job")
        if len(self.jobs) > payload.MAX_CHAIN + 1:      # each link's document carries the rest
            raise SerializationError(f"farm.chain() takes at most {payload.MAX_CHAIN + 1} jobs, "
                                     f"got {len(self.jobs)}: split the work (a batch, or a job that dispatches more)")

    def dispatch(self, *, queue: str | None = None, connection: str | None = None) -> str:
        """Push the first link (carrying the others); returns its id. `queue` applies to every link."""
        from .dispatch import _outgoing, options_of

        # each link as dispatch() makes it: checked, and its data sealed when it is encrypted
        docs = [payload.parse(_outgoing(j, queue, None, None, None, None, None)[0].body) for j in self.jobs[1:]]
        first, conn = _outgoing(self.jobs[0], queue, None, connection, None, None, None)
        doc = payload.parse(first.body)
        if docs:
            doc["chain"] = docs
        body = payload.serialize(doc, options_of(self.jobs[0])["owner"])
        app.queue(conn).push([Outgoing(id=first.id, queue=first.queue, body=body, available_at=first.available_at)])
        return first.id


def chain(jobs: Sequence[Job]) -> Chain:
    """A chain of jobs; `.dispatch()` it."""
    return Chain(jobs)


def succeeded(runner: Any, doc: dict[str, Any]) -> None:
    """A link succeeded: push the next one (once), before the link is acked."""
    from .batches import push_once, store_of

    rest = doc.get("chain")
    if not rest:
        return
    if not isinstance(rest, list) or not all(isinstance(d, dict) for d in rest):
        runner.log.error("chain.bad", id=doc.get("id"), detail="'chain' is not a list of job documents")
        return
    nxt = dict(rest[0])
    if len(rest) > 1:
        nxt["chain"] = rest[1:]
    else:
        nxt.pop("chain", None)
    try:
        payload.check_shape(nxt)
    except Exception as e:
        runner.log.error("chain.bad", id=doc.get("id"), detail=f"its next link: {e}")
        return
    items = [Outgoing(id=nxt["id"], queue=nxt.get("queue") or "default", body=payload.dumps(nxt),
                      available_at=time.time())]
    if not push_once(runner.queue, store_of(runner.queue), "chain:" + nxt["id"], items):
        runner.log.info("chain.pushed_already", id=doc["id"], next=nxt["id"])
        return
    runner.log.info("chain.next", id=doc["id"], next=nxt["id"], job=nxt["job"], left=len(rest) - 1)
