"""Small Hugging Face checkpoints made offline, for the tests and the benchmarks only.

A byte-level BPE tokenizer and Llama-family models, everything seeded: same arguments, same files.
(Moved out of the package: nothing a user runs needs random models.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Any:
    """Train a byte-level BPE tokenizer (GPT-2/Llama-3 style) and wrap it for ``transformers``.

    One implementation for the tests, the benchmarks and the model organisms
    (:mod:`alignment_probe.organisms.build.tokenizer` documents its special tokens and boundary property).
    """
    from alignment_probe.organisms.build.tokenizer import train_tokenizer as train

    return train(texts, vocab_size)


def llama_config(tokenizer: Any, **overrides: Any) -> Any:
    """A small ``LlamaConfig`` (RMSNorm, rotary, SwiGLU, grouped-query attention) for ``tokenizer``."""
    from transformers import LlamaConfig

    kwargs: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def random_llama(config: Any, seed: int) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` (float32), reproducible from ``seed``."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # HF initialises RMSNorm weights to exactly 1; randomise them so a test would notice a norm
    # that is skipped or folded wrongly.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model.eval()


def save_checkpoint(model: Any, tokenizer: Any, path: str | Path) -> Path:
    """Write model + tokenizer as one Hugging Face checkpoint directory (safetensors)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def perturbed_copy(model: Any, seed: int, scale: float = 0.05, only: str | None = None) -> Any:
    """A copy of ``model`` with Gaussian noise (relative ``scale``) added to its weights —
    or only to the parameters whose name contains ``only``: a stand-in "tuned" twin for tests."""
    import copy

    twin = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if only is None or only in name:
                p.add_(scale * p.std() * torch.randn(p.shape, generator=gen))
    return twin


def planted_mlp_checkpoints(
    base_dir: str | Path, root: str | Path, blocks_and_seeds: Iterable[tuple[int, int]], scale: float = 0.5
) -> list[Path]:
    """Twins of the checkpoint ``base_dir`` tuned in one more block's MLP each (a known answer): the first
    differs from the base in block b₀'s MLP only, the second also in b₁'s, … (``blocks_and_seeds``: (b, seed)
    pairs), saved as ``root/one``, ``root/two``, … with the base's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    tok = AutoTokenizer.from_pretrained(base_dir)
    out = []
    for name, (block, seed) in zip(("one", "two", "three", "four"), blocks_and_seeds):
        model = perturbed_copy(model, seed=seed, scale=scale, only=f"layers.{block}.mlp")
        out.append(save_checkpoint(model, tok, Path(root) / name))
    return out


def gpt2_bias_twin(
    tokenizer: Any, *, block: int = 2, scale: float = 1.0, n_positions: int = 128, seed: int = 6
) -> tuple[Any, Any]:
    """A 3-block GPT-2 base and a twin that differs only by a vector u (seeded; times ``scale``) added to block
    ``block``'s MLP output bias: h_T − h_B = u at every position of that block's ``resid_post`` (E11's and E12's
    steering known answer when ``block`` is the last)."""
    import copy

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_embd=32,
        n_layer=3,
        n_head=4,
        n_positions=n_positions,
        initializer_range=0.2,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    base = GPT2LMHeadModel(config).eval()
    twin = copy.deepcopy(base)
    with torch.no_grad():
        u = torch.randn(config.n_embd, generator=torch.Generator().manual_seed(seed))
        twin.transformer.h[block].mlp.c_proj.bias.add_(scale * u)
    return base, twin
