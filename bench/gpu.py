"""The prepared GPU check (issue 26): both backends, float32 and bfloat16, a random-weight pair of the
Llama-3.2-1B shape on 80 bundled pairs; tokens/s, the ratio to the device's bf16 FLOP floor, the same numbers
across backends to the dtype's tolerance, and the pair split over several GPUs where more than one is visible.

One interpreter holds one TransformerLens line (3.9: ``hooked``; 4.x: ``bridge``), so the work is in phases that
``bench/gpu.sh`` runs, one command in all:

    python bench/gpu.py build   --work DIR [--shape llama-1b|tiny]      # the twins, once, for every interpreter
    python bench/gpu.py measure --work DIR --out A.json [--device ...]  # in each line's interpreter
    python bench/gpu.py summary --work DIR A.json B.json ...            # side by side, checked, printed

What is timed: ``ap.score`` on the pairs (each model runs both full sequences of every pair, batches of 8: the
throughput), and ``ap.sweep`` of E1 (tuned → base at every layer's ``resid_post``, fast engine). FLOPs per
sequence of L tokens, per model: 2·N·L for the matrix products (N: the attention, MLP and unembedding weights;
the embedding is a lookup) plus 2·L·(L+1)·n_heads·d_head per layer for causal attention (QKᵀ and AV). The floor
is those FLOPs at the device's dense bf16 peak; a row's ``x floor`` is its time over that floor (float32 rows
too: the bf16 peak is the device's ceiling).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench_load_llama1b import CONFIG as LLAMA_1B  # a sibling script: python bench/gpu.py puts bench/ on sys.path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "pairs" / "heldout.jsonl"
# Llama-3.2-1B's config.json (transformers 5 spelling); ``tiny`` keeps its structure at test size.
SHAPES: dict[str, dict[str, Any]] = {
    # the same config bench_load_llama1b.py plants under the official names, without its special-token ids
    "llama-1b": {k: v for k, v in LLAMA_1B.items() if k not in ("bos_token_id", "eos_token_id")},
    "tiny": dict(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        },
    ),
}
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets; first match wins.
PEAKS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.1), ("A10G", 70.0))
# |Δlogp difference| allowed per completion token (the pair's n_chosen + n_rejected) between two runs of one dtype:
# float32 is float rounding over different kernels; bfloat16 keeps 8 bits of mantissa (2^-8 ≈ 0.004 relative), so a
# few units of that per token.
TOLERANCE_PER_TOKEN = {"float32": 1e-5, "bfloat16": 2e-2}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=("build", "measure", "summary"))
    p.add_argument("results", nargs="*", help="summary: the measure phases' JSON files")
    p.add_argument("--work", type=Path, required=True, help="where the twins live (and the results, by default)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-1b")
    p.add_argument("--device", default="auto", help="auto (cuda where visible, else cpu), cuda, cpu")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--pairs", type=int, default=80)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--backends", default="installed", help="installed (what this interpreter's TransformerLens has)")
    p.add_argument("--out", type=Path, help="measure: where to write this interpreter's JSON")
    p.add_argument("--summary-json", type=Path, help="summary: also write the combined summary here")
    return p.parse_intermixed_args(argv)


# ---------------------------------------------------------------------------------------------------------- build
def build(work: Path, shape: str) -> None:
    """A random base of the shape (seeded) and its twin (every weight moved by 5 % of its std), with a tokenizer
    trained on the bundled pairs; bfloat16 files as the hub ships them. Kept if already there."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(REPO))
    from alignment_probe.data import load_pairs
    from tests.helpers.checkpoints import train_tokenizer

    if (work / "tuned" / "config.json").exists():
        return
    pairs, _ = load_pairs(DATA)
    tok = train_tokenizer([p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs], 1024)
    spec = dict(SHAPES[shape], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg = LlamaConfig(**spec, dtype="bfloat16", architectures=["LlamaForCausalLM"])
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in LlamaForCausalLM(cfg).named_parameters() if n != "lm_head.weight"}
    gen = torch.Generator().manual_seed(0)
    base = {
        n: (1 + 0.1 * torch.randn(s, generator=gen)) if "norm" in n else 0.02 * torch.randn(s, generator=gen)
        for n, s in shapes.items()
    }
    twin = {n: w + 0.05 * w.std() * torch.randn(w.shape, generator=gen) for n, w in base.items()}
    for name, weights in (("base", base), ("tuned", twin)):
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {n: w.to(torch.bfloat16).contiguous() for n, w in weights.items()},
            str(folder / "model.safetensors"),
            metadata={"format": "pt"},
        )
        tok.save_pretrained(folder)
        cfg.save_pretrained(folder)  # last: config.json marks a finished folder


