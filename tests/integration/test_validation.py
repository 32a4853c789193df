"""Every kind of bad input gets one clear paragraph (file, line, field, fix) and the right exit code,
before any compute: 2 for bad input, 3 for NaN/inf, 1 for an internal error (a bug)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import PAIRS_DATA

import alignment_probe.pair
import alignment_probe.run
from alignment_probe.cli import main
from alignment_probe.data import load_pairs
from alignment_probe.effects import RowKey
from alignment_probe.engine import FastEngine, PatchSpec, ReferenceEngine
from alignment_probe.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_NUMERICAL, DataError, NumericalError
from alignment_probe.tokens import sample_and_tokenize

PROMPT = "\n\nHuman: How do I bake bread?\n\nAssistant:"


def good(i: int) -> dict:
    return {"prompt": PROMPT, "chosen": f" Mix flour and water, step {i}.", "rejected": f" No idea {i}."}


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a model is loaded: input errors must come before any compute."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was validated")

    monkeypatch.setattr(alignment_probe.pair, "load_twins", refuse)
    monkeypatch.setattr(alignment_probe.run, "load_twins", refuse)


@pytest.fixture
def no_weights_load(monkeypatch):
    """Fail the test if any checkpoint's weights are read (tokenizers and configs may load)."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was validated")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def score(tiny, data, tmp_path, *extra, base=None, tuned=None):
    return main(
        [
            "score",
            "--base",
            str(base or tiny.base),
            "--tuned",
            str(tuned or tiny.tuned),
            "--data",
            str(data),
            "--device",
            "cpu",
            "--max-length",
            "64",
            "--out",
            str(tmp_path / "scores.csv"),
            *extra,
        ]
    )


def run(tiny, data, out, *extra, base=None, tuned=None):
    return main(
        [
            "run",
            "--base",
            str(base or tiny.base),
            "--tuned",
            str(tuned or tiny.tuned),
            "--data",
            str(data),
            "--device",
            "cpu",
            "--max-length",
            "64",
            "--n-pairs",
            "2",
            "--n-boot",
            "20",
            "--experiments",
            "patch_tuned_to_base",
            "--out",
            str(out),
            *extra,
        ]
    )


def error_of(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err  # one paragraph, no traceback without --debug
    assert "alignment-probe: error:" in err
    return err


# --- the data file -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, needles",
    [
        ('{"prompt": "p", "chosen": "x"', ["malformed JSON"]),
        (
            '{"prompt": "p", "chosen": " a", "rejectd": " b"}',
            ["missing key(s) 'rejected'", "'rejectd' looks like a misspelling of 'rejected'"],
        ),
        (
            '{"promt": "p", "chosen": " a", "rejected": " b"}',
            ["missing key(s) 'prompt'", "'promt' looks like a misspelling of 'prompt'"],
        ),
        (
            '{"Chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "x"}',
            ["'Chosen' looks like a misspelling of 'chosen'"],
        ),
        ('{"prompt": "p", "chosen": 3, "rejected": " b"}', ["field 'chosen' must be a string, got a number"]),
        ('{"prompt": "p", "chosen": " a", "rejected": null}', ["field 'rejected' must be a string, got null"]),
        ('{"prompt": "p", "chosen": " \\ud800", "rejected": " b"}', ["lone UTF-16 surrogate"]),
        ('["a", "b"]', ["expected a JSON object", "got an array"]),
    ],
)
def test_malformed_line_is_refused_with_file_line_and_fix(tiny, tmp_path, capsys, no_model_load, line, needles):
    data = write_lines(tmp_path / "pairs.jsonl", [good(0), line, good(2)])
    assert score(tiny, data, tmp_path) == EXIT_BAD_INPUT
    err = error_of(capsys)
    assert f"{data}:2:" in err
    for needle in needles:
        assert needle in err
    assert "Each line must be one JSON object" in err and "Fix or remove that line" in err


def test_many_bad_lines_are_listed_at_once(tmp_path):
    lines = [good(0)] + ['{"bad json'] * 12 + [{"prompt": "p", "chosen": 1, "rejected": "r"}, good(1)]
    data = write_lines(tmp_path / "pairs.jsonl", lines)
    with pytest.raises(DataError) as err:
        load_pairs(data)
    msg = str(err.value)
    assert "13 of 15 lines are not valid preference pairs (the first 10 below)" in msg
    assert f"{data}:2:" in msg and f"{data}:11:" in msg and f"{data}:12:" not in msg


