"""Keeping Python's cyclic garbage collector off the objects start-up left behind.

The edge imports torch, loads its data and builds its model before it serves: some 350,000
tracked objects that live as long as the process. Every full (generation 2) collection scanned
them all again: 0.2 s on a quiet machine, up to 0.6 s on a busy one, several times a round with
hundreds of devices, and the event loop stood still meanwhile (bench_edge_scale.py). Frozen,
they are skipped, and a full collection only walks what the rounds allocate (~25 ms for 500
devices). Reference counting still frees frozen objects; only cyclic garbage among them would
stay, and start-up's garbage is collected just before freezing.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """While inside: what exists at entry is out of the garbage collector's sight."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
