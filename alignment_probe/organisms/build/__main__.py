"""``python -m alignment_probe.organisms.build``: see the package docstring."""

from alignment_probe.organisms.build import main

raise SystemExit(main())
