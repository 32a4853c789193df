"""The site table and the interventions' own traits: a site and an intervention defined outside the engine (here,
in the test) run on both engines with no engine edit, and the two agree; the built-in sites' hook names are
TransformerLens's own (``get_act_name``); an experiment's option parses its flag's text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import BUNDLED_PAIRS

try:  # TransformerLens 3.x; 4.x moved it
    from transformer_lens.utils import get_act_name
except ImportError:
    from transformer_lens.utilities.components_utils import get_act_name

import alignment_probe as ap
from alignment_probe import sites
from alignment_probe.effects import RowKey
from alignment_probe.engine import FastEngine, ReferenceEngine
from alignment_probe.engine.spec import PatchSpec
from alignment_probe.errors import ConfigError
from alignment_probe.experiments.registry import Option
from alignment_probe.interventions import SequenceContext, same_on_both_prompts

NEURONS = sites.register_site(sites.Site("test_mlp_post", "blocks.{layer}.mlp.hook_post", ("pos", "d_mlp")))


@dataclass(frozen=True)
class KeepEveryOther:
    """The source's value at every other unit of the last axis, the target's elsewhere (a new intervention)."""

    same_on_both_prompts: ClassVar[bool] = True

    def __call__(self, ctx: SequenceContext) -> torch.Tensor:
        out = ctx.target.clone()
        out[..., ::2] = ctx.source[..., ::2]
        return out


@pytest.mark.parametrize(
    "name, tl_name",
    [("resid_pre", "resid_pre"), ("resid_mid", "resid_mid"), ("resid_post", "resid_post"), ("attn_out", "attn_out"),
     ("mlp_out", "mlp_out"), ("z", "z"), ("k", "k"), ("v", "v")],
)  # fmt: skip
def test_the_built_in_sites_are_transformerlens_hook_names(name, tl_name):
    assert sites.hook_name(5, name) == get_act_name(tl_name, 5)
    assert NEURONS.hook_name(5) == get_act_name("post", 5)  # the site a test registered


def test_a_name_is_one_sites_only_and_the_row_key_accepts_a_registered_site():
    with pytest.raises(ValueError, match="registered twice"):
        sites.register_site(sites.Site("test_mlp_post", "blocks.{layer}.mlp.hook_pre", ("pos", "d_mlp")))
    RowKey("x", "base", "tuned", NEURONS.name, "all", "both", 0)
    with pytest.raises(ConfigError, match="unknown hook point 'mlp_pre'"):
        RowKey("x", "base", "tuned", "mlp_pre", "all", "both", 0)
    assert same_on_both_prompts(KeepEveryOther()) is True


def test_a_new_site_and_intervention_run_alike_on_both_engines(tiny_pair):
    # 96 tokens: with ../shared beside the checkout the tiny tokenizer is trained on real HH-RLHF text and
    # splits the bundled pairs into more tokens than without it
    pairs = ap.load_pairs(BUNDLED_PAIRS, n=3, seed=5, tokenizer=tiny_pair.tokenizer, max_length=96)
    specs = [
        PatchSpec(RowKey("every_other", "base", "tuned", hook, scope, "both", layer), KeepEveryOther())
        for hook in (NEURONS.name, "resid_mid")  # extra axes (full sequences) and a residual (shared prompts)
        for scope in ("all", "completion")
        for layer in (0, 2)
    ]
    ref = ReferenceEngine().run(tiny_pair, pairs, specs)
    fast = FastEngine(batch_size=4, share_prompts=True).run(tiny_pair, pairs, specs)
    assert (ref.effect.abs() > 1e-3).any()  # the patch changes something
    np.testing.assert_allclose(fast.effect, ref.effect, atol=1e-4)


def test_an_options_flag_text_parses_to_its_kind_naming_the_flag_when_it_does_not():
    assert Option("xs", "floats", None, "").parse("0.5, 1,0.5") == (0.5, 1.0, 0.5)
    assert Option("ls", "layers", None, "").parse("0:6:2,1") == (0, 1, 2, 4)
    assert (
        Option("n_things", "int", 1, "").parse("7") == 7 and Option("n_things", "int", 1, "").cli_flag == "--n-things"
    )
    with pytest.raises(ConfigError, match="--widths '1,x': expected a comma-separated list of ints"):
        Option("widths", "ints", None, "").parse("1,x")
    with pytest.raises(ValueError, match="kind 'list'"):
        Option("bad", "list", None, "")
