"""Token-level views: a run's per-token table is a table to slice and, called with a pair and a condition, shows
that condition's per-token effects on the tokens themselves; the tokens decode to the pair's completions and
each side's values sum to the side's effect in the per-pair table."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import BUNDLED_PAIRS

from alignment_probe import api
from alignment_probe.cli import main


@pytest.fixture(scope="module")
def token_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokview") / "run"
    assert (
        main(
            [
                "run",
                "--base",
                str(tiny.base),
                "--tuned",
                str(tiny.tuned),
                "--data",
                str(BUNDLED_PAIRS),
                "--n-pairs",
                "2",
                "--n-boot",
                "50",
                "--experiments",
                "token_map",
                "--layers",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return api.load_run(out)


def test_tokens_table_and_view(token_run, tiny):
    table = token_run.tokens
    assert isinstance(table, pd.DataFrame) and len(table) > 0
    pid = int(table.pair_id.iloc[0])
    with pytest.raises(ValueError, match="conditions match"):
        table(pid, "token_map")  # several conditions: the message lists them
    view = table(pid, "token_map", hook="resid_post", layer=1)
    frame = view.frame
    assert set(frame.side) == {"chosen", "rejected"}
    # the tokens are the completions, decoded with the run's tokenizer
    from alignment_probe.pair import load_tokenizer

    tok = load_tokenizer(tiny.base)
    for _, rows in frame.groupby("side"):
        assert "".join(rows.token) == tok.decode(rows.token_id.tolist())
    # each side's per-token values sum to the pair's effect in the per-pair table
    row = token_run.effects[
        (token_run.effects.experiment == "token_map")
        & (token_run.effects.hook == "resid_post")
        & (token_run.effects.layer == 1)
        & (token_run.effects.pair_id == pid)
    ]
    chosen = frame[frame.side == "chosen"].effect.sum()
    rejected = frame[frame.side == "rejected"].effect.sum()
    assert chosen - rejected == pytest.approx(float(row.effect.iloc[0]), abs=1e-5)
    html = view._repr_html_()
    assert html.count('class="tok"') == len(frame) and "chosen · Σ" in html
    with pytest.raises(ValueError, match="not in the per-token table"):
        table(10**6, "token_map")
