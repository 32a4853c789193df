"""Chat templates: score and generate an instruct twin in its own chat format (``--chat-template``).

``none`` (the default, the paper's protocol): prompts and completions are the data's raw text. ``auto``: where
the tokenizer (the base's, else the tuned twin's) has a chat template, each pair's dialogue is rendered in it —
HH prompts (``"\\n\\nHuman: … \\n\\nAssistant: …"``) become alternating user/assistant messages, a plain prompt
one user message — and only the assistant completion's tokens are scored: the prompt is the rendered dialogue up
to and including the generation prompt (the assistant header), the completion what the template adds for the
assistant's reply (its text and end-of-turn marker). Without a template ``auto`` keeps the raw text and says so.
``FILE``: a Jinja template file in Hugging Face's chat-template format, used whatever the tokenizer has.

A template that does not render the prompt as a prefix of the prompt plus reply (some add or drop text
before the last turn) is refused: the completion's tokens would not be well defined.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment_probe.errors import ConfigError

MODES = ("none", "auto")
_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass(frozen=True)
class ChatFormat:
    """A chat template and where it came from (recorded in manifests)."""

    template: str
    source: str  # "base tokenizer", "tuned tokenizer" or the file's path

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"mode": "template", "source": self.source, "sha256": self.sha256}

    def render(self, tokenizer: Any, prompt: str, completion: str) -> tuple[str, str]:
        """``(prompt_text, completion_text)``: the dialogue with the generation prompt, and what the template adds
        for the assistant's reply ``completion``."""
        messages = dialogue_messages(prompt)
        try:
            head = tokenizer.apply_chat_template(
                messages, chat_template=self.template, tokenize=False, add_generation_prompt=True
            )
            full = tokenizer.apply_chat_template(
                messages + [{"role": "assistant", "content": completion.strip()}],
                chat_template=self.template,
                tokenize=False,
            )
        except Exception as exc:  # jinja errors, templates that refuse a role order
            raise ConfigError(
                f"--chat-template ({self.source}) cannot render a dialogue ({type(exc).__name__}: "
                f"{exc}); pass another template file or --chat-template none."
            ) from exc
        if not full.startswith(head):
            raise ConfigError(
                f"--chat-template ({self.source}) renders the prompt differently with and without the "
                "assistant's reply, so the reply's tokens are not defined; pass a template file whose "
                "generation prompt is a prefix of the rendered reply, or --chat-template none."
            )
        return head, full[len(head) :]


def dialogue_messages(prompt: str) -> list[dict[str, str]]:
    """Chat messages of a prompt: HH turns as alternating user/assistant messages (the final empty
    ``Assistant:`` turn is the one the completion answers), any other text one user message."""
    text = prompt.rstrip()
    if text.endswith("\n\nAssistant:"):
        text = text[: -len("\n\nAssistant:")]
    parts = _TURN.split("\n\n" + text.lstrip("\n") if text.lstrip().startswith(("Human:", "Assistant:")) else text)
    messages: list[dict[str, str]] = []
    if parts[0].strip():
        messages.append({"role": "user", "content": parts[0].strip()})
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    if not messages:
        messages = [{"role": "user", "content": prompt.strip()}]
    return messages


def resolve_chat_template(mode: str | None, tokenizer: Any, tuned_tokenizer: Any = None) -> ChatFormat | None:
    """The :class:`ChatFormat` ``--chat-template`` asks for (None: raw text); a missing file or an unknown mode is
    refused naming the option."""
    mode = "none" if mode is None else str(mode)
    if mode == "none":
        return None
    if mode == "auto":
        for tok, where in ((tokenizer, "base tokenizer"), (tuned_tokenizer, "tuned tokenizer")):
            template = getattr(tok, "chat_template", None) if tok is not None else None
            if isinstance(template, dict):  # several named templates: the default one
                template = template.get("default")
            if template:
                return ChatFormat(str(template), where)
        return None
    path = Path(mode).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"--chat-template {mode!r} is not a file; use auto (the tokenizer's template), none (raw "
            "text) or the path of a Jinja chat-template file."
        )
    text = path.read_text()
    if not text.strip():
        raise ConfigError(f"--chat-template {path} is empty; give a Jinja chat template.")
    return ChatFormat(text, str(path.resolve()))


def describe(chat: ChatFormat | None, mode: str | None) -> dict[str, Any]:
    """What the manifest records: the mode asked for and the template used (or why none was)."""
    if chat is not None:
        return {"asked": mode, **chat.describe()}
    why = "raw text" if (mode or "none") == "none" else "raw text: neither tokenizer has a chat template"
    return {"asked": mode or "none", "mode": "none", "why": why}
