"""Opening DBAPI connections from SQLAlchemy-style URLs, without importing SQLAlchemy.

Workers only run a handful of statements on raw connections; importing SQLAlchemy would
cost them 24 MB of RSS each. SQLAlchemy Core still owns the schema (sql.py), and is loaded
only when tables must be created or printed.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import FarmError

# scheme -> (dialect, DBAPI module, extra to install)
_SCHEMES = {
    "sqlite": ("sqlite", "sqlite3", ""), "sqlite+pysqlite": ("sqlite", "sqlite3", ""),
    "postgresql": ("postgresql", "psycopg", "postgres"), "postgresql+psycopg": ("postgresql", "psycopg", "postgres"),
    "postgres": ("postgresql", "psycopg", "postgres"),
    "mysql": ("mysql", "pymysql", "mysql"), "mysql+pymysql": ("mysql", "pymysql", "mysql"),
    "mariadb": ("mysql", "pymysql", "mysql"), "mariadb+pymysql": ("mysql", "pymysql", "mysql"),
}


@dataclass(frozen=True)
class Target:
    url: str
    dialect: str                      # sqlite, postgresql, mysql
    module_name: str
    extra: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def module(self) -> ModuleType:
        try:
            return importlib.import_module(self.module_name)
        except ImportError:
            raise FarmError(f"the {self.module_name} driver is not installed "
                            f"(pip install 'jobfarm[{self.extra}]')") from None


def dialect_of(url: str) -> str:
    """sqlite, postgresql or mysql, from the URL alone (nothing is opened or created)."""
    return _SCHEMES[_scheme(url)][0]


def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        known = "sqlite:///PATH, postgresql+psycopg://..., mysql+pymysql://..."
        raise FarmError(f"unsupported database URL {_hide(url)!r} (use {known})")
    return scheme


def parse(url: str) -> Target:
    """`postgresql+psycopg://user:pw@host:5432/db?sslmode=require` -> a Target (for SQLite,
    the file's directory is created)."""
    scheme = _scheme(url)
    rest = url.partition("://")[2]
    dialect, module_name, extra = _SCHEMES[scheme]
    if dialect == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        path = path.split("?", 1)[0] or ":memory:"
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return Target(url, dialect, module_name, extra, {"database": path})
    parts = urlsplit("x://" + rest)
    kwargs: dict[str, Any] = dict(parse_qsl(parts.query))
    if parts.hostname:
        kwargs["host"] = parts.hostname
    if parts.port:
        kwargs["port"] = parts.port
    if parts.username:
        kwargs["user"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    database = unquote(parts.path.lstrip("/"))
    if database:
        kwargs["dbname" if dialect == "postgresql" else "database"] = database
    return Target(url, dialect, module_name, extra, kwargs)


def connect(target: Target, autocommit: bool = True, multi: bool = False) -> Any:
    """A new DBAPI connection (sqlite: always autocommit, transactions begun by hand).
    `multi`: MySQL accepts several statements in one round trip (the worker's ack and the
    next job's start, one transaction; every value is still sent escaped)."""
    mod = target.module
    if target.dialect == "sqlite":
        return mod.connect(target.kwargs["database"], timeout=60, isolation_level=None,
                           check_same_thread=False)
    if target.dialect == "mysql":       # UPDATE's rowcount is rows matched, as on the others
        from pymysql.constants import CLIENT

        flags = CLIENT.FOUND_ROWS | (CLIENT.MULTI_STATEMENTS if multi else 0)
        return mod.connect(autocommit=autocommit, connect_timeout=10, client_flag=flags, **target.kwargs)
    return mod.connect(autocommit=autocommit, connect_timeout=10, **target.kwargs)


def sqlalchemy_engine(target: Target) -> Any:
    """An SQLAlchemy engine on the same database, for DDL only (imports SQLAlchemy)."""
    import sqlalchemy as sa

    name = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}[target.dialect]
    return sa.create_engine(f"{name}://", creator=lambda: connect(target, autocommit=False),
                            poolclass=sa.pool.NullPool)


def errors(target: Target) -> tuple[type[BaseException], ...]:
    """The DBAPI errors that may mean the server or the connection is in trouble."""
    mod = target.module
    return (mod.OperationalError, mod.InterfaceError)


def any_error(target: Target) -> tuple[type[BaseException], ...]:
    """Every error the DBAPI module raises (its `Error`), and a string it cannot encode."""
    return (target.module.Error, UnicodeEncodeError)


def _hide(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
