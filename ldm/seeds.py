"""Seeds for random streams that must not depend on what ran before them."""

from __future__ import annotations

import numpy as np


def stream_seed(*parts: int) -> int:
    """A 64-bit seed mixed from (seed, index, stream): neighbouring steps get unrelated streams."""
    return int(np.random.SeedSequence([p % 2**64 for p in parts]).generate_state(1, np.uint64)[0])
