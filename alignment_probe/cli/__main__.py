"""``python -m alignment_probe.cli``: the command line, as ``alignment-probe``."""

import sys

from alignment_probe.cli.entry import main

sys.exit(main())
