"""Shared fixtures: small Llama-family checkpoints built offline, once per test session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens's patching loops print a bar per call

# Runtime shape and type checks (jaxtyping + beartype) on the checked modules: installed before they are imported.
from tests.helpers import typecheck  # noqa: E402

typecheck.install()

from alignment_probe.data import load_pairs  # noqa: E402
from tests.helpers import other_line  # noqa: E402
from tests.helpers.checkpoints import llama_config, perturbed_copy, random_llama, save_checkpoint, train_tokenizer  # noqa: E402

# The test models are tiny: one thread is faster than two, and far faster on a loaded machine.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def find_hh_dir() -> Path:
    """Where the real HH-RLHF test files live: ``$ALIGNMENT_PROBE_HH_DIR``, else ``../shared/data/hh-rlhf``
    beside the repository. (It may not exist: tests that need it skip, :func:`require_hh`.)"""
    env = os.environ.get("ALIGNMENT_PROBE_HH_DIR")
    return Path(env).expanduser() if env else REPO.parent / "shared" / "data" / "hh-rlhf"


HH_DIR = find_hh_dir()
SHARED = REPO.parent / "shared"
HH_HARMLESS = HH_DIR / "harmless-base" / "test.jsonl.gz"
HH_HELPFUL = HH_DIR / "helpful-base" / "test.jsonl.gz"
# The project's own 256 held-out HH-style pairs: stand-in data for tests where real HH is not essential.
BUNDLED_PAIRS = REPO / "data" / "pairs" / "heldout.jsonl"
PAIRS_DATA = HH_HARMLESS if HH_HARMLESS.exists() else BUNDLED_PAIRS


def hh_missing_reason(path: Path = HH_HARMLESS) -> str:
    return (
        f"real HH-RLHF data not found ({path}): set ALIGNMENT_PROBE_HH_DIR to a folder holding "
        "harmless-base/test.jsonl.gz and helpful-base/test.jsonl.gz (the test splits of the `datasets` dataset "
        "Anthropic/hh-rlhf, JSON lines), or put them in ../shared/data/hh-rlhf beside the repository"
    )


def require_hh(path: Path = HH_HARMLESS) -> Path:
    """``path`` if the real HH-RLHF file is there; otherwise skip the calling test, saying how to provide it."""
    if not path.exists():
        pytest.skip(hh_missing_reason(path))
    return path


TIERS = ("unit", "integration", "acceptance", "quality", "lines")


def gpu_missing_reason() -> str | None:
    """Why a ``gpu`` test cannot run here (None: a CUDA device is visible)."""
    if torch.cuda.is_available():
        return None
    why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
    return f"needs a CUDA device ({why}; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier (the folder it lives in), so ``pytest -m "not acceptance"`` is a fast loop;
    skip the tests marked ``gpu``, saying why, where no CUDA device is visible."""
    no_gpu = gpu_missing_reason()
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        if other_line.is_selected(item.nodeid):
            item.add_marker(pytest.mark.other_line)
        if no_gpu is not None and item.get_closest_marker("gpu") is not None:
            item.add_marker(pytest.mark.skip(reason=no_gpu))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the other TransformerLens line's tiers now (tests/helpers/other_line.py) when this run will wait for
    them, so they run beside this run's tests rather than after them."""
    if session.config.option.collectonly or not other_line.other_python():
        return
    if any(item.nodeid == other_line.RUNNER for item in session.items):
        other_line.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    other_line.stop()  # an interrupted run leaves no pytest running in the other interpreter


@dataclass
class TinyCheckpoints:
    base: Path
    tuned: Path
    deeper: Path  # same tokenizer, one more layer: an incompatible twin
    other_tokenizer: Path  # same shape, a tokenizer trained on different text


def _corpus(n: int = 400) -> list[str]:
    pairs, _ = load_pairs(PAIRS_DATA)  # real HH-RLHF where present, else the bundled HH-style pairs
    return [p.prompt + p.chosen for p in pairs[:n]] + [p.prompt + p.rejected for p in pairs[:n]]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoints:
    root = tmp_path_factory.mktemp("ckpts")
    tokenizer = train_tokenizer(_corpus(), vocab_size=512)
    base = random_llama(llama_config(tokenizer), seed=0)
    tuned = perturbed_copy(base, seed=1, scale=0.2)
    deeper = random_llama(llama_config(tokenizer, num_hidden_layers=5), seed=2)
    other_tok = train_tokenizer([s[::-1] for s in _corpus(200)], vocab_size=512)
    other = random_llama(llama_config(other_tok), seed=3)
    return TinyCheckpoints(
        base=save_checkpoint(base, tokenizer, root / "base"),
        tuned=save_checkpoint(tuned, tokenizer, root / "tuned"),
        deeper=save_checkpoint(deeper, tokenizer, root / "deeper"),
        other_tokenizer=save_checkpoint(other, other_tok, root / "other-tok"),
    )


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory):
    """A 5-layer base and a twin that differs from it only in the MLP of layer 2: the answer is known
    (engine and AtP known-answer tests share it)."""
    from alignment_probe.pair import load_twins

    root = tmp_path_factory.mktemp("planted")
    tok = train_tokenizer(_corpus(200), vocab_size=400)
    base = random_llama(llama_config(tok, num_hidden_layers=5), seed=5)
    twin = perturbed_copy(base, seed=6, scale=0.5, only="layers.2.mlp")
    return load_twins(save_checkpoint(base, tok, root / "base"), save_checkpoint(twin, tok, root / "twin"))


@pytest.fixture(scope="session")
def tiny_pair(tiny: TinyCheckpoints):
    from alignment_probe.pair import load_twins

    return load_twins(tiny.base, tiny.tuned, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def hh_pairs():
    return load_pairs(require_hh(HH_HARMLESS))


@pytest.fixture(scope="session")
def any_pairs():
    """Real HH-RLHF harmless-base pairs where present, else the bundled held-out pairs."""
    return load_pairs(PAIRS_DATA)
