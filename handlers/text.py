"""Texts for a network fed by a tokenizer: checked values, token ids, length-sorted padded chunks.

A text model's preprocess checks its values with `text_list` (as `float_matrix` checks
numbers); its setup builds a `TextEncoder` over the archive's `tokenizer.json`; its collate
turns the batch's texts into a `TextBatch` with `TextEncoder.batch`, and its inference runs
that batch with `TextBatch.run` (handlers/minilm.py does all four).

Padding a whole batch to its longest text wastes compute on padding tokens (a third of it
for mixed-length texts). So the batch's texts are sorted by token count and cut into chunks
whose padding stays within `max_padding` of their real tokens; each chunk runs on its own
and the rows go back in request order. With static shapes (or compile) each chunk is padded
up to a length bucket (runtime.length_buckets: 16, 32, 64, ... max_length tokens).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handlers.errors import InvalidInput, PayloadTooLarge
from handlers.runtime import length_buckets, to_device

# A BERT network's inputs, in the order `TextBatch.run` passes them (ids, mask, token types).
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# BERT's pre-tokenizer on lower-cased printable ASCII: runs of letters and digits, and each other
# character but the space on its own (Rust's is_ascii_punctuation covers every one of them).
_ASCII_WORDS = re.compile(r"[a-z0-9]+|[^a-z0-9 ]")


def text_list(values: list[Any], max_chars: int, names: list[str]) -> list[str]:
    """`values`, once each is a non-empty string of valid Unicode with at most `max_chars` characters;
    otherwise a 400 (413 when too long) naming the first bad one by `names`."""
    for text, where in zip(values, names, strict=True):
        if not isinstance(text, str):
            raise InvalidInput(f"'{where}' must be a string, got {type(text).__name__}")
        if not is_unicode(text):  # JSON allows lone surrogates such as "\ud800"
            raise InvalidInput(f"'{where}' is not valid Unicode text")
        if not text.strip():
            raise InvalidInput(f"'{where}' is empty; send some text")
        if len(text) > max_chars:
            raise PayloadTooLarge(f"'{where}' has {len(text)} characters; the limit is {max_chars}")
    return values


def is_unicode(text: str) -> bool:
    """Whether `text` is valid Unicode (a tokenizer refuses lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(slots=True)
class TextBatch:
    """A batch's texts as token chunks ready for the network, and where each chunk's rows go."""

    chunks: list[tuple[torch.Tensor, ...]]  # each chunk's TOKEN_INPUTS, [texts, tokens] each
    order: torch.Tensor  # the batch position of every chunk row, chunk after chunk

    def run(self, network: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Each chunk through `network`; one row per text, in the batch's order."""
        pooled = torch.cat([network(*chunk) for chunk in self.chunks])
        rows = torch.empty_like(pooled)
        rows[self.order.to(pooled.device)] = pooled
        return rows


class TextEncoder:
    """A `tokenizer.json`'s token ids for batches of texts, truncated to `max_length` tokens.

    `bucketed`: pad each chunk up to a length bucket, so compiled code meets a few shapes.
    """

    def __init__(self, path: Path, max_length: int, bucketed: bool = False) -> None:
        from tokenizers import Tokenizer  # imported here: only text models need it

        # The tokenizer's thread pool spins after each batch, taking the CPU the engine's launches
        # and the answers need: on 2 cores one thread tokenized a batch of 64 faster, and the stage
        # after it ran 25x slower beside the spinning (make overhead). The environment may say otherwise.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.tokenizer = _truncating(Tokenizer.from_file(str(path)), max_length)
        self.word_tokenizer = _word_tokenizer(path, max_length)
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.lengths = length_buckets(max_length)
        self.bucketed = bucketed

    def encode(self, texts: list[str]) -> list[Any]:
        """Each text's encoding, as `self.tokenizer` gives it.

        Printable ASCII texts (most) skip the tokenizer's normalizer and pre-tokenizer, which
        take half its time: lower-cased and split into words here, they give the same tokens
        (tests/unit/test_text.py compares both on every kind of character). The tokenizer's
        `encode_batch_fast` leaves out the character offsets, which nothing here reads.
        """
        if self.word_tokenizer is None:
            return self.tokenizer.encode_batch_fast(texts)
        plain, other = [], []
        for index, text in enumerate(texts):
            (plain if text.isascii() and text.isprintable() else other).append(index)
        encodings: list[Any] = [None] * len(texts)
        words = [_ASCII_WORDS.findall(texts[index].lower()) for index in plain]
        for index, encoding in zip(plain, self.word_tokenizer.encode_batch_fast(words, is_pretokenized=True),
                                   strict=True):
            encodings[index] = encoding
        if other:
            for index, encoding in zip(other, self.tokenizer.encode_batch_fast([texts[i] for i in other]),
                                       strict=True):
                encodings[index] = encoding
        return encodings

    def count_tokens(self, texts: list[str]) -> int:
        """How many tokens `texts` make together, after truncation."""
        return sum(len(encoding) for encoding in self.encode(texts))

    def batch(self, texts: list[str], device: torch.device, max_padding: float | None = None) -> TextBatch:
        """`texts` as padded token chunks on `device`: of similar lengths, each padded at most
        `max_padding` beyond its real tokens, or all in one chunk when `max_padding` is None."""
        encodings = self.encode(texts)
        if max_padding is None:
            chunks = [list(range(len(texts)))]
        else:
            chunks = similar_length_chunks([len(encoding) for encoding in encodings], max_padding)
        return TextBatch([self.pad([encodings[i] for i in chunk], device) for chunk in chunks],
                         torch.tensor([i for chunk in chunks for i in chunk], dtype=torch.long))

    def pad(self, encodings: list[Any], device: torch.device) -> tuple[torch.Tensor, ...]:
        """Encodings as one chunk's TOKEN_INPUTS, padded to the longest (or to its length bucket)."""
        width = max(len(encoding) for encoding in encodings)
        if self.bucketed:
            width = next(length for length in self.lengths if length >= width)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            length = len(encoding)
            ids[row, :length] = encoding.ids
            mask[row, :length] = encoding.attention_mask
            types[row, :length] = encoding.type_ids
        return tuple(to_device(torch.from_numpy(values), device) for values in (ids, mask, types))


def similar_length_chunks(lengths: list[int], max_padding: float) -> list[list[int]]:
    """Indices sorted by length, cut into chunks whose padded size is within max_padding of real."""
    chunks: list[list[int]] = []
    chunk: list[int] = []
    real = 0
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        length = lengths[index]
        if chunk and length * (len(chunk) + 1) > (real + length) * (1 + max_padding):
            chunks.append(chunk)
            chunk, real = [], 0
        chunk.append(index)
        real += length
    if chunk:
        chunks.append(chunk)
    return chunks


def _truncating(tokenizer: Any, max_length: int) -> Any:
    """`tokenizer` cutting texts at `max_length` tokens and padding none (`TextEncoder.pad` does)."""
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def _word_tokenizer(path: Path, max_length: int) -> Any:
    """The tokenizer without its BERT normalizer and pre-tokenizer, for texts split by `_ASCII_WORDS`;
    None when the tokenizer is not the lower-casing BERT one that this split stands in for."""
    from tokenizers import Tokenizer

    document = json.loads(path.read_text())
    normalizer, pre_tokenizer = document.get("normalizer") or {}, document.get("pre_tokenizer") or {}
    if (normalizer.get("type") != "BertNormalizer" or normalizer.get("lowercase") is not True
            or pre_tokenizer.get("type") != "BertPreTokenizer"):
        return None
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = None
    return _truncating(tokenizer, max_length)
