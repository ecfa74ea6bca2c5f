"""An `after` and a `before` handler that do nothing: what events cost a job (bench/workflows.py)."""
import farm


def _nothing(ev: farm.JobEvent) -> None:
    pass


farm.on("before", _nothing)
farm.on("after", _nothing)
