"""One module per benchmarked system; each exposes `make(backend, tmp) -> System` (see harness)."""
