"""Every model family TransformerLens converts, from a local folder: one row per family.

Each row builds a tiny random base in the test (no download), saves it with transformers, and a
tuned twin that differs only in the middle block's MLP. Then, against independent references:

* logits equal Hugging Face's (float32, ≤ 1e-4), for base and tuned;
* ``score_pairs`` equals log-probs computed from the Hugging Face models directly;
* scoring sequences start with exactly one BOS, whatever the tokenizer does (GPT-2's BOS is its EOS;
  Gemma's tokenizer adds BOS itself; Qwen's has none, so EOS stands in);
* patching invariants: identity is exactly 0, nothing below the tuned block moves Δlogp, the last
  layer's resid_post carries the whole gain, and chosen-only + rejected-only = both.

Sliding windows (8 tokens) are shorter than the sequences and soft-caps are small, so a family
whose window, cap, attention scale or norm is converted wrongly fails the logit check.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from alignment_probe.data import load_pairs
from alignment_probe.engine import make_engine
from alignment_probe.experiments.controls import control_specs
from alignment_probe.experiments.patching import layer_sweep
from alignment_probe.experiments.sources import source_specs
from alignment_probe.pair import load_twins
from alignment_probe.scoring import score_pairs
from alignment_probe.tokens import sample_and_tokenize
from tests.helpers.checkpoints import perturbed_copy, save_checkpoint, train_tokenizer

REPO = Path(__file__).resolve().parents[2]
BUNDLED_PAIRS = REPO / "data" / "pairs" / "heldout.jsonl"
N_LAYERS, TUNED_LAYER = 3, 1
WINDOW = 8


@dataclass(frozen=True)
class Family:
    name: str
    make: Callable[[dict[str, int]], Any]  # special-token ids -> a transformers model (random weights)
    tuned: str  # parameter-name substring of the middle block's MLP
    tokenizer: str = "plain"  # plain | gpt2 (BOS = EOS) | adds_bos (Gemma) | no_bos (Qwen)


def _ids(t: dict[str, int], **extra: Any) -> dict[str, Any]:
    return dict(vocab_size=t["vocab"], bos_token_id=t["bos"], eos_token_id=t["eos"], pad_token_id=t["pad"], **extra)


def _gpt2(t):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(n_embd=32, n_layer=N_LAYERS, n_head=4, n_positions=128, initializer_range=0.2, **_ids(t))
    )


def _gpt_neo(t):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    return GPTNeoForCausalLM(
        GPTNeoConfig(
            hidden_size=32,
            num_layers=N_LAYERS,
            num_heads=4,
            window_size=WINDOW,
            attention_types=[[["global", "local"], 1], [["global"], 1]],
            max_position_embeddings=128,
            initializer_range=0.2,
            **_ids(t),
        )
    )


def _pythia(t):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(
        GPTNeoXConfig(
            hidden_size=32,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            intermediate_size=64,
            rotary_pct=0.25,
            max_position_embeddings=128,
            use_parallel_residual=True,
            initializer_range=0.2,
            **_ids(t),
        )
    )


def _opt(t):
    from transformers import OPTConfig, OPTForCausalLM

    return OPTForCausalLM(
        OPTConfig(
            hidden_size=32,
            num_hidden_layers=N_LAYERS,
            ffn_dim=64,
            num_attention_heads=4,
            word_embed_proj_dim=32,
            max_position_embeddings=128,
            init_std=0.2,
            **_ids(t),
        )
    )


def _llama(t):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            initializer_range=0.2,
            **_ids(t),
        )
    )


def _llama3(t):  # Llama-3.x: llama3 rope scaling, tied embeddings (3.2 1B/3B)
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    return LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            rope_parameters=rope,
            tie_word_embeddings=True,
            initializer_range=0.2,
            **_ids(t),
        )
    )


def _mistral(t):
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(
        MistralConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=WINDOW,
            max_position_embeddings=128,
            initializer_range=0.2,
            **_ids(t),
        )
    )


def _qwen2(t):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(
        Qwen2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            initializer_range=0.2,
            **_ids(t),
        )
    )


def _qwen3(t):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(
        Qwen3Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=128,
            initializer_range=0.2,
            **_ids(t),
        )
    )


def _phi3(t):
    from transformers import Phi3Config, Phi3ForCausalLM

    return Phi3ForCausalLM(
        Phi3Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            original_max_position_embeddings=128,
            sliding_window=None,
            initializer_range=0.2,
            **_ids(t),
        )
    )


def _gemma(t):
    from transformers import GemmaConfig, GemmaForCausalLM

    return GemmaForCausalLM(
        GemmaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=128,
            initializer_range=0.2,
            **_ids(t),
        )
    )


def _gemma2(t):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    # Small caps and a query scalar unlike d_head, so a missing cap or a wrong scale shows in the logits.
    return Gemma2ForCausalLM(
        Gemma2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=WINDOW,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
            max_position_embeddings=128,
            initializer_range=0.2,
            **_ids(t),
        )
    )


def _gemma3(t):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    rope = {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    }
    return Gemma3ForCausalLM(
        Gemma3TextConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=WINDOW,
            query_pre_attn_scalar=24,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters=rope,
            max_position_embeddings=128,
            initializer_range=0.2,
            **_ids(t),
        )
    )


def _olmo2(t):
    from transformers import Olmo2Config, Olmo2ForCausalLM

    return Olmo2ForCausalLM(
        Olmo2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=128,
            initializer_range=0.2,
            **_ids(t),
        )
    )


FAMILIES = [
    Family("gpt2", _gpt2, "h.1.mlp", "gpt2"),
    Family("gpt-neo", _gpt_neo, "h.1.mlp", "gpt2"),
    Family("pythia", _pythia, "layers.1.mlp"),
    Family("opt", _opt, "layers.1.fc"),
    Family("llama", _llama, "layers.1.mlp"),
    Family("llama-3.2", _llama3, "layers.1.mlp"),
    Family("mistral", _mistral, "layers.1.mlp"),
    Family("qwen2", _qwen2, "layers.1.mlp", "no_bos"),
    Family("qwen3", _qwen3, "layers.1.mlp", "no_bos"),
    Family("phi-3", _phi3, "layers.1.mlp"),
    Family("gemma", _gemma, "layers.1.mlp", "adds_bos"),
    Family("gemma-2", _gemma2, "layers.1.mlp", "adds_bos"),
    Family("gemma-3", _gemma3, "layers.1.mlp", "adds_bos"),
    Family("olmo-2", _olmo2, "layers.1.mlp"),
]


def family_tokenizer(kind: str, base: Any) -> Any:
    """The trained BPE (``<|bos|>`` 0, ``<|eos|>`` 1, ``<|pad|>`` 2) dressed as a family's tokenizer."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(base.backend_tokenizer)
    kw: dict[str, Any] = dict(bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
    if kind == "gpt2":  # one <|endoftext|> token is BOS, EOS (and, here, padding)
        kw.update(bos_token="<|eos|>", pad_token="<|eos|>")
    elif kind == "no_bos":  # Qwen: no BOS token at all
        kw["bos_token"] = None
    elif kind == "adds_bos":  # Gemma: encode() puts BOS in front by itself
        backend.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", 0)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=512, clean_up_tokenization_spaces=False, **kw
    )


