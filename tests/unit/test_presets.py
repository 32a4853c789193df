"""Issue 25: the default run is a tour (``--suite tour``), the whole default suite one flag away (``--suite full``).

No model here: the presets' configurations and conditions (the tour's must be a subset of the full suite's, each
the same condition, so a tour row equals the full suite's row), the coarse grid's layers, the progress display's
bookkeeping across passes, and run directories made before presets.
"""

from __future__ import annotations

import dataclasses

import pytest

from alignment_probe.effects import RowKey
from alignment_probe.errors import ConfigError
from alignment_probe.experiments.presets import DEFAULT_PRESET, PRESETS, TOUR_COARSE
from alignment_probe.experiments.suite import SuiteConfig, per_layer_specs, preset_config
from alignment_probe.progress import Stages
from alignment_probe.rundir import suite_config

N_LAYERS, D_MODEL = 8, 16


def _keys(cfg: SuiteConfig) -> dict[tuple, object]:
    return {dataclasses.astuple(s.key): s.intervention for s in per_layer_specs(cfg, N_LAYERS, D_MODEL)}


def test_full_is_the_default_suite_of_before_and_the_tour_is_the_default():
    assert DEFAULT_PRESET == "tour" and set(PRESETS) == {"tour", "full"}
    full = preset_config("full")
    assert dataclasses.replace(full, preset="full") == SuiteConfig()  # SuiteConfig() is the full suite, field by field
    assert PRESETS["full"].n_pairs == 80 and PRESETS["full"].options == {}
    tour = preset_config()
    assert tour.preset == "tour" and tour.experiments == SuiteConfig().experiments  # every experiment, every section
    assert tour.coarse == TOUR_COARSE and not tour.reverse_extras and tour.generation_tokens == 16
    assert PRESETS["tour"].n_pairs == 32


def test_every_tour_condition_is_a_full_suite_condition():
    """The tour drops conditions, it changes none: each of its keys is in the full suite with the same intervention
    (random controls are seeded per layer), so its rows equal the full run's rows."""
    tour, full = _keys(preset_config("tour")), _keys(preset_config("full"))
    assert set(tour) < set(full)
    assert all(repr(tour[k]) == repr(full[k]) for k in tour)
    dropped = {k for k in full if k not in tour}
    # what was dropped: the coarse experiments off the grid (1, 3, 5, 7 of 8 layers) and the reverse's extra hooks
    fields = [f.name for f in dataclasses.fields(RowKey)]
    experiment, hook, layer = fields.index("experiment"), fields.index("hook"), fields.index("layer")
    for k in dropped:
        assert (k[experiment] in TOUR_COARSE and k[layer] not in (1, 3, 5, 7)) or (
            k[experiment] == "patch_base_to_tuned" and k[hook] != "resid_post"
        ), k
    # E1 keeps every layer at every hook; identity (free) and the windows keep every layer
    for name, hooks in (
        ("patch_tuned_to_base", ("resid_post", "attn_out", "mlp_out")),
        ("identity", ("resid_post",)),
        ("window_transplant", ("blocks",)),
    ):
        assert {(k[hook], k[layer]) for k in tour if k[experiment] == name} >= {
            (h, x) for h in hooks for x in range(N_LAYERS)
        }
    assert sorted({k[layer] for k in tour if k[experiment] == "alpha"}) == [1, 3, 5, 7]
    assert {k[hook] for k in tour if k[experiment] == "patch_base_to_tuned"} == {"resid_post"}


def test_the_coarse_grid_counts_back_from_the_last_swept_layer():
    cfg = SuiteConfig(coarse=("alpha",))
    assert cfg.layers_for("alpha", 8) == [1, 3, 5, 7] and cfg.layers_for("alpha", 7) == [0, 2, 4, 6]
    assert cfg.layers_for("identity", 8) == list(range(8))  # not on the coarse grid
    assert SuiteConfig(coarse=("alpha",), coarse_step=3).layers_for("alpha", 8) == [1, 4, 7]
    assert SuiteConfig(coarse=("alpha",), layers=(0, 2, 3, 6)).layers_for("alpha", 8) == [2, 6]  # of the swept ones
    assert SuiteConfig(coarse="alpha,alpha").coarse == ("alpha",)  # a name list like the others


def test_given_options_win_and_named_experiments_run_whole():
    assert preset_config("tour", n_boot=500).n_boot == 500
    assert preset_config("tour", coarse=("alpha",)).coarse == ("alpha",)
    assert preset_config("tour", generation_tokens=24).generation_tokens == 24
    # naming experiments asks for all of them (as the window widths do): no coarse grid, the reverse at every hook
    named = preset_config("tour", experiments=("alpha", "patch_base_to_tuned"))
    assert named.coarse == () and named.reverse_extras and named.preset == "tour"
    assert preset_config("tour", experiments="all,steer").coarse == TOUR_COARSE  # still the whole default suite
    assert preset_config("tour", experiments=("all",)).coarse == TOUR_COARSE
    # --layers chooses every experiment's grid
    assert preset_config("tour", layers=(0, 4)).coarse == () and not preset_config("tour", layers=(0, 4)).reverse_extras
    assert preset_config("tour", layers=None).coarse == TOUR_COARSE  # None is "not given"


def test_bad_presets_and_coarse_options_are_refused_by_name():
    with pytest.raises(ConfigError, match="--suite 'fast'.*tour, full"):
        preset_config("fast")
    with pytest.raises(ConfigError, match="--suite 'x'"):
        SuiteConfig(preset="x").validate()
    with pytest.raises(ConfigError, match="coarse: unknown experiment.*alpah"):
        SuiteConfig(coarse=("alpah",)).validate()
    with pytest.raises(ConfigError, match="coarse_step"):
        SuiteConfig(coarse_step=0).validate()
    with pytest.raises(ConfigError, match="generation_tokens"):
        SuiteConfig(generation_tokens=0).validate()


def test_a_run_directory_made_before_presets_reads_as_the_full_suite():
    """Its manifest has none of the new options: each takes the default, which is how that run ran."""
    old = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in SuiteConfig().to_dict().items()
        if k not in ("preset", "coarse", "coarse_step", "reverse_extras", "generation_tokens")
    }
    cfg = suite_config({"config": {"suite": old}})
    assert cfg == SuiteConfig() and cfg.preset == "full"
    assert _keys(cfg) == _keys(preset_config("full"))


def test_a_stage_is_shown_once_and_counts_each_part_once_across_passes():
    lines: list[str] = []
    stages = Stages(True, lines.append, existing=frozenset({"stage1-a.parquet"}))
    for n_pass in range(2):  # two passes: the first met another process's part b, the second loads everything
        stages.start(1, "scores", 12)
        stages.done(1, "stage1-a.parquet", 4)
        stages.done(1, "stage1-b.parquet", 4, real=n_pass == 1)
        stages.done(1, "stage1-c.parquet", 4)
        assert stages._bars[1].n == (8 if n_pass == 0 else 12)  # one display, each part counted once
    stages.finish(1, "12 pairs")
    stages.finish(1, "12 pairs")
    assert len(lines) == 1 and lines[0].startswith("stage 1 done in ")
    assert lines[0].endswith("12 pairs (1 of its 3 parts were done already)")
