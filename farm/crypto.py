"""Encrypted payloads (`encrypted = True`): the job's `data` sealed with Fernet and $FARM_KEY.

`$FARM_KEY` holds one or more comma-separated Fernet keys (`Fernet.generate_key()`): the
first encrypts, each is tried to decrypt, so a key is rotated by putting the new one first
and dropping the old one once no job sealed with it is left. Only `data` is sealed; the rest
of the document (id, job, queue, tries, ...) stays readable for workers and operators.
"""
from __future__ import annotations

import os
import threading
from typing import Any

from .errors import FarmError, PayloadError

TAG = "$encrypted"
ENV = "FARM_KEY"
_lock = threading.Lock()
_cache: dict[str, Any] = {}        # $FARM_KEY's text -> its MultiFernet


def _fernet(required_by: str) -> Any:
    """The MultiFernet for $FARM_KEY as it is now; FarmError if it is unset or not Fernet keys."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        raise FarmError(f"{required_by}: ${ENV} is not set (one or more comma-separated Fernet keys, "
                        "from `python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)")
    found = _cache.get(text)
    if found is not None:
        return found
    from cryptography.fernet import Fernet, MultiFernet

    keys = []
    for i, part in enumerate(p.strip() for p in text.split(",")):
        try:
            keys.append(Fernet(part.encode("ascii")))
        except (ValueError, UnicodeEncodeError):
            raise FarmError(f"${ENV}: key {i + 1} is not a Fernet key (32 url-safe base64-encoded bytes)") from None
    with _lock:
        _cache.clear()
        _cache[text] = MultiFernet(keys)
    return _cache[text]


def seal(data_json: str, owner: str) -> dict[str, str]:
    """`{"$encrypted": token}` for the job's data (its JSON text), with $FARM_KEY's first key."""
    token = _fernet(f"{owner} is encrypted").encrypt(data_json.encode("utf-8"))
    return {TAG: token.decode("ascii")}


def is_sealed(data: dict[str, Any]) -> bool:
    return len(data) == 1 and TAG in data


def unseal(data: dict[str, Any]) -> str:
    """The data's JSON text; PayloadError naming FARM_KEY when no key of it opens the token."""
    from cryptography.fernet import InvalidToken

    token = data[TAG]
    if not isinstance(token, str):
        raise PayloadError(f"data: {TAG!r} must be a Fernet token (a string)")
    try:
        fernet = _fernet("the job's data is encrypted")
    except FarmError as e:
        raise PayloadError(f"cannot decrypt the job's data: {e}") from None
    try:
        return fernet.decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError):
        raise PayloadError(f"cannot decrypt the job's data: no key in ${ENV} opens it "
                           f"(a wrong or rotated-out key, or a damaged token)") from None
