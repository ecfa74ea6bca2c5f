"""Which Host names a dashboard answers for (the DNS rebinding guard)."""
from __future__ import annotations

from farm.dashboard.server import host_name, loopback_hosts


def test_the_host_header_is_read_without_its_port() -> None:
    assert host_name("LocalHost:8085") == "localhost"
    assert host_name("[::1]:8085") == "::1"
    assert host_name("::1") == "::1"
    assert host_name("farm.example.com") == "farm.example.com"


def test_a_loopback_dashboard_answers_for_loopback_names_and_the_allowed_ones_only() -> None:
    assert loopback_hosts("127.0.0.1", ("Farm.Example.com",)) == {"localhost", "farm.example.com"}
    assert loopback_hosts("::1", ()) == {"localhost"}
    assert loopback_hosts("0.0.0.0", ("x",)) is None        # every name: it is meant to be reached
    assert loopback_hosts("10.1.2.3", ()) is None
