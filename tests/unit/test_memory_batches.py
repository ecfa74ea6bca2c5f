"""The in-process batch store of the sync and async drivers (farm/drivers/batchstore.py)."""
from __future__ import annotations

import time

from farm.drivers.batchstore import MemoryBatches


def test_expired_claims_are_dropped_so_a_long_lived_process_does_not_grow():
    # Given a store holding many claims that have expired
    store = MemoryBatches()
    past = time.time() - 1
    for i in range(1000):
        assert store.claim(f"batchadd:job-{i}:1", past)
    # When a new claim is taken
    assert store.claim("chain:next", time.time() + 60)
    # Then the expired ones are gone, and an expired name can be claimed again
    assert len(store._claims) == 1
    assert store.claim("batchadd:job-0:1", time.time() + 60)
    assert not store.claim("chain:next", time.time() + 60)
