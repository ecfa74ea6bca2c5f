"""`farmctl init`: a starter manifest and jobs module, and the commands to run next."""
from __future__ import annotations

import shlex
from pathlib import Path

import click

from ..cli import cli
from ..errors import FarmError

MANIFEST = """\
# jobfarm manifest, written by `farmctl init` (every key: see the README).
imports: [jobs]                      # modules whose jobs workers may run (jobs.py beside conf/)
default: database                    # the connection farm.dispatch uses
connections:
  database:
    driver: database                 # SQLite here; postgresql+psycopg://... or mysql+pymysql://...
    url: ${FARM_DB_URL:-sqlite:///var/farm.db}
    retry_after: 90                  # a reservation not renewed for this long is given back
pipelines:                           # one supervisord program each (`farmctl render`)
  worker:
    queues: [default]                # in priority order
    numprocs: 2
    timeout: 60                      # seconds one attempt may run
    tries: 3
    memory: 256                      # MB of RSS; past it the worker exits after its job
supervisor: {dir: supervisor, logs: var/log}
systemd: {dir: systemd}
"""

JOBS = '''\
"""Jobs: dispatch them with farm.dispatch(...); `farmctl work` runs them."""
import farm


class Greet(farm.Job):
    queue = "default"
    tries = 3                    # attempts before the job counts as failed
    backoff = [1, 5, 10]         # seconds before retry n
    timeout = 30                 # seconds one attempt may run

    def __init__(self, name):
        self.name = name         # public attributes are the payload (JSON values)

    def handle(self):
        print(f"hello, {self.name} (job {self.job_id}, attempt {self.attempts})", flush=True)
'''

FILES = {Path("conf/farm.yaml"): MANIFEST, Path("jobs.py"): JOBS}


def next_steps(directory: Path) -> str:
    """What to type after `init`, from the directory it was run in."""
    cd = [] if directory == Path(".") else [f"cd {shlex.quote(str(directory))}"]
    first = cd + [
        """python -c 'import farm, jobs; print(farm.dispatch(jobs.Greet("world")))'   # queue a job""",
        "farmctl work --stop-when-empty                                              # run it, then exit",
    ]
    then = [
        "farmctl render                                   # supervisor/ files from conf/farm.yaml",
        "supervisord -c supervisor/supervisord.conf       # the pipeline's workers, kept running",
        "farmctl status                                   # queues, workers, supervisord's processes",
        "supervisorctl -c supervisor/supervisord.conf shutdown   # stop them",
    ]
    return ("\nNext, with this environment's python and farmctl on PATH:\n" + "".join(f"  {c}\n" for c in first)
            + "Then run the workers under supervisord:\n" + "".join(f"  {c}\n" for c in then))


@cli.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Write a starter conf/farm.yaml and jobs.py (never over existing files) and say what next."""
    existing = [str(directory / p) for p in FILES if (directory / p).exists()]
    if existing:
        raise FarmError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: "
                        "nothing written (init never overwrites)")
    for path, text in FILES.items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "x") as out:        # "x": a file that appeared meanwhile is not replaced
            out.write(text)
        click.echo(f"wrote {target}")
    click.echo(next_steps(directory), nl=False)
