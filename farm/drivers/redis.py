"""The `redis` driver: Redis (standalone, Sentinel or Cluster) through redis-py.

A queue's jobs live in keys sharing its hash tag, `<prefix>:{Q}:ready|delayed|reserved|...`
(the layout and the scripts are in `redis_lua`). A claim is one Lua script that moves up to N
jobs of the worker's queues, in priority order, from their ready lists into reservations with
a deadline; the worker's heart pushes the deadline on while a job runs, so only a dead
worker's jobs lapse and go back, after `retry_after`. Acks, releases, give-backs and failures
are scripts too, matched on the claim's handle. An idle worker waits on pub/sub (`wake`),
so a push starts it at once. Failed jobs, stamps and heartbeats stay in Redis unless `store:`
names a database connection.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterator, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.exceptions as rx
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError

from .. import counts, waker
from ..errors import DriverUnavailable, FarmError
from ..log import Log
from ..manifest import Connection
from . import redis_lua as lua
from .base import FailedJob, Outgoing, Reserved, done_info
from .redis_batches import RedisBatches

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFETCH = 100
READY_SCAN = 1000       # entries of a ready list read a call when a job is looked up by id
UNAVAILABLE = (rx.ConnectionError, rx.TimeoutError, rx.ClusterDownError, rx.ReadOnlyError,
               rx.TryAgainError, rx.MasterDownError)


def connect(url: str) -> Any:
    """A client for `url`: redis:// or rediss:// (a Cluster node is found out and followed),
    unix://, or redis+sentinel://[user:pass@]host:port[,host:port]/service[/db]."""
    # text replies; a document that is not UTF-8 keeps its bytes as surrogates (see _body)
    common = {"socket_connect_timeout": 5, "socket_timeout": 30, "socket_keepalive": True,
              "health_check_interval": 30, "decode_responses": True, "encoding_errors": "surrogateescape"}
    if url.startswith("redis+sentinel://"):
        from redis.sentinel import Sentinel

        u = urlsplit(url)
        hosts = [(h.rpartition(":")[0] or h, int(h.rpartition(":")[2] or 26379)) if ":" in h else (h, 26379)
                 for h in u.netloc.rpartition("@")[2].split(",")]
        service, _, db = u.path.strip("/").partition("/")
        query = {k: v[-1] for k, v in parse_qs(u.query).items()}
        auth = {"username": unquote(u.username) if u.username else None,
                "password": unquote(u.password) if u.password else None}
        sentinel_auth = {"password": query["sentinel_password"]} if "sentinel_password" in query else {}
        sentinel_kwargs = {"socket_connect_timeout": 5, "socket_timeout": 5, "socket_keepalive": True,
                           "ssl": query.get("ssl") == "true", **sentinel_auth}
        sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, ssl=query.get("ssl") == "true", **common)
        return sentinel.master_for(service or "mymaster", db=int(db or 0), **auth)
    client = redis.Redis.from_url(url, **common)
    try:
        if client.info("cluster").get("cluster_enabled"):
            client.close()
            # no retries of its own: a PUSH whose reply was lost would be queued twice
            return redis.RedisCluster.from_url(url, retry=Retry(NoBackoff(), 0), **common)
    except rx.ResponseError:
        pass                    # INFO refused by an ACL: a plain server, as far as we can tell
    return client


