"""Chat templates: HH dialogues become chat messages, the rendered prompt ends with the assistant header, and the
scored completion is exactly what the template adds for the reply — token for token the tail of the whole
rendered conversation tokenised at once (the boundary is exact)."""

from __future__ import annotations

import json

import pytest

from alignment_probe.chat import ChatFormat, dialogue_messages, resolve_chat_template
from alignment_probe.data import PreferencePair
from alignment_probe.errors import ConfigError
from alignment_probe.tokens import tokenize_pair

CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer():
    from tests.helpers.checkpoints import train_tokenizer

    texts = ["Human: how do I bake bread? Assistant: Mix flour, water and yeast."] * 50
    tok = train_tokenizer(texts, vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


PAIR = PreferencePair(
    7,
    "\n\nHuman: hi\n\nAssistant: hello, how can I help?\n\nHuman: how do I bake bread?\n\nAssistant:",
    " Mix flour, water and yeast.",
    " I won't tell you.",
)


def test_hh_dialogue_becomes_messages():
    assert dialogue_messages(PAIR.prompt) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello, how can I help?"},
        {"role": "user", "content": "how do I bake bread?"},
    ]
    assert dialogue_messages("Translate 'cat' to French.") == [
        {"role": "user", "content": "Translate 'cat' to French."}
    ]


def test_completion_tokens_are_exactly_the_reply(chat_tokenizer):
    tok = chat_tokenizer
    chat = resolve_chat_template("auto", tok)
    assert chat is not None and chat.source == "base tokenizer"
    t = tokenize_pair(PAIR, tok, max_length=None, chat=chat)
    assert t.prompt_ids.count(tok.bos_token_id) == 1 and t.prompt_ids[0] == tok.bos_token_id
    header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    assert list(t.prompt_ids[-len(header) :]) == header
    for side, reply in (("chosen", PAIR.chosen), ("rejected", PAIR.rejected)):
        msgs = dialogue_messages(PAIR.prompt) + [{"role": "assistant", "content": reply.strip()}]
        whole = tok.encode(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)
        assert list(t.prompt_ids) + list(t.completion_ids(side)) == whole  # the boundary, exactly
        assert tok.decode(t.completion_ids(side)) == reply.strip() + "<|im_end|>\n"


def test_modes_and_refusals(chat_tokenizer, tmp_path):
    assert resolve_chat_template("none", chat_tokenizer) is None
    plain = type("T", (), {"chat_template": None})()
    assert resolve_chat_template("auto", plain) is None  # no template anywhere: raw text
    assert resolve_chat_template("auto", plain, chat_tokenizer).source == "tuned tokenizer"
    with pytest.raises(ConfigError, match="--chat-template"):
        resolve_chat_template("missing.jinja", chat_tokenizer)
    f = tmp_path / "t.jinja"
    f.write_text(CHATML)
    from_file = resolve_chat_template(str(f), plain)
    assert from_file.template == CHATML and from_file.source == str(f.resolve())
    json.dumps(from_file.describe())
    # a template whose prompt is not a prefix of prompt + reply is refused, naming the option
    odd = ChatFormat(
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}?{% endif %}", "odd"
    )
    with pytest.raises(ConfigError, match="--chat-template"):
        odd.render(chat_tokenizer, PAIR.prompt, PAIR.chosen)