def randomise_vectors(model: Any, seed: int) -> Any:
    """HF starts norms at 1 (Gemma at 0) and biases at 0; randomise every 1-D parameter so a norm or
    bias that is dropped, doubled or offset (Gemma's 1 + w) changes the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


@dataclass
class Built:
    family: Family
    twins: Any
    hf: dict[str, Any]
    tokenized: list
    dirs: dict[str, Path]


@pytest.fixture(scope="module")
def bundled_pairs():
    pairs, _ = load_pairs(BUNDLED_PAIRS)
    return pairs


@pytest.fixture(scope="module")
def base_tokenizer(bundled_pairs):
    return train_tokenizer(
        [p.prompt + p.chosen for p in bundled_pairs] + [p.rejected for p in bundled_pairs], vocab_size=320
    )


@pytest.fixture(scope="module")
def build(tmp_path_factory, base_tokenizer, bundled_pairs):
    cache: dict[str, Built] = {}

    def _build(fam: Family) -> Built:
        if fam.name in cache:
            return cache[fam.name]
        from transformers import AutoModelForCausalLM

        tok = family_tokenizer(fam.tokenizer, base_tokenizer)
        ids = {
            "vocab": len(tok),
            "bos": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
            "eos": tok.eos_token_id,
            "pad": tok.pad_token_id,
        }
        torch.manual_seed(0)
        base = randomise_vectors(fam.make(ids), seed=1)
        tuned = perturbed_copy(base, seed=2, scale=0.5, only=fam.tuned)
        changed = [n for (n, a), b in zip(base.named_parameters(), tuned.parameters()) if not torch.equal(a, b)]
        assert changed and all(fam.tuned in n for n in changed), changed  # only the middle block's MLP differs
        root = tmp_path_factory.mktemp(fam.name)
        dirs = {"base": save_checkpoint(base, tok, root / "base"), "tuned": save_checkpoint(tuned, tok, root / "tuned")}
        twins = load_twins(dirs["base"], dirs["tuned"], device="cpu", dtype="float32")
        hf = {k: AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval() for k, d in dirs.items()}
        tokenized = sample_and_tokenize(bundled_pairs, twins.tokenizer, n_pairs=3, seed=0, max_length=96)
        cache[fam.name] = Built(fam, twins, hf, tokenized, dirs)
        return cache[fam.name]

    return _build


def hf_logp(model: Any, prompt: tuple[int, ...], completion: tuple[int, ...]) -> float:
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logp = model(ids).logits[0].double().log_softmax(-1)
    start = len(prompt)
    return float(sum(logp[p - 1, ids[0, p]] for p in range(start, ids.shape[1])))


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.name)
def test_family_logits_scores_and_bos(fam, build):
    b = build(fam)
    assert b.twins.base.cfg.original_architecture == b.hf["base"].config.architectures[0]
    for t in b.tokenized:
        seq = t.sequence("chosen")
        ids = torch.tensor([list(seq.prompt_ids) + list(seq.completion_ids)])
        assert ids.shape[1] > WINDOW * 2  # the sliding windows bite
        for role in ("base", "tuned"):
            with torch.no_grad():
                ours, ref = getattr(b.twins, role)(ids), b.hf[role](ids).logits
            assert (ours - ref).abs().max().item() <= 1e-4, role
    # Exactly one BOS in front: the tokenizer's BOS, or EOS where it has none (Qwen).
    tok = b.twins.tokenizer
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    for t in b.tokenized:
        assert t.prompt_ids[0] == bos and t.prompt_ids[1] != bos
    # score_pairs equals the Hugging Face models' own log-probs.
    table = score_pairs(b.twins, b.tokenized).set_index("pair_id")
    for t in b.tokenized:
        for role in ("base", "tuned"):
            for side in ("chosen", "rejected"):
                ref = hf_logp(b.hf[role], t.prompt_ids, t.completion_ids(side))
                assert abs(table.loc[t.pair_id, f"{role}_logp_{side}"] - ref) <= 1e-4, (role, side)


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.name)
def test_family_patching_invariants(fam, build):
    b = build(fam)
    twins, tokenized = b.twins, b.tokenized
    n = twins.n_layers
    specs = (
        layer_sweep(
            "patch_tuned_to_base", target="base", source="tuned", layers=range(n), hooks=("resid_pre", "resid_post")
        )
        + control_specs(n, experiments=("identity",), hook="resid_post")
        + source_specs(n, experiments=("source_chosen_only", "source_rejected_only"), hook="resid_post")
    )
    e = make_engine("fast").run(twins, tokenized, specs).set_index(["experiment", "hook", "layer", "pair_id"]).effect
    gain = score_pairs(twins, tokenized).set_index("pair_id").gain
    assert gain.abs().min() > 1e-3  # tuning moved every pair: the checks below are not about zeros
    assert (e["identity"] == 0.0).all()
    e1 = e["patch_tuned_to_base"]
    for layer in range(TUNED_LAYER + 1):  # the residual stream into the tuned block is the base's own
        assert (e1["resid_pre", layer] == 0.0).all(), layer
    for layer in range(TUNED_LAYER):
        assert (e1["resid_post", layer] == 0.0).all(), layer
    last = e1["resid_post", n - 1]
    np.testing.assert_allclose(last.to_numpy(), gain.loc[last.index].to_numpy(), atol=1e-4)
    both = e1.xs("resid_post", level="hook")
    chosen, rejected = (
        e["source_chosen_only"].xs("resid_post", level="hook"),
        e["source_rejected_only"].xs("resid_post", level="hook"),
    )
    np.testing.assert_allclose((chosen + rejected).to_numpy(), both.loc[chosen.index].to_numpy(), atol=1e-9, rtol=0)


def test_exactly_one_bos_even_when_the_text_or_tokenizer_brings_one(base_tokenizer):
    from alignment_probe.data import PreferencePair
    from alignment_probe.tokens import tokenize_pair

    tok = family_tokenizer("adds_bos", base_tokenizer)
    assert tok.encode("Hi")[0] == tok.bos_token_id  # this tokenizer adds BOS by itself
    pair = PreferencePair(0, "<|bos|>\n\nHuman: Hi there\n\nAssistant:", " Hello.", " Go away.")
    t = tokenize_pair(pair, tok)
    assert t.prompt_ids[0] == tok.bos_token_id and tok.bos_token_id not in t.prompt_ids[1:]
    assert list(t.prompt_ids[1:]) == tok.encode("\n\nHuman: Hi there\n\nAssistant:", add_special_tokens=False)


def test_tokenizer_without_bos_or_eos_is_refused(base_tokenizer):
    from transformers import PreTrainedTokenizerFast

    from alignment_probe.errors import CheckpointError
    from alignment_probe.tokens import bos_ids

    assert bos_ids(family_tokenizer("no_bos", base_tokenizer)) == [base_tokenizer.eos_token_id]
    bare = PreTrainedTokenizerFast(tokenizer_object=copy.deepcopy(base_tokenizer.backend_tokenizer))
    with pytest.raises(CheckpointError, match="neither a BOS nor an EOS token"):
        bos_ids(bare)


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.name)
def test_family_weight_transplants(fam, build, tmp_path):
    """E8 on every family, against a twin that differs in *every* weight (so no window is its base or its twin):
    the reference engine's hybrid of every block is the twin itself (the embedding, positional embedding, final
    norm and unembedding go with the end blocks), and the fast engine (start_at_layer, shared prompts) agrees
    with it window by window, transplants and reverts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment_probe.effects import RowKey
    from alignment_probe.engine.spec import PatchSpec
    from alignment_probe.interventions import Transplant

    b = build(fam)
    hf_base = AutoModelForCausalLM.from_pretrained(b.dirs["base"], dtype=torch.float32)
    everywhere = perturbed_copy(hf_base, seed=7, scale=0.2)
    tokenizer = AutoTokenizer.from_pretrained(b.dirs["base"])  # the family's own, as saved (not the loaded twins')
    twins = load_twins(
        b.dirs["base"], save_checkpoint(everywhere, tokenizer, tmp_path / "everywhere"), device="cpu", dtype="float32"
    )
    n = twins.n_layers
    windows = [(0, 1), (1, 1), (n - 1, 1), (0, 2), (0, n)]
    specs = [
        PatchSpec(RowKey(name, target, source, "blocks", "all", "both", a, float(w)), Transplant(w))
        for name, target, source in (("window_transplant", "base", "tuned"), ("window_revert", "tuned", "base"))
        for a, w in windows
    ]
    ref = make_engine("reference").run(twins, b.tokenized, specs)
    fast = make_engine("fast").run(twins, b.tokenized, specs)
    np.testing.assert_allclose(fast.effect.to_numpy(), ref.effect.to_numpy(), atol=1e-4)
    gain = score_pairs(twins, b.tokenized).set_index("pair_id").gain
    assert gain.abs().min() > 1e-3
    every = ref[(ref.experiment == "window_transplant") & (ref.param == n)].set_index("pair_id").effect
    np.testing.assert_allclose(every.to_numpy(), gain.loc[every.index].to_numpy(), atol=1e-4)
    revert_all = ref[(ref.experiment == "window_revert") & (ref.param == n)].set_index("pair_id").effect
    np.testing.assert_allclose(-revert_all.to_numpy(), gain.loc[revert_all.index].to_numpy(), atol=1e-4)


