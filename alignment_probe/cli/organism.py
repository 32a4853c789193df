"""The ``organism build`` command: rebuild the bundled model organisms as a program of their own."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alignment_probe.errors import EXIT_OK


def cmd_organism(args: argparse.Namespace) -> int:
    # The build is a tool outside the runtime (pyproject's "build tools are leaves" contract): run it as its own
    # program, `python -m alignment_probe.organisms.build`, and read back the metrics file it writes.
    import json
    import subprocess

    out = Path(args.out)
    cmd = [sys.executable, "-m", "alignment_probe.organisms.build", "--out", str(out), "--seed", str(args.seed)]
    code = subprocess.call([*cmd, "--size", args.size], stdout=subprocess.DEVNULL)  # its progress log is on stderr
    if code != 0:
        print(
            f"alignment-probe: error: the organisms build exited with code {code} (its messages are above)",
            file=sys.stderr,
        )
        return code
    result = json.loads((out / "organisms" / "metrics.json").read_text(encoding="utf-8"))
    t = result["tuned"]
    print(
        f"built organisms in {args.out} (seed {args.seed}, {args.size}): held-out loss of base "
        f"{result['heldout_loss']['base_per_token_nats']:.3f} nats/token; tuned gain {t['mean_gain']:+.2f} "
        f"[{t['gain_ci95'][0]:+.2f}, {t['gain_ci95'][1]:+.2f}]; metrics in {Path(args.out) / 'organisms' / 'metrics.json'}"
    )
    return EXIT_OK