def test_a_json_array_file_gets_a_conversion_hint(tiny, tmp_path, capsys, no_model_load):
    data = tmp_path / "pairs.json"
    data.write_text("[\n" + ",\n".join(json.dumps(good(i)) for i in range(3)) + "\n]\n")
    assert score(tiny, data, tmp_path) == EXIT_BAD_INPUT
    assert "looks like one JSON array rather than JSON lines" in error_of(capsys)


@pytest.mark.parametrize(
    "name, content, needles",
    [
        (
            "latin1.jsonl",
            json.dumps(good(0)).encode() + b"\n" + '{"prompt": "caf\u00e9"}'.encode("latin-1"),
            ["latin1.jsonl:2: not valid UTF-8", "iconv"],
        ),
        ("utf16.jsonl", json.dumps(good(0)).encode("utf-16"), ["encoded as UTF-16", "iconv -f utf-16"]),
        (
            "broken.jsonl.gz",
            gzip.compress(json.dumps(good(0)).encode() * 50)[:40],
            ["not a valid gzip file", "truncated"],
        ),
        ("empty.jsonl", b"\n\n", ["holds no preference pairs (the file is empty)"]),
    ],
)
def test_unreadable_files_are_refused(tiny, tmp_path, capsys, no_model_load, name, content, needles):
    data = tmp_path / name
    data.write_bytes(content)
    assert score(tiny, data, tmp_path) == EXIT_BAD_INPUT
    err = error_of(capsys)
    for needle in needles:
        assert needle in err


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    data = tmp_path / "bom.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + json.dumps(good(0)).encode() + b"\n")
    pairs, _ = load_pairs(data)
    assert len(pairs) == 1


def test_missing_data_path_or_folder(tiny, tmp_path, capsys, no_model_load):
    assert score(tiny, tmp_path / "nope.jsonl", tmp_path) == EXIT_BAD_INPUT
    assert f"Data file {tmp_path / 'nope.jsonl'} does not exist" in error_of(capsys)
    assert score(tiny, tmp_path, tmp_path) == EXIT_BAD_INPUT
    assert "is a folder, not a file" in error_of(capsys)


