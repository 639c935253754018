"""``python -m sandbox`` is the same as ``python -m sandbox.runtime``."""

import sys

from sandbox.runtime import main

sys.exit(main())
