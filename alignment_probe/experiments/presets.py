"""The suite's presets (``alignment-probe run --suite tour|full``, ``ap.run_suite(..., suite=...)``): named sets of
option values for a run of the whole default suite. Pure data, so the command line reads them (the number of pairs
decides how many processes it starts) before anything heavy is imported;
:func:`alignment_probe.experiments.suite.preset_config` turns one into a
:class:`~alignment_probe.experiments.suite.SuiteConfig`, which records the preset's name (``preset``) in the manifest.

* ``tour`` (the default): every experiment and report section of the default suite, each at the resolution that
  shows its point on the bundled organisms, in about 25 s on a 2-core machine. 32 pairs (explore and confirm halves
  of 16; four parts of 8, two per process); the localisers at every layer — E1 tuned → base at every layer and hook
  (the curve, its peak set and onset, E7's components), the E8 windows at every block — and E0, E9's shift, the
  LASSO, low rank and E12 as in ``full``; the instruments read *against* E1 on a coarse grid, every other layer
  counted back from the last (8 layers: 1, 3, 5, 7), so E1's peak layer, where α is read, is on it: the random
  controls, α, the E5 sources and the 2×2 design (identity costs nothing and stays at every layer); E3's reverse
  direction at ``resid_post`` only.
* ``full``: the default suite as it was before presets: 80 pairs, every experiment at every swept layer, the reverse
  direction at every extra hook too.

A preset fills in only what a run leaves out, and only for the whole default suite: named ``--experiments`` run whole
(every swept layer), ``--layers`` replaces the coarse grid, and ``--n-pairs`` the number of pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Preset:
    """A named suite: the options it fills in where none is given. ``n_pairs`` is the run's (``--n-pairs``);
    ``options`` are :class:`~alignment_probe.experiments.suite.SuiteConfig` fields."""

    name: str
    n_pairs: int
    about: str  # one line, for --help
    options: Mapping[str, Any] = field(default_factory=dict)


# The tour's coarse grid: the instruments read against E1 (the random controls, α, the sources, the 2×2); the
# localisers (E1 and its components, the windows) and identity (free: the engine knows its effect is 0) keep every
# layer.
TOUR_COARSE = (
    "random_noise",
    "random_direction",
    "alpha",
    "source_chosen_only",
    "source_rejected_only",
    "vector_chosen",
    "vector_rejected",
    "vector_contrast",
    "cross_2x2",
)

PRESETS: dict[str, Preset] = {
    "tour": Preset(
        "tour",
        32,
        "every experiment and report section on 32 pairs, E1 and the windows at every layer, "
        "the instruments read against E1 at every other layer, the reverse at resid_post",
        {"coarse": TOUR_COARSE, "reverse_extras": False, "generation_tokens": 16},
    ),
    "full": Preset("full", 80, "80 pairs, every experiment at every swept layer, the reverse at every extra hook"),
}
DEFAULT_PRESET = "tour"
