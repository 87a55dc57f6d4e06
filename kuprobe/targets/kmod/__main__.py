"""``python -m kuprobe.targets.kmod [OUT]``: build the kprobe scenarios' test module."""

import sys

from kuprobe.targets.kmod import main

sys.exit(main(sys.argv[1:]))
