"""What one organisms build trains: the model shape, corpus sizes and optimiser settings, per size."""

from __future__ import annotations

from dataclasses import dataclass

from alignment_probe.organisms.build.train import ModelShape
from alignment_probe.organisms.twins import TwinSpec


@dataclass(frozen=True)
class BuildConfig:
    shape: ModelShape
    n_train_dialogues: int
    n_heldout_dialogues: int
    n_train_pairs: int
    n_heldout_pairs: int
    n_tokenizer_texts: int
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    pretrain_warmup: int
    weight_decay: float
    dpo_beta: float
    dpo_lr: float
    dpo_steps: int
    dpo_batch: int
    dpo_warmup: int
    twin_layers: tuple[int, ...]
    twin_lr: float
    twin_steps: int
    n_bootstrap: int = 10_000
    max_chars: int | None = None  # reject longer dialogues/pairs (tiny CI build only)
    # Named twins (one query head, one KV head, two MLPs), trained after all of the above with their own
    # seeds (seed + spec.seed_offset), so adding them changed none of the earlier organisms.
    named_twins: tuple[TwinSpec, ...] = ()


SIZES: dict[str, BuildConfig] = {
    "full": BuildConfig(
        shape=ModelShape(
            vocab_size=2048, d_model=128, d_mlp=384, n_layers=8, n_heads=4, n_kv_heads=2, max_positions=512
        ),
        n_train_dialogues=60_000,
        n_heldout_dialogues=1000,
        n_train_pairs=4000,
        n_heldout_pairs=256,
        n_tokenizer_texts=30_000,
        pretrain_steps=1400,
        pretrain_batch=32,
        pretrain_lr=3e-3,
        pretrain_warmup=100,
        weight_decay=0.1,
        dpo_beta=0.1,
        dpo_lr=7e-5,
        dpo_steps=150,
        dpo_batch=16,
        dpo_warmup=20,
        twin_layers=(2, 4, 6),
        twin_lr=5e-4,
        twin_steps=150,
        named_twins=(
            TwinSpec("head_layer4_h1", "q_head", (4,), head=1, lr=1e-2, steps=150, seed_offset=100_000),
            TwinSpec("kv_layer3_g0", "kv_head", (3,), head=0, lr=2e-2, steps=150, seed_offset=200_000),
            TwinSpec("mlp_layers2_5", "mlps", (2, 5), lr=5e-4, steps=150, seed_offset=300_000),
        ),
    ),
    "small": BuildConfig(
        shape=ModelShape(vocab_size=320, d_model=32, d_mlp=64, n_layers=4, n_heads=4, n_kv_heads=2, max_positions=512),
        n_train_dialogues=400,
        n_heldout_dialogues=40,
        n_train_pairs=64,
        n_heldout_pairs=32,
        n_tokenizer_texts=400,
        pretrain_steps=30,
        pretrain_batch=16,
        pretrain_lr=3e-3,
        pretrain_warmup=5,
        weight_decay=0.1,
        dpo_beta=0.1,
        dpo_lr=1e-3,
        dpo_steps=6,
        dpo_batch=8,
        dpo_warmup=2,
        twin_layers=(1, 2),
        twin_lr=3e-3,
        twin_steps=4,
        n_bootstrap=1000,
        max_chars=240,
        named_twins=(
            TwinSpec("head_layer2_h1", "q_head", (2,), head=1, lr=1e-1, steps=4, seed_offset=100_000),
            TwinSpec("kv_layer1_g0", "kv_head", (1,), head=0, lr=3e-2, steps=4, seed_offset=200_000),
            TwinSpec("mlp_layers1_3", "mlps", (1, 3), lr=3e-3, steps=4, seed_offset=300_000),
        ),
    ),
}
