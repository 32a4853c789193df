"""``--tuned`` as a peft adapter folder: merged onto ``--base`` at load, cached, fingerprinted, refused
when it names another base or does not fit. The reference is peft's own (unmerged) forward."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from conftest import BUNDLED_PAIRS

from alignment_probe.cli import main
from alignment_probe.errors import AdapterError
from alignment_probe.pair import load_twins


def make_adapter(base_dir, out, *, seed=0, layers=(2,)):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["gate_proj", "up_proj", "down_proj"],
        layers_to_transform=list(layers),
        layers_pattern="layers",
        init_lora_weights=False,
    )  # random A and B: the adapter changes the model
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(out)
    return peft_model.eval()


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "lora"
    return out, make_adapter(tiny.base, out)


def test_adapter_is_merged_onto_base_and_cached(tiny, adapter, tmp_path):
    folder, peft_model = adapter
    cache = tmp_path / "cache"
    twins = load_twins(tiny.base, folder, cache_dir=cache)
    assert "adapter" in twins.tuned_source and str(folder) in twins.tuned_source
    ids = torch.tensor([[0] + list(range(10, 60))])
    with torch.no_grad():
        ref = peft_model(ids).logits  # peft's forward with the adapter applied, not merged
        assert (twins.tuned(ids) - ref).abs().max().item() <= 1e-4
        assert (twins.tuned(ids) - twins.base(ids)).abs().max().item() > 1e-3
    merged = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(merged) == 1 and "llama" not in merged[0].name
    stamp = (merged[0] / "model.safetensors").stat().st_mtime_ns
    again = load_twins(tiny.base, folder, cache_dir=cache)  # reused, not merged again
    assert (merged[0] / "model.safetensors").stat().st_mtime_ns == stamp
    assert again.tuned_fingerprint == twins.tuned_fingerprint != twins.base_fingerprint


def test_adapter_naming_another_base_is_refused(tiny, adapter, tmp_path):
    folder, _ = adapter
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "someone/another-model"
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match=r"trained on 'someone/another-model'.*Pass --base someone/another-model"):
        load_twins(tiny.base, other, cache_dir=tmp_path / "cache")


def test_adapter_of_another_shape_is_refused(tiny, tmp_path):
    # A LoRA trained on a narrower model of the same family: its matrices cannot fit the base's layers.
    from transformers import AutoTokenizer

    from tests.helpers.checkpoints import llama_config, random_llama, save_checkpoint

    tok = AutoTokenizer.from_pretrained(tiny.base)
    wide = save_checkpoint(
        random_llama(llama_config(tok, hidden_size=32, intermediate_size=96), seed=9), tok, tmp_path / "wide"
    )
    folder = tmp_path / "wide-lora"
    make_adapter(wide, folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tiny.base)  # claims the right base: only the shapes give it away
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match=r"does not fit the base"):
        load_twins(tiny.base, folder, cache_dir=tmp_path / "cache")


def test_score_command_takes_an_adapter_as_tuned(tiny, adapter, tmp_path, monkeypatch):
    folder, _ = adapter
    monkeypatch.setenv("ALIGNMENT_PROBE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "scores.csv"
    assert (
        main(
            [
                "score",
                "--base",
                str(tiny.base),
                "--tuned",
                str(folder),
                "--data",
                str(BUNDLED_PAIRS),
                "--n-pairs",
                "2",
                "--max-length",
                "96",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = pd.read_csv(out)
    assert len(table) == 2 and (table.gain.abs() > 0).all()


def test_adapter_without_peft_installed_is_a_clean_error(tiny, adapter, tmp_path, monkeypatch, capsys):
    """peft is optional: a --tuned adapter without it is refused (exit 2) with how to install it."""
    import builtins

    real_import = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name == "peft" or name.startswith("peft."):
            raise ImportError("No module named 'peft'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setenv("ALIGNMENT_PROBE_CACHE", str(tmp_path / "cache"))  # nothing merged yet: peft is needed
    monkeypatch.setattr(builtins, "__import__", no_peft)
    folder, _ = adapter
    rc = main(
        [
            "score",
            "--base",
            str(tiny.base),
            "--tuned",
            str(folder),
            "--data",
            str(BUNDLED_PAIRS),
            "--n-pairs",
            "2",
            "--out",
            str(tmp_path / "s.csv"),
        ]
    )
    monkeypatch.undo()
    assert rc == 2
    err = capsys.readouterr().err
    assert "pip install peft" in err and "internal error" not in err
