"""Held-out data for each example model: what the archive gates evaluate on.

tabular and digits: the held-out quarter of their scikit-learn dataset, with labels.
minilm: real English sentences from Python's own documentation (`pydoc_data`,
shipped with CPython), never seen by the benchmark's word-salad texts; no labels,
so a candidate is compared with the float model by cosine.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from scripts.build import datasets
from scripts.build.models import digit_png


@dataclass(frozen=True)
class HeldOut:
    """Request bodies of one content type, and the true class of each when there is one."""

    content_type: str
    bodies: list[bytes]
    labels: list[int] | None


def held_out(model: str, limit: int = 256) -> HeldOut:
    """The held-out requests for an example model's handler (handlers/MODEL.py), at most `limit`."""
    if model == "tabular":
        split = datasets.breast_cancer()
        bodies = [json.dumps({"features": row.tolist()}).encode() for row in split.held_out_x]
        return HeldOut("application/json", bodies[:limit], split.held_out_y.tolist()[:limit])
    if model == "digits":
        split = datasets.digits()
        bodies = [digit_png(image) for image in split.held_out_x]
        return HeldOut("image/png", bodies[:limit], split.held_out_y.tolist()[:limit])
    if model == "minilm":
        return HeldOut("application/json",
                       [json.dumps({"text": text}).encode() for text in documentation_sentences(limit)], None)
    raise ValueError(f"no held-out data for model {model!r}; the gates know tabular, digits and minilm")


def documentation_sentences(count: int) -> list[str]:
    """`count` prose sentences of 5 to 60 words from the Python docs, in a seeded random order."""
    from pydoc_data.topics import topics

    text = " ".join(" ".join(topics[key].split()) for key in sorted(topics))
    sentences = [sentence for sentence in re.split(r"(?<=[.!?])\s+", text)
                 if 5 <= len(sentence.split()) <= 60
                 and sum(c.isalpha() or c == " " for c in sentence) > 0.9 * len(sentence)]
    random.Random(0).shuffle(sentences)
    return sentences[:count]
