"""``python -m copyguard.pipelines`` is the same as the ``copyguard`` command."""

import sys

from copyguard.pipelines.cli import main

sys.exit(main())
