"""Dramatiq with publisher confirms on: not its default, but the guarantee jobfarm's dispatch gives.

Shown beside the peers, never counted as one: with confirms a returned `send` means RabbitMQ
has the message, as a returned `farm.dispatch` does.
"""
from __future__ import annotations

import os
from pathlib import Path

import dramatiq_sys


class DramatiqConfirm(dramatiq_sys.DramatiqSystem):
    name = "dramatiq_confirm"
    how = dramatiq_sys.DramatiqSystem.how + "; RabbitmqBroker(confirm_delivery=True)"

    def __init__(self, backend: str, tmp: Path, out: Path) -> None:
        os.environ["BENCH_CONFIRM"] = "1"       # read by dramatiq_app, here and in the workers
        super().__init__(backend, tmp, out)


def make(backend: str, tmp: Path, out: Path) -> DramatiqConfirm:
    return DramatiqConfirm(backend, tmp, out)
