"""Per-token effects shown on the tokens themselves (E9's long table, read back from a run).

``ap.load_run(dir).tokens`` is the run's ``token_effects.parquet`` as a table to slice, and also callable:
``run.tokens(pair_id, "token_map", hook="resid_post", layer=3)`` picks one condition of one pair and shows its
completion tokens coloured by the condition's change of each token's log-prob (blue: the condition makes the
token more likely, red: less), the chosen completion above the rejected one, with each token's value on hover.
"""

from __future__ import annotations

import html
import math
from typing import Any, Callable

import numpy as np
import pandas as pd

CONDITION_COLUMNS = ("experiment", "target", "source", "hook", "scope", "sides", "layer", "param", "split")


def _colour(value: float, scale: float) -> str:
    """A diverging background: blue for positive, red for negative, white at 0, saturating at ±scale."""
    if not math.isfinite(value) or scale <= 0:
        return "#ffffff"
    t = max(-1.0, min(1.0, value / scale))
    a = abs(t)
    if t >= 0:  # towards #2166ac
        r, g, b = 255 - a * (255 - 33), 255 - a * (255 - 102), 255 - a * (255 - 172)
    else:  # towards #b2182b
        r, g, b = 255 - a * (255 - 178), 255 - a * (255 - 24), 255 - a * (255 - 43)
    return f"#{int(r):02x}{int(g):02x}{int(b):02x}"


def token_spans_html(texts: list[str], values: list[float], scale: float, *, unit: str = "nats") -> str:
    """Tokens as spans coloured by their values (hover: the value); dark backgrounds get white text."""
    spans = []
    for text, v in zip(texts, values):
        bg = _colour(v, scale)
        fg = "#fff" if math.isfinite(v) and abs(v) > 0.6 * scale else "#111"
        shown = html.escape(text).replace("\n", "↵<br>") or "∅"
        spans.append(f'<span class="tok" style="background:{bg};color:{fg}" title="{v:+.4f} {unit}">{shown}</span>')
    return "".join(spans)


TOKEN_STYLE = (
    ".tokview .tok{padding:1px 0;border-radius:2px;white-space:pre-wrap}"
    ".tokview .side{font-weight:600;margin:6px 0 2px}.tokview{font-family:ui-monospace,monospace;"
    "font-size:13px;line-height:1.7}"
)


class TokenView:
    """One condition's per-token effects on one pair: ``_repr_html_`` colours the tokens; ``frame`` is the table."""

    def __init__(self, frame: pd.DataFrame, texts: list[str], title: str):
        self.frame = frame.assign(token=texts).reset_index(drop=True)
        self.title = title

    def _repr_html_(self) -> str:
        scale = float(np.nanmax(np.abs(self.frame["effect"]))) if len(self.frame) else 0.0
        parts = [
            f"<style>{TOKEN_STYLE}</style><div class='tokview'><div><b>{html.escape(self.title)}</b> "
            f"<small>(blue: more likely under the condition, red: less; full colour = ±{scale:.3g} nats)</small>"
            "</div>"
        ]
        for side, rows in self.frame.groupby("side", sort=False):
            total = float(rows["effect"].sum())
            parts.append(
                f"<div class='side'>{html.escape(str(side))} · Σ {total:+.4f} nats over {len(rows)} tokens"
                f" (mean {total / max(len(rows), 1):+.4f})</div>"
            )
            parts.append(token_spans_html(rows["token"].tolist(), rows["effect"].tolist(), scale))
        return "".join(parts) + "</div>"

    def __repr__(self) -> str:
        return f"TokenView({self.title}; {len(self.frame)} tokens)"


class TokenTable(pd.DataFrame):  # type: ignore[misc]  # pandas ships no type information here
    """The long per-token table (one row per condition × pair × side × completion position), callable to view one
    condition of one pair on its tokens (module docstring)."""

    _metadata = ["_tokenizer_loader"]

    @property
    def _constructor(self) -> Callable[..., "TokenTable"]:
        return TokenTable

    def conditions(self) -> pd.DataFrame:
        """The conditions the table holds (one row each)."""
        cols = [c for c in CONDITION_COLUMNS if c in self.columns]
        return pd.DataFrame(self[cols]).drop_duplicates().reset_index(drop=True)

    def __call__(self, pair_id: int, experiment: str | None = None, **where: Any) -> TokenView:
        if len(self) == 0:
            raise ValueError(
                "this run has no per-token table: run a per-token experiment (e.g. --experiments "
                "token_map,...) to get token_effects.parquet"
            )
        frame = pd.DataFrame(self)
        rows = frame[frame["pair_id"] == int(pair_id)]
        if rows.empty:
            raise ValueError(
                f"pair {pair_id} is not in the per-token table; its pairs are "
                f"{sorted(frame['pair_id'].unique().tolist())[:20]}"
            )
        if experiment is not None:
            where = {"experiment": experiment, **where}
        for col, value in where.items():
            if col not in rows:
                raise ValueError(f"no column {col!r} in the per-token table; filter by {', '.join(CONDITION_COLUMNS)}")
            rows = rows[rows[col].isna()] if value is None else rows[rows[col] == value]
        cols = [c for c in CONDITION_COLUMNS if c in rows.columns]
        conds = rows[cols].drop_duplicates()
        if len(conds) != 1:
            listing = (
                pd.DataFrame(frame[frame["pair_id"] == int(pair_id)][cols]).drop_duplicates().to_string(index=False)
            )
            raise ValueError(
                f"{len(conds)} conditions match {where or 'no filter'} for pair {pair_id}; narrow it down "
                f"with column filters (e.g. hook=..., layer=...). The conditions:\n{listing}"
            )
        rows = rows.sort_values(
            ["side", "position"], key=lambda s: s.map({"chosen": 0, "rejected": 1}) if s.name == "side" else s
        )
        loader = getattr(self, "_tokenizer_loader", None)
        tokenizer = loader() if loader is not None else None
        ids = rows["token_id"].tolist()
        texts = [tokenizer.decode([i]) for i in ids] if tokenizer is not None else [f"[{i}]" for i in ids]
        c = conds.iloc[0]
        if c.get("hook") == "blocks" and pd.notna(c.get("param")):  # a transplant: blocks layer … layer+width−1
            last = int(c["layer"]) + int(c["param"]) - 1
            what = (
                f"tuned blocks {int(c['layer'])}–{last} in the base"
                if last > int(c["layer"])
                else f"tuned block {int(c['layer'])} in the base"
            )
        else:
            what = f"{c.get('hook', '')} at layer {c.get('layer', '')}" + (
                f" · param {c['param']:g}" if "param" in c and pd.notna(c["param"]) else ""
            )
        title = f"pair {pair_id} · {c['experiment']} · {what}"
        return TokenView(rows, texts, title)


def token_table(frame: pd.DataFrame | None, tokenizer_loader: Callable[[], Any] | None = None) -> TokenTable:
    table = TokenTable(frame if frame is not None else pd.DataFrame())
    table._tokenizer_loader = tokenizer_loader
    return table
