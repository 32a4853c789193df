"""A run directory read back: its summary, figures, verdicts and report are functions of its tables alone."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import BUNDLED_PAIRS

import alignment_probe as ap
from alignment_probe.cli import main


@pytest.fixture(scope="module")
def run_dir(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("rundir") / "full"
    args = [
        "run",
        "--base",
        str(tiny.base),
        "--tuned",
        str(tiny.tuned),
        "--data",
        str(BUNDLED_PAIRS),
        "--n-pairs",
        "6",
        "--max-length",
        "72",
        "--n-boot",
        "100",
        "--extra-hooks",
        "mlp_out",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    return out


def test_summary_and_report_regenerate_byte_for_byte(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    original = {name: (copy / name).read_bytes() for name in ("summary.json", "report.html")}
    for name in ("summary.json", "report.html", "lasso.parquet"):  # only the tables, fits and manifest remain
        (copy / name).unlink()
    shutil.rmtree(copy / "parts")
    run = ap.load_run(copy)
    assert run.summary == {}
    run.regenerate()
    for name, data in original.items():
        assert (copy / name).read_bytes() == data, name


def test_load_run_reads_tables_and_summary(run_dir):
    run = ap.load_run(run_dir)
    assert run.summary == json.loads((run_dir / "summary.json").read_text())
    from alignment_probe.tables import json_bytes

    assert json_bytes(run.summarize()) == (run_dir / "summary.json").read_bytes()
    assert set(run.fits) == {"lowrank", "lasso", "shift", "weight_diff", "generations"}
    assert len(run.scores) == 6 and run.manifest["status"] == "complete"
    assert run.report_html().encode() == (run_dir / "report.html").read_bytes()
    # the verdicts are part of the summary: three outcomes, each with its rule and numbers
    judged = run.summary["verdicts"]
    assert judged and all(
        v["verdict"] in ("agrees", "differs", "inconclusive") and v["rule"] and v["numbers"] for v in judged
    )
    assert {v["key"] for v in judged} | {v["key"] for v in run.summary["verdicts_not_run"]} >= {"peak", "identity"}


def test_a_run_slices_several_hooks_into_one_figure(run_dir):
    run = ap.load_run(run_dir)
    both = run.curves(experiment="patch_tuned_to_base", hook=["resid_post", "mlp_out"])
    assert sorted(both.hook.unique()) == ["mlp_out", "resid_post"]
    # The default hook's curve is the summary's per-layer entry, number for number.
    default = both[both.hook == "resid_post"].sort_values("layer")
    entry = run.summary["experiments"]["patch_tuned_to_base"]["per_layer"]
    assert default["mean"].tolist() == [r["mean"] for r in entry]
    assert default["ci_low"].tolist() == [r["ci_low"] for r in entry]
    fig = ap.plot(both)
    means = [t for t in fig.data if not t.name.endswith("(95% CI)")]
    assert len(means) == 2 and len({t.name for t in means}) == 2


def test_components_share_one_figure(run_dir):
    """E7 components: E1 at every hook run is in the summary (``by_hook``) and on one figure of the report."""
    run = ap.load_run(run_dir)
    by_hook = run.summary["experiments"]["patch_tuned_to_base"]["by_hook"]
    assert list(by_hook) == ["resid_post", "mlp_out"]
    mlp = run.curves(experiment="patch_tuned_to_base", hook="mlp_out").sort_values("layer")
    assert [r["mean"] for r in by_hook["mlp_out"]] == mlp["mean"].tolist()
    assert 'id="section-components"' in (run_dir / "report.html").read_text()


def test_load_run_refuses_an_unfinished_directory(tmp_path):
    from alignment_probe.errors import ConfigError

    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match="resume"):
        ap.load_run(tmp_path)
