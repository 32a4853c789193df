"""E12 — what the models say: generation under intervention (../shared/docs/localization.md, E12).

Δlogp on fixed completions is one readout; researchers also read text. For each prompt this decodes from

* ``base`` and ``tuned``;
* ``patch:HOOK@LAYER`` — the base with hook ``blocks.LAYER.hook_HOOK`` (``resid_post``, ``mlp_out`` …, every
  position) replaced by the tuned model's activation *on the same prefix*: the tuned model decodes in lockstep,
  each model with its own key/value cache, so at every step the patched activation is the source's on exactly
  the tokens the patched base has produced so far (the tuned model runs only up to LAYER);
* ``window@START[:WIDTH]`` — the base with blocks START … START+WIDTH−1 transplanted from the tuned model (E8's
  hybrid: the embedding goes with block 0, the final norm and unembedding with the last block);
* ``steer@LAYER[:SCALE]`` — the base with E11's per-class tuning shift added at LAYER (``shifts`` must hold it:
  :func:`alignment_probe.experiments.steering` fits it on pairs); the last prompt position gets the LP vector,
  the first K generated positions' predictors F, the rest R.

Greedy by default; ``temperature > 0`` samples with a generator seeded by ``(seed, pair_id)`` and shared by every
condition of a prompt, so two conditions differ only where their distributions do. Same inputs and seed, same
tokens. Known answers (tests): on a twin tuned only in block p's MLP, ``patch:mlp_out@p`` decodes exactly the
tuned model's tokens and ``patch:mlp_out@q`` for q < p exactly the base's; ``window@p`` equals the tuned model.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import torch

from alignment_probe.backends import backend_of
from alignment_probe.engine.hybrid import transplanted
from alignment_probe.errors import ConfigError
from alignment_probe.interventions import predicting_classes
from alignment_probe.tables import write_bytes_atomic
from alignment_probe.tokens import bos_ids
from alignment_probe.vocab import HOOKS

if TYPE_CHECKING:  # the type only (follows the layers: the twins sit below)
    from alignment_probe.pair import Twins

CONDITION_SYNTAX = "base, tuned, patch:HOOK@LAYER, window@START[:WIDTH], steer@LAYER[:SCALE]"
STEER_FIRST_K = 8  # E11's class F: the first K predicting positions after the prompt (steering.FIRST_K)


@dataclass(frozen=True)
class Condition:
    """One parsed condition (see the module docstring)."""

    text: str
    kind: str  # base | tuned | patch | window | steer
    hook: str | None = None
    layer: int | None = None
    width: int = 1
    scale: float = 1.0


def parse_condition(text: str, n_layers: int | None = None) -> Condition:
    """A :class:`Condition` from its text, or a ConfigError naming the condition and the syntax."""
    t = text.strip()

    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"--conditions: {t!r} {why}; write one of {CONDITION_SYNTAX} "
            f"(HOOK one of {', '.join(HOOKS)}), comma-separated."
        )

    def layer_ok(layer: int) -> int:
        if n_layers is not None and not 0 <= layer < n_layers:
            raise bad(f"names layer {layer}, but the model has layers 0…{n_layers - 1}")
        return layer

    if t in ("base", "tuned"):
        return Condition(t, t)
    m = re.fullmatch(r"patch:(\w+)@(\d+)", t)
    if m:
        if m.group(1) not in HOOKS:
            raise bad(f"patches an unknown hook {m.group(1)!r}")
        return Condition(t, "patch", hook=m.group(1), layer=layer_ok(int(m.group(2))))
    m = re.fullmatch(r"window@(\d+)(?::(\d+))?", t)
    if m:
        start, width = int(m.group(1)), int(m.group(2) or 1)
        if width < 1:
            raise bad("has a width below 1")
        layer_ok(start)
        layer_ok(start + width - 1)
        return Condition(t, "window", layer=start, width=width)
    m = re.fullmatch(r"steer@(\d+)(?::(-?[0-9.]+(?:e-?\d+)?))?", t)
    if m:
        return Condition(t, "steer", layer=layer_ok(int(m.group(1))), scale=float(m.group(2) or 1.0))
    raise bad("is not a condition")


def parse_conditions(texts: str | Iterable[str], n_layers: int | None = None) -> list[Condition]:
    items = [x for x in (texts.split(",") if isinstance(texts, str) else texts) if str(x).strip()]
    if not items:
        raise ConfigError(f"--conditions is empty; give at least one of {CONDITION_SYNTAX}.")
    out: list[Condition] = []
    for c in (parse_condition(str(x), n_layers) for x in items):
        if c.text not in {o.text for o in out}:  # a repeated condition is generated once
            out.append(c)
    return out


class _Picker:
    """Greedy, or seeded sampling at a temperature (the same generator draws for every condition of a prompt)."""

    def __init__(self, temperature: float, seed: int, pair_id: int):
        self.temperature = temperature
        self.gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(pair_id)) if temperature > 0 else None

    def __call__(self, logits: torch.Tensor) -> int:
        last = logits[0, -1].float().cpu()
        if self.gen is None:
            return int(last.argmax())
        probs = torch.softmax(last / self.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.gen))


def _steer_hook(vectors: Mapping[str, torch.Tensor], scale: float, prompt_len: int) -> Callable[..., torch.Tensor]:
    """Adds scale·v_c at the class-c predicting positions of the sequence seen so far (LP: the last prompt token,
    F: the first K generated predictors after it, R: the rest); BOS and earlier prompt positions get nothing. The
    classes are E11's own (:func:`alignment_probe.interventions.predicting_classes`): while decoding, every position
    seen so far predicts a token, so the sequence is taken one longer than what has been seen."""

    rows = torch.stack([vectors[c] for c in ("LP", "F", "R")])  # class ids 0, 1, 2 (interventions.POSITION_CLASSES)
    seen = [0]

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        start, n = seen[0], act.shape[1]
        seen[0] += n
        cls = predicting_classes(prompt_len, start + n + 1, STEER_FIRST_K, start + n)[start:].to(act.device)
        at = cls >= 0
        out = act.clone()
        out[0, at] += scale * rows.to(act.device, act.dtype)[cls[at]]
        return out

    return hook


@torch.inference_mode()
def _decode(
    model: Any,
    prompt: Sequence[int],
    pick: _Picker,
    max_new_tokens: int,
    stop: set[int],
    fwd_hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
    before_step: Callable[[torch.Tensor], None] | None = None,
) -> list[int]:
    """Decode with ``model`` and its key/value cache; ``before_step(new_tokens)`` runs first at every step (the
    lockstep source of a patch)."""
    backend = backend_of(model)
    device = backend.device
    cache = backend.new_decode_state()
    x = torch.tensor([list(prompt)], device=device)
    out: list[int] = []
    with backend.hooked(list(fwd_hooks)):
        for _ in range(max_new_tokens):
            if before_step is not None:
                before_step(x)
            token = pick(backend.decode_step(x, cache))
            out.append(token)
            if token in stop:
                break
            x = torch.tensor([[token]], device=device)
    return out


def _patch_step(source: Any, hook_name: str, layer: int) -> tuple[Callable[[torch.Tensor], None], Callable[..., Any]]:
    """The source's side of a lockstep patch: a step function that runs the source on the new tokens (its own
    cache, only up to ``layer``) and keeps its activation, and the target's hook that puts it in."""
    backend = backend_of(source)
    cache = backend.new_decode_state()
    kept: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> None:
        kept["act"] = act.detach()

    def step(x: torch.Tensor) -> None:
        with backend.hooked([(hook_name, keep)]):
            backend.decode_step(x, cache, stop_at_layer=layer + 1)

    def put(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return kept["act"].to(act.device, act.dtype)

    return step, put


def generate_one(
    twins: Twins,
    prompt: Sequence[int],
    condition: Condition,
    *,
    pair_id: int = 0,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
    shifts: Mapping[int, Mapping[str, torch.Tensor]] | None = None,
) -> list[int]:
    """The generated token ids (without the prompt) of one prompt under one condition."""
    pick = _Picker(temperature, seed, pair_id)
    stop = {i for i in (getattr(twins.tokenizer, "eos_token_id", None),) if i is not None}
    if condition.kind in ("base", "tuned"):
        return _decode(twins.models()[condition.kind], prompt, pick, max_new_tokens, stop)
    assert condition.layer is not None
    if condition.kind == "window":
        with transplanted(twins.base, twins.tuned, range(condition.layer, condition.layer + condition.width)) as hybrid:
            return _decode(hybrid, prompt, pick, max_new_tokens, stop)
    hook_name = f"blocks.{condition.layer}.hook_{condition.hook or 'resid_post'}"
    if condition.kind == "patch":
        step, put = _patch_step(twins.tuned, hook_name, condition.layer)
        return _decode(twins.base, prompt, pick, max_new_tokens, stop, fwd_hooks=[(hook_name, put)], before_step=step)
    if condition.kind == "steer":
        vectors = (shifts or {}).get(condition.layer)
        if vectors is None:
            raise ConfigError(
                f"{condition.text!r} needs E11's tuning shift at layer {condition.layer}: pass "
                "shifts={layer: {'LP', 'F', 'R' vectors}} (ap.generate fits them on the pairs given)."
            )
        hook = _steer_hook(vectors, condition.scale, len(prompt))
        return _decode(twins.base, prompt, pick, max_new_tokens, stop, fwd_hooks=[(hook_name, hook)])
    raise ConfigError(f"unknown condition kind {condition.kind!r}")


def generate(
    twins: Twins,
    prompts: Sequence[Any],
    conditions: Sequence[str] | str = ("base", "tuned"),
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
    shifts: Mapping[int, Mapping[str, torch.Tensor]] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One record per prompt × condition: ``{"pair_id", "condition", "text", "token_ids", "prompt"}``.

    ``prompts``: tokenised pairs (their prompt, BOS included, is decoded from), token-id lists, or strings
    (tokenised with the twins' tokenizer after the one BOS every scored sequence starts with)."""
    conds = parse_conditions(conditions, twins.n_layers)
    items: list[tuple[int, list[int]]] = []
    for i, p in enumerate(prompts):
        if hasattr(p, "prompt_ids"):
            items.append((int(p.pair_id), list(p.prompt_ids)))
        elif isinstance(p, str):
            items.append((i, bos_ids(twins.tokenizer) + twins.tokenizer.encode(p, add_special_tokens=False)))
        else:
            items.append((i, [int(t) for t in p]))
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {max_new_tokens}.")
    if temperature < 0:
        raise ConfigError(f"--temperature must be ≥ 0 (0: greedy), got {temperature}.")
    rows = []
    jobs = [(pid, ids, c) for pid, ids in items for c in conds]
    bar = _progress(len(jobs), progress)
    for pid, ids, cond in jobs:
        out = generate_one(
            twins,
            ids,
            cond,
            pair_id=pid,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            shifts=shifts,
        )
        rows.append(
            {
                "pair_id": pid,
                "condition": cond.text,
                "text": twins.tokenizer.decode(out),
                "token_ids": out,
                "prompt": twins.tokenizer.decode(ids[1:] if len(ids) > 1 else ids),
            }
        )
        bar.update(1)
    bar.close()
    return rows


def _progress(total: int, show: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="generating", unit="text", disable=not show, leave=False)


# --------------------------------------------------------------------------------------------------
# output: generations.jsonl and a side-by-side HTML table


def write_jsonl(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    text = "".join(
        json.dumps({k: r[k] for k in ("pair_id", "condition", "text", "token_ids", "prompt")}, ensure_ascii=False)
        + "\n"
        for r in rows
    )
    return write_bytes_atomic(Path(path), text.encode())


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b)) if len(a) != len(b) else -1


def table_html(rows: Sequence[Mapping[str, Any]], tokenizer: Any = None, *, title: str | None = None) -> str:
    """A side-by-side table (a row per prompt, a column per condition); where a condition departs from the base's
    text, the rest of its text is highlighted (when a tokenizer is given to split it at that token)."""
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    by_prompt: dict[int, dict[str, Mapping[str, Any]]] = {}
    for r in rows:
        by_prompt.setdefault(int(r["pair_id"]), {})[r["condition"]] = r
    head = "".join(f"<th>{html.escape(c)}</th>" for c in conditions)
    body = []
    for pid, cells in by_prompt.items():
        prompt = next(iter(cells.values())).get("prompt", "")
        base = cells.get("base")
        tds = []
        for c in conditions:
            r = cells.get(c)
            if r is None:
                tds.append("<td></td>")
                continue
            text = html.escape(r["text"])
            if base is not None and c != "base" and tokenizer is not None:
                i = _first_difference(base["token_ids"], r["token_ids"])
                if i >= 0:
                    same = html.escape(tokenizer.decode(r["token_ids"][:i]))
                    rest = html.escape(tokenizer.decode(r["token_ids"][i:]))
                    text = f'{same}<mark title="differs from base from here">{rest}</mark>'
            tds.append(f"<td>{text}</td>")
        prompt_cell = html.escape(prompt[-400:])
        body.append(f'<tr><td class="prompt">pair {pid}<br><small>…{prompt_cell}</small></td>{"".join(tds)}</tr>')
    caption = f"<caption>{html.escape(title)}</caption>" if title else ""
    return f'<table class="generations">{caption}<tr><th>prompt</th>{head}</tr>{"".join(body)}</table>'


PAGE_STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table.generations{border-collapse:collapse;width:100%;font-size:14px}
.generations th,.generations td{border:1px solid #ddd;padding:6px 8px;vertical-align:top;white-space:pre-wrap}
.generations th{background:#f4f4f4}.generations td.prompt{color:#555;max-width:28em}
mark{background:#fff3b0}caption{text-align:left;font-weight:600;padding:6px 0}"""


def page_html(rows: Sequence[Mapping[str, Any]], tokenizer: Any = None, *, title: str = "Generations") -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{PAGE_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        "<p>Each column decodes the same prompt under one condition; highlighted text is where a condition "
        "departs from the base model's.</p>" + table_html(rows, tokenizer) + "</body></html>\n"
    )


class Generations(list[dict[str, Any]]):
    """The records of :func:`generate` (a list of dicts), shown side by side in a notebook; ``to_frame()`` gives a
    table to slice, ``write(dir)`` the files ``alignment-probe generate`` writes."""

    def __init__(self, rows: Iterable[Mapping[str, Any]], tokenizer: Any = None):
        super().__init__(dict(r) for r in rows)
        self.tokenizer = tokenizer

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(list(self), columns=["pair_id", "condition", "text", "token_ids", "prompt"])

    def _repr_html_(self) -> str:
        return table_html(self, self.tokenizer)

    def write(self, out: str | Path, *, title: str = "Generations") -> dict[str, Path]:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        return {
            "jsonl": write_jsonl(self, out / "generations.jsonl"),
            "html": write_bytes_atomic(out / "generations.html", page_html(self, self.tokenizer, title=title).encode()),
        }