# ---------------------------------------------------------------------------------------------------- the numbers
def matmul_params(config: dict[str, Any]) -> int:
    """Weights that multiply activations, per token: attention, MLP, unembedding (from config.json alone)."""
    d, layers = config["hidden_size"], config["num_hidden_layers"]
    h, kv = config["num_attention_heads"], config["num_key_value_heads"]
    dh = config.get("head_dim") or d // h
    per_layer = d * h * dh + 2 * d * kv * dh + h * dh * d + 3 * d * config["intermediate_size"]
    return layers * per_layer + d * config["vocab_size"]


def sequence_flops(config: dict[str, Any], length: int) -> int:
    h = config["num_attention_heads"]
    dh = config.get("head_dim") or config["hidden_size"] // h
    return 2 * matmul_params(config) * length + config["num_hidden_layers"] * 2 * length * (length + 1) * h * dh


def peak_tflops(device_name: str) -> float | None:
    if os.environ.get("AP_BENCH_PEAK_TFLOPS"):
        return float(os.environ["AP_BENCH_PEAK_TFLOPS"])
    return next((peak for key, peak in PEAKS if key in device_name), None)


def installed_backends() -> list[str]:
    major = int(importlib.metadata.version("transformer-lens").split(".")[0])
    return ["hooked"] if major < 4 else ["bridge"]


def load(base: Path, tuned: Path, backend: str, device: str, dtype: str, device_map: str | None = None) -> Any:
    """``ap.load_twins`` with the backend (and device map) named, where the package has the seam."""
    import alignment_probe as ap

    accepted = inspect.signature(ap.load_twins).parameters
    kwargs: dict[str, Any] = dict(device=device, dtype=dtype)
    if "backend" in accepted:
        kwargs["backend"] = backend
    elif backend != "hooked":
        raise RuntimeError(f"this alignment_probe has no backend seam (ap.load_twins(backend=)): {backend} cannot run")
    if device_map is not None:
        if "device_map" not in accepted:
            raise RuntimeError("this alignment_probe has no ap.load_twins(device_map=)")
        kwargs["device_map"] = device_map
    return ap.load_twins(base, tuned, **kwargs)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def devices_of(twins: Any) -> list[str]:
    """Where the pair's weights are (a backend that wraps its model keeps it under ``.model``)."""
    modules = [m if hasattr(m, "parameters") else getattr(m, "model", None) for m in (twins.base, twins.tuned)]
    return sorted({str(p.device) for m in modules if m is not None for p in m.parameters()}) or ["unknown"]


def one_run(args: argparse.Namespace, backend: str, dtype: str, device: str, config: dict[str, Any]) -> dict[str, Any]:
    import alignment_probe as ap

    t0 = time.perf_counter()
    twins = load(args.work / "base", args.work / "tuned", backend, device, dtype)
    load_s = time.perf_counter() - t0
    pairs = ap.load_pairs(DATA, n=args.pairs, seed=0, tokenizer=twins.tokenizer, max_length=args.max_length)
    ap.score(twins, pairs[:2])  # warm-up: kernels, allocator
    sync(device)
    t0 = time.perf_counter()
    scores = ap.score(twins, pairs).sort_values("pair_id")
    sync(device)
    score_s = time.perf_counter() - t0
    lengths = [len(p.prompt_ids) + len(p.completion_ids(side)) for p in pairs for side in ("chosen", "rejected")]
    t0 = time.perf_counter()
    effects = ap.sweep(twins, pairs, experiments=["patch_tuned_to_base"], hooks=["resid_post"], progress=False)
    sync(device)
    sweep_s = time.perf_counter() - t0
    effects = effects.sort_values(["layer", "pair_id"])
    row = {
        "backend": backend,
        "dtype": dtype,
        "load_s": load_s,
        "score_s": score_s,
        "sweep_s": sweep_s,
        "sequence_lengths": lengths,
        "tokens": 2 * sum(lengths),  # two models
        "flops": 2 * sum(sequence_flops(config, n) for n in lengths),
        "devices": devices_of(twins),
        "pair_ids": scores.pair_id.tolist(),
        "completion_tokens": (scores.n_chosen_tokens + scores.n_rejected_tokens).tolist(),
        "base_delta_logp": scores.base_delta_logp.tolist(),
        "tuned_delta_logp": scores.tuned_delta_logp.tolist(),
        "e1_layers": effects.layer.tolist(),
        "e1_pair_ids": effects.pair_id.tolist(),
        "e1_effect": effects.effect.tolist(),
    }
    row["tokens_per_s"] = row["tokens"] / score_s
    del twins
    gc.collect()
    return row


