"""The runtime type checker the test suite installs (see tests/conftest.py): jaxtyping + beartype.

Every function and dataclass of :data:`CHECKED_MODULES` is decorated, at import, with
``jaxtyping.jaxtyped(typechecker=beartype)``: arguments and return values must match their
annotations, and jaxtyping's named dimensions must agree within one call (``pos d_model`` of the
target and the source of a SequenceContext, ``d_model k`` of a Project basis against its centre, …).

The closed vocabularies (``alignment_probe.vocab``: Hook, Scope, Side, …) are seen as plain ``str``
here: their membership is checked by ``vocab.check`` when a spec or intervention is built, with the
same error (naming the allowed values) under pytest as in production. ``int`` passes where ``float``
is annotated (PEP 484's numeric tower).

Set ``ALIGNMENT_PROBE_TYPECHECK=0`` to run the suite without the checks (e.g. to time them).
"""

from __future__ import annotations

import os
import sys

CHECKED_MODULES = (
    "alignment_probe.interventions",
    "alignment_probe.scoring",
    "alignment_probe.engine.spec",
    "alignment_probe.experiments.lowrank",
    "alignment_probe.experiments.subspace",
    "alignment_probe.experiments.lasso",
)


def enabled() -> bool:
    return os.environ.get("ALIGNMENT_PROBE_TYPECHECK", "1") not in ("0", "false", "no", "")


def _make_typechecker():
    from beartype import BeartypeConf, FrozenDict, beartype

    from alignment_probe.vocab import VOCABULARIES

    conf = BeartypeConf(is_pep484_tower=True, hint_overrides=FrozenDict({v: str for v in VOCABULARIES}))
    return beartype(conf=conf)


typechecker = None


def install() -> bool:
    """Install the import hook (once). Must run before any checked module is first imported."""
    global typechecker
    if not enabled() or typechecker is not None:
        return typechecker is not None
    early = [m for m in CHECKED_MODULES if m in sys.modules]
    if early:
        raise RuntimeError(f"{', '.join(early)} imported before the jaxtyping import hook: they would go unchecked")
    import jaxtyping

    typechecker = _make_typechecker()
    jaxtyping.install_import_hook(list(CHECKED_MODULES), "tests.helpers.typecheck.typechecker")
    return True