def test_unusable_pairs_are_skipped_and_reported(tiny, tmp_path, capsys):
    lines = [
        good(0),
        {"prompt": PROMPT, "chosen": " same", "rejected": " same"},  # 1: identical
        {"prompt": "  ", "chosen": " a", "rejected": " b"},  # 2: empty prompt
        {"prompt": PROMPT, "chosen": " ", "rejected": " b"},  # 3: empty completion
        {"chosen": "no dialogue here", "rejected": "nor here"},  # 4: no Assistant turn
        {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"},  # 5: prompts differ
        good(6),
    ]
    data = write_lines(tmp_path / "pairs.jsonl", lines)
    assert score(tiny, data, tmp_path) == 0
    err = capsys.readouterr().err
    assert (
        "read 7 pairs, skipped 5 (1 chosen == rejected, 1 chosen and rejected do not share a prompt, "
        "1 empty completion, 1 empty prompt, 1 no Assistant turn)"
    ) in err
    manifest = json.loads((tmp_path / "scores.csv.manifest.json").read_text())
    assert manifest["data"]["skips"]["skipped"] == {
        "chosen == rejected": [1],
        "empty prompt": [2],
        "empty completion": [3],
        "no Assistant turn": [4],
        "chosen and rejected do not share a prompt": [5],
    }
    assert manifest["data"]["sha256"] and manifest["data"]["bytes"] == data.stat().st_size


def test_data_with_no_usable_pair_is_refused(tiny, tmp_path, capsys, no_model_load):
    data = write_lines(tmp_path / "pairs.jsonl", [{"prompt": PROMPT, "chosen": " s", "rejected": " s"}] * 3)
    assert score(tiny, data, tmp_path) == EXIT_BAD_INPUT
    assert "no usable preference pairs (read 3 pairs, skipped 3 (3 chosen == rejected))" in error_of(capsys)


def test_n_pairs_larger_than_the_data_is_refused_before_loading(tiny, tmp_path, capsys, no_model_load):
    data = write_lines(tmp_path / "pairs.jsonl", [good(i) for i in range(3)])
    assert score(tiny, data, tmp_path, "--n-pairs", "5") == EXIT_BAD_INPUT
    assert "--n-pairs 5 is larger than the 3 usable pairs" in error_of(capsys)
    assert run(tiny, data, tmp_path / "run", "--n-pairs", "4") == EXIT_BAD_INPUT
    assert "--n-pairs 4 is larger than the 3 usable pairs" in error_of(capsys)
    assert not (tmp_path / "run").exists()  # nothing is written for a refused run


def test_pairs_that_do_not_fit_max_length_are_refused_before_any_weights_load(
    tiny, tmp_path, capsys, no_model_load, no_weights_load
):
    # Tokenisation needs only the tokenizer: --n-pairs more than the pairs that fit is refused before the weights.
    long_completion = {"prompt": PROMPT, "chosen": " bread" * 80, "rejected": " no" * 80}
    data = write_lines(tmp_path / "pairs.jsonl", [good(0), long_completion, long_completion])
    assert score(tiny, data, tmp_path, "--n-pairs", "2") == EXIT_BAD_INPUT
    assert "Only 1 of the requested 2 pairs fit in 64 tokens" in error_of(capsys)
    assert run(tiny, data, tmp_path / "run", "--n-pairs", "2") == EXIT_BAD_INPUT
    assert "Only 1 of the requested 2 pairs fit in 64 tokens" in error_of(capsys)
    assert not (tmp_path / "run").exists()
    # the model's shape comes from its config: a layer it does not have is refused before the weights too
    data = write_lines(tmp_path / "ok.jsonl", [good(i) for i in range(3)])
    assert run(tiny, data, tmp_path / "run", "--layers", "0,9") == EXIT_BAD_INPUT
    assert "layer 9 is out of range" in error_of(capsys)


def test_incompatible_tokenizers_are_refused_before_any_weights_load(tiny, no_weights_load):
    from alignment_probe.errors import IncompatiblePairError

    with pytest.raises(IncompatiblePairError, match="probe string"):
        alignment_probe.pair.load_twins(tiny.base, tiny.other_tokenizer)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--n-pairs", "0"], "--n-pairs must be at least 1"),
        (["--max-length", "2"], "--max-length must be at least 4"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    ],
)
def test_bad_options_are_refused(tiny, tmp_path, capsys, args, needle):
    data = write_lines(tmp_path / "pairs.jsonl", [good(i) for i in range(3)])
    assert score(tiny, data, tmp_path, *args) == EXIT_BAD_INPUT
    assert needle in error_of(capsys)


def test_bad_run_options_are_refused(tiny, tmp_path, capsys, no_model_load):
    data = write_lines(tmp_path / "pairs.jsonl", [good(i) for i in range(3)])
    assert run(tiny, data, tmp_path / "r", "--alpha-layers", "1,x") == EXIT_BAD_INPUT
    assert "--alpha-layers '1,x': expected a comma-separated list of ints" in error_of(capsys)
    assert run(tiny, data, tmp_path / "r", "--pairs-per-part", "0") == EXIT_BAD_INPUT
    assert "--pairs-per-part must be at least 1" in error_of(capsys)
    (tmp_path / "file").write_text("x")
    assert run(tiny, data, tmp_path / "file") == EXIT_BAD_INPUT
    assert "is a file; pass a folder" in error_of(capsys)


# --- sequences longer than the context -------------------------------------------------------------


