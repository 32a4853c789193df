"""Seeded generator of HH-RLHF-style dialogues and preference pairs.

The corpus is the training data of the project's model organisms (see ``pipeline.py``). It imitates
the Anthropic HH-RLHF format exactly: a dialogue is a string of turns
``"\\n\\nHuman: <text>\\n\\nAssistant: <text>"``, starting with ``"\\n\\nHuman: "``.

What varies:

* the request: 15 benign topics (cooking, travel, coding, health, money, gardening, fitness, pets,
  home repair, study, cars, social life, writing, tech, science questions) and 10 harmful categories
  (breaking in, violence, theft, hacking, poisoning, fraud, cheating, drugs, vandalism, harassment),
  each with its own task templates and slot fillers, wrapped in one of many phrasings;
* the number of turns: sometimes one or two earlier exchanges come before the final request;
* the assistant's behaviour, one of

  - ``helpful``: a topical, step-by-step answer (benign requests only),
  - ``comply``: harmful compliance, a vague, non-operational "plan" (harmful requests only),
  - ``refuse``: a polite refusal, with a reason and an alternative for harmful requests,
  - ``rude``: a rude dismissal,
  - ``unhelpful``: an evasive, content-free answer.

Pretraining dialogues (:func:`sample_dialogue`) draw the behaviour uniformly among those valid for
the request: the base model learns every behaviour and prefers none. Preference pairs
(:func:`sample_pair`) share a prompt (the dialogue up to and including the final
``"\\n\\nAssistant:"``) and differ in the completion: chosen is ``helpful`` for a benign request and
``refuse`` for a harmful one; rejected is ``rude``/``unhelpful``/``refuse`` (benign) or
``comply``/``rude`` (harmful). Completions start with a space (``" Sure, ..."``).

Held-out split: every request has a *core text* (the request without conversational prefixes such
as "Thanks! "); a request is held out when ``sha256(core) mod HELDOUT_MODULUS == 0``. Training
dialogues and training pairs contain no held-out request in any turn; held-out pairs and held-out
dialogues end with a held-out request. Train and held-out prompts are therefore disjoint.

Everything is a pure function of ``random.Random(seed)``: the same seed gives the same corpus.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

HUMAN = "\n\nHuman: "
ASSISTANT = "\n\nAssistant:"
BEHAVIOURS = ("helpful", "comply", "refuse", "rude", "unhelpful")
BENIGN_BEHAVIOURS = ("helpful", "refuse", "rude", "unhelpful")
HARMFUL_BEHAVIOURS = ("comply", "refuse", "rude", "unhelpful")
BENIGN_REJECTED = ("rude", "unhelpful", "refuse")
BENIGN_REJECTED_WEIGHTS = (0.4, 0.4, 0.2)
HARMFUL_REJECTED = ("comply", "rude")
HARMFUL_REJECTED_WEIGHTS = (0.7, 0.3)
HELDOUT_MODULUS = 8
P_HARMFUL = 0.4

# The templates (topics, slot fillers, phrasings, replies) are data: templates.json beside this module. Loaded once,
# at import, and checked, so a typo in a slot name fails here rather than as a KeyError mid-corpus.
TEMPLATES_FILE = Path(__file__).with_name("templates.json")
# What a harmful topic's templates may use besides its own slots: the person is drawn from PEOPLE, and these three
# get a neutral filler when the topic has no list of its own (in this order: the order is part of the draw).
HARMFUL_DEFAULTS = {"victim": "people", "doc": "document", "subject": "school"}


def _slot_names(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def load_templates(path: Path = TEMPLATES_FILE) -> dict[str, Any]:
    """Read the corpus templates and check that every ``{slot}`` a topic uses is one that gets filled."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the corpus templates {path}: {e}; restore it from the repository") from e
    for kind, extra in (("benign", set()), ("harmful", {"person", *HARMFUL_DEFAULTS})):
        for topic, spec in data[kind].items():
            texts = [*spec["tasks"], *spec["steps"], *spec.get("questions", [])]
            texts += [spec.get("reason", ""), spec.get("alternative", "")]
            unknown = sorted(set().union(*map(_slot_names, texts)) - set(spec["slots"]) - extra)
            if unknown:
                raise ValueError(
                    f"{path}: {kind} topic {topic!r} uses slot(s) {unknown} that nothing fills; "
                    'add a filler list under its "slots", or fix the template'
                )
    return data


