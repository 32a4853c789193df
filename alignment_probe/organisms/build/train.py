"""Training loops for the model organisms: causal-LM pretraining and DPO, plain torch on CPU.

Scoring follows the toolkit exactly: a sequence is ``[bos] + prompt_ids + completion_ids`` (each
part encoded separately with ``add_special_tokens=False``) and

    log p(completion | prompt) = sum over completion tokens of log_softmax(logits)[next token].

DPO (Rafailov et al. 2023, the ``sigmoid`` loss of TRL's ``DPOTrainer``)::

    loss = -log sigmoid(beta * ((logp_pi(y+) - logp_ref(y+)) - (logp_pi(y-) - logp_ref(y-))))

averaged over pairs; the reference model is the frozen base (its log-probs are computed once, up
front, since it never changes). ``tests/test_organisms.py`` checks this loss against TRL's own
``DPOTrainer`` on the same batch.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

IGNORE = -100


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    d_model: int
    d_mlp: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    max_positions: int


def make_config(shape: ModelShape, bos_id: int, eos_id: int, pad_id: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.d_model,
        intermediate_size=shape.d_mlp,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv_heads,
        max_position_embeddings=shape.max_positions,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=False,
        architectures=["LlamaForCausalLM"],
    )


def new_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    model.config.use_cache = False
    return model


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------
def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random, pool: int = 64) -> list[list[int]]:
    """Shuffled batches of indices whose members have similar lengths (less padding)."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    chunk = batch_size * pool
    for start in range(0, len(order), chunk):
        group = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(group[j : j + batch_size] for j in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def pad(seqs: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


# --------------------------------------------------------------------------------------------
# Pretraining
# --------------------------------------------------------------------------------------------
def lm_loss(model: LlamaForCausalLM, batch: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over real (non-padding) positions, and their count."""
    logits = model(input_ids=batch).logits[:, :-1]
    targets = batch[:, 1:].clone()
    pos = torch.arange(targets.shape[1]).unsqueeze(0)
    targets[pos >= (lengths.unsqueeze(1) - 1)] = IGNORE
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)
    return loss, int((targets != IGNORE).sum())


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class StepLog:
    """One optimizer step (gradient norm clipped to 1), the loss history, and a running-mean log line
    every ``every`` steps: the loop body that pretraining and DPO share."""

    def __init__(self, what: str, steps: int, log: Callable[[str], None] | None, every: int):
        self.what, self.steps, self.log, self.every = what, steps, log, every
        self.history: list[float] = []
        self.running = 0.0

    def step(self, opt: torch.optim.Optimizer, loss: torch.Tensor, params, step: int) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        self.history.append(float(loss.detach()))
        self.running += self.history[-1]
        if self.log and ((step + 1) % self.every == 0 or step + 1 == self.steps):
            self.log(f"  {self.what} step {step + 1}/{self.steps}  loss {self.running / ((step % self.every) + 1):.4f}")
        if (step + 1) % self.every == 0:
            self.running = 0.0


def pretrain(
    model: LlamaForCausalLM,
    seqs: Sequence[Sequence[int]],
    *,
    pad_id: int,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    weight_decay: float,
    seed: int,
    log: Callable[[str], None] | None = None,
    log_every: int = 100,
) -> list[float]:
    """Train on token sequences (each ``[bos] + ids + [eos]``) for ``steps`` optimizer steps."""
    rng = random.Random(f"pretrain-{seed}")
    lengths = [len(s) for s in seqs]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    model.train()
    steps_log = StepLog("pretrain", steps, log, log_every)
    batches: list[list[int]] = []
    for step in range(steps):
        if not batches:
            batches = length_batches(lengths, batch_size, rng)
        idx = batches.pop()
        batch = pad([seqs[i] for i in idx], pad_id)
        lens = torch.tensor([lengths[i] for i in idx])
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, warmup)
        loss, _ = lm_loss(model, batch, lens)
        steps_log.step(opt, loss, model.parameters(), step)
    model.eval()
    return steps_log.history


@torch.no_grad()
def per_token_loss(
    model: LlamaForCausalLM, seqs: Sequence[Sequence[int]], *, pad_id: int, batch_size: int = 64
) -> float:
    """Mean next-token loss (nats) over all predicted tokens of ``seqs``."""
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    total, count = 0.0, 0
    for j in range(0, len(order), batch_size):
        idx = order[j : j + batch_size]
        batch = pad([seqs[i] for i in idx], pad_id)
        lens = torch.tensor([len(seqs[i]) for i in idx])
        loss, n = lm_loss(model, batch, lens)
        total += float(loss) * n
        count += n
    return total / count


# --------------------------------------------------------------------------------------------
# Scoring and DPO
# --------------------------------------------------------------------------------------------
def completion_logps(model: LlamaForCausalLM, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log-probs of the tokens where ``completion_mask`` is 1 (each predicted from its prefix).

    ``input_ids``/``completion_mask``: (batch, seq). Position 0 (BOS) is never scored.
    """
    logits = model(input_ids=input_ids).logits[:, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    targets = input_ids[:, 1:]
    tok = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (tok * completion_mask[:, 1:].to(tok.dtype)).sum(-1)


def sequences_to_batch(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], bos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[bos] + prompt + completion`` ids and the mask of completion positions."""
    seqs = [[bos_id, *p, *c] for p, c in zip(prompts, completions)]
    ids = pad(seqs, pad_id)
    mask = torch.zeros_like(ids)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        mask[i, 1 + len(p) : 1 + len(p) + len(c)] = 1
    return ids, mask


@torch.no_grad()
def score(
    model: LlamaForCausalLM,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    bos_id: int,
    pad_id: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """log p(completion | prompt) for each (prompt, completion), float64 tensor in input order."""
    model.eval()
    out = torch.zeros(len(prompts), dtype=torch.float64)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(completions[i]))
    for j in range(0, len(order), batch_size):
        idx = order[j : j + batch_size]
        ids, mask = sequences_to_batch([prompts[i] for i in idx], [completions[i] for i in idx], bos_id, pad_id)
        out[idx] = completion_logps(model, ids, mask).double()
    return out


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The DPO (sigmoid) loss, mean over the batch."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


@dataclass(frozen=True)
class TokenPairs:
    """Token ids of preference pairs (prompt without BOS; completions)."""

    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompts)


def reference_logps(
    model: LlamaForCausalLM, pairs: TokenPairs, *, bos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        score(model, pairs.prompts, pairs.chosen, bos_id=bos_id, pad_id=pad_id),
        score(model, pairs.prompts, pairs.rejected, bos_id=bos_id, pad_id=pad_id),
    )


def dpo_train(
    model: LlamaForCausalLM,
    pairs: TokenPairs,
    ref: tuple[torch.Tensor, torch.Tensor],
    *,
    bos_id: int,
    pad_id: int,
    beta: float,
    lr: float,
    steps: int,
    batch_size: int,
    warmup: int,
    seed: int,
    trainable: Callable[[str], bool] | None = None,
    log: Callable[[str], None] | None = None,
    log_every: int = 50,
) -> list[float]:
    """DPO against precomputed reference log-probs. ``trainable(name)`` selects parameters (default: all)."""
    for name, p in model.named_parameters():
        p.requires_grad_(trainable is None or trainable(name))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = random.Random(f"dpo-{seed}")
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in zip(pairs.prompts, pairs.chosen, pairs.rejected)]
    ref_c, ref_r = ref
    model.train()
    steps_log = StepLog("dpo", steps, log, log_every)
    batches: list[list[int]] = []
    for step in range(steps):
        if not batches:
            batches = length_batches(lengths, batch_size, rng, pool=16)
        idx = batches.pop()
        prompts = [pairs.prompts[i] for i in idx]
        ids, mask = sequences_to_batch(
            prompts + prompts, [pairs.chosen[i] for i in idx] + [pairs.rejected[i] for i in idx], bos_id, pad_id
        )
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, warmup, floor=0.0)
        logps = completion_logps(model, ids, mask)
        pc, pr = logps[: len(idx)], logps[len(idx) :]
        loss = dpo_loss(pc, pr, ref_c[idx].float(), ref_r[idx].float(), beta)
        steps_log.step(opt, loss, params, step)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return steps_log.history
