"""Choosing the backend (the installed TransformerLens line, or a forced one) and parsing ``--device-map``: every
bad value refused before any model loads, naming the fix (alignment_probe.backends)."""

from __future__ import annotations

import importlib.util
import json

import pytest

import alignment_probe.backends as backends
import alignment_probe.pair
import alignment_probe.run
from alignment_probe.backends import (
    available_backends,
    check_device_map,
    parse_device_map,
    resolve_backend,
)
from alignment_probe.cli import main
from alignment_probe.errors import EXIT_BAD_INPUT, ConfigError

INSTALL_HOOKED = "pip install 'transformer-lens>=3.9,<4'"
INSTALL_BRIDGE = "pip install 'transformer-lens>=4.3,<5'"


def installed_line() -> str:
    """Which line is installed, read from the package itself (not from its version string): 3.x exports
    HookedTransformer, 4.x only TransformerBridge."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:  # 4.x: "HookedTransformer was removed in TransformerLens 4.0"
        return "bridge"
    return "hooked"


def test_the_installed_line_is_the_one_transformer_lens_provides():
    assert importlib.util.find_spec("transformer_lens") is not None
    assert available_backends() == (installed_line(),)
    assert resolve_backend("auto") == installed_line()
    assert resolve_backend(installed_line()) == installed_line()


@pytest.mark.parametrize(
    ("version", "have", "missing", "fix"),
    [("3.9.0", "hooked", "bridge", INSTALL_BRIDGE), ("4.3.0", "bridge", "hooked", INSTALL_HOOKED)],
)
def test_each_line_resolves_auto_to_itself_and_refuses_the_other(monkeypatch, version, have, missing, fix):
    monkeypatch.setattr(backends, "transformer_lens_version", lambda: version)
    assert available_backends() == (have,)
    assert resolve_backend("auto") == have
    assert resolve_backend(have) == have
    with pytest.raises(ConfigError) as err:
        resolve_backend(missing)
    message = str(err.value)
    assert fix in message and f"transformer-lens {version}" in message and f"--backend {have}" in message


def test_no_transformer_lens_and_an_unknown_backend_are_refused(monkeypatch):
    with pytest.raises(ConfigError, match="not a backend: use one of auto, hooked, bridge"):
        resolve_backend("tensorflow")
    monkeypatch.setattr(backends, "transformer_lens_version", lambda: None)
    assert available_backends() == ()
    with pytest.raises(ConfigError) as err:
        resolve_backend("auto")
    assert INSTALL_HOOKED in str(err.value) and INSTALL_BRIDGE in str(err.value)


def test_device_map_strategies_json_and_files_parse(tmp_path):
    assert parse_device_map(None) is None
    assert parse_device_map("auto") == "auto"
    assert parse_device_map(" balanced ") == "balanced"
    mapping = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cuda:1", "lm_head": "cpu"}
    assert parse_device_map(json.dumps(mapping)) == mapping
    path = tmp_path / "map.json"
    path.write_text(json.dumps(mapping))
    assert parse_device_map(str(path)) == mapping
    assert parse_device_map(mapping) == mapping


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("sideways", "neither auto nor balanced"),
        ("{model.layers.0: 0}", "not valid JSON"),
        ("{}", "non-empty JSON object"),
        ('{"model.layers.0": "gpu7"}', "mapped to 'gpu7'"),
        ('{"model.layers.0": -1}', "mapped to -1"),
        ('{"model.layers.0": true}', "mapped to True"),
    ],
)
def test_bad_device_maps_are_refused_naming_the_problem(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_device_map(spec)


def test_a_device_map_file_that_is_not_a_json_object_is_refused(tmp_path):
    path = tmp_path / "map.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="non-empty JSON object"):
        parse_device_map(str(path))
    path.write_text("not json")
    with pytest.raises(ConfigError, match="does not hold a JSON object"):
        parse_device_map(str(path))


def test_a_device_map_needs_the_bridge():
    check_device_map("bridge", "auto")
    check_device_map("hooked", None)
    with pytest.raises(ConfigError, match=r"--device-map needs the TransformerBridge backend \(transformer-lens 4.x\)"):
        check_device_map("hooked", {"model.layers.0": 0})


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before --backend/--device-map were checked")

    monkeypatch.setattr(alignment_probe.pair, "load_twins", refuse)
    monkeypatch.setattr(alignment_probe.run, "load_twins", refuse)


@pytest.mark.parametrize("command", ["run", "generate", "score"])
def test_the_cli_refuses_the_other_line_before_any_model_loads(command, tmp_path, capsys, no_model_load):
    other = "bridge" if installed_line() == "hooked" else "hooked"
    out = tmp_path / ("scores.csv" if command == "score" else "out")
    assert main([command, "--out", str(out), "--backend", other]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert (INSTALL_BRIDGE if other == "bridge" else INSTALL_HOOKED) in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["run", "generate"])
def test_the_cli_refuses_a_bad_device_map_before_any_model_loads(command, tmp_path, capsys, no_model_load):
    assert main([command, "--out", str(tmp_path / "out"), "--device-map", "{nope"]) == EXIT_BAD_INPUT
    assert "--device-map is not valid JSON" in capsys.readouterr().err


def test_the_cli_refuses_a_device_map_on_the_hooked_line(tmp_path, capsys, no_model_load):
    if installed_line() != "hooked":
        pytest.skip("the HookedTransformer line is not installed here (the Bridge takes device maps)")
    assert main(["run", "--out", str(tmp_path / "out"), "--device-map", "balanced"]) == EXIT_BAD_INPUT
    assert "--device-map needs the TransformerBridge backend" in capsys.readouterr().err