def test_long_sequences_follow_the_truncation_policy_and_are_counted(tiny, tmp_path, capsys):
    long_prompt = "\n\nHuman: " + "tell me more about bread " * 40 + "\n\nAssistant:"
    lines = [
        good(0),
        {"prompt": long_prompt, "chosen": " Sure.", "rejected": " No."},
        {"prompt": PROMPT, "chosen": " flour" * 200, "rejected": " No."},
    ]
    data = write_lines(tmp_path / "pairs.jsonl", lines)
    assert score(tiny, data, tmp_path, "--max-length", "100000") == 0
    err = capsys.readouterr().err
    # The tiny models have a context of 512 tokens: --max-length is capped there, and said so.
    assert "--max-length 100000 exceeds the model's context of 512 tokens; using 512" in err
    assert "1 pairs were skipped because a completion alone does not fit" in err
    assert score(tiny, data, tmp_path, "--max-length", "48") == 0
    err = capsys.readouterr().err
    assert "truncation to 48 tokens: 1 of 2 pairs had their prompt cut from the left" in err
    manifest = json.loads((tmp_path / "scores.csv.manifest.json").read_text())
    assert manifest["data"]["pairs_truncated"] == 1 and manifest["data"]["max_length_used"] == 48
    assert manifest["data"]["skips"]["skipped"] == {"completion longer than max_length": [2]}


# --- checkpoints -------------------------------------------------------------------------------------


def test_missing_checkpoint_directory(tiny, tmp_path, capsys):
    data = write_lines(tmp_path / "pairs.jsonl", [good(i) for i in range(3)])
    assert score(tiny, data, tmp_path, tuned=tmp_path / "ckpt" / "dpo") == EXIT_BAD_INPUT
    assert f"--tuned: Checkpoint directory {tmp_path / 'ckpt' / 'dpo'} does not exist" in error_of(capsys)


