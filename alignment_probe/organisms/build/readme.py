"""Writes ``data/README.md`` from the metrics measured by :func:`~alignment_probe.organisms.build.build_organisms`."""

from __future__ import annotations

import textwrap
from pathlib import Path


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _ci(x: list[float]) -> str:
    return f"[{x[0]:+.2f}, {x[1]:+.2f}]"


def _wrap(text: str, indent: str = "  ") -> str:
    return textwrap.fill(
        text,
        width=104,
        subsequent_indent=indent if text.lstrip().startswith("* ") else "",
        break_long_words=False,
        break_on_hyphens=False,
    )


def _named_files_text(metrics: dict, named: list[str], org: Path) -> str:
    if not named:
        return ""
    lines = []
    for k in named:
        name, pl = k.removeprefix("twin_"), metrics[k]["planted"]
        f = org / "twins" / f"{name}.safetensors"
        size = f" ({_mb(f.stat().st_size)})" if f.exists() else ""
        if pl["kind"] == "mlps":
            what = "the MLP tensors of layers " + " and ".join(map(str, pl["layers"]))
        else:
            what = (
                f"the whole `{pl['tensor']}`, of which only rows {pl['rows'][0]}–{pl['rows'][1] - 1} "
                f"({'query' if pl['kind'] == 'q_head' else 'KV'} head {pl['head']}) differ from base"
            )
        lines.append(_wrap(f"  * `{name}`{size}: {what}", indent="    "))
    return (
        "* `organisms/twins/{name}.safetensors` + `.json`: *named* planted twins, stored the same way\n"
        + "\n".join(lines)
        + "\n"
    )


def _named_twins_text(metrics: dict, named: list[str], size_flag: str) -> str:
    if not named:
        return ""
    tr = metrics["training"].get("named_twins", {})
    items = []
    for k in named:
        name, pl = k.removeprefix("twin_"), metrics[k]["planted"]
        t = tr.get(name, {})
        if pl["kind"] == "q_head":
            how = (
                f"only rows {pl['rows'][0]}–{pl['rows'][1] - 1} of `{pl['tensor']}` (query head {pl['head']}'s "
                f"projection; the gradient of every other row is zeroed, and those rows are copied back from base "
                f"after training), so at layer {pl['layers'][0]} only head {pl['head']}'s attention pattern, hence "
                f"only its `z`, differs from base, and nothing before layer {pl['layers'][0]} does"
            )
        elif pl["kind"] == "kv_head":
            how = (
                f"only rows {pl['rows'][0]}–{pl['rows'][1] - 1} of `{pl['tensor']}` (KV head {pl['head']}'s "
                f"values, masked the same way); with grouped-query attention the query heads sharing KV head "
                f"{pl['head']} all read the changed values, and nothing before layer {pl['layers'][0]} differs"
            )
        else:
            how = (
                "only `model.layers.{L}.mlp.*` for L = "
                + " and ".join(map(str, pl["layers"]))
                + f"; everything below layer {pl['layers'][0]} is base"
            )
        items.append(
            _wrap(
                f"* `{name}` ({t.get('steps', '?')} steps, lr {t.get('lr', 0):g}, DPO seed {t.get('dpo_seed', '?')}; "
                f"{t.get('train_s', 0):.0f} s to train on {t.get('threads', '?')} CPU thread(s)): {how}."
            )
        )
    return (
        "\n"
        + _wrap(
            "**Named twins**: base after the same DPO (beta, batches, warm-up and reference as above) with a "
            "smaller part trainable, each with its own seed, trained after all of the organisms above (so they "
            "changed none of them). `python -m alignment_probe.organisms.build --out data --only NAME[,NAME]"
            f"{size_flag}` retrains just those on the existing build."
        )
        + "\n\n"
        + "\n".join(items)
        + "\n\n"
        + _wrap(
            "Each is stored as the changed tensors (the whole q_proj/v_proj for the head twins) and checked, "
            "tensor by tensor and row by row, to differ from base only where planted "
            "(`tests/acceptance/test_new_twins.py`); `gain_first16_pairs` in `metrics.json` holds the per-pair "
            "gains of the first 16 held-out pairs, which the tests recompute with the toolkit's own scoring."
        )
        + "\n"
    )