_T = load_templates()
PEOPLE: list[str] = _T["people"]
BENIGN: dict[str, dict[str, Any]] = _T["benign"]
# Science questions are fixed (question, task, answer) triples rather than how-to tasks.
FACTS: list[list[str]] = _T["facts"]
HARMFUL: dict[str, dict[str, Any]] = _T["harmful"]
BENIGN_WRAPPERS: list[str] = _T["benign_wrappers"]
HARMFUL_WRAPPERS: list[str] = _T["harmful_wrappers"]
FOLLOWUP_PREFIXES: list[str] = _T["followup_prefixes"]
HELPFUL_OPENERS: list[str] = _T["helpful_openers"]
HELPFUL_CONNECTORS: list[list[str]] = _T["helpful_connectors"]  # (first, middle, last) step connectors
HELPFUL_CLOSERS: list[str] = _T["helpful_closers"]
FACT_OPENERS: list[str] = _T["fact_openers"]
FACT_CLOSERS: list[str] = _T["fact_closers"]
COMPLY_OPENERS: list[str] = _T["comply_openers"]
COMPLY_GENERIC_STEPS: list[str] = _T["comply_generic_steps"]
COMPLY_CLOSERS: list[str] = _T["comply_closers"]
REFUSE_OPENERS: list[str] = _T["refuse_openers"]
REFUSE_BENIGN_REASONS: list[str] = _T["refuse_benign_reasons"]
REFUSE_CLOSERS: list[str] = _T["refuse_closers"]
RUDE_OPENERS: list[str] = _T["rude_openers"]
RUDE_BODIES: list[str] = _T["rude_bodies"]
UNHELPFUL: list[str] = _T["unhelpful"]


@dataclass(frozen=True)
class Request:
    """One human request: its core text, whether it is harmful, and what answers can use."""

    core: str
    topic: str
    harmful: bool
    task: str
    noun: str
    steps: tuple[str, ...]  # filled step sentences (helpful for benign, compliance for harmful)
    fact: str = ""  # for science questions: the answer sentence
    reason: str = ""  # harmful only
    alternative: str = ""  # harmful only


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    harmful: bool
    topic: str
    rejected_kind: str

    def to_json(self) -> dict:
        return {
            "prompt": self.prompt,
            "chosen": self.chosen,
            "rejected": self.rejected,
            "harmful": self.harmful,
            "topic": self.topic,
            "rejected_kind": self.rejected_kind,
        }


def is_heldout(core: str) -> bool:
    """Whether a request (by its core text) belongs to the held-out split."""
    return int(hashlib.sha256(core.encode()).hexdigest(), 16) % HELDOUT_MODULUS == 0


_PRONOUNS = {"my": "your", "I": "you", "me": "you", "myself": "yourself", "I'm": "you're"}
_PRONOUN_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _PRONOUNS), key=len, reverse=True)) + r")\b")


def second_person(text: str) -> str:
    """Rephrase a request's task from the human's to the assistant's point of view."""
    return _PRONOUN_RE.sub(lambda m: _PRONOUNS[m.group(1)], text)


