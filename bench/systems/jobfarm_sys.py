"""jobfarm itself, on each of its backends: `farmctl work` processes, `farm.dispatch(_many)`."""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Sequence

import farm
from farm import app
import harness

HERE = Path(__file__).resolve().parent.parent
FARMCTL = str(Path(sys.executable).parent / "farmctl")
URLS = {
    "postgresql": os.environ.get("FARM_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "mysql": os.environ.get("FARM_BENCH_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test"),
    "amqp": os.environ.get("FARM_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    "redis": os.environ.get("FARM_BENCH_REDIS", "redis://127.0.0.1:6379/0"),
}


class Jobfarm:
    name = "jobfarm"
    how = "farmctl work --queue Q, one process per worker, defaults otherwise"

    def __init__(self, backend: str, tmp: Path, out: Path, url: str | None = None) -> None:
        """A fresh table (database), key prefix (redis) or queue (amqp) in `tmp`'s manifest;
        `url` puts a database connection elsewhere (scripts/bench --scale: a database of its own)."""
        self.backend = backend
        table = "bench_" + uuid.uuid4().hex[:8]
        if backend == "amqp":
            conn = (f"  main: {{driver: amqp, url: '{URLS['amqp']}', store: store}}\n"
                    f"  store: {{driver: database, url: 'sqlite:///{tmp}/store.db', table: {table}, "
                    f"failed_table: f{table}}}\n")
        elif backend == "redis":         # its keys under a prefix of the run's own, deleted after it
            conn = f"  main: {{driver: redis, url: '{URLS['redis']}', prefix: {table}}}\n"
        else:
            url = url or URLS.get(backend) or f"sqlite:///{tmp}/farm.db"
            conn = f"  main: {{driver: database, url: '{url}', table: {table}, failed_table: f{table}}}\n"
        manifest = tmp / "farm.yaml"
        manifest.write_text(f"imports: [benchjobs]\ndefault: main\nconnections:\n{conn}")
        self.queue = "q" + uuid.uuid4().hex[:8]
        self.table = table
        self.url = url
        self.queues = [self.queue]       # what the workers take from, in priority order
        self.flags: list[str] = []       # more `farmctl work` flags
        self.delays: set[int] = set()    # amqp: the delay queues (ms) to delete at close
        self.env = harness.worker_env(out, str(HERE.parent), FARM_CONFIG=str(manifest))
        farm.configure(manifest)
        import benchjobs

        self.kinds = {"tick": benchjobs.Tick, "stamp": benchjobs.Stamp}

    def reset(self) -> None:
        for q in self.queues:
            app.queue().clear(q)

    def worker_commands(self, workers: int) -> list[list[str]]:
        argv = [FARMCTL, "work", "--queue", ",".join(self.queues), "--log-level", "warning", *self.flags]
        return [list(argv) for _ in range(workers)]

    def dispatch(self, kind: str, n: int) -> None:
        farm.dispatch(self.kinds[kind](n), queue=self.queue)

    def dispatch_many(self, kind: str, ns: Sequence[int], queue: str | None = None,
                      delay: float | None = None) -> None:
        cls = self.kinds[kind]
        if delay and self.backend == "amqp":
            from farm.drivers.amqp_declare import delay_bucket

            self.delays.add(delay_bucket(delay))
        farm.dispatch_many([cls(n) for n in ns], queue=queue or self.queue, delay=delay)

    def close(self) -> None:
        app._close_all()                 # this process's connections first, then drop what the run made
        if self.backend == "amqp":
            import pika

            conn = pika.BlockingConnection(pika.URLParameters(URLS["amqp"]))
            channel = conn.channel()
            for q in {self.queue, *self.queues}:
                channel.queue_delete(q)
                for ms in self.delays:
                    channel.queue_delete(f"{q}.delay.{ms}")
            conn.close()
        elif self.backend == "redis":
            import redis

            client = redis.Redis.from_url(URLS["redis"])
            keys = list(client.scan_iter(match=f"{self.table}:*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
        elif self.backend != "sqlite":
            self._drop_tables()

    def _drop_tables(self) -> None:
        import sqlalchemy as sa

        from farm.drivers import dbapi

        engine = dbapi.sqlalchemy_engine(dbapi.parse(self.url or URLS[self.backend]))
        with engine.begin() as c:
            for t in (self.table, f"f{self.table}", f"{self.table}_stamps", f"{self.table}_workers"):
                c.execute(sa.text(f"DROP TABLE IF EXISTS {t}"))
        engine.dispose()


def make(backend: str, tmp: Path, out: Path) -> Jobfarm:
    return Jobfarm(backend, tmp, out)