class RedisQueue(RedisBatches):    # batches: drivers/redis_batches.py
    supports_notify = True

    def __init__(self, conn: Connection, store: Any = None) -> None:
        self.name = conn.name
        self.config = conn
        self.keeps_failed = conn.failed_table is not None or store is not None   # null: Redis keeps none
        self.store = store              # a database connection for failed jobs etc., or None: Redis
        self.prefix = conn.prefix
        self.retry_after = float(conn.retry_after)
        self.prefetch = conn.prefetch or DEFAULT_PREFETCH
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._known: set[str] = set()   # queues this process has registered in `<prefix>:queues`
        self._pubsub: Any = None
        self._subscribed: tuple[str, ...] = ()
        self._claims = 0
        # a job's start is written before it runs (`starting`): these jobs' starts are; a
        # claimed job's successor in its batch gets its start written with the job's ack
        self._started: set[str] = set()
        self._successor: dict[str, Reserved] = {}
        with self._calling("cannot connect"):
            self.client = connect(conn.url or DEFAULT_URL)
        self.cluster = isinstance(self.client, redis.RedisCluster)
        self._scripts = {name: self.client.register_script(getattr(lua, name))
                         for name in ("PUSH", "CLAIM", "SETTLE", "RENEW", "CLEAR", "RETRY", "PRUNE",
                                      "INCR", "DROP")}

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """redis-py's errors end here: DriverUnavailable when Redis cannot be reached (or is a
        replica, or loading), FarmError when it refuses a command."""
        try:
            yield
        except MasterNotFoundError as e:       # its message holds the whole client's repr
            raise DriverUnavailable(f"connection {self.name!r}: {what}: no Sentinel named answers "
                                    "with a primary for the service") from e
        except UNAVAILABLE as e:
            raise DriverUnavailable(f"connection {self.name!r}: {what}: {_first_line(e)}") from e
        except rx.RedisError as e:
            raise FarmError(f"connection {self.name!r}: {what}: {_first_line(e)}") from e

    def _run(self, script: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        return self._scripts[script](keys=keys, args=args, client=client)

    def _run_all(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Several script calls in one round trip. A cluster runs them one by one: its
        pipelines would not reload a script a restarted node has forgotten."""
        if self.cluster or len(calls) == 1:
            return [self._run(*call) for call in calls]
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            self._run(*call, client=pipe)
        return pipe.execute()

    def _keys(self, queue: str) -> list[str]:
        return lua.keys(self.prefix, queue)

    def _wake(self, queue: str) -> str:
        return lua.wake_channel(self.prefix, queue)

    def _register(self, queues: Sequence[str]) -> None:
        """Remember queue names in `<prefix>:queues`, so status, failed and flush find them."""
        new = [q for q in queues if q not in self._known]
        if new:
            self.client.sadd(f"{self.prefix}:queues", *new)
            self._known.update(new)

    def queues(self) -> list[str]:
        with self._calling("cannot list queues"):
            return sorted(self.client.smembers(f"{self.prefix}:queues"))

    # -- the queue ---------------------------------------------------------------------
    def push(self, items: Sequence[Outgoing]) -> None:
        """One script per queue, all in one round trip; returns once Redis has them."""
        now = time.time()
        by_queue: dict[str, list[Any]] = {}
        for o in items:
            by_queue.setdefault(o.queue, []).extend([o.id, repr(o.available_at), o.attempts, o.body])
        with self._calling("push failed"):
            self._register(list(by_queue))
            self._run_all([("PUSH", [k[0], k[1], k[3], k[5]], [repr(now), self._wake(queue), *args])
                           for queue, args in by_queue.items() for k in [self._keys(queue)]])

    def reserve(self, queues: Sequence[str], limit: int, wait: float) -> list[Reserved]:
        """Up to `limit` jobs (at most `prefetch`), high-priority queues first; waits up to
        `wait` seconds for one on pub/sub, or until a delayed job falls due."""
        deadline = time.monotonic() + wait
        limit = max(1, min(limit, self.prefetch))
        with self._calling("cannot claim"):
            self._register(queues)      # a queue only other programs push to shows in status too
            while True:
                jobs, soonest = self._claim(queues, limit)
                if jobs:
                    return jobs
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                if soonest is not None:
                    remaining = min(remaining, max(0.0, soonest - time.time()) + 0.001)
                self._idle(queues, remaining)

    def _claim(self, queues: Sequence[str], limit: int) -> tuple[list[Reserved], float | None]:
        now = time.time()
        # a standalone server claims from every queue in one script; a cluster one queue a call
        groups = [[q] for q in queues] if self.cluster else [list(queues)]
        out: list[Reserved] = []
        soonest: float | None = None
        for group in groups:
            self._claims += 1
            claim = f"{self.token}:{self._claims}"      # the script numbers its jobs claim:1, claim:2, ...
            keys = [k for q in group for k in self._keys(q)]
            reply = self._run("CLAIM", keys, [repr(now), repr(now + self.retry_after), claim, limit - len(out)])
            for n, i in enumerate(range(1, len(reply), 4), start=1):
                q, jid, body, starts = reply[i:i + 4]
                out.append(Reserved(id=jid, queue=group[int(q)], body=_body(body), attempts=int(starts),
                                    handle=f"{claim}:{n}"))
            if reply[0]:
                soonest = float(reply[0]) if soonest is None else min(soonest, float(reply[0]))
            if len(out) >= limit:
                break
        self._successor = {a.handle: b for a, b in zip(out, out[1:])}
        return out, soonest

    def _idle(self, queues: Sequence[str], remaining: float) -> None:
        """Wait for a wake message on one of `queues`, a signal, or `remaining` seconds. The
        first wait subscribes and returns at once: the caller claims again, so a push made
        before the subscription is not missed."""
        channels = tuple(sorted(self._wake(q) for q in queues))   # a weighted worker's order changes each claim
        if self._pubsub is None or self._subscribed != channels:
            self._close_pubsub()
            self._pubsub = self.client.pubsub()
            self._pubsub.subscribe(*channels)
            self._subscribed = channels
            return
        try:
            if self._drained():
                return
            sock = self._pubsub.connection._sock
            if sock is None or (waker.wait(remaining, [sock.fileno()]) and self._drained()):
                return
        except UNAVAILABLE:
            self._close_pubsub()
            raise

    def _drained(self) -> bool:
        """Read what came on the subscription without waiting; True if a job was pushed."""
        woken = False
        while True:
            msg = self._pubsub.get_message(timeout=0)
            if msg is None:
                return woken
            woken = woken or msg.get("type") == "message"

    def _close_pubsub(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except Exception:
                pass
        self._pubsub, self._subscribed = None, ()

    def _settle(self, verb: str, job: Reserved, *extra: Any) -> bool:
        with self._calling(f"cannot {verb.replace('_', ' ')}"):
            return bool(self._run("SETTLE", self._keys(job.queue),
                                  [verb, job.id, job.handle, repr(time.time()), *extra]))

    def renew(self, jobs: Sequence[Reserved]) -> None:
        """Push on the deadlines of the jobs this worker still holds (only those)."""
        if not jobs:
            return
        by_queue: dict[str, list[str]] = {}
        for j in jobs:
            by_queue.setdefault(j.queue, []).extend([j.id, j.handle])
        until = repr(time.time() + self.retry_after)
        with self._calling("cannot renew"):
            self._run_all([("RENEW", [k[2], k[4]], [until, *args])
                           for queue, args in by_queue.items() for k in [self._keys(queue)]])

    def starting(self, job: Reserved) -> bool:
        """Write the job's start before it runs (unless its predecessor's ack did): a death
        counts against the job that was running, not the rest of a dead worker's batch."""
        if job.handle not in self._started:
            if not self._settle("start", job):
                return False    # its reservation lapsed and another worker holds it now
            self._started.add(job.handle)
        return True

    def _settled(self, job: Reserved) -> str:
        """Forget the job's start: '1' if it was written."""
        self._successor.pop(job.handle, None)
        if job.handle in self._started:
            self._started.discard(job.handle)
            return "1"
        return "0"

    def ack(self, job: Reserved) -> None:
        """Delete the job, and write the start of the next job of its batch in the same script
        (the worker starts it next, or hands it back, which takes the start back)."""
        if job.retain:                  # `retention`: kept as done, in Redis, until it expires
            self._settled(job)
            if self._settle("ack", job):
                try:                    # acked: a lost done record is logged, never an ack to retry
                    self.record_done(job.id, done_info(job, self.name, time.time()), time.time() + job.retain)
                except FarmError as e:
                    Log().warning("job.done_not_kept", id=job.id, error=str(e))
            return
        self._started.discard(job.handle)
        after = self._successor.pop(job.handle, None)
        if after is None or after.handle in self._started or after.queue != job.queue:
            self._settle("ack", job)
            return
        with self._calling("cannot ack"):
            wrote = self._run("SETTLE", self._keys(job.queue),
                              ["ack", job.id, job.handle, repr(time.time()), after.id, after.handle])
        if int(wrote or 0) == 2:        # not when this worker's hold on them lapsed
            self._started.add(after.handle)

    def release(self, job: Reserved, delay: float, body: str) -> None:
        self._settle("release", job, repr(time.time() + delay), body, self._wake(job.queue), self._settled(job))

    def give_back(self, jobs: Sequence[Reserved], delay: float = 0.0) -> None:
        """Back to the front of their queues, unstarted (the start is uncounted), in order; with
        a `delay` (middleware held them back), to the delayed set until then."""
        if not jobs:
            return
        now = time.time()
        with self._calling("cannot give back"):
            self._run_all([("SETTLE", self._keys(job.queue), ["give_back", job.id, job.handle, repr(now),
                                                              self._wake(job.queue), self._settled(job),
                                                              repr(now + delay)])
                           for job in reversed(jobs)])

    def fail(self, job: Reserved, body: str, error: str) -> bool:
        """To the failed jobs (Redis, or the store); False if this worker no longer holds it."""
        if isinstance(job.body, bytes):
            body = job.body.decode("utf-8", "backslashreplace")
        now = time.time()
        self._settled(job)
        if self.store is None and not self.keeps_failed:    # failed_table: null: not kept in Redis
            return self._settle("ack", job)
        if self.store is not None:
            if not self._settle("own", job):
                return False
            self.store.add_failed(FailedJob(job.id, self.name, job.queue, body, error, now))
            return self._settle("ack", job)
        entry = json.dumps({"connection": self.name, "queue": job.queue, "body": body,
                            "exception": error, "failed_at": now})
        return self._settle("fail", job, entry)

    def counts(self) -> dict[str, dict[str, int | None]]:
        """Ready, delayed, reserved and failed per known queue, in one round trip."""
        from .. import app

        names = set(self.queues())
        names |= {q for p in app.manifest().pipelines.values() if p.connection == self.name for q in p.queues}
        order = sorted(names)
        with self._calling("cannot count"):
            pipe = self.client.pipeline(transaction=False)
            now = repr(time.time())     # due delayed jobs and lapsed reservations are ready
            for q in order:             # (a worker's claim moves them): listen and KEDA see them
                k = self._keys(q)
                pipe.llen(k[0]).zcount(k[1], "-inf", now).zcount(k[2], "-inf", now)
                pipe.zcount(k[1], f"({now}", "+inf").zcount(k[2], f"({now}", "+inf").zcard(k[7])
            replies = pipe.execute()
        failed = self.store.failed_by_queue(self.name) if self.store is not None else {}
        out: dict[str, dict[str, int | None]] = {}
        for i, q in enumerate(order):
            listed, due, lapsed, delayed, reserved, own_failed = replies[6 * i:6 * i + 6]
            out[q] = {"ready": listed + due + lapsed, "delayed": delayed, "reserved": reserved,
                      "failed": failed.get(q, 0) if self.store is not None else own_failed}
        for q, n in failed.items():
            out.setdefault(q, {"ready": 0, "delayed": 0, "reserved": 0, "failed": n})
        return out

    def clear(self, queue: str) -> int:
        with self._calling("cannot clear"):
            return int(self._run("CLEAR", self._keys(queue), []))

    def _op(self, name: str) -> Any:
        """An operations script (LOOKUP, CANCEL), registered on first use."""
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(getattr(lua, name))
        return script

    def _every_queue(self) -> list[str]:
        from .. import app

        names = set(self.queues())
        names |= {q for p in app.manifest().pipelines.values() if p.connection == self.name for q in p.queues}
        return sorted(names)

    def lookup(self, job_id: str) -> dict[str, Any] | None:
        """The job on whichever queue holds it (a script per queue finds a delayed or reserved
        one by id; a ready one is found by scanning the ready lists), or None."""
        from .database import waiting_state

        now = time.time()
        with self._calling("cannot look the job up"):
            queues = self._every_queue()
            for q in queues:
                found = self._op("LOOKUP")(keys=self._keys(q), args=[job_id])
                if found:
                    state, body, starts, owner, score = found
                    token = owner.rsplit(":", 2)[0] if state == "reserved" else None   # <token>:<claim>:<n>
                    return waiting_state(q, body, int(starts), float(score), token, now)
            for q in queues:
                body = self._find_ready(q, job_id)
                if body is not None:
                    starts = self.client.hget(self._keys(q)[5], job_id)
                    return waiting_state(q, body, int(starts or 0), now, None, now)
        return None

    def cancel(self, job_id: str) -> bool | None:
        """Remove the job if no worker holds it: True; False if one does; None if unknown. A
        ready one goes with one LREM of its document, atomic against a worker's claim."""
        with self._calling("cannot cancel"):
            queues = self._every_queue()
            for q in queues:
                result = int(self._op("CANCEL")(keys=self._keys(q), args=[job_id]))
                if result >= 0:
                    return bool(result)
            for q in queues:
                body = self._find_ready(q, job_id)
                if body is None:
                    continue
                k = self._keys(q)
                if not self.client.lrem(k[0], 1, body):
                    return False            # claimed meanwhile: a worker holds it now
                self.client.hdel(k[5], job_id)
                return True
        return None

    def _find_ready(self, queue: str, job_id: str) -> str | None:
        """The document of a ready job of `queue`: its list read READY_SCAN entries a call from
        the left, so Redis is never blocked for long; a push moves entries further on, never
        back past the scan, so an entry that stays is not missed."""
        key = self._keys(queue)[0]
        start = 0
        while True:
            chunk = self.client.lrange(key, start, start + READY_SCAN - 1)
            for body in chunk:
                if job_id in body and _doc_id(body) == job_id:
                    return body
            if len(chunk) < READY_SCAN:
                return None
            start += READY_SCAN

    def record_done(self, job_id: str, info: dict[str, Any], until: float) -> None:
        ttl = max(1, int(until - time.time() + 0.999))
        with self._calling("cannot keep a done job"):
            self.client.set(f"{self.prefix}:done:{job_id}", json.dumps(info), ex=ttl)

    def done_job(self, job_id: str) -> dict[str, Any] | None:
        with self._calling("cannot read a done job"):
            raw = self.client.get(f"{self.prefix}:done:{job_id}")
        return json.loads(raw) if raw else None

    def prune_done(self, before: float) -> int:
        return 0                        # Redis expires them itself

    def notes(self) -> list[str]:
        """What `farmctl status` should warn about: a server that keeps nothing on disk."""
        try:
            info = self.client.info("persistence")
            config = self.client.config_get("save") | self.client.config_get("maxmemory-policy")
        except (rx.RedisError, AttributeError, TypeError):
            return []           # CONFIG refused (managed Redis), or a cluster's per-node replies
        out = []
        if not info.get("aof_enabled") and not str(config.get("save", "?")).strip():
            out.append(f"connection {self.name!r}: Redis runs with persistence off (no AOF, no RDB "
                       "snapshots): a restart of Redis loses every queued, delayed and reserved job")
        elif not info.get("aof_enabled"):
            out.append(f"connection {self.name!r}: Redis runs without AOF (appendonly no): a restart "
                       "of Redis loses the jobs pushed since its last RDB snapshot")
        if config.get("maxmemory-policy", "noeviction") != "noeviction":
            out.append(f"connection {self.name!r}: maxmemory-policy is {config['maxmemory-policy']}: "
                       "Redis may evict queued jobs when it is full; set it to noeviction")
        return out

    def close(self) -> None:
        self._close_pubsub()
        try:
            self.client.close()
        except Exception:
            pass

    # -- the store (failed jobs, stamps, heartbeats), when no `store:` is named -----------
    def _failed_queues(self, queue: str | None) -> list[str]:
        return [queue] if queue else self.queues()

    def add_failed(self, entry: FailedJob) -> None:
        k = self._keys(entry.queue)
        doc = {"connection": entry.connection, "queue": entry.queue, "body": entry.body,
               "exception": entry.exception, "failed_at": entry.failed_at}
        with self._calling("cannot store a failed job"):
            self._register([entry.queue])
            self.client.pipeline(transaction=False).hset(k[6], entry.id, json.dumps(doc)) \
                .zadd(k[7], {entry.id: entry.failed_at}).execute()

    def failed(self, ids: Sequence[str] | None = None, queue: str | None = None,
               limit: int | None = None) -> list[FailedJob]:
        out: list[FailedJob] = []
        with self._calling("cannot read failed jobs"):
            for q in self._failed_queues(queue):
                k = self._keys(q)
                wanted = list(ids) if ids else self.client.zrange(k[7], 0, (limit or 0) - 1)
                if not wanted:
                    continue
                for jid, raw in zip(wanted, self.client.hmget(k[6], wanted)):
                    if raw is not None:
                        d = json.loads(raw)
                        out.append(FailedJob(jid, d["connection"], d["queue"], d["body"], d["exception"],
                                             float(d["failed_at"])))
        out.sort(key=lambda f: (f.failed_at, f.id))
        return out[:limit] if limit else out

    def failed_by_queue(self, connection: str) -> dict[str, int]:
        return {q: c["failed"] or 0 for q, c in self.counts().items() if c["failed"]}

    def count_failed(self, queue: str | None = None) -> int:
        with self._calling("cannot count failed jobs"):
            return sum(self.client.zcard(self._keys(q)[7]) for q in self._failed_queues(queue))

    def forget(self, ids: Sequence[str]) -> int:
        n = 0
        with self._calling("cannot forget"):
            for q in self.queues():
                k = self._keys(q)
                pipe = self.client.pipeline(transaction=False)
                for jid in ids:
                    pipe.hdel(k[6], jid).zrem(k[7], jid)
                n += sum(pipe.execute()[::2])
        return n

    def retry_failed(self, entries: Sequence[FailedJob], queue: str | None = None) -> int:
        """Back onto their queue, attempts reset: one script per queue, atomic with the delete;
        onto another queue (`queue`): pushed there, then forgotten."""
        n = 0
        by_queue: dict[str, list[str]] = {}
        moved: list[Outgoing] = []
        for e in entries:
            doc = json.loads(e.body)
            doc["attempts"], doc["queue"] = 0, queue or e.queue
            doc.pop("exceptions", None)
            body = json.dumps(doc, separators=(",", ":"))
            if queue and queue != e.queue:
                moved.append(Outgoing(id=e.id, queue=queue, body=body, available_at=time.time()))
            else:
                by_queue.setdefault(e.queue, []).extend([e.id, body])
        with self._calling("cannot retry"):
            for q, args in by_queue.items():
                n += int(self._run("RETRY", self._keys(q), [repr(time.time()), self._wake(q), *args]))
        if moved:
            self.push(moved)
            n += self.forget([o.id for o in moved])
        return n

    def prune_failed(self, before: float) -> int:
        with self._calling("cannot prune failed jobs"):
            return sum(int(self._run("PRUNE", self._keys(q)[6:8], [repr(before)])) for q in self.queues())

    def set_stamp(self, name: str, value: float) -> None:
        with self._calling("cannot write a stamp"):
            self.client.hset(f"{self.prefix}:stamps", name, repr(float(value)))

    def stamp(self, name: str) -> float | None:
        with self._calling("cannot read a stamp"):
            value = self.client.hget(f"{self.prefix}:stamps", name)
        return None if value is None else float(value)

    def delete_stamp(self, name: str) -> None:
        with self._calling("cannot delete a stamp"):
            self.client.hdel(f"{self.prefix}:stamps", name)

    def stamps(self, prefix: str) -> dict[str, float]:
        with self._calling("cannot read stamps"):
            found = self.client.hgetall(f"{self.prefix}:stamps")
        return {k: float(v) for k, v in found.items() if k.startswith(prefix)}

    def claim(self, name: str, expires: float) -> bool:
        """Take `name` if no one has: SET NX on a key of its own, which Redis drops at `expires`."""
        ttl = max(1, int(expires - time.time()) + 1)
        with self._calling("cannot claim"):
            return bool(self.client.set(f"{self.prefix}:claim:{name}", repr(float(expires)), nx=True, ex=ttl))

    def unclaim(self, name: str) -> None:
        with self._calling("cannot give a claim up"):
            self.client.delete(f"{self.prefix}:claim:{name}")

    # -- locks (farm/locks.py: unique jobs and middleware), in Redis even with a `store:` ------
    def incr(self, name: str, by: int, ttl: float) -> tuple[int, float]:
        """Add `by` to the counter `name` in one script; a missing or expired one starts from 0."""
        now = time.time()
        with self._calling("cannot count"):
            value, expires = self._run("INCR", [f"{self.prefix}:lock:{name}"], [by, repr(now + ttl), repr(now)])
        return int(value), float(expires)

    def drop(self, name: str, expires: float | None = None) -> bool:
        """Delete the counter; with `expires`, only while it still has that expiry (its holder's)."""
        with self._calling("cannot drop a lock"):
            return bool(self._run("DROP", [f"{self.prefix}:lock:{name}"],
                                  ["" if expires is None else repr(float(expires))]))

    def beat(self, worker: dict[str, Any]) -> None:
        with self._calling("cannot beat"):
            self.client.hset(f"{self.prefix}:workers", worker["id"], json.dumps(dict(worker, heartbeat=time.time())))

    def workers(self) -> list[dict[str, Any]]:
        with self._calling("cannot read workers"):
            return [json.loads(doc) for doc in self.client.hvals(f"{self.prefix}:workers")]

    def forget_worker(self, worker_id: str) -> None:
        with self._calling("cannot forget a worker"):
            self.client.hdel(f"{self.prefix}:workers", worker_id)

    def prune_workers(self, before: float) -> int:
        gone = [w["id"] for w in self.workers() if w["heartbeat"] < before]
        if gone:
            with self._calling("cannot prune workers"):
                self.client.hdel(f"{self.prefix}:workers", *gone)
        return len(gone)

    # counts (farm/counts.py): `<prefix>:counts` holds the totals, fields `n|s<TAB>queue<TAB>job
    # <TAB>outcome<TAB>le`; `<prefix>:counts:<minute>` a minute's, fields `queue<TAB>job<TAB>outcome`,
    # expiring by itself after counts.PRUNE_AFTER
    def add_counts(self, rows: Sequence[dict[str, Any]]) -> None:
        """Add a worker's sums: HINCRBY/HINCRBYFLOAT in one pipeline (one round trip)."""
        keyed = counts.key_rows(rows)
        if not keyed:
            return
        pipe = self.client.pipeline(transaction=False)
        for minute, q, j, o, le, n, seconds in keyed:
            if minute:
                key = f"{self.prefix}:counts:{minute}"
                pipe.hincrby(key, f"{q}\t{j}\t{o}", n)
                pipe.expire(key, int(counts.PRUNE_AFTER) + 120)
                continue
            pipe.hincrby(f"{self.prefix}:counts", f"n\t{q}\t{j}\t{o}\t{le}", n)
            if not le:
                pipe.hincrbyfloat(f"{self.prefix}:counts", f"s\t{q}\t{j}\t{o}\t", seconds)
        with self._calling("cannot add counts"):
            pipe.execute()

    def counts_by_minute(self, since: float) -> list[dict[str, Any]]:
        first, last = int(since) // 60 * 60, int(time.time()) // 60 * 60
        minutes = list(range(max(first, last - int(counts.PRUNE_AFTER)), last + 60, 60))
        pipe = self.client.pipeline(transaction=False)
        for minute in minutes:
            pipe.hgetall(f"{self.prefix}:counts:{minute}")
        with self._calling("cannot read counts"):
            found = pipe.execute()
        out = []
        for minute, fields in zip(minutes, found):
            for field, n in sorted(fields.items()):
                q, j, o = field.rsplit("\t", 2)
                out.append({"minute": minute, "queue": q, "job": j, "outcome": o, "n": int(n)})
        return out

    def job_totals(self) -> list[dict[str, Any]]:
        with self._calling("cannot read counts"):
            fields = self.client.hgetall(f"{self.prefix}:counts")
        rows: dict[tuple[str, str, str, str], list[Any]] = {}
        for field, value in fields.items():
            kind, rest = field.split("\t", 1)
            q, j, o, le = rest.rsplit("\t", 3)
            cell = rows.setdefault((q, j, o, le), [0, 0.0])
            cell[0 if kind == "n" else 1] = int(value) if kind == "n" else float(value)
        return counts.totals_from([(*k, n, s) for k, (n, s) in rows.items()])

    def prune_counts(self, before: float) -> int:
        return 0        # a minute's hash expires by itself


def _doc_id(body: str) -> Any:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc.get("id") if isinstance(doc, dict) else None


def _body(text: str) -> str | bytes:
    """The document as text, or as its bytes when they are not UTF-8 (the worker fails it)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
