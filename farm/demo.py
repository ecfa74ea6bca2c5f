"""Demo jobs for `scripts/up`: mail to a local maildir, invoices as files, a flaky API."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import farm

OUT = Path(os.environ.get("FARM_DEMO_DIR", "var/demo"))


class SendEmail(farm.Job):
    queue = "emails"
    tries = 3
    backoff = [1, 5, 10]
    timeout = 30

    def __init__(self, to: str, subject: str, body: str = "") -> None:
        self.to, self.subject, self.body = to, subject, body

    def handle(self) -> None:
        box = OUT / "maildir" / "new"
        box.mkdir(parents=True, exist_ok=True)
        name = f"{time.time():.6f}.{self.job_id}.eml"
        (box / name).write_text(f"To: {self.to}\nSubject: {self.subject}\n\n{self.body}\n")


class MakeInvoice(farm.Job):
    queue = "invoices"

    def __init__(self, number: int, customer: str, lines: list[dict]) -> None:
        self.number, self.customer, self.lines = number, customer, lines

    def handle(self) -> None:
        folder = OUT / "invoices"
        folder.mkdir(parents=True, exist_ok=True)
        total = sum(line["qty"] * line["price"] for line in self.lines)
        text = "\n".join([f"INVOICE {self.number} for {self.customer}"]
                         + [f"{line['qty']} x {line['item']} @ {line['price']:.2f}" for line in self.lines]
                         + [f"TOTAL {total:.2f}"])
        (folder / f"invoice-{self.number}.txt").write_text(text + "\n")


class FlakyApi(farm.Job):
    """Fails twice, then succeeds: shows tries and backoff."""

    queue = "api"
    tries = 3
    backoff = [1, 2]

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def handle(self) -> None:
        if self.attempts < 3:
            raise ConnectionError(f"{self.endpoint}: 503 Service Unavailable (attempt {self.attempts})")
        folder = OUT / "api"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{self.job_id}.json").write_text(json.dumps({"endpoint": self.endpoint, "ok": True}))


@farm.job(queue="reports")
def daily_report(kind: str) -> None:
    folder = OUT / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{kind}.txt").write_text(f"{kind} report made at {time.strftime('%H:%M:%S')}\n")


def dispatch_all() -> list[str]:
    """The demo's batch of work: five emails, three invoices, one flaky call, one report."""
    ids = [farm.dispatch(SendEmail(f"user{i}@example.com", f"Welcome #{i}")) for i in range(5)]
    ids += [farm.dispatch(MakeInvoice(1000 + i, f"Customer {i}",
                                      [{"item": "widget", "qty": i + 1, "price": 9.5}])) for i in range(3)]
    ids.append(farm.dispatch(FlakyApi("https://api.example.com/charge")))
    ids.append(daily_report.dispatch("daily"))
    return [i for i in ids if i]
