"""bench/gpu.sh, the prepared GPU check, run on the CPU with a tiny shape: it prints its summary, and the summary's
numbers follow from what it measured (tokens/s, FLOPs, the floor ratio) and from the model it built (the weight
count and Δlogp, recomputed here with Hugging Face directly). Where ``$ALIGNMENT_PROBE_OTHER_LINE_PYTHON`` names the
other TransformerLens line, it runs in both interpreters and the backends must agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import alignment_probe as ap
from tests.helpers import other_line

REPO = other_line.REPO
PAIRS = 4


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    work = tmp_path_factory.mktemp("gpu-bench")
    pythons = [sys.executable] + ([other_line.other_python()] if other_line.other_python() else [])
    env = {**os.environ, "AP_BENCH_PYTHONS": " ".join(pythons), "AP_BENCH_WORK": str(work), "AP_BENCH_PEAK_TFLOPS": "1"}
    cmd = ["bash", str(REPO / "bench" / "gpu.sh"), "--shape", "tiny", "--device", "cpu", "--pairs", str(PAIRS)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"bench/gpu.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return work, pythons, proc.stdout, json.loads((work / "summary.json").read_text())


def test_one_row_per_line_and_dtype(bench):
    _, pythons, _, summary = bench
    rows = summary["rows"]
    assert sorted((r["line"], r["dtype"]) for r in rows) == sorted(
        {(r["line"], dtype) for r in rows for dtype in ("float32", "bfloat16")}
    )
    assert len({r["line"] for r in rows}) == len(pythons), "an interpreter's measurement is missing (see its output)"


def test_summary_numbers_follow_from_the_measurements(bench):
    work, _, stdout, summary = bench
    config = json.loads((work / "base" / "config.json").read_text())
    heads, d_head, layers = config["num_attention_heads"], config["head_dim"], config["num_hidden_layers"]
    # the weights that multiply activations, counted on the Hugging Face model itself (lm_head tied, still a product)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(work / "base", dtype=torch.float32).eval()
    linear = sum(m.weight.numel() for m in hf.modules() if isinstance(m, torch.nn.Linear))
    assert summary["header"]["matmul_params"] == linear
    measured = {
        (r["backend"], r["dtype"]): r
        for path in work.glob("measure-*.json")
        for r in json.loads(path.read_text())["runs"]
    }
    for row in summary["rows"]:
        lengths = measured[(row["backend"], row["dtype"])]["sequence_lengths"]
        assert len(lengths) == 2 * PAIRS
        causal_pairs = sum(sum(range(1, n + 1)) for n in lengths)  # (query, key) pairs with key ≤ query
        flops = 2 * (2 * linear * sum(lengths) + layers * 4 * heads * d_head * causal_pairs)  # two models
        assert row["flops"] == flops
        assert row["tokens"] == 2 * sum(lengths)
        assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["score_s"])
        assert row["x_floor"] == pytest.approx(row["score_s"] / (flops / 1e12))  # AP_BENCH_PEAK_TFLOPS=1
        printed = f"{row['backend']:<8} {row['line']:<10} {row['dtype']:<9}"
        (line,) = [x for x in stdout.splitlines() if x.startswith(printed)]
        assert f"{row['tokens_per_s']:.1f}" in line and f"{row['x_floor']:.1f}" in line and str(row["tokens"]) in line


def test_delta_logp_is_the_models_own(bench):
    """The float32 Δlogp the bench reports for the base equals Hugging Face's log-probs of the same tokens."""
    work, _, _, _ = bench
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(work / "base", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(work / "base")
    pairs = ap.load_pairs(REPO / "data" / "pairs" / "heldout.jsonl", n=PAIRS, seed=0, tokenizer=tokenizer)
    for path in work.glob("measure-*.json"):
        run = next(r for r in json.loads(path.read_text())["runs"] if r["dtype"] == "float32")
        reported = dict(zip(run["pair_ids"], run["base_delta_logp"]))
        for pair in pairs:
            logp = {}
            for side in ("chosen", "rejected"):
                ids = torch.tensor([list(pair.prompt_ids) + list(pair.completion_ids(side))])
                with torch.no_grad():
                    lp = hf(ids).logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
                logp[side] = lp[len(pair.prompt_ids) - 1 :].sum().item()
            assert reported[pair.pair_id] == pytest.approx(logp["chosen"] - logp["rejected"], abs=1e-4)


def test_dtypes_and_backends_agree(bench):
    _, _, stdout, summary = bench
    assert summary["dtype_checks"] and all(c["worst_per_token"] <= 2e-2 for c in summary["dtype_checks"])
    if len(summary["rows"]) > 2:
        assert summary["checks"] and all(c["agree"] for c in summary["checks"]), stdout
    else:
        assert "across backends: only" in stdout
    assert "split over GPUs: not run" in stdout
