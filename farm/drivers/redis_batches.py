"""Batch state in Redis (farm/batches.py), for a redis connection without `store:`.

    <prefix>:{batch:ID}       HASH  name, total, processed, failed, callbacks, created_at, and
                                    once set: finished_at, cancelled_at, then_at, catch_at, finally_at
    <prefix>:{batch:ID}:jobs  SET   the ids of its member jobs that have not finished: a job
                                    counts when FINISH takes its id out (so once, and only a member)
    <prefix>:{batch:ID}:done  SET   the ids of its members that have finished (GROW adds none again)
    <prefix>:batches          ZSET  ID -> created_at (the recent batches, for listing)

The two keys of a batch share a hash tag, so a Cluster runs the FINISH script on one node.
"""
from __future__ import annotations

import json
import time
from typing import Any, Sequence

from .base import Outgoing

# KEYS: the batch, its jobs; ARGV: job id, 1 if it failed, now. Counts the job once; the
# record after it (an empty reply for an unknown batch)
FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
if redis.call('SREM', KEYS[2], ARGV[1]) == 1 then
  redis.call('SADD', KEYS[3], ARGV[1])
  local processed = redis.call('HINCRBY', KEYS[1], 'processed', 1)
  if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[1], 'failed', 1) end
  local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
  if processed >= total then redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[3]) end
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: the batch, its pending and finished members; ARGV: 1 to add (-1 to take back), then
# job ids. Only a batch that exists changes; its total moves by the members really added (a
# member added again, even one that has finished since, is not), or taken back
GROW = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = 0
for i = 2, #ARGV do
  if ARGV[1] == '-1' then n = n - redis.call('SREM', KEYS[2], ARGV[i])
  elseif redis.call('SISMEMBER', KEYS[3], ARGV[i]) == 0 then n = n + redis.call('SADD', KEYS[2], ARGV[i]) end
end
redis.call('HINCRBY', KEYS[1], 'total', n)
return n
"""

# KEYS: the queue's ready, delayed, bodies, starts, and the claim (in the queue's hash slot).
# ARGV: now, wake channel, ttl, id, at, attempts, body. The claim and the push of one job in
# one step (a chain's next link): 0, with nothing written, when the claim was taken already
# (tested first: the job it pushed may be reserved by now, and that is not an error)
PUSH_ONCE = """
local ready, delayed, bodies, starts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
if redis.call('HEXISTS', bodies, ARGV[4]) == 1 then
  return redis.error_reply('a job with id ' .. ARGV[4] .. ' is already delayed or reserved on this queue')
end
redis.call('SET', KEYS[5], '1', 'EX', tonumber(ARGV[3]))
local before = redis.call('LLEN', ready)
local id, at, attempts, body = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
if attempts > 0 then redis.call('HSET', starts, id, attempts) end
if at > tonumber(ARGV[1]) then
  redis.call('HSET', bodies, id, body)
  redis.call('ZADD', delayed, at, id)
else
  redis.call('LPUSH', ready, body)