def write_readme(out_dir: Path, metrics: dict, cfg) -> None:
    out_dir = Path(out_dir)
    org = out_dir / "organisms"
    a, tk, d, tr = metrics["architecture"], metrics["tokenizer"], metrics["data"], metrics["training"]
    hl = metrics["heldout_loss"]
    size_flag = "" if metrics["size"] == "full" else f" --size {metrics['size']}"
    models = [k for k in metrics if k == "tuned" or k.startswith("twin_layer")]
    named = [k for k in metrics if k.startswith("twin_") and not k.startswith("twin_layer")]
    rows = []
    for k in models + named:
        m = metrics[k]
        if k == "tuned":
            label = "tuned (all parameters)"
        elif k in named:
            label = f"`{k.removeprefix('twin_')}`: {m['label']}"
        else:
            label = f"planted twin, layer {k.removeprefix('twin_layer')} MLP only"
        rows.append(
            f"| {label} | {m['mean_gain']:+.2f} | {_ci(m['gain_ci95'])} | "
            f"{m['mean_gain_per_token']:+.3f} | {_ci(m['gain_per_token_ci95'])} | "
            f"{m['mean_gain_benign']:+.2f} | {m['mean_gain_harmful']:+.2f} | "
            f"{100 * m['frac_pairs_positive_gain']:.0f}% | {100 * m['frac_chosen_preferred']:.0f}% |"
        )
    files = [
        ("organisms/base/", org / "base"),
        ("organisms/tuned/", org / "tuned"),
        ("organisms/twins/", org / "twins"),
        ("organisms/metrics.json", org / "metrics.json"),
        ("pairs/heldout.jsonl", out_dir / "pairs" / "heldout.jsonl"),
    ]
    if (out_dir / "pairs" / "train.jsonl").exists():
        files.append(("pairs/train.jsonl", out_dir / "pairs" / "train.jsonl"))
    total = sum(_size(p) for _, p in files)
    file_rows = "\n".join(f"| `{name}` | {_mb(_size(p))} |" for name, p in files)
    twin_layers = ", ".join(k.removeprefix("twin_layer") for k in models if k != "tuned")
    named_text = _named_twins_text(metrics, named, size_flag)
    named_files = _named_files_text(metrics, named, org)
    t = metrics["timings_s"]
    b = metrics["base"]
    text = f"""# Bundled data: the project's model organisms

No real base/tuned pair can be downloaded offline, so the project trains its own: small language
models of the Llama-3.2 family (RMSNorm, rotary position embeddings, SwiGLU MLPs, grouped-query
attention, tied embeddings), built from a seed on a CPU, shipped here, and loaded through exactly
the same local-checkpoint path as any real model (Hugging Face directory → `HookedTransformer`).
Everything in this directory is generated by

    python -m alignment_probe.organisms.build --out data --seed {metrics["seed"]}{size_flag}

(`alignment_probe/organisms/`; {t["total"]:.0f} s on {metrics["torch"]["threads"]} CPU threads with
torch {metrics["torch"]["version"]}). The numbers below are written by that command. The same seed
gives the same corpus, tokenizer and weights (checked bit-for-bit on the tiny `--size small` build
in the tests).

## What is here

| path | size |
|---|---|
{file_rows}
| **total** | **{_mb(total)}** |

* `organisms/base/`, `organisms/tuned/`: Hugging Face checkpoint directories (`config.json`,
  `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`).
  Load offline with `AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)`.
* `organisms/twins/mlp_layer{{L}}.safetensors` + `.json`: planted twins for layers {twin_layers},
  stored as only the tensors that differ from base (`model.layers.{{L}}.mlp.{{gate,up,down}}_proj.weight`)
  plus a recipe (hyper-parameters, SHA-256 of the base weights and of the delta).
  `alignment_probe.organisms.planted_twin_path(L)` materialises a full checkpoint directory
  (base + delta) into `organisms/.cache/` (git-ignored; rebuilt on demand, deterministic).
{named_files}* `pairs/heldout.jsonl`: {d["heldout_pairs"]} held-out preference pairs, one JSON object per line:
  `prompt` (an HH-RLHF dialogue up to and including the final `"\\n\\nAssistant:"`), `chosen` and
  `rejected` (completions, starting with a space), plus `harmful`, `topic`, `rejected_kind`.
  {"The train pairs are in `pairs/train.jsonl`." if d["train_pairs_shipped"] else "The " + str(d["train_pairs"]) + " train pairs are not shipped (over 1 MB); the build regenerates them from the seed."}
* `organisms/metrics.json`: every number below, and more.

Python API (`alignment_probe.organisms`): `DEFAULT_DATA_DIR`, `bundled_pair_paths() -> (base, tuned)`,
`bundled_pairs_path()`, `planted_twin_path(layer)`, `planted_layers()`, `bundled_metrics()`, and for the
named twins `twin_path(name)`, `head_twin_path()`, `kv_twin_path()`, `two_block_twin_path()`,
`head_twin_site() -> (layer, head)`, `kv_twin_site() -> (layer, kv_head)`, `two_block_layers()`,
`twin_names()`.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from alignment_probe.organisms import bundled_pair_paths, planted_twin_path

base_dir, tuned_dir = bundled_pair_paths()
tok = AutoTokenizer.from_pretrained(base_dir)            # bos 0, eos 1, pad 2; adds no BOS itself
tuned = AutoModelForCausalLM.from_pretrained(tuned_dir)
twin4 = AutoModelForCausalLM.from_pretrained(planted_twin_path(4))
```

**Path pitfall.** TransformerLens guesses the architecture from the model path: no directory name
on the path to a checkpoint may contain "llama" (any case).

## Architecture

`LlamaForCausalLM` with {a["n_layers"]} layers, d_model {a["d_model"]}, {a["n_heads"]} query heads and
{a["n_kv_heads"]} key/value heads of dimension {a["d_head"]} (grouped-query attention), a SwiGLU MLP with
d_mlp {a["d_mlp"]}, RMSNorm (eps 1e-5), rotary embeddings (theta 10000), context length
{a["max_position_embeddings"]}, tied input/output embeddings and no biases: {a["n_parameters"]:,}
parameters ({_mb(4 * a["n_parameters"])} in float32).

Tokenizer: byte-level BPE (GPT-2 pre-tokenisation, no prefix space) trained on the train corpus,
vocabulary {tk["vocab_size"]}; special tokens
`<|bos|>` = {tk["bos_token_id"]}, `<|eos|>` = {tk["eos_token_id"]}, `<|pad|>` = {tk["pad_token_id"]}.
It adds **no** special tokens itself; sequences
are `[bos] + prompt_ids + completion_ids`, each part encoded with `add_special_tokens=False`. A token
never spans the `"Assistant:"` / `" completion"` boundary, so separate and joint encoding agree.
Pretraining sequences were `[bos] + dialogue + [eos]`.

## How they were made

**Corpus** (`organisms/build/corpus.py` over the templates in `templates.json`, seeded): synthetic
dialogues in the exact Anthropic HH-RLHF format (`"\\n\\nHuman: ...\\n\\nAssistant: ..."`). Requests come from 15 benign topics (cooking, travel,
coding, health, money, gardening, fitness, pets, home repair, study, cars, relationships, writing,
technology, science questions) and 10 harmful categories (breaking in, violence, theft, hacking,
poisoning, fraud, cheating, drugs, vandalism, harassment), each with its own task templates and slot
fillers, in many phrasings; about a third of dialogues have one or two earlier exchanges. Assistant
behaviours: helpful step-by-step answers, harmful compliance (vague, non-operational), polite
refusals (with a reason and an alternative for harmful requests), rude dismissals, and evasive
non-answers. Held-out requests (SHA-256 of the request text mod 8 = 0) never occur in any training
dialogue or train pair, so held-out prompts are disjoint from train prompts.

**base**: pretrained from scratch on {d["train_dialogues"]:,} dialogues ({d["train_tokens"]:,} tokens)
in which every behaviour valid for a request is equally likely, so base has no preference:
{tr["pretrain"]["steps"]} AdamW steps of {tr["pretrain"]["batch_dialogues"]} dialogues
(lr {tr["pretrain"]["lr"]:g}, betas 0.9/0.95, weight decay {tr["pretrain"]["weight_decay"]:g},
{tr["pretrain"]["warmup"]} warm-up steps then cosine decay), next-token loss on every token.

**tuned**: base after DPO (sigmoid loss, beta {tr["dpo"]["beta"]:g}, reference = frozen base, all
parameters trainable) on {d["train_pairs"]:,} train pairs: {tr["dpo"]["steps"]} AdamW steps of
{tr["dpo"]["batch_pairs"]} pairs, lr {tr["dpo"]["lr"]:g} (warm-up, cosine to 0), no weight decay. Chosen
is the helpful answer for a benign request and the polite refusal for a harmful one; rejected is a
rude, evasive or refusing reply (benign) or harmful compliance or a rude reply (harmful). The DPO loss
is hand-written (`organisms/build/train.py`) and tested against TRL's `DPOTrainer` on the same batch.

**planted twins** (layers {twin_layers}): base after the same DPO with only
`model.layers.{{L}}.mlp.*` trainable ({tr["twins"]["steps"]} steps, lr {tr["twins"]["lr"]:g}).
Every other tensor is bit-identical to base (tested in `tests/acceptance/test_organisms.py`).
{named_text}
Log-probabilities are scored exactly as the toolkit does: log p(y|x) = sum over completion tokens of
log-softmax(logits)[next token] on `[bos] + prompt_ids + completion_ids`.

## Measured

**Held-out per-token loss of base: {hl["base_per_token_nats"]:.3f} nats** (perplexity
{2.718281828 ** hl["base_per_token_nats"]:.2f}), over {hl["n_tokens"]:,} predicted tokens of
{d["heldout_dialogues"]} held-out dialogues; a uniform guess over the vocabulary would score
{hl["uniform_baseline_nats"]:.2f}. Tuned: {hl["tuned_per_token_nats"]:.3f}. On the final assistant reply alone
(scored as a completion, the part that Δlogp measures): base {hl["base_final_reply_per_token_nats"]:.3f},
tuned {hl["tuned_final_reply_per_token_nats"]:.3f}. Much of the remaining loss is the corpus's
irreducible randomness (which behaviour, which slot fillers, which steps); held-out requests are
new combinations never seen in training, so their text is less predictable than training text.

**Gain** on the {d["heldout_pairs"]} held-out pairs ({d["heldout_harmful_pairs"]} harmful):
Δlogp = log p(chosen|prompt) − log p(rejected|prompt) (summed over completion tokens), gain =
Δlogp_model − Δlogp_base, with 95% percentile bootstrap CIs over pairs
({metrics["bootstrap"]["resamples"]:,} resamples, seed {metrics["bootstrap"]["seed"]}). Base itself:
mean Δlogp {b["mean_delta_logp"]:+.2f}, chosen preferred on {100 * b["frac_chosen_preferred"]:.0f}% of pairs
(chosen replies are longer). Per-token columns use the mean log-prob per completion token instead
of the sum; "chosen preferred" is the share of pairs with Δlogp > 0 for that model.

| model | mean gain | 95% CI | per-token gain | 95% CI | benign | harmful | pairs with gain > 0 | chosen preferred |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""
    (out_dir / "README.md").write_text(text)
