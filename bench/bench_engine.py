"""Side-by-side benchmark: the reference loop vs the fast engine, in one run, on the same inputs.

    python bench/bench_engine.py --model bundled --work suite --n-pairs 16
    python bench/bench_engine.py --model llama-1b-shape --work e1 --n-pairs 1 --max-length 256

Each engine runs in its own fresh process (so peak memory is its own); both must produce the same
effects (max |difference| is printed). Printed: wall time, speed-up, peak resident memory, and the
fast engine's block-token work as a multiple of the floor (the same forwards without padding).

``llama-1b-shape`` is a randomly initialised model with Llama-3.2-1B's exact configuration
(16 layers, d_model 2048, 32 heads, 8 KV heads, d_mlp 8192, vocabulary 128256) and a perturbed twin:
the compute of the real pair, with no download.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the real HH-RLHF data: $ALIGNMENT_PROBE_HH_DIR (as the tests read it), else ../shared beside the checkout
HH = (
    (
        Path(os.environ["ALIGNMENT_PROBE_HH_DIR"])
        if os.environ.get("ALIGNMENT_PROBE_HH_DIR")
        else ROOT.parent / "shared" / "data" / "hh-rlhf"
    )
    / "harmless-base"
    / "test.jsonl.gz"
)


def column_major(model: torch.nn.Module) -> None:
    """Store 2-D weights column-major: TransformerLens multiplies by W.T, which is then free."""
    for p in model.parameters():
        if p.dim() == 2:
            p.data = p.data.T.contiguous().T


def llama_1b_shape_pair(device: str, dtype: torch.dtype, tokenizer):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from alignment_probe.pair import Twins, model_fingerprint

    cfg = HookedTransformerConfig(
        n_layers=16,
        d_model=2048,
        n_heads=32,
        n_key_value_heads=8,
        d_head=64,
        d_mlp=8192,
        d_vocab=128256,
        n_ctx=2048,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=64,
        rotary_base=500000,
        gated_mlp=True,
        final_rms=True,
        original_architecture="LlamaForCausalLM",
        eps=1e-5,
        device=device,
        dtype=dtype,
        init_weights=True,
        seed=0,
    )
    base = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=True).eval()
    tuned = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=True).eval()
    tuned.load_state_dict(base.state_dict())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "blocks.6." in name or "blocks.7." in name:  # a "tuning" in two mid layers
                p.add_(0.05 * p.float().std().item() * torch.randn(p.shape, generator=gen).to(p))
    for m in (base, tuned):
        column_major(m)
    return Twins(
        base=base,
        tuned=tuned,
        tokenizer=tokenizer,
        base_source="random llama-1b shape",
        tuned_source="random llama-1b shape + noise in blocks 6-7",
        base_fingerprint=model_fingerprint(base)[:8],
        tuned_fingerprint=model_fingerprint(tuned)[:8],
    )


def load(args):
    from alignment_probe.data import load_pairs
    from alignment_probe.pair import load_twins
    from alignment_probe.tokens import sample_and_tokenize

    if args.model == "bundled":
        from alignment_probe.organisms import bundled_pair_paths, bundled_pairs_path

        pair = load_twins(*bundled_pair_paths(), device=args.device, dtype=args.dtype)
        for m in pair.models().values():
            column_major(m)
        data = bundled_pairs_path()
    else:
        import tempfile

        from transformers import AutoTokenizer

        from alignment_probe.organisms.build.tokenizer import train_tokenizer

        hh, _ = load_pairs(HH)
        tok_dir = Path(tempfile.mkdtemp(prefix="bench-tok-"))
        train_tokenizer([p.prompt + p.chosen for p in hh[:2000]], vocab_size=4096).save_pretrained(tok_dir)
        tok = AutoTokenizer.from_pretrained(tok_dir)  # a saved tokenizer: TransformerLens reloads it by path
        pair = llama_1b_shape_pair(args.device, getattr(torch, args.dtype), tok)
        data = HH
    pairs, _ = load_pairs(data)
    tokenized = sample_and_tokenize(pairs, pair.tokenizer, n_pairs=args.n_pairs, seed=0, max_length=args.max_length)
    return pair, tokenized


def work_specs(args, pair, tokenized):
    from alignment_probe.experiments.patching import layer_sweep
    from alignment_probe.experiments.suite import SuiteConfig

    if args.work == "e1":
        return layer_sweep("patch_tuned_to_base", target="base", source="tuned", layers=range(pair.n_layers)), None
    return None, SuiteConfig(n_boot=200)


def run_one(engine_name: str, args, queue) -> None:
    torch.set_num_threads(args.threads)
    from alignment_probe.engine import make_engine
    from alignment_probe.experiments.suite import run_suite

    pair, tokenized = load(args)
    specs, suite_cfg = work_specs(args, pair, tokenized)
    if engine_name.startswith("fast"):
        engine = make_engine("fast", batch_size=args.batch_size, share_prompts=engine_name != "fast-noshare")
    else:
        engine = make_engine(engine_name)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if specs is not None:
        effects = engine.run(pair, tokenized, specs)
    else:
        effects = run_suite(pair, tokenized, engine, suite_cfg).effects
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    work = getattr(engine, "work", None)
    out = {
        "engine": engine_name,
        "seconds": seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None,
        "effects": effects[["experiment", "layer", "param", "split", "pair_id", "effect"]].to_dict("list"),
        "n_pairs": len(tokenized),
        "tokens_per_pair": sum(len(t.prompt_ids) * 2 + len(t.chosen_ids) + len(t.rejected_ids) for t in tokenized)
        / len(tokenized),
        "work_ratio": (work.computed / work.floor) if work and work.floor else None,
        "forwards": work.forwards if work else None,
        "work_by_stage": {
            k: {
                "computed": w.computed,
                "floor": w.floor,
                "forwards": w.forwards,
                "ratio": w.computed / w.floor if w.floor else None,
            }
            for k, w in getattr(engine, "work_by_stage", {}).items()
        },
    }
    queue.put(out)


def measure(engine_name: str, args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=run_one, args=(engine_name, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["bundled", "llama-1b-shape"], default="bundled")
    parser.add_argument("--work", choices=["e1", "suite"], default="suite")
    parser.add_argument("--n-pairs", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--engines",
        default="reference,fast",
        help="comma-separated: reference, fast, fast-noshare (the fast engine, full sequences)",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    results = {name: measure(name, args) for name in args.engines.split(",")}
    print(
        f"# {date.today()} · {platform.processor() or platform.machine()} · {args.threads} threads · torch "
        f"{torch.__version__} · device {args.device} · {args.dtype}"
    )
    any_r = next(iter(results.values()))
    print(
        f"model {args.model}, work {args.work}, {any_r['n_pairs']} pairs, "
        f"{any_r['tokens_per_pair']:.0f} tokens per pair (both sequences), max length {args.max_length}"
    )
    for name, r in results.items():
        extra = f", work/floor {r['work_ratio']:.3f}, {r['forwards']} forwards" if r["work_ratio"] else ""
        for stage, w in r.get("work_by_stage", {}).items():
            if w["ratio"]:
                extra += f"; {stage} {w['ratio']:.3f} ({w['forwards']} forwards)"
        gpu = f", peak GPU {r['peak_gpu_gb']:.2f} GiB" if r["peak_gpu_gb"] is not None else ""
        print(f"  {name:>9}: {r['seconds']:8.2f} s, peak RSS {r['peak_rss_gb']:.2f} GiB{gpu}{extra}")
    if "reference" in results and "fast" in results:
        ref, fast = results["reference"], results["fast"]
        diff = max(abs(a - b) for a, b in zip(ref["effects"]["effect"], fast["effects"]["effect"]))
        same_keys = all(ref["effects"][k] == fast["effects"][k] for k in ("experiment", "layer", "pair_id"))
        print(
            f"  speed-up fast vs reference: {ref['seconds'] / fast['seconds']:.2f}x; "
            f"identical rows: {same_keys}; max |effect difference|: {diff:.2e}"
        )
    if "fast-noshare" in results and "fast" in results:
        off, on = results["fast-noshare"], results["fast"]
        diff = max(abs(a - b) for a, b in zip(off["effects"]["effect"], on["effects"]["effect"]))
        print(
            f"  shared prompts vs full sequences: {off['seconds'] / on['seconds']:.2f}x; "
            f"max |effect difference|: {diff:.2e}"
        )
    if args.json:
        for r in results.values():
            r.pop("effects")
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