end
if before == 0 then redis.call('PUBLISH', ARGV[2], '1') end
return 1
"""


def _record(bid: str, h: dict[str, Any]) -> dict[str, Any] | None:
    if not h:
        return None
    return {"id": bid, "name": h.get("name") or None, "total": int(h["total"]), "processed": int(h["processed"]),
            "failed": int(h["failed"]), "callbacks": json.loads(h.get("callbacks") or "{}"),
            "created_at": float(h["created_at"]),
            "finished_at": float(h["finished_at"]) if h.get("finished_at") else None,
            "cancelled_at": float(h["cancelled_at"]) if h.get("cancelled_at") else None}


class RedisBatches:
    """The Store's batch methods for RedisQueue (a mixin: it brings `client`, `prefix`, `_calling`)."""

    def _batch_keys(self, batch_id: str) -> list[str]:
        return [f"{self.prefix}:{{batch:{batch_id}}}", f"{self.prefix}:{{batch:{batch_id}}}:jobs",
                f"{self.prefix}:{{batch:{batch_id}}}:done"]  # type: ignore[attr-defined]

    def add_batch(self, doc: dict[str, Any]) -> None:
        """The record and its members (`doc["jobs"]`) in one MULTI (one hash slot)."""
        jobs = list(doc.get("jobs") or ())
        fields = {"name": doc.get("name") or "", "total": len(jobs), "processed": 0, "failed": 0,
                  "callbacks": json.dumps(doc.get("callbacks") or {}), "created_at": repr(doc["created_at"])}
        if not jobs:
            fields["finished_at"] = repr(doc["created_at"])
        key, members, _ = self._batch_keys(doc["id"])
        with self._calling("cannot store a batch"):           # type: ignore[attr-defined]
            pipe = self.client.pipeline(transaction=True)      # type: ignore[attr-defined]
            for start in range(0, len(jobs), 1000):
                pipe.sadd(members, *jobs[start:start + 1000])
            pipe.hset(key, mapping=fields)
            pipe.execute()
            self.client.zadd(f"{self.prefix}:batches", {doc["id"]: doc["created_at"]})  # type: ignore[attr-defined]

    def grow_batch(self, batch_id: str, job_ids: Sequence[str]) -> None:
        with self._calling("cannot grow a batch"):            # type: ignore[attr-defined]
            self.client.eval(GROW, 3, *self._batch_keys(batch_id), "1", *job_ids)    # type: ignore[attr-defined]

    def shrink_batch(self, batch_id: str, job_ids: Sequence[str]) -> None:
        with self._calling("cannot shrink a batch"):          # type: ignore[attr-defined]
            self.client.eval(GROW, 3, *self._batch_keys(batch_id), "-1", *job_ids)   # type: ignore[attr-defined]

    def batch_job_finished(self, batch_id: str, job_id: str, failed: bool) -> dict[str, Any] | None:
        with self._calling("cannot count a batch's job"):     # type: ignore[attr-defined]
            flat = self.client.eval(FINISH, 3, *self._batch_keys(batch_id), job_id,   # type: ignore[attr-defined]
                                    "1" if failed else "0", repr(time.time()))
        return _record(batch_id, dict(zip(flat[::2], flat[1::2])))

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        with self._calling("cannot read a batch"):            # type: ignore[attr-defined]
            return _record(batch_id, self.client.hgetall(self._batch_keys(batch_id)[0]))  # type: ignore[attr-defined]

    def batches(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._calling("cannot read batches"):            # type: ignore[attr-defined]
            ids = self.client.zrevrange(f"{self.prefix}:batches", 0, int(limit) - 1)   # type: ignore[attr-defined]
            found = [(i, self.client.hgetall(self._batch_keys(i)[0])) for i in ids]  # type: ignore[attr-defined]
        return [r for r in (_record(i, h) for i, h in found) if r is not None]

    def cancel_batch(self, batch_id: str) -> bool:
        key = self._batch_keys(batch_id)[0]
        with self._calling("cannot cancel a batch"):          # type: ignore[attr-defined]
            if not self.client.exists(key):                   # type: ignore[attr-defined]
                return False
            self.client.hsetnx(key, "cancelled_at", repr(time.time()))   # type: ignore[attr-defined]
        return True

    def batch_fired(self, batch_id: str, which: str) -> bool:
        """Whether the batch's `which` callback has been pushed (its mark is set)."""
        with self._calling("cannot read a batch"):           # type: ignore[attr-defined]
            return bool(self.client.hexists(self._batch_keys(batch_id)[0], f"{which}_at"))  # type: ignore[attr-defined]

    def fire_batch(self, batch_id: str, which: str) -> bool:
        """True for the one caller that may push the batch's `which` callback (HSETNX)."""
        with self._calling("cannot fire a batch callback"):    # type: ignore[attr-defined]
            return bool(self.client.hsetnx(self._batch_keys(batch_id)[0], f"{which}_at", repr(time.time())))  # type: ignore[attr-defined]

    def unfire_batch(self, batch_id: str, which: str) -> None:
        with self._calling("cannot unfire a batch callback"):  # type: ignore[attr-defined]
            self.client.hdel(self._batch_keys(batch_id)[0], f"{which}_at")   # type: ignore[attr-defined]

    def claim_and_push(self, name: str, expires: float, items: Sequence[Outgoing],
                       grow: str | None = None) -> bool | None:
        """Take claim `name` and push the job in one script (its claim in the queue's hash
        slot); False when it was taken. With `grow` (a batch's add, whose jobs' ids are the
        same each time the adding job runs): the batch grows by those not added before, then
        each job is pushed once under claim `name:<n>`, so a rerun finishes what a killed worker
        began; True. None when it cannot be done here (several jobs without `grow`)."""
        if grow is not None:
            self.grow_batch(grow, [o.id for o in items])
            for n, o in enumerate(items):
                self.claim_and_push(f"{name}:{n}", expires, [o])
            return True
        if len(items) != 1:
            return None
        (o,) = items
        k = self._keys(o.queue)                          # type: ignore[attr-defined]
        ttl = max(1, int(expires - time.time()) + 1)
        with self._calling("push failed"):               # type: ignore[attr-defined]
            self._register([o.queue])                    # type: ignore[attr-defined]
            done = self.client.eval(PUSH_ONCE, 5, k[0], k[1], k[3], k[5],   # type: ignore[attr-defined]
                                    f"{self.prefix}:{{{o.queue}}}:claim:{name}",   # type: ignore[attr-defined]
                                    repr(time.time()), self._wake(o.queue), ttl,   # type: ignore[attr-defined]
                                    o.id, repr(o.available_at), o.attempts, o.body)
        return bool(done)

    def prune_batches(self, before: float) -> int:
        n = 0
        with self._calling("cannot prune batches"):           # type: ignore[attr-defined]
            for bid in self.client.zrange(f"{self.prefix}:batches", 0, -1):       # type: ignore[attr-defined]
                key, jobs, done = self._batch_keys(bid)
                finished = self.client.hget(key, "finished_at")                   # type: ignore[attr-defined]
                gone = not self.client.exists(key)                                # type: ignore[attr-defined]
                if gone or (finished and float(finished) < before):
                    self.client.delete(key)                                       # type: ignore[attr-defined]
                    self.client.delete(jobs, done)                                # type: ignore[attr-defined]
                    self.client.zrem(f"{self.prefix}:batches", bid)               # type: ignore[attr-defined]
                    n += 0 if gone else 1
        return n
