"""One line per event on stderr: `time level pid event key=value ...`, or JSON lines."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Log:
    def __init__(self, stream: TextIO | None = None, fmt: str = "text", level: str = "info") -> None:
        self.stream = stream or sys.stderr
        self.json = fmt == "json"
        self.level = _LEVELS[level]
        self.pid = os.getpid()

    def event(self, level: str, event: str, **fields: Any) -> None:
        if _LEVELS[level] < self.level:
            return
        now = time.time()
        if self.json:
            line = json.dumps({"time": round(now, 6), "level": level, "pid": self.pid, "event": event, **fields},
                              default=str)
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
            parts = [stamp, level.upper(), str(self.pid), event]
            parts.extend(f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None)
            line = " ".join(parts)
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass        # a closed stderr must not take the worker down

    def info(self, event: str, **fields: Any) -> None:
        self.event("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.event("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.event("error", event, **fields)


def _fmt(value: Any) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    text = text.splitlines()[0] if text else '""'
    return json.dumps(text) if (" " in text or '"' in text or "=" in text) else text
