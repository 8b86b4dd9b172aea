"""``python -m benchmarks.render``: see :func:`benchmarks.render.main`."""

import sys

from benchmarks.render import main

sys.exit(main())
