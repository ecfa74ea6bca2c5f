"""The dashboard's HTTP server: routes, the token check, JSON errors, the page's own files.

ThreadingHTTPServer answers each request on a thread of its own, so several browsers are
served at once; none of them waits on a database for the page's refresh (data.Snapshot).
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import re
import socket
import sys
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import FarmError, UnknownJob, UsageError
from . import data

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/app.css": ("app.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
ACTION = re.compile(r"^/api/failed/([^/]+)/(retry|forget)$")
ONE = re.compile(r"^/api/failed/([^/]+)$")
JOB = re.compile(r"^/api/jobs/([^/]+)$")
CANCEL = re.compile(r"^/api/jobs/([^/]+)/cancel$")
QUEUE_ACTION = re.compile(r"^/api/queues/([^/]+)/(pause|resume)$")
MAX_PAGE = 10_000


class HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Dashboard(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], farm: data.FarmThread, snapshot: data.Snapshot,
                 token: str | None, allow_hosts: tuple[str, ...] = ()) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.farm, self.snapshot, self.token = farm, snapshot, token or None
        self.hosts = loopback_hosts(self.server_address[0], allow_hosts)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A browser that went away mid-answer (a closed tab) is not an error worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    server: Dashboard
    server_version = "farm-dashboard"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(self._get)

    def do_POST(self) -> None:
        self._answer(self._post)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (a malformed request, an unknown method) as JSON."""
        self.close_connection = True
        try:
            status = HTTPStatus(code)
        except ValueError:
            status = HTTPStatus.BAD_REQUEST
        self._json({"error": message or status.phrase}, status)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Actions and refusals are logged; the page's own reads (every few seconds) are not."""
        if self.command != "GET" or not str(code).startswith("2"):
            super().log_request(code, size)

    def log_message(self, format: str, *args: Any) -> None:       # one line per request on stderr
        sys.stderr.write(f"dashboard {self.address_string()} {format % args}\n")

    def _answer(self, route: Callable[[str, dict[str, list[str]]], tuple[bytes, str] | Any]) -> None:
        url = urlsplit(self.path)
        try:
            self._check_host()
            result = route(url.path, parse_qs(url.query))
        except HTTPError as e:
            self._json({"error": e.message}, e.status, e.headers)
        except UnknownJob as e:
            self._json({"error": str(e)}, HTTPStatus.NOT_FOUND)
        except UsageError as e:
            self._json({"error": str(e)}, HTTPStatus.BAD_REQUEST)
        except FarmError as e:
            self._json({"error": str(e)}, HTTPStatus.SERVICE_UNAVAILABLE)
        except Exception as e:     # noqa: BLE001 - the client gets one line, the log the traceback
            traceback.print_exc(file=sys.stderr)
            self._json({"error": f"internal error: {type(e).__name__}"}, HTTPStatus.INTERNAL_SERVER_ERROR)
        else:
            if isinstance(result, tuple):
                self._send(HTTPStatus.OK, *result)
            else:
                self._json(result, HTTPStatus.OK)

    def _get(self, path: str, query: dict[str, list[str]]) -> Any:
        if path in STATIC:
            name, ctype = STATIC[path]
            return resources.files(__package__).joinpath("static", name).read_bytes(), ctype
        if path == "/api/status":
            return self.server.snapshot.get()
        if path == "/metrics":
            return self.server.farm.call(data.metrics), "text/plain; version=0.0.4; charset=utf-8"
        if path == "/api/failed":
            page = _page(query)
            return self.server.farm.call(data.failed_page, _arg(query, "queue"), _arg(query, "job"), page)
        if m := ONE.match(path):
            return self.server.farm.call(data.failed_one, unquote(m.group(1)))
        if m := JOB.match(path):
            found = self.server.farm.call(data.job, unquote(m.group(1)))
            if found is None:
                raise HTTPError(HTTPStatus.NOT_FOUND, f"no job with id {unquote(m.group(1))}")
            return found
        if ACTION.match(path) or CANCEL.match(path) or QUEUE_ACTION.match(path):
            raise HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, "use POST", {"Allow": "POST"})
        raise HTTPError(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    def _post(self, path: str, query: dict[str, list[str]]) -> Any:
        if m := CANCEL.match(path):
            self._authorize()
            job_id = unquote(m.group(1))
            done = self.server.farm.call(data.cancel, job_id)
            if not done.ok:
                raise HTTPError(HTTPStatus.CONFLICT, done.reason)
            self.server.snapshot.refresh_soon()
            return {"id": job_id, "cancelled": True}
        if m := QUEUE_ACTION.match(path):
            self._authorize()
            queue, verb = unquote(m.group(1)), m.group(2)
            self.server.farm.call(data.pause if verb == "pause" else data.resume, queue)
            self.server.snapshot.refresh_soon()
            return {"queue": queue, "paused": verb == "pause"}
        m = ACTION.match(path)
        if not m:
            if path in STATIC or path in ("/api/status", "/metrics", "/api/failed") or ONE.match(path) \
                    or JOB.match(path):
                raise HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, "use GET", {"Allow": "GET"})
            raise HTTPError(HTTPStatus.NOT_FOUND, f"no such action: {path}")
        self._authorize()
        job_id, verb = unquote(m.group(1)), m.group(2)
        fn = data.retry if verb == "retry" else data.forget
        n = self.server.farm.call(fn, job_id)
        self.server.snapshot.refresh_soon()
        return {"id": job_id, "retried" if verb == "retry" else "forgotten": n}

    def _check_host(self) -> None:
        """On a loopback address, only requests for a loopback name (or an --allow-host one): a
        page elsewhere cannot read the farm through a DNS name rebound to 127.0.0.1."""
        if self.server.hosts is None:
            return
        host = host_name(self.headers.get("Host", ""))
        if host not in self.server.hosts and not _is_loopback(host):
            raise HTTPError(HTTPStatus.FORBIDDEN, f"this dashboard does not answer for Host {host!r} "
                                                  "(farmctl dashboard --allow-host NAME)")

    def _authorize(self) -> None:
        """403 when no token is configured (read-only); 401 when the request's is missing or wrong."""
        if not self.server.token:
            raise HTTPError(HTTPStatus.FORBIDDEN, "read-only: FARM_DASHBOARD_TOKEN is not set on the dashboard")
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.server.token.encode()):
            raise HTTPError(HTTPStatus.UNAUTHORIZED, "missing or wrong token (Authorization: Bearer TOKEN)",
                            {"WWW-Authenticate": 'Bearer realm="farm"'})

    def _json(self, doc: Any, status: HTTPStatus, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(doc, default=str).encode(), "application/json", headers)

    def _send(self, status: HTTPStatus, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _arg(query: dict[str, list[str]], name: str) -> str | None:
    value = (query.get(name) or [""])[0].strip()
    return value or None


def _page(query: dict[str, list[str]]) -> int:
    raw = _arg(query, "page") or "0"
    if not raw.isdigit() or int(raw) > MAX_PAGE:
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"page: expected a whole number from 0 to {MAX_PAGE}, got {raw!r}")
    return int(raw)


def loopback_hosts(bound: str, allow: tuple[str, ...]) -> set[str] | None:
    """The Host names served when listening on a loopback address; None (any) elsewhere."""
    if not _is_loopback(bound):
        return None
    return {"localhost", *(h.lower() for h in allow)}


def host_name(header: str) -> str:
    """`Host: name:port` -> name (`[::1]:8085` -> `::1`)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
