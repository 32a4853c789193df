"""--chat-template through the command line: score renders the dialogues in a template file (fewer completion
tokens scored than the raw text would give is not the point: the manifest records which template, and `none`
keeps the raw text byte for byte); a missing template file is refused before any weights load."""

from __future__ import annotations

import json

import pandas as pd
from conftest import BUNDLED_PAIRS

from alignment_probe.cli import main

TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:\n{% endif %}"
)


def test_score_with_a_template_file(tiny, tmp_path, capsys):
    f = tmp_path / "chat.jinja"
    f.write_text(TEMPLATE)
    common = [
        "score",
        "--base",
        str(tiny.base),
        "--tuned",
        str(tiny.tuned),
        "--data",
        str(BUNDLED_PAIRS),
        "--n-pairs",
        "3",
    ]
    assert main([*common, "--out", str(tmp_path / "raw.csv")]) == 0
    assert main([*common, "--chat-template", str(f), "--out", str(tmp_path / "chat.csv")]) == 0
    raw, chat = pd.read_csv(tmp_path / "raw.csv"), pd.read_csv(tmp_path / "chat.csv")
    assert list(raw.pair_id) == list(chat.pair_id)
    assert not raw.base_logp_chosen.equals(chat.base_logp_chosen)  # other tokens were scored
    manifest = json.loads((tmp_path / "chat.csv.manifest.json").read_text())
    assert manifest["data"]["chat_template"]["source"] == str(f.resolve())
    assert json.loads((tmp_path / "raw.csv.manifest.json").read_text())["data"]["chat_template"]["mode"] == "none"
    capsys.readouterr()
    assert main([*common, "--chat-template", str(tmp_path / "nope.jinja"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "--chat-template" in capsys.readouterr().err
