"""``python -m alignment_probe`` is the ``alignment-probe`` command line; it is also what torchrun
launches: ``torchrun --nproc_per_node N -m alignment_probe run ... --out DIR``."""

import sys

from alignment_probe.cli import main

if __name__ == "__main__":
    sys.exit(main())
