"""A continuation's prompt keys and values, TransformerLens's way vs attention.PromptKV, side by side.

One block of the bundled base model, a continuation batch shaped like the default run's (32 rows continuing
16 prompts of 91–110 tokens, 49 completion positions): TransformerLens pads the prompts' raw keys, concatenates
the new ones, rotates all of them, repeats them per query head and the products copy them into their layout;
PromptKV writes each prompt's once-rotated keys straight into that layout. Prints both operands' equality,
the min and median over alternated repeats, and the ratio.

    python bench/bench_prompt_kv.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import time

import torch

from alignment_probe.engine.attention import PromptKV, lean_attention
from alignment_probe.engine.prefix import length_mask, pad_stack, run_prompts
from alignment_probe.organisms import bundled_pair_paths
from alignment_probe.pair import load_twins


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--block", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = load_twins(*bundled_pair_paths()).base
    rows_n, prompt_len, width, i = 32, 110, 49, args.block
    with lean_attention(model):
        states, _, _ = run_prompts(model, None, [torch.randint(3, 2000, (prompt_len - (r % 20),))
                                                 for r in range(rows_n // 2)])
    rows = [states[r // 2] for r in range(rows_n)]
    attn = model.blocks[i].attn
    p_width = max(p.length for p in rows)
    mask = torch.cat([length_mask([p.length for p in rows], p_width, "cpu"), length_mask([width] * rows_n, width, "cpu")], 1)
    kv_heads, d_head = rows[0].keys[i].shape[1:]
    k_new, v_new = torch.randn(rows_n, width, kv_heads, d_head), torch.randn(rows_n, width, kv_heads, d_head)
    groups = model.cfg.n_heads // kv_heads

    def transformer_lens() -> tuple[torch.Tensor, torch.Tensor]:
        keys = torch.cat([pad_stack([p.keys[i] for p in rows], p_width), k_new], 1)
        values = torch.cat([pad_stack([p.values[i] for p in rows], p_width), v_new], 1)
        keys = torch.repeat_interleave(attn.apply_rotary(keys, 0, mask), dim=2, repeats=groups)
        values = torch.repeat_interleave(values, dim=2, repeats=groups)
        return keys.permute(0, 2, 3, 1).contiguous(), values.permute(0, 2, 1, 3).contiguous()

    def prompt_kv() -> tuple[torch.Tensor, torch.Tensor]:
        entry = PromptKV(attn, [p.keys[i] for p in rows], [p.values[i] for p in rows],
                         [p.rotated_keys(i, attn) for p in rows], width, "cpu")
        return entry.operands(attn.apply_rotary(k_new, p_width, mask), v_new)

    a, b = transformer_lens(), prompt_kv()
    print(f"operands equal bit for bit: keys {torch.equal(a[0], b[0])}, values {torch.equal(a[1], b[1])}")
    times: dict[str, list[float]] = {"transformer_lens": [], "prompt_kv": []}
    for _ in range(args.repeats):
        for name, f in (("transformer_lens", transformer_lens), ("prompt_kv", prompt_kv)):
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        ts.sort()
        print(f"{name:>16}: min {ts[0] * 1e3:.2f} ms, median {ts[len(ts) // 2] * 1e3:.2f} ms per block")
    print(f"ratio (min): {times['transformer_lens'][0] / times['prompt_kv'][0]:.2f}x")


if __name__ == "__main__":
    main()
