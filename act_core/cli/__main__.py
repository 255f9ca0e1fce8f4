"""``python -m act_core.cli``: the same as ``act-steer``."""

import sys

from . import main

sys.exit(main())
