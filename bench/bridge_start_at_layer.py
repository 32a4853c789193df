"""Start-at-layer on the TransformerBridge backend against a full forward, side by side in one run.

    python bench/bridge_start_at_layer.py            # 8 layers, d_model 512, 4 × 256 tokens, one thread

A random Llama-shape model (its checkpoint saved to a temporary folder, booted through
``alignment_probe.backends.bridge.load``). Timed, best of ``--repeats``, on the same residual:

* ``full``: the backend's forward from tokens to logits;
* ``skipping``: the backend's ``run(resid, start_at_layer=L-1)`` (the blocks below are not run);
* ``bridge own``: TransformerBridge's own ``forward(resid, start_at_layer=L-1)`` (runs every block and discards
  the ones below, transformer-lens 4.3).

Printed: the seconds of each, the ratio to ``full`` (target for ``skipping``: ≤ 0.25), and the largest difference
of the three logits from the full forward's. Needs transformer-lens 4.x.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_of(repeats: int, fn: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import LlamaConfig, LlamaForCausalLM

    from alignment_probe.backends.bridge import load
    from tests.helpers.checkpoints import train_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        intermediate_size=4 * args.d_model,
        num_hidden_layers=args.layers,
        num_attention_heads=args.d_model // 64,
        num_key_value_heads=args.d_model // 64,
        max_position_embeddings=2 * args.tokens,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(["a b c d e f g h"] * 10, vocab_size=args.vocab)
        LlamaForCausalLM(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        backend = load(tmp, device="cpu", dtype="float32")
    bridge, last = backend.model, args.layers - 1
    ids = torch.randint(3, args.vocab, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref, cache = backend.run(ids, capture=[f"blocks.{last}.hook_resid_pre"])
        resid = cache[f"blocks.{last}.hook_resid_pre"]
        outputs = {
            "full": lambda: backend.run(ids)[0],
            "skipping": lambda: backend.run(resid, start_at_layer=last)[0],
            "bridge own": lambda: bridge(resid, start_at_layer=last),
        }
        times = {name: best_of(args.repeats, fn) for name, fn in outputs.items()}
        errors = {name: (fn() - ref).abs().max().item() for name, fn in outputs.items()}
    print(
        f"TransformerBridge, {args.layers} layers, d_model {args.d_model}, {args.batch} × {args.tokens} tokens, "
        f"{args.threads} thread(s), float32, best of {args.repeats}; start_at_layer={last}"
    )
    for name, seconds in times.items():
        print(
            f"  {name:<11} {seconds:7.3f} s   ratio to full {seconds / times['full']:5.2f}   "
            f"max |logit − full| {errors[name]:.1e}"
        )


if __name__ == "__main__":
    main()