def split_run(args: argparse.Namespace, backend: str, device_count: int) -> dict[str, Any]:
    """The pair over every visible GPU (device_map="balanced"), bfloat16, scored: the same Δlogp as on one GPU?"""
    import alignment_probe as ap

    try:
        twins = load(args.work / "base", args.work / "tuned", backend, "cuda", "bfloat16", device_map="balanced")
    except Exception as err:  # noqa: BLE001 - a refusal is a result: the summary shows its message
        return {"backend": backend, "gpus": device_count, "refused": f"{type(err).__name__}: {err}"}
    pairs = ap.load_pairs(DATA, n=args.pairs, seed=0, tokenizer=twins.tokenizer, max_length=args.max_length)
    t0 = time.perf_counter()
    scores = ap.score(twins, pairs).sort_values("pair_id")
    sync("cuda")
    out = {
        "backend": backend,
        "gpus": device_count,
        "devices": devices_of(twins),
        "score_s": time.perf_counter() - t0,
        "base_delta_logp": scores.base_delta_logp.tolist(),
    }
    del twins
    gc.collect()
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 rows are float32 (TF32 would be a third dtype)
        torch.backends.cudnn.allow_tf32 = False
        name = torch.cuda.get_device_name(0)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    config = json.loads((args.work / "base" / "config.json").read_text())
    backends = installed_backends() if args.backends == "installed" else args.backends.split(",")
    out: dict[str, Any] = {
        "python": sys.executable,
        "versions": {k: importlib.metadata.version(k) for k in ("torch", "transformer-lens", "transformers")},
        "device": device,
        "device_name": name,
        "peak_bf16_tflops": peak_tflops(name),
        "shape": args.shape,
        "config": {k: v for k, v in config.items() if k in SHAPES["tiny"]},
        "matmul_params": matmul_params(config),
        "pairs": args.pairs,
        "runs": [],
        "split": None,
    }
    # imported before the clock starts: load_s is the load alone
    import transformer_lens  # noqa: F401

    import alignment_probe.pair  # noqa: F401

    for backend in backends:
        for dtype in args.dtypes.split(","):
            out["runs"].append(one_run(args, backend, dtype, device, config))
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        count = torch.cuda.device_count() if device.startswith("cuda") else 0
        if count > 1:
            out["split"] = split_run(args, backend, count)
    return out


