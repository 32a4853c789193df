"""Byte-level BPE tokenizer for the model organisms, trained on their corpus.

Special tokens (ids fixed by their order): ``<|bos|>`` = 0, ``<|eos|>`` = 1, ``<|pad|>`` = 2.
The tokenizer adds *no* special tokens by itself (no post-processor): callers prepend BOS
explicitly, as the toolkit does (``[bos] + prompt_ids + completion_ids``, each part encoded with
``add_special_tokens=False``).

The pre-tokenizer is GPT-2's byte-level split without a prefix space, so a token never spans the
prompt/completion boundary ``"...\\n\\nAssistant:" | " Sure, ..."``: encoding prompt and completion
separately gives exactly the ids of encoding their concatenation.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (deterministic for a fixed list of texts)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=512,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id) == (0, 1, 2)
    return fast
