"""alignment-probe: find where preference tuning lives inside a language model.

The data path, one module per step::

    data.py      pairs      (HH-RLHF / prompt-chosen-rejected JSONL / hub dataset)
    tokens.py    tokens     (BOS + prompt + completion, truncation, batches)
    pair.py      models     (base + tuned as HookedTransformers, checked compatible)
    scoring.py   Δlogp      (log p(completion | prompt), gain)
"""

__version__ = "0.1.0"
