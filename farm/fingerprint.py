"""Which code a worker runs: jobfarm's version and a hash of the `imports:` modules' files.

A worker takes its fingerprint once, right after it imported the modules; `farmctl status`
and `restart --wait` take the fingerprint of the files on disk now and compare. Only the
files of the modules listed under `imports:` count (not what those modules import in turn):
list the modules whose changes must recycle the farm.
"""
from __future__ import annotations

import sys
import zlib
from pathlib import Path
from typing import Iterable

from . import __version__, modsource


def of_files(paths: Iterable[tuple[str, str | None]]) -> str:
    """`<version>:<8 hex>` over (module, file) pairs; a module without a file counts by name.

    A CRC-32 tells an edited file from the one loaded (it is no defence against forgery, and
    needs no OpenSSL: hashlib would add 4 MB to every worker)."""
    crc = 0
    for module, path in sorted(paths, key=lambda p: p[0]):
        crc = zlib.crc32(module.encode() + b"\0", crc)
        if path:
            try:
                crc = zlib.crc32(Path(path).read_bytes(), crc)
            except OSError:
                crc = zlib.crc32(b"<unreadable>", crc)
        crc = zlib.crc32(b"\0", crc)
    return f"{__version__}:{crc:08x}"


def loaded(modules: Iterable[str]) -> str:
    """The fingerprint of the modules as this process imported them."""
    return of_files((m, getattr(sys.modules.get(m), "__file__", None)) for m in modules)


def on_disk(modules: Iterable[str], root: Path) -> str:
    """The fingerprint a worker started now would report; the files are found, not run."""
    return of_files((m, str(p) if (p := modsource.locate(m, root)) else None) for m in modules)