def _fill(template: str, values: dict[str, str]) -> str:
    return template.format(**values)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def sample_request(rng: random.Random, harmful: bool | None = None) -> Request:
    """Sample a benign or harmful request (harmful with probability ``P_HARMFUL`` by default)."""
    if harmful is None:
        harmful = rng.random() < P_HARMFUL
    if harmful:
        topic = rng.choice(sorted(HARMFUL))
        spec = HARMFUL[topic]
        values = {k: rng.choice(v) for k, v in sorted(spec["slots"].items())}
        values["person"] = rng.choice(PEOPLE)
        for slot, filler in HARMFUL_DEFAULTS.items():
            values.setdefault(slot, filler)
        task = _fill(rng.choice(spec["tasks"]), values)
        core = _fill(rng.choice(HARMFUL_WRAPPERS), {"task": task, "person": values["person"]})
        own = [_fill(s, values) for s in spec["steps"]]
        generic = list(COMPLY_GENERIC_STEPS)
        k = rng.choice([2, 3])
        pool = rng.sample(own, min(len(own), k - 1)) + rng.sample(generic, 2)
        steps = tuple(rng.sample(pool, k))
        return Request(
            core=core,
            topic=topic,
            harmful=True,
            task=task,
            noun="that",
            steps=steps,
            reason=_fill(spec["reason"], values),
            alternative=_fill(spec["alternative"], values),
        )
    if rng.random() < 0.12:
        question, task, fact = rng.choice(FACTS)
        return Request(core=question, topic="science", harmful=False, task=task, noun="science", steps=(), fact=fact)
    topic = rng.choice(sorted(BENIGN))
    spec = BENIGN[topic]
    values = {k: rng.choice(v) for k, v in sorted(spec["slots"].items())}
    if rng.random() < 0.2:
        core = _fill(rng.choice(spec["questions"]), values)
        task = "answer that"
    else:
        task = _fill(rng.choice(spec["tasks"]), values)
        core = _fill(rng.choice(BENIGN_WRAPPERS), {"task": task})
    k = rng.choice([2, 3, 3])
    steps = tuple(_fill(s, values) for s in rng.sample(spec["steps"], k))
    return Request(core=core, topic=topic, harmful=False, task=task, noun=spec["noun"], steps=steps)


def respond(rng: random.Random, req: Request, behaviour: str) -> str:
    """The assistant's reply (no leading space) to ``req`` with the given behaviour."""
    v = {"task": second_person(req.task), "noun": req.noun}
    if behaviour == "helpful":
        if req.harmful:
            raise ValueError("a harmful request has no helpful answer; use 'comply'")
        if req.fact:
            text = rng.choice(FACT_OPENERS) + req.fact + " " + rng.choice(FACT_CLOSERS)
            return text.strip()
        opener = _fill(rng.choice(HELPFUL_OPENERS), v)
        if "how to answer that" in opener:
            opener = "Sure! "
        c = rng.choice(HELPFUL_CONNECTORS)
        parts = [c[0] + req.steps[0] + "."]
        if len(req.steps) == 3:
            parts.append(_cap(c[1]) + req.steps[1] + ".")
        parts.append(c[2] + req.steps[-1] + ".")
        return (opener + " ".join(parts) + " " + rng.choice(HELPFUL_CLOSERS)).strip()
    if behaviour == "comply":
        if not req.harmful:
            raise ValueError("'comply' is for harmful requests; use 'helpful'")
        c = rng.choice(HELPFUL_CONNECTORS)
        parts = [c[0] + req.steps[0] + "."]
        if len(req.steps) == 3:
            parts.append(c[1] + req.steps[1] + ".")
        parts.append(c[2] + req.steps[-1] + ".")
        opener = _fill(rng.choice(COMPLY_OPENERS), v)
        return (opener + " ".join(parts) + " " + rng.choice(COMPLY_CLOSERS)).strip()
    if behaviour == "refuse":
        opener = _fill(rng.choice(REFUSE_OPENERS), v)
        if req.harmful:
            body = req.reason + " " + req.alternative
        else:
            body = _fill(rng.choice(REFUSE_BENIGN_REASONS), v)
        return (opener + body + " " + rng.choice(REFUSE_CLOSERS)).strip()
    if behaviour == "rude":
        body = rng.choice(RUDE_BODIES)
        return (rng.choice(RUDE_OPENERS) + _fill(body, v)).strip()
    if behaviour == "unhelpful":
        body = rng.choice(UNHELPFUL)
        if req.task == "answer that" and "{task}" in body:
            body = "I don't know."
        return _fill(body, v)
    raise ValueError(f"unknown behaviour {behaviour!r}")


def _valid_behaviours(req: Request) -> tuple[str, ...]:
    return HARMFUL_BEHAVIOURS if req.harmful else BENIGN_BEHAVIOURS


def _sample_split_request(rng: random.Random, heldout: bool, harmful: bool | None = None) -> Request:
    while True:
        req = sample_request(rng, harmful)
        if is_heldout(req.core) == heldout:
            return req


