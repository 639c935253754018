"""What makes a cell do the same again in a fresh sandbox: a resumed job replays its cells.

- ``hash()`` of str and bytes, and so the order of sets and of dicts built from them:
  every sandbox interpreter starts with ``PYTHONHASHSEED=HASH_SEED`` (the backends put
  ``ENVIRONMENT`` in the runtime's environment). One fixed value for every sandbox: a
  pooled sandbox starts before its job is known, so the seed cannot come from the job.
  A known seed lets crafted input collide in a dict; inside the sandbox that only slows
  the job's own cells, which run under their time limit anyway.
- ``random``: seeded with the job's seed (``Bootstrap.seed`` or ``LoadContext.seed``)
  right after the context is loaded, before the first cell.

Time, ``os.urandom`` and the like still differ between runs.
"""

from __future__ import annotations

import random
import sys

HASH_SEED = 0
ENVIRONMENT = {"PYTHONHASHSEED": str(HASH_SEED)}


def hash_seed_fixed() -> bool:
    """Whether this interpreter started with hash randomisation off (PYTHONHASHSEED=0)."""
    return not sys.flags.hash_randomization


def seed_random(seed: int) -> None:
    """Seed the ``random`` module the cells will import (the same module object)."""
    random.seed(seed)