# Families with sliding windows (8 tokens, shorter than the sequences): TransformerLens masks a window only within
# one forward, so these run full sequences (prefix.supports_prefix); every other family continues from a cache.
SLIDING_WINDOW = {"gpt-neo", "mistral", "gemma-2", "gemma-3"}


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.name)
def test_family_continuations_equal_the_full_sequence(fam, build):
    """Prompt sharing (engine/prefix.py, the backend's key/value cache: TransformerLens's, or Hugging Face's under the
    Bridge) on every family: completions
    continued from their prompts' keys and values — from a residual at block 1 and from tokens, rows in another
    order than their prompts, a hook point captured — give the full right-padded sequence's final residual and
    activations at the completion positions, and the prompt's last position gives the full sequence's there."""
    from alignment_probe.backends import backend_of
    from alignment_probe.engine.prefix import length_mask, pad_stack, run_continuations, run_prompts, supports_prefix

    b = build(fam)
    model = b.twins.base
    assert supports_prefix(model) == (fam.name not in SLIDING_WINDOW)
    if not supports_prefix(model):
        return
    seqs = [t.sequence(s) for t in b.tokenized for s in ("chosen", "rejected")]
    ids = [torch.tensor(list(s.prompt_ids) + list(s.completion_ids)) for s in seqs]
    width = max(len(x) for x in ids)
    batch, mask = pad_stack(ids, width), length_mask([len(x) for x in ids], width, "cpu")
    keep = lambda n: n in ("blocks.1.hook_resid_pre", "blocks.2.attn.hook_z")  # noqa: E731
    with torch.no_grad():  # through the seam: the final residual on either backend
        backend = backend_of(model)
        full, cache = backend.run(batch, attention_mask=mask, capture=keep, stop_at_layer=backend.n_layers)

    def close(a: torch.Tensor, b_: torch.Tensor, what: str) -> None:  # other batch shapes: float rounding only
        torch.testing.assert_close(a, b_, rtol=1e-5, atol=1e-5 * max(1.0, b_.abs().max().item()), msg=what)

    states, _, _ = run_prompts(model, None, [torch.tensor(s.prompt_ids) for s in seqs])
    for i, (s, st) in enumerate(zip(seqs, states)):
        close(st.last, full[i, s.completion_start - 1], f"prompt's last position, row {i}")
    order = [i ^ 1 for i in range(len(seqs))]  # each row continues the other side's prompt state (the same prompt)
    resid = [cache["blocks.1.hook_resid_pre"][i, s.completion_start : s.length] for i, s in enumerate(seqs)]
    for start in (1, None):
        inputs = (
            [resid[i] for i in order] if start is not None else [torch.tensor(seqs[i].completion_ids) for i in order]
        )
        out, acts = run_continuations(model, start, [states[i] for i in order], inputs, capture=keep)
        for r, i in enumerate(order):
            s = seqs[i]
            n = len(s.completion_ids)
            close(out[r, :n], full[i, s.completion_start : s.length], f"row {i} from {start}")
            close(
                acts["blocks.2.attn.hook_z"][r, :n],
                cache["blocks.2.attn.hook_z"][i, s.completion_start : s.length],
                f"hook_z, row {i} from {start}",
            )
