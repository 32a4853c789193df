"""``python -m alignment_probe.realmodels.findings``: the real-model protocol, end to end (see the package)."""

from alignment_probe.realmodels.findings.driver import main

raise SystemExit(main())