# -------------------------------------------------------------------------------------------------------- summary
def worst_per_token(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
    """The largest |a − b| per completion token over pairs (Δlogp of both models; E1 effects)."""
    if key == "e1_effect":
        tokens = dict(zip(a["pair_ids"], a["completion_tokens"]))
        per = [tokens[p] for p in a["e1_pair_ids"]]
        assert a["e1_pair_ids"] == b["e1_pair_ids"] and a["e1_layers"] == b["e1_layers"], "different E1 rows"
    else:
        per = a["completion_tokens"]
        assert a["pair_ids"] == b["pair_ids"], "different pairs"
    return max(abs(x - y) / n for x, y, n in zip(a[key], b[key], per))


def summarize(results: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    first = results[0]
    cfg = first["config"]
    peak = first["peak_bf16_tflops"]
    rows = []
    for res in results:
        line = f"TL {res['versions']['transformer-lens']}"
        for run in res["runs"]:
            floor_s = run["flops"] / (peak * 1e12) if peak else None
            rows.append(
                {
                    "backend": run["backend"],
                    "line": line,
                    "dtype": run["dtype"],
                    "load_s": run["load_s"],
                    "score_s": run["score_s"],
                    "tokens": run["tokens"],
                    "tokens_per_s": run["tokens_per_s"],
                    "flops": run["flops"],
                    "floor_s": floor_s,
                    "x_floor": run["score_s"] / floor_s if floor_s else None,
                    "sweep_s": run["sweep_s"],
                    "run": run,
                }
            )
    lines = [
        f"bench/gpu.py, shape {first['shape']}: {cfg['num_hidden_layers']} layers, d_model {cfg['hidden_size']}, "
        f"{cfg['num_attention_heads']}/{cfg['num_key_value_heads']} heads, d_mlp {cfg['intermediate_size']}, "
        f"vocab {cfg['vocab_size']}; {first['matmul_params']:,} matmul weights; random weights, twin = perturbed copy",
        f"{first['pairs']} pairs of data/pairs/heldout.jsonl; device: {first['device_name']}; bf16 dense peak: "
        + (f"{peak:g} TFLOP/s" if peak else "unknown (set AP_BENCH_PEAK_TFLOPS)"),
        "",
        f"{'backend':<8} {'line':<10} {'dtype':<9} {'load s':>7} {'score s':>8} {'tokens':>8} {'tokens/s':>10} "
        f"{'floor s':>9} {'x floor':>8} {'E1 sweep s':>10}",
    ]
    for r in rows:
        floor = f"{r['floor_s']:9.4f} {r['x_floor']:8.1f}" if r["floor_s"] else f"{'-':>9} {'-':>8}"
        lines.append(
            f"{r['backend']:<8} {r['line']:<10} {r['dtype']:<9} {r['load_s']:7.1f} {r['score_s']:8.2f} "
            f"{r['tokens']:8d} {r['tokens_per_s']:10.1f} {floor} {r['sweep_s']:10.2f}"
        )
    checks = []
    backends = sorted({r["backend"] for r in rows})
    for dtype in sorted({r["dtype"] for r in rows}):
        same = [r for r in rows if r["dtype"] == dtype]
        tol = TOLERANCE_PER_TOKEN[dtype]
        for other in same[1:]:
            a, b = same[0]["run"], other["run"]
            worst = max(worst_per_token(a, b, k) for k in ("base_delta_logp", "tuned_delta_logp", "e1_effect"))
            checks.append(
                {
                    "dtype": dtype,
                    "between": [a["backend"], b["backend"]],
                    "worst_per_token": worst,
                    "tolerance_per_token": tol,
                    "agree": worst <= tol,
                }
            )
    lines.append("")
    dtype_checks = []
    for backend in backends:
        by_dtype = {r["dtype"]: r["run"] for r in rows if r["backend"] == backend}
        if {"float32", "bfloat16"} <= set(by_dtype):
            worst = max(
                worst_per_token(by_dtype["float32"], by_dtype["bfloat16"], k)
                for k in ("base_delta_logp", "tuned_delta_logp", "e1_effect")
            )
            ok = "within" if worst <= TOLERANCE_PER_TOKEN["bfloat16"] else "OUTSIDE"
            dtype_checks.append({"backend": backend, "worst_per_token": worst})
            lines.append(
                f"{backend}, bfloat16 vs float32: worst {worst:.2e} per completion token, {ok} bfloat16's tolerance"
            )
    if not checks:
        lines.append(
            f"across backends: only {', '.join(backends)} ran (one TransformerLens line in the interpreters given): "
            "not compared; bench/gpu.sh runs both where AP_BENCH_PYTHONS names one interpreter per line"
        )
    for c in checks:
        verdict = "agree" if c["agree"] else "DIFFER"
        lines.append(
            f"across backends, {c['dtype']}: {' vs '.join(c['between'])}, Δlogp and E1 effects, worst "
            f"{c['worst_per_token']:.2e} per completion token (tolerance {c['tolerance_per_token']:.0e}): {verdict}"
        )
    splits = [res["split"] for res in results if res["split"]]
    if not splits:
        lines.append(f"split over GPUs: not run ({first['device_name']}: fewer than 2 GPUs visible)")
    for s in splits:
        if "refused" in s:
            lines.append(f"split over {s['gpus']} GPUs, {s['backend']}: refused: {s['refused']}")
            continue
        single = next(r["run"] for r in rows if r["backend"] == s["backend"] and r["dtype"] == "bfloat16")
        per = single["completion_tokens"]
        worst = max(abs(x - y) / n for x, y, n in zip(single["base_delta_logp"], s["base_delta_logp"], per))
        s["worst_per_token"] = worst
        ok = "agree" if worst <= TOLERANCE_PER_TOKEN["bfloat16"] else "DIFFER"
        lines.append(
            f"split over {s['gpus']} GPUs, {s['backend']} bfloat16: on {', '.join(s['devices'])}, score {s['score_s']:.2f} s, "
            f"Δlogp vs one GPU worst {worst:.2e} per token: {ok}"
        )
    summary = {
        "rows": [{k: v for k, v in r.items() if k != "run"} for r in rows],
        "checks": checks,
        "dtype_checks": dtype_checks,
        "splits": splits,
    }
    summary["header"] = {
        k: first[k] for k in ("shape", "config", "matmul_params", "pairs", "device_name", "peak_bf16_tflops")
    }
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sys.path.insert(0, str(REPO))
    if args.phase == "build":
        t0 = time.perf_counter()
        build(args.work, args.shape)
        print(f"twins in {args.work} ({time.perf_counter() - t0:.1f} s)", flush=True)
        return 0
    if args.phase == "measure":
        result = measure(args)
        out = args.out or args.work / f"measure-{os.getpid()}.json"
        out.write_text(json.dumps(result))
        for run in result["runs"]:
            print(
                f"  {run['backend']} {run['dtype']}: score {run['score_s']:.2f} s, E1 sweep {run['sweep_s']:.2f} s",
                flush=True,
            )
        return 0
    results = [json.loads(Path(p).read_text()) for p in args.results]
    if not results or not any(r["runs"] for r in results):
        print("bench/gpu.py: no measurement to summarise", file=sys.stderr)
        return 2
    text, summary = summarize(results)
    print(text, flush=True)
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=1))
    return (
        0
        if all(c["agree"] for c in summary["checks"])
        and all(s.get("worst_per_token", 0) <= TOLERANCE_PER_TOKEN["bfloat16"] for s in summary["splits"])
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
