"""Side by side, in one run: TransformerLens's per-call overheads the engine avoids, with the same bits.

    python bench/bench_block_overheads.py [--repeats 30]

1. Zero biases (engine/attention.py, engine/mlp.py): the bundled model's 8 blocks with every bias added, as
   TransformerLens does (its zero b_Q/b_K/b_V/b_O/b_in/b_out copied into each projection's output or added
   over the MLP's activations), vs the engine's forwards that skip the all-zero ones.
2. The unembedding's zero bias (engine/unembed.py): completion log-probs of 824 positions.
3. Rotary (engine/attention.py ``_rotate``): the bundled model's blocks with a padding mask, TransformerLens's
   ``apply_rotary`` for queries and keys (position ids and cos/sin rows gathered for each, the flipped half
   cloned and assigned, the result concatenated with an empty pass-through part) vs the engine's.
4. Weight layout (pair.store_weights_column_major): a Llama-3.2-1B-shaped grouped-query attention module,
   TransformerLens's own forward, with W_Q/W_K/W_V/W_O rearranged into [out, in] matrices on every call
   (a copy) vs stored in that order (a view).

Each pair is alternated ``--repeats`` times on one thread; the minimum is printed, and the outputs are
checked to be bit-identical.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch


def alternate(repeats: int, a, b) -> tuple[float, float, object, object]:
    ta, tb = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        out_a = a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        out_b = b()
        tb.append(time.perf_counter() - t)
    return min(ta), min(tb), out_a, out_b


def zero_biases(repeats: int) -> None:
    import alignment_probe.engine.attention as attention
    from alignment_probe.engine.mlp import lean_mlp
    from alignment_probe.organisms import bundled_pair_paths
    from alignment_probe.pair import load_twins
    from alignment_probe.scoring import token_logprobs

    model = load_twins(*bundled_pair_paths(), device="cpu", dtype="float32").base
    real = attention._zero_biases
    gen = torch.Generator().manual_seed(0)

    def added(toks):
        attention._zero_biases = lambda attn: (False, False)  # as TransformerLens: every bias added
        try:
            with attention.lean_attention(model):
                return model(toks, stop_at_layer=model.cfg.n_layers)
        finally:
            attention._zero_biases = real

    def skipped(toks):
        with attention.lean_attention(model), lean_mlp(model):
            return model(toks, stop_at_layer=model.cfg.n_layers)

    with torch.inference_mode():
        for shape in [(16, 120), (32, 50), (4, 170)]:
            toks = torch.randint(1, model.cfg.d_vocab, shape, generator=gen)
            ta, tb, a, b = alternate(repeats, lambda: added(toks), lambda: skipped(toks))
            assert torch.equal(a, b)
            print(f"bundled 8 blocks, batch {shape[0]} x {shape[1]}: biases added {ta * 1e3:7.2f} ms, zero biases "
                  f"skipped {tb * 1e3:7.2f} ms: {ta / tb:.3f}x, same bits")
        resid = torch.randn(824, model.cfg.d_model, generator=gen)
        targets = torch.randint(0, model.cfg.d_vocab, (824,), generator=gen)
        from alignment_probe.engine.unembed import lean_unembed

        def lean():
            with lean_unembed(model):
                return token_logprobs(model, resid, targets)

        ta, tb, a, b = alternate(repeats, lambda: token_logprobs(model, resid, targets), lean)
        assert torch.equal(a, b)
        print(f"completion log-probs, 824 positions, vocabulary {model.cfg.d_vocab}: b_U added {ta * 1e3:6.2f} ms, "
              f"skipped {tb * 1e3:6.2f} ms: {ta / tb:.3f}x, same bits")


def rotary(repeats: int) -> None:
    import alignment_probe.engine.attention as attention
    from alignment_probe.engine.mlp import lean_mlp
    from alignment_probe.engine.prefix import length_mask
    from alignment_probe.organisms import bundled_pair_paths
    from alignment_probe.pair import load_twins

    model = load_twins(*bundled_pair_paths(), device="cpu", dtype="float32").base
    lean = attention._rotate
    gen = torch.Generator().manual_seed(2)

    def run(toks, rotate):
        attention._rotate = rotate
        try:
            mask = length_mask([toks.shape[1]] * toks.shape[0], toks.shape[1], "cpu")  # a new mask per forward
            with attention.lean_attention(model), lean_mlp(model):
                return model(toks, stop_at_layer=model.cfg.n_layers, attention_mask=mask)
        finally:
            attention._rotate = lean

    def transformer_lens(attn, xs, offsets, mask):
        return [attn.apply_rotary(x, o, mask) for x, o in zip(xs, offsets)]

    with torch.inference_mode():
        for shape in [(16, 120), (32, 50), (4, 170)]:
            toks = torch.randint(1, model.cfg.d_vocab, shape, generator=gen)
            ta, tb, a, b = alternate(repeats, lambda: run(toks, transformer_lens), lambda: run(toks, lean))
            assert torch.equal(a, b)
            print(f"bundled 8 blocks with a padding mask, batch {shape[0]} x {shape[1]}: TransformerLens's rotary "
                  f"{ta * 1e3:7.2f} ms, the engine's {tb * 1e3:7.2f} ms: {ta / tb:.3f}x, same bits")


def weight_layout(repeats: int) -> None:
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.components import GroupedQueryAttention

    from alignment_probe.pair import store_weights_column_major

    cfg = HookedTransformerConfig(n_layers=1, d_model=2048, n_heads=32, n_key_value_heads=8, d_head=64, d_mlp=8192,
                                  d_vocab=100, n_ctx=2048, act_fn="silu", normalization_type="RMS",
                                  positional_embedding_type="rotary", rotary_dim=64, gated_mlp=True,
                                  original_architecture="LlamaForCausalLM", dtype=torch.float32, device="cpu",
                                  init_weights=True, seed=0)
    rearranged = GroupedQueryAttention(cfg).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the component allocates its weights uninitialised (HookedTransformer initialises them)
        for p in rearranged.parameters():
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    stored = copy.deepcopy(rearranged)
    store_weights_column_major(stored)
    x = torch.randn(2, 64, 2048, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ta, tb, a, b = alternate(max(5, repeats // 2), lambda: rearranged(x, x, x), lambda: stored(x, x, x))
    assert torch.equal(a, b)
    print(f"Llama-3.2-1B-shaped attention (TransformerLens's forward), 2 x 64 tokens: weights rearranged per call "
          f"{ta * 1e3:6.1f} ms, stored in that order {tb * 1e3:6.1f} ms: {ta / tb:.2f}x, same bits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    zero_biases(args.repeats)
    rotary(args.repeats)
    weight_layout(args.repeats)


if __name__ == "__main__":
    main()
