"""`urls:` failover: short pika connect timeouts with several brokers, pika's own with one."""
from __future__ import annotations

from farm.drivers.amqp import FAILOVER_SOCKET_TIMEOUT, FAILOVER_STACK_TIMEOUT, _parameters

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def test_several_urls_get_short_connect_timeouts_so_a_silent_broker_costs_seconds():
    p = _parameters(URL, 60, several=True)
    assert (p.socket_timeout, p.stack_timeout) == (FAILOVER_SOCKET_TIMEOUT, FAILOVER_STACK_TIMEOUT)
    assert FAILOVER_STACK_TIMEOUT <= 3


def test_one_url_keeps_pikas_timeouts():
    p = _parameters(URL, 60)
    assert (p.socket_timeout, p.stack_timeout) == (10.0, 15.0)


def test_a_timeout_in_the_urls_query_string_wins_over_the_failover_default():
    p = _parameters(URL + "?socket_timeout=7&stack_timeout=9", 60, several=True)
    assert (p.socket_timeout, p.stack_timeout) == (7.0, 9.0)
