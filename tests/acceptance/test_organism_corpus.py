"""The organisms' corpus, generated from its templates (alignment_probe/organisms/build/templates.json), is the corpus
the bundled organisms were trained on: checked against the bundled files the build wrote from it, not against itself.

* the held-out pairs regenerate ``data/pairs/heldout.jsonl`` byte for byte;
* the training dialogues and pairs retrain ``data/organisms/base/tokenizer.json`` exactly, and their token counts are
  the ones ``data/organisms/metrics.json`` recorded (train tokens, held-out tokens);
* every size's whole corpus has the fingerprint the generator had when its templates were Python code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from alignment_probe.organisms import DEFAULT_DATA_DIR, bundled_metrics
from alignment_probe.organisms.build import corpus
from alignment_probe.organisms.build.config import SIZES
from alignment_probe.organisms.build.tokenizer import train_tokenizer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _metrics() -> dict:
    metrics = bundled_metrics()
    assert metrics["size"] in SIZES, metrics["size"]
    return metrics


def test_heldout_pairs_regenerate_the_bundled_file(tmp_path: Path) -> None:
    metrics = _metrics()
    cfg = SIZES[metrics["size"]]
    pairs = corpus.generate_pairs(cfg.n_heldout_pairs, metrics["seed"], heldout=True, max_chars=cfg.max_chars)
    corpus.write_jsonl(pairs, tmp_path / "heldout.jsonl")
    bundled = DEFAULT_DATA_DIR / "pairs" / "heldout.jsonl"
    assert (tmp_path / "heldout.jsonl").read_bytes() == bundled.read_bytes()
    assert sum(p.harmful for p in pairs) == metrics["data"]["heldout_harmful_pairs"]


def test_training_corpus_retrains_the_bundled_tokenizer() -> None:
    """The tokenizer is trained on the first dialogues and every train pair: an identical tokenizer (merges, vocab,
    special tokens) means those texts are identical; the token counts cover the remaining dialogues."""
    metrics = _metrics()
    cfg, seed = SIZES[metrics["size"]], metrics["seed"]
    dialogues = corpus.generate_dialogues(cfg.n_train_dialogues, seed, max_chars=cfg.max_chars)
    heldout = corpus.generate_dialogues(cfg.n_heldout_dialogues, seed, heldout=True, max_chars=cfg.max_chars)
    pairs = corpus.generate_pairs(cfg.n_train_pairs, seed, max_chars=cfg.max_chars)
    texts = dialogues[: cfg.n_tokenizer_texts] + [p.prompt + p.chosen for p in pairs]
    tok = train_tokenizer(texts + [p.prompt + p.rejected for p in pairs], cfg.shape.vocab_size)
    bundled = json.loads((DEFAULT_DATA_DIR / "organisms" / "base" / "tokenizer.json").read_text(encoding="utf-8"))
    assert json.loads(tok.backend_tokenizer.to_str()) == bundled
    # the build's counts: [bos] + dialogue + [eos] per training sequence; next-token targets on the held-out ones
    train_tokens = sum(len(ids) + 2 for ids in tok(dialogues, add_special_tokens=False)["input_ids"])
    assert train_tokens == metrics["data"]["train_tokens"]
    heldout_targets = sum(len(ids) + 1 for ids in tok(heldout, add_special_tokens=False)["input_ids"])
    assert heldout_targets == metrics["heldout_loss"]["n_tokens"]


def _fingerprint(cfg_sizes: list[str], seed: int) -> str:
    h = hashlib.sha256()
    for size in cfg_sizes:
        cfg, mc = SIZES[size], SIZES[size].max_chars
        dialogues = corpus.generate_dialogues(cfg.n_train_dialogues, seed, max_chars=mc)
        dialogues += corpus.generate_dialogues(cfg.n_heldout_dialogues, seed, heldout=True, max_chars=mc)
        for d in dialogues:
            h.update(d.encode() + b"\0")
        pairs = corpus.generate_pairs(cfg.n_train_pairs, seed, max_chars=mc)
        pairs += corpus.generate_pairs(cfg.n_heldout_pairs, seed, heldout=True, max_chars=mc)
        for p in pairs:
            h.update(json.dumps(p.to_json(), ensure_ascii=False).encode() + b"\0")
    return h.hexdigest()


# Computed by _fingerprint(["full", "small"], 0) with the generator at commit 15e030c, when the templates were Python
# literals in alignment_probe/organisms/corpus.py: it covers what the bundled files above cannot (the held-out
# dialogues' text, the small test build's corpus).
CODE_ERA_FINGERPRINT = "e533e6e6456d935b1f8cbf0c65fcdd6977a35f0194ae9dd957a701dc19ceb99f"


def test_corpus_is_the_one_the_code_templates_generated() -> None:
    assert _fingerprint(["full", "small"], 0) == CODE_ERA_FINGERPRINT


def test_a_template_slot_nothing_fills_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "templates.json"
    shutil.copy(corpus.TEMPLATES_FILE, path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert corpus.load_templates(path) == data
    data["benign"]["cooking"]["steps"].append("serve it with {sidee}")
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"benign topic 'cooking' uses slot\(s\) \['sidee'\]"):
        corpus.load_templates(path)
    # a harmful topic may use {person}; a benign one may not (nothing fills it there)
    data = json.loads(corpus.TEMPLATES_FILE.read_text(encoding="utf-8"))
    data["benign"]["travel"]["tasks"].append("visit {place} with my {person}")
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"'travel' uses slot\(s\) \['person'\]"):
        corpus.load_templates(path)


def test_readme_writer_reproduces_the_bundled_readme(tmp_path: Path) -> None:
    """data/README.md is what the build's README writer makes of the bundled metrics (it names the corpus's files)."""
    from alignment_probe.organisms.build.readme import write_readme

    for part in ("organisms", "pairs"):
        shutil.copytree(DEFAULT_DATA_DIR / part, tmp_path / part, ignore=shutil.ignore_patterns(".cache"))
    metrics = _metrics()
    write_readme(tmp_path, metrics, SIZES[metrics["size"]])
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == (DEFAULT_DATA_DIR / "README.md").read_text(
        encoding="utf-8"
    )
