"""``python -m kuprobe``: the same as the ``kuprobe`` command."""

import sys

from kuprobe.cli import main

sys.exit(main())
