"""On a CUDA device the toolkit gives the CPU's numbers: scores and patching effects of the tiny twins agree to
float rounding, and the identity patch is exactly 0 there too. Skipped, with the reason, without a device."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BUNDLED_PAIRS

import alignment_probe as ap

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_pair(tiny):
    return ap.load_twins(tiny.base, tiny.tuned, device="cuda", dtype="float32")


def test_scores_and_effects_match_the_cpu(tiny_pair, cuda_pair):
    pairs = ap.load_pairs(BUNDLED_PAIRS, n=6, seed=0, tokenizer=tiny_pair.tokenizer, max_length=96)
    assert str(cuda_pair.base.cfg.device).startswith("cuda")
    cpu, gpu = ap.score(tiny_pair, pairs), ap.score(cuda_pair, pairs)
    for col in ("base_delta_logp", "tuned_delta_logp", "gain"):
        np.testing.assert_allclose(gpu[col], cpu[col], atol=1e-4, rtol=1e-5)
    kw = dict(experiments=["patch_tuned_to_base", "identity"], hooks=["resid_post", "mlp_out"], progress=False)
    eff_cpu, eff_gpu = ap.sweep(tiny_pair, pairs, **kw), ap.sweep(cuda_pair, pairs, **kw)
    key = ["experiment", "hook", "layer", "pair_id"]
    eff_cpu, eff_gpu = eff_cpu.sort_values(key).reset_index(drop=True), eff_gpu.sort_values(key).reset_index(drop=True)
    np.testing.assert_allclose(eff_gpu.effect, eff_cpu.effect, atol=1e-4, rtol=1e-5)
    assert (eff_gpu[eff_gpu.experiment == "identity"].effect == 0).all()