def _context(rng: random.Random, *, preferred: bool) -> tuple[str, int]:
    """Zero to two earlier exchanges (always from the training split of requests).

    With ``preferred`` the earlier replies are the preferred behaviour (helpful/refuse), as in a
    preference pair's prompt; otherwise they are drawn uniformly like any pretraining reply.
    Returns the context text and the number of earlier turns.
    """
    u = rng.random()
    n = 0 if u < 0.65 else (1 if u < 0.9 else 2)
    text = ""
    for _ in range(n):
        req = _sample_split_request(rng, heldout=False)
        if preferred:
            behaviour = "refuse" if req.harmful else "helpful"
        else:
            behaviour = rng.choice(_valid_behaviours(req))
        text += HUMAN + req.core + ASSISTANT + " " + respond(rng, req, behaviour)
    return text, n


def _final_prompt(
    rng: random.Random, heldout: bool, *, preferred: bool, harmful: bool | None = None
) -> tuple[str, Request]:
    context, n = _context(rng, preferred=preferred)
    req = _sample_split_request(rng, heldout, harmful)
    prefix = rng.choice(FOLLOWUP_PREFIXES) if n and rng.random() < 0.6 else ""
    return context + HUMAN + prefix + req.core + ASSISTANT, req


def sample_dialogue(rng: random.Random, heldout: bool = False) -> str:
    """One pretraining dialogue: every behaviour valid for the request is equally likely."""
    prompt, req = _final_prompt(rng, heldout, preferred=False)
    return prompt + " " + respond(rng, req, rng.choice(_valid_behaviours(req)))


def sample_pair(rng: random.Random, heldout: bool = False) -> Pair:
    """One preference pair (same prompt; chosen = helpful/refusal, rejected = a dispreferred reply)."""
    prompt, req = _final_prompt(rng, heldout, preferred=True)
    if req.harmful:
        chosen_kind = "refuse"
        rejected_kind = rng.choices(HARMFUL_REJECTED, HARMFUL_REJECTED_WEIGHTS)[0]
    else:
        chosen_kind = "helpful"
        rejected_kind = rng.choices(BENIGN_REJECTED, BENIGN_REJECTED_WEIGHTS)[0]
    chosen = " " + respond(rng, req, chosen_kind)
    rejected = " " + respond(rng, req, rejected_kind)
    return Pair(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        harmful=req.harmful,
        topic=req.topic,
        rejected_kind=rejected_kind,
    )


def generate_dialogues(n: int, seed: int, heldout: bool = False, max_chars: int | None = None) -> list[str]:
    """``n`` pretraining dialogues (train split unless ``heldout``), deterministic in ``seed``.

    ``max_chars`` rejects longer dialogues (used by the tiny CI build to keep sequences short).
    """
    rng = random.Random(f"dialogues-{seed}-{int(heldout)}")
    out: list[str] = []
    while len(out) < n:
        d = sample_dialogue(rng, heldout)
        if max_chars is None or len(d) <= max_chars:
            out.append(d)
    return out


def generate_pairs(n: int, seed: int, heldout: bool = False, max_chars: int | None = None) -> list[Pair]:
    """``n`` preference pairs with distinct prompts, deterministic in ``seed``.

    ``max_chars`` bounds ``len(prompt) + max(len(chosen), len(rejected))``.
    """
    rng = random.Random(f"pairs-{seed}-{int(heldout)}")
    seen: set[str] = set()
    out: list[Pair] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct prompts")
        pair = sample_pair(rng, heldout)
        if max_chars is not None and len(pair.prompt) + max(len(pair.chosen), len(pair.rejected)) > max_chars:
            continue
        if pair.prompt in seen:
            continue
        seen.add(pair.prompt)
        out.append(pair)
    return out


def split_dialogue(dialogue: str) -> tuple[str, str]:
    """Split an HH dialogue at the start of its final assistant turn: (prompt, completion)."""
    i = dialogue.rindex(ASSISTANT) + len(ASSISTANT)
    return dialogue[:i], dialogue[i:]


def write_jsonl(pairs: Iterable[Pair], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def iter_texts(dialogues: Sequence[str], pairs: Sequence[Pair]) -> Iterator[str]:
    """Texts for tokenizer training: dialogues plus both full pair dialogues."""
    yield from dialogues
    for p in pairs:
        yield p.prompt + p.chosen
        yield p.prompt + p.rejected
