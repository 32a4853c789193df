"""Figures and the HTML report, on synthetic summaries with known answers (no model is run)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from alignment_probe.effects import RowKey, make_row, to_frame
from alignment_probe.experiments.registry import EXPERIMENT_NAMES
from alignment_probe.report import (
    MissingExperimentError,
    all_figures,
    alpha_dose_response,
    controls,
    directionality,
    findings,
    gain_histogram,
    lasso_coefficients,
    layer_curve,
    lowrank,
    render_report,
    save_static,
    source_variants,
    write_report,
)
from alignment_probe.report import figures as F
from alignment_probe.report import html as H
from alignment_probe.report.html_tables import _findings_table

N_LAYERS = 7
PEAK = 3  # relative depth 3/6 = 0.5: mid-stack, like the paper's 8/15
MALICIOUS = "<script>alert(1)</script>"


def per_layer(values, half_width=0.1):
    return [{"layer": i, "mean": v, "ci_low": v - half_width, "ci_high": v + half_width} for i, v in enumerate(values)]


def layer_experiment(values, peak=None, onset=None, half_width=0.1):
    peak = int(np.argmax(values)) if peak is None else peak
    return {
        "per_layer": per_layer(values, half_width),
        "peak_layer": peak,
        "peak_layer_ci": [peak - 1, peak + 1],
        "onset_layer": max(peak - 1, 0) if onset is None else onset,
        "onset_layer_ci": [0, peak],
        "peak_set": [peak],
        "layers_swept": len(values),
    }


def selection(chosen, confirm, in_sample, n=40):
    """A ``selection`` record (stats.selection_record's keys): explore = the even pair ids, confirm = the odd."""

    def cell(m, lo, hi):
        return {"mean": m, "ci_low": lo, "ci_high": hi, "n": n // 2}

    return {
        "explore_pair_ids": list(range(0, n, 2)),
        "confirm_pair_ids": list(range(1, n, 2)),
        "chosen": chosen,
        "confirm": cell(*confirm),
        "in_sample": cell(*in_sample),
    }


def make_summary(peak: int = PEAK, n_layers: int = N_LAYERS) -> dict:
    bump = [2.0 * math.exp(-((i - peak) ** 2)) for i in range(n_layers)]
    alphas = [0.0, 0.25, 0.5, 1.0, 1.5]
    ks = [1, 2, 4, 8, 16]
    return {
        "n_pairs": 40,
        "n_layers": n_layers,
        "base_delta_logp_mean": -0.5,
        "tuned_delta_logp_mean": 1.5,
        "gain_mean": 2.0,
        "gain_ci": [1.8, 2.2],
        "gain_per_token_mean": 0.04,
        "gain_per_token_ci": [0.03, 0.05],
        "experiments": {
            "patch_tuned_to_base": layer_experiment(bump, peak=peak)
            | {"selection": selection(peak, (1.9, 1.6, 2.2), (2.1, 1.8, 2.4))},
            "patch_base_to_tuned": layer_experiment([-0.1 * b for b in bump]),
            "identity": layer_experiment([0.0] * n_layers, half_width=0.0),
            "random_noise": layer_experiment([-0.05] * n_layers),
            "random_direction": layer_experiment([0.01] * n_layers),
            "source_chosen_only": layer_experiment([0.6 * b for b in bump]),
            "source_rejected_only": layer_experiment([0.4 * b for b in bump]),
            "vector_chosen": layer_experiment([0.5 * b for b in bump]),
            "vector_rejected": layer_experiment([-0.3 * b for b in bump]),
            "vector_contrast": layer_experiment([0.8 * b for b in bump]),
            "alpha": {
                "alphas": alphas,
                "by_alpha": {str(a): per_layer([a * b for b in bump]) for a in alphas},
                "spearman_rho": {str(i): 1.0 for i in range(n_layers)},
            },
            "lowrank_reconstruct": {
                "layers": [peak],
                "by_k": [
                    {
                        "layer": peak,
                        "k": k,
                        "effect_ratio": min(0.99, 0.25 * k),
                        "effect_ratio_ci": [0.2 * k, 0.3 * k],
                        "variance_explained": k / 30,
                        "heldout_effect_ratio": min(0.97, 0.24 * k),
                    }
                    for k in ks
                ],
            },
            "lowrank_difference": {
                "layers": [1, peak],
                "by_k": [
                    {
                        "layer": layer,
                        "k": k,
                        "effect_ratio": 0.5,
                        "effect_ratio_ci": [0.4, 0.6],
                        "variance_explained": 0.3,
                        "heldout_effect_ratio": 0.45,
                    }
                    for layer in (1, peak)
                    for k in ks
                ],
            },
            "lasso": {
                "coefficients": [0.0] * peak + [-0.18] + [0.0] * (n_layers - peak - 1),
                "alpha_": 0.01,
                "selection_frequency": [0.01] * peak + [0.99] + [0.02] * (n_layers - peak - 1),
                "probe_r2": [0.1] * n_layers,
                "nonzero_layers": [peak],
            },
        },
    }


def make_manifest(base_name: str = "org/base-model") -> dict:
    return {
        "command": "run",
        "config": {"seed": 7, "scope": "all"},
        "created": "2026-01-02T03:04:05+00:00",
        "models": {
            "base": {"source": base_name, "fingerprint": "0123456789abcdef" * 4},
            "tuned": {"source": "org/tuned-model", "fingerprint": "fedcba9876543210" * 4},
            "architecture": "LlamaForCausalLM",
            "n_layers": N_LAYERS,
        },
        "versions": {"python": "3.11", "torch": "2.13.0"},
    }


def make_scores(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    base = rng.normal(-0.5, 1, n)
    tuned = base + rng.normal(2, 0.5, n)
    return pd.DataFrame({"pair_id": range(n), "base_delta_logp": base, "tuned_delta_logp": tuned, "gain": tuned - base})


def identity_effects(offset: float = 0.0) -> pd.DataFrame:
    rows = []
    for layer in range(N_LAYERS):
        key = RowKey("identity", "base", "base", "resid_post", "all", "both", layer)
        for pair in range(5):
            clean = (-1.0 - pair, -2.0)
            rows.append(make_row(key, pair, clean, (clean[0] + offset, clean[1])))
    return to_frame(rows)


def names(fig: go.Figure) -> list[str]:
    return [t.name for t in fig.data]


def trace(fig: go.Figure, name: str):
    hits = [t for t in fig.data if t.name == name]
    assert hits, f"no trace {name!r} in {names(fig)}"
    return hits[0]


def without(summary: dict, *drop: str) -> dict:
    out = json.loads(json.dumps(summary))
    for name in drop:
        out["experiments"].pop(name, None)
    return out


@pytest.fixture(scope="module")
def summary() -> dict:
    return make_summary()


# ------------------------------------------------------------------------------------------- figures


def test_layer_curve_has_band_mean_and_markers(summary):
    fig = layer_curve(summary)
    assert isinstance(fig, go.Figure)
    label = F.LABELS["patch_tuned_to_base"]
    mean = trace(fig, label)
    assert list(mean.x) == list(range(N_LAYERS))
    band = trace(fig, f"{label} (95% CI)")
    assert band.fill == "toself"
    assert set(band.x) == set(range(N_LAYERS)) and len(band.x) == 2 * N_LAYERS
    peak = trace(fig, f"{label} peak")
    assert list(peak.x) == [PEAK] and peak.y[0] == pytest.approx(2.0)
    assert list(peak.error_x.arrayminus) == [1] and list(peak.error_x.array) == [1]
    assert list(trace(fig, f"{label} onset").x) == [PEAK - 1]
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tickformat == "d"
    assert "nats" in fig.layout.yaxis.title.text
    assert fig.layout.title.text
    assert any(s.line.dash == "dash" and s.y0 == 0 for s in fig.layout.shapes)  # zero line
    assert "nats" in mean.hovertemplate


def test_layer_curve_several_experiments_and_partial_missing(summary):
    fig = layer_curve(summary, experiments=("patch_tuned_to_base", "vector_contrast", "nonexistent"))
    assert F.LABELS["vector_contrast"] in names(fig)
    assert any("not run: nonexistent" in a.text for a in fig.layout.annotations)
    with pytest.raises(MissingExperimentError, match="patch_tuned_to_base"):
        layer_curve(without(summary, "patch_tuned_to_base"))


def test_band_skipped_when_ci_missing(summary):
    s = without(summary)
    for row in s["experiments"]["patch_tuned_to_base"]["per_layer"]:
        row["ci_low"] = row["ci_high"] = None
    fig = layer_curve(s)
    assert F.LABELS["patch_tuned_to_base"] in names(fig)
    assert not any(n.endswith("(95% CI)") for n in names(fig))


def test_directionality_and_controls(summary):
    fig = directionality(summary)
    assert {F.LABELS["patch_tuned_to_base"], F.LABELS["patch_base_to_tuned"]} <= set(names(fig))
    fig = controls(summary)
    for name in ("patch_tuned_to_base", "identity", "random_noise", "random_direction"):
        assert F.LABELS[name] in names(fig)
    only_identity = without(summary, "random_noise", "random_direction")
    fig = controls(only_identity)
    assert F.LABELS["identity"] in names(fig)
    assert any("random_noise" in a.text for a in fig.layout.annotations)
    with pytest.raises(MissingExperimentError):
        controls(without(summary, "identity", "random_noise", "random_direction"))


def test_alpha_dose_response(summary):
    fig = alpha_dose_response(summary)
    line = trace(fig, f"layer {PEAK} (ρ = +1.00)")
    assert list(line.x) == [0.0, 0.25, 0.5, 1.0, 1.5]
    assert line.y[3] == pytest.approx(2.0)
    assert f"layer {PEAK} (ρ = +1.00) (95% CI)" in names(fig)
    assert fig.layout.xaxis.title.text.startswith("α")
    with pytest.raises(MissingExperimentError):
        alpha_dose_response(without(summary, "alpha"))


def test_source_variants(summary):
    fig = source_variants(summary)
    for name in ("source_chosen_only", "source_rejected_only", "vector_chosen", "vector_rejected", "vector_contrast"):
        assert F.LABELS[name] in names(fig)
    total = trace(fig, "chosen-only + rejected-only")
    both = trace(fig, "both (= tuned → base)")
    np.testing.assert_allclose(total.y, both.y)  # the synthetic decomposition adds up
    only_vectors = without(summary, "source_chosen_only", "source_rejected_only")
    fig = source_variants(only_vectors)
    assert F.LABELS["vector_contrast"] in names(fig) and F.LABELS["source_chosen_only"] not in names(fig)
    assert any("source_chosen_only" in a.text for a in fig.layout.annotations)
    with pytest.raises(MissingExperimentError):
        source_variants(without(only_vectors, "vector_chosen", "vector_rejected", "vector_contrast"))


def test_lowrank(summary):
    fig = lowrank(summary)
    ratio = trace(fig, f"reconstruct, layer {PEAK}")
    assert list(ratio.x) == [1, 2, 4, 8, 16]
    assert f"reconstruct, layer {PEAK} (95% CI)" in names(fig)
    assert f"reconstruct, layer {PEAK} (held-out)" in names(fig)
    assert f"reconstruct, layer {PEAK}: variance explained" in names(fig)
    assert "difference, layer 1" in names(fig)
    assert fig.layout.xaxis.type == "log" and "4" in fig.layout.xaxis.ticktext
    fig = lowrank(without(summary, "lowrank_difference"))
    assert not any(n.startswith("difference") for n in names(fig))
    with pytest.raises(MissingExperimentError):
        lowrank(without(summary, "lowrank_difference", "lowrank_reconstruct"))


def test_lasso_coefficients(summary):
    fig = lasso_coefficients(summary)
    bars = trace(fig, "LASSO coefficient")
    assert isinstance(bars, go.Bar) and list(bars.x) == list(range(N_LAYERS))
    assert bars.y[PEAK] == pytest.approx(-0.18)
    assert trace(fig, "selection frequency").yaxis == "y2"
    assert "probe R² (CV)" in names(fig)
    with pytest.raises(MissingExperimentError):
        lasso_coefficients(without(summary, "lasso"))


def test_gain_histogram():
    scores = make_scores()
    fig = gain_histogram(scores)
    assert isinstance(fig.data[0], go.Histogram) and len(fig.data[0].x) == len(scores)
    fig = gain_histogram(scores.drop(columns="gain"))  # computed from the two Δlogp columns
    np.testing.assert_allclose(fig.data[0].x, scores["gain"])
    with pytest.raises(MissingExperimentError):
        gain_histogram(None)


PAPER_FIGURES = [
    "layer_curve",
    "directionality",
    "controls",
    "alpha_dose_response",
    "source_variants",
    "lowrank",
    "lasso_coefficients",
    "gain_histogram",
]


def test_all_figures_skips_what_was_not_run(summary):
    figs, skipped = F.build_figures(summary, scores=make_scores())
    assert [n for n in figs if n in PAPER_FIGURES] == PAPER_FIGURES  # the paper's, in report order
    assert set(figs) | set(skipped) == set(F.FIGURES)  # every other registered figure says why it is missing
    assert all(isinstance(f, go.Figure) for f in figs.values())
    small = without(summary, *(n for n in summary["experiments"] if n not in ("identity", "lasso")))
    figs, skipped = F.build_figures(small)
    assert list(figs) == ["controls", "lasso_coefficients"]
    assert "gain_histogram" in skipped and "alpha" in skipped["alpha_dose_response"]
    assert all_figures({"n_pairs": 3, "experiments": {}}) == {}


def test_save_static_explains_missing_browser(summary, tmp_path, monkeypatch):
    fig = layer_curve(summary)
    with pytest.raises(ValueError, match="format"):
        save_static(fig, tmp_path / "x.bmp")

    def no_chrome(*args, **kwargs):
        raise RuntimeError("Kaleido requires Google Chrome to be installed.")

    monkeypatch.setattr(go.Figure, "write_image", no_chrome)
    with pytest.raises(RuntimeError, match="chromium"):
        save_static(fig, tmp_path / "x.png")


# ------------------------------------------------------------------------------------------- verdicts
# The rules themselves (three outcomes, each side and the boundary): tests/unit/test_verdicts.py.


# ------------------------------------------------------------------------------------------- HTML


@pytest.fixture(scope="module")
def report(summary) -> str:
    return render_report(summary, make_manifest(MALICIOUS), scores=make_scores(), effects=identity_effects())


def test_report_is_self_contained(report):
    assert report.count(get_plotlyjs()) == 1
    assert report.count("plotly.js v") == 1
    assert '<script src="http' not in report and "<script src=" not in report
    rest = report.replace(get_plotlyjs(), "")  # plotly.js itself names a topojson CDN for geo maps only
    assert "http://" not in rest and "https://" not in rest


def test_report_contains_every_figure_and_sections(report):
    for name in PAPER_FIGURES:
        assert f'id="fig-{name}"' in report
    for text in (
        "Findings vs the paper",
        "Experiments not run",
        "docs/method.md",
        "relative depth",
        "org/tuned-model",
        "0123456789ab",
        "2026-01-02",
        "torch 2.13.0",
        "+2 nats",
        "[1.8, 2.2]",
    ):
        assert text in report, text
    assert ">7<" in report  # the seed
    for name in EXPERIMENT_NAMES:  # the paper's experiments are all in the fixture; newer ones may be listed
        if name in {
            "patch_tuned_to_base",
            "patch_base_to_tuned",
            "identity",
            "random_noise",
            "random_direction",
            "alpha",
            "source_chosen_only",
            "source_rejected_only",
            "vector_chosen",
            "vector_rejected",
            "vector_contrast",
            "lowrank_reconstruct",
            "lowrank_difference",
            "lasso",
        }:
            assert f"<code>{name}</code> — not run" not in report


def test_report_escapes_user_strings(report):
    assert MALICIOUS not in report
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report


def test_report_says_what_was_not_run(summary):
    s = without(summary, "alpha", "lasso", "lowrank_reconstruct", "lowrank_difference")
    text = render_report(s, {}, scores=None)
    assert 'id="fig-alpha_dose_response"' not in text and 'id="fig-lasso_coefficients"' not in text
    assert 'id="fig-layer_curve"' in text
    section = text[text.index('id="not-run"') :]
    for name in ("alpha", "lasso", "lowrank_reconstruct", "lowrank_difference"):
        assert f"<code>{name}</code> — not run" in section
    assert "gain_histogram" in section  # no per-pair scores given
    assert text.count("not run</span>") == 2  # lasso and low-rank verdicts


def test_report_with_nothing_run():
    text = render_report({"n_pairs": 0, "experiments": {}}, None)
    assert "No figure could be drawn" in text
    assert all(f"<code>{n}</code> — not run" in text for n in EXPERIMENT_NAMES)


def test_write_report_from_run_dir(summary, tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "manifest.json").write_text(json.dumps(make_manifest()))
    make_scores().to_csv(tmp_path / "scores.csv", index=False)
    out = write_report(tmp_path)
    assert out == tmp_path / "report.html"
    text = out.read_text(encoding="utf-8")
    assert 'id="fig-gain_histogram"' in text and "org/base-model" in text
    out2 = write_report(tmp_path / "sub" / "custom.html", summary=summary, manifest={})
    assert out2.exists() and not (tmp_path / "sub" / "custom.html.tmp").exists()
    with pytest.raises(FileNotFoundError, match="summary.json"):
        write_report(tmp_path / "empty")


# ------------------------------------------------------------------------------------------- statistics.md in the report


def test_layer_curve_rings_the_peak_set(summary):
    s = without(summary)
    s["experiments"]["patch_tuned_to_base"]["peak_set"] = [PEAK - 1, PEAK]
    rings = trace(layer_curve(s), f"{F.LABELS['patch_tuned_to_base']} peak set")
    assert list(rings.x) == [PEAK - 1, PEAK] and rings.marker.symbol == "circle-open"
    del s["experiments"]["patch_tuned_to_base"]["peak_set"]
    assert f"{F.LABELS['patch_tuned_to_base']} peak set" not in names(layer_curve(s))  # tolerated when absent


def test_report_shows_three_way_verdicts_with_rule_and_numbers(report, summary):
    found = {f.key: f for f in findings(summary, identity_effects(), make_scores())}
    # the fixture's k = 4 ratio has CI [0.8, 1.2]: neither inside nor outside the band
    assert found["lowrank:reconstruct"].verdict == "inconclusive" and found["peak"].verdict == "agrees"
    assert '<tr data-finding="lowrank:reconstruct" data-verdict="inconclusive">' in report
    assert '<span class="verdict inconclusive">inconclusive</span>' in report
    assert report.count('<div class="numbers">numbers used:') == len(found)
    assert "<code>peak_set</code> = [3]" in report and "<code>ratio_ci</code> = [0.8, 1.2]" in report
    for f in found.values():
        assert H.esc(f.rule) in report


def test_report_labels_a_by_construction_verdict():
    table = _findings_table(
        [H.Finding("onset", "claim", "paper", "ours", "agrees", "rule", {"onset": 8}, by_construction=True)]
    )
    assert "by construction (not evidence)" in table and 'class="verdict by-construction"' in table
    assert "the rule gives “agrees”" in table


def test_report_shows_peak_sets_selection_roles_and_bounds(summary):
    s = without(summary)
    s["experiments"]["alpha"] |= {
        "peak_set": [2, 3, 4],
        "layers_swept": 4,
        "peak_layer": 3,
        "selection": selection(3, (0.02, -0.05, 0.11), (0.3, 0.1, 0.5)),
    }
    text = render_report(s, {})
    section = text[text.index('id="peaks"') : text.index("<h2>Figures</h2>")]
    assert "<code>patch_tuned_to_base</code>" in section and "<code>alpha</code>" in section
    assert "2–4" in section and "4 of 7" in section  # alpha's set, swept on 4 of the 7 layers
    assert section.count("<summary>20 pairs</summary>") == 4  # explore and confirm pairs, two selections
    assert "explore pairs (choose)" in section and "confirm pairs (report)" in section and "in-sample" in section
    # a confirm number whose CI holds 0 is a bound, not 0
    assert "|effect| &lt; 0.11 nats at 95% (mean +0.02, CI [-0.05, +0.11]) (n = 20)" in section
    assert "+1.9 nats [+1.6, +2.2] (n = 20)" in section


def test_report_without_statistics_keys_still_renders(summary):
    s = without(summary)
    for entry in s["experiments"].values():
        for key in ("peak_set", "layers_swept", "selection"):
            entry.pop(key, None)
    text = render_report(s, {})
    assert 'id="peaks"' not in text and "Findings vs the paper" in text


def test_report_headline_gives_the_per_token_mean_beside_the_sum(report):
    assert "mean gain per completion token" in report and "+0.04 nats/token" in report
    null = render_report({"n_pairs": 4, "gain_mean": 0.05, "gain_ci": [-0.2, 0.3], "experiments": {}}, None)
    assert "|gain| &lt; 0.3 nats at 95%" in null