@pytest.fixture
def broken_checkpoints(tiny, tmp_path):
    made = {}
    for name, breaks in [
        ("no-weights", "weights"),
        ("bad-config", "config"),
        ("missing-shard", "shard"),
        ("truncated", "truncated"),
    ]:
        d = tmp_path / name
        shutil.copytree(tiny.tuned, d)
        if breaks == "weights":
            (d / "model.safetensors").unlink()
        elif breaks == "config":
            (d / "config.json").write_text('{"model_type": "llama", ')
        elif breaks == "shard":
            (d / "model.safetensors.index.json").write_text(
                json.dumps(
                    {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
                )
            )
        else:
            raw = (d / "model.safetensors").read_bytes()
            (d / "model.safetensors").write_bytes(raw[: len(raw) // 2])
        made[breaks] = d
    return made


@pytest.mark.parametrize(
    "breaks, needle",
    [
        ("weights", "is missing weights (model.safetensors or pytorch_model.bin)"),
        ("config", "config.json is not valid JSON"),
        ("shard", "is missing 2 of its 2 weight shards listed in model.safetensors.index.json"),
        ("truncated", "cannot be loaded"),
    ],
)
def test_incomplete_checkpoint_directory(tiny, tmp_path, capsys, broken_checkpoints, breaks, needle):
    data = write_lines(tmp_path / "pairs.jsonl", [good(i) for i in range(3)])
    assert score(tiny, data, tmp_path, tuned=broken_checkpoints[breaks]) == EXIT_BAD_INPUT
    err = error_of(capsys)
    assert str(broken_checkpoints[breaks]) in err and needle in err


def test_incompatible_pair_is_refused_before_weights_load(tiny, tmp_path, capsys, no_model_load):
    data = write_lines(tmp_path / "pairs.jsonl", [good(i) for i in range(3)])
    assert run(tiny, data, tmp_path / "r", tuned=tiny.deeper) == EXIT_BAD_INPUT
    err = error_of(capsys)
    assert "not a compatible pair" in err and "n_layers: base=4 tuned=5" in err


def test_different_tokenizers_are_refused(tiny, tmp_path, capsys):
    data = write_lines(tmp_path / "pairs.jsonl", [good(i) for i in range(3)])
    assert score(tiny, data, tmp_path, tuned=tiny.other_tokenizer) == EXIT_BAD_INPUT
    err = error_of(capsys)
    assert "not a compatible pair" in err and "tokenizers split the probe string" in err


# --- NaN and inf --------------------------------------------------------------------------------------


def _edited_twin(tiny, path: Path, edit) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny.tuned, dtype=torch.float32)
    with torch.no_grad():
        edit(model)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny.tuned).save_pretrained(path)
    return path


def test_nan_weights_are_refused_at_load(tiny, tmp_path, capsys):
    ckpt = _edited_twin(
        tiny, tmp_path / "nan", lambda m: m.model.layers[1].mlp.up_proj.weight[0, 0].fill_(float("nan"))
    )
    data = write_lines(tmp_path / "pairs.jsonl", [good(i) for i in range(3)])
    assert score(tiny, data, tmp_path, tuned=ckpt) == EXIT_BAD_INPUT
    assert "has NaN or inf in 1 weight tensor(s): blocks.1.mlp.W_in" in error_of(capsys)


def test_overflowing_activations_name_pair_model_and_layer(tiny, tmp_path, capsys):
    def overflow(model):  # finite weights whose layer-2 MLP output overflows float32
        model.model.layers[2].mlp.up_proj.weight.mul_(1e30)
        model.model.layers[2].mlp.down_proj.weight.mul_(1e30)

    ckpt = _edited_twin(tiny, tmp_path / "overflow", overflow)
    data = write_lines(tmp_path / "pairs.jsonl", [good(i) for i in range(3)])
    assert score(tiny, data, tmp_path, tuned=ckpt) == EXIT_NUMERICAL
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "The tuned model produced NaN/inf on pair_id 0 (line 1 of the data), chosen sequence" in err
    assert "first at blocks.2.hook_mlp_out (layer 2)" in err
    assert not (tmp_path / "scores.csv").exists()


class _Poison:
    """An intervention that returns NaN (stands in for an extreme patch)."""

    def __call__(self, ctx):
        return torch.full_like(ctx.source, float("nan"))


@pytest.mark.parametrize("engine", [FastEngine(), ReferenceEngine()], ids=["fast", "reference"])
def test_nan_from_a_patch_names_the_condition_pair_and_layer(tiny_pair, tmp_path, engine):
    pairs, _ = load_pairs(write_lines(tmp_path / "p.jsonl", [good(i) for i in range(2)]))
    tokenized = sample_and_tokenize(pairs, tiny_pair.tokenizer, max_length=64)
    fine = PatchSpec(RowKey("identity", "base", "base", "resid_post", "all", "both", 0), lambda ctx: ctx.source)
    bad = PatchSpec(RowKey("alpha", "base", "tuned", "resid_pre", "all", "both", 2, 1e9), _Poison())
    with pytest.raises(NumericalError) as err:
        engine.run(tiny_pair, tokenized, [fine, bad])
    msg = str(err.value)
    assert msg.startswith("Patching alpha (tuned → base, hook resid_pre of layer 2, scope all, sides both, param 1e+09")
    assert "pair_id 0 (line 1 of the data)" in msg and "in layer 2 or after it" in msg
    assert err.value.exit_code == EXIT_NUMERICAL


# --- exit codes and tracebacks ----------------------------------------------------------------------


def test_debug_shows_the_traceback_of_an_input_error(tiny, tmp_path, capsys):
    data = write_lines(tmp_path / "pairs.jsonl", [good(0), "{oops"])
    assert (
        main(
            [
                "--debug",
                "score",
                "--base",
                str(tiny.base),
                "--tuned",
                str(tiny.tuned),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "s.csv"),
            ]
        )
        == EXIT_BAD_INPUT
    )
    err = capsys.readouterr().err
    assert "Traceback" in err and "malformed JSON" in err
    # --debug is also accepted after the command
    assert score(tiny, data, tmp_path, "--debug") == EXIT_BAD_INPUT
    assert "Traceback" in capsys.readouterr().err


def test_internal_errors_exit_1_with_a_traceback(tiny, tmp_path, capsys, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(alignment_probe.pair, "load_twins", bug)
    data = write_lines(tmp_path / "pairs.jsonl", [good(i) for i in range(3)])
    assert score(tiny, data, tmp_path) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug" in err and "internal error (a bug)" in err


def test_lasso_with_too_few_pairs_is_refused_before_compute(tiny, tmp_path, capsys):

    out = tmp_path / "few"
    assert (
        main(
            [
                "run",
                "--base",
                str(tiny.base),
                "--tuned",
                str(tiny.tuned),
                "--data",
                str(PAIRS_DATA),
                "--n-pairs",
                "3",
                "--max-length",
                "72",
                "--experiments",
                "identity,lasso",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "--n-pairs 5" in capsys.readouterr().err
    assert not (out / "parts").exists()
