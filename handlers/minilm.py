"""Sentence embeddings with all-MiniLM-L6-v2: mean pooling, L2-normalised, 384 numbers.

Native request: {"text": "a sentence"} or {"text": ["one", "two", ...]} as
application/json, the sentence itself as text/plain, or a form with one text per field.
KServe v1 instance: "a sentence" or {"text": "a sentence"}. OIP input: "text", BYTES, shape [N].
Response: {"embedding": [384 numbers]} (a list of those for a list of texts); OIP
output "embedding" (FP32 [N, 384]).
Texts longer than `max_length` tokens are truncated, as sentence-transformers does;
texts longer than `max_chars` characters are rejected with 413, and so is a request whose
texts together hold more than `max_request_chars` characters or `max_request_tokens` tokens.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from handlers import (
    Input,
    Instances,
    InvalidInput,
    ModelHandler,
    Output,
    PayloadTooLarge,
    RuntimeOptions,
    check_budget,
    load_weights,
    option,
)
from handlers.architectures import MINILM_WIDTH, MeanPooledEncoder
from handlers.runtime import length_buckets, to_device

# BERT's pre-tokenizer on lower-cased printable ASCII: runs of letters and digits, and each other
# character but the space on its own (Rust's is_ascii_punctuation covers every one of them).
_ASCII_WORDS = re.compile(r"[a-z0-9]+|[^a-z0-9 ]")


class MiniLMHandler(ModelHandler):
    """Tokenises every text of every request together; texts of similar length run together.

    Padding a whole batch to its longest text wastes compute on padding tokens (a
    third of it for our mixed-length benchmark texts). With `length_buckets` the
    batch's texts are sorted by token count and run in chunks whose padding stays
    within `max_padding` of their real tokens; the rows go back in request order.
    With static shapes (or compile), each chunk is padded up to a length bucket
    (16, 32, 64, ... max_length tokens).
    """

    INPUT = Input("text", frozenset({"BYTES"}), raw_types=frozenset({"text/plain"}))
    OUTPUTS = (Output("embedding", "FP32", (MINILM_WIDTH,)),)
    NETWORK_INPUTS = {name: ("sequence",) for name in ("input_ids", "attention_mask", "token_type_ids")}

    @dataclass(frozen=True)
    class Options(RuntimeOptions):  # nested: TorchServe wants exactly one class per handler module
        weights: str = "model.safetensors"
        model_config: str = "config.json"
        tokenizer: str = "tokenizer.json"
        # BERT's position table has 512 entries: longer inputs would fail the whole batch.
        max_length: int = option(256, low=2, high=512)
        max_instances: int = option(64, low=1)
        max_chars: int = option(20_000, low=1)
        # One request's texts together, so its batch ends well inside responseTimeout: the model's
        # time grows with tokens (after truncation), the tokenizer's with characters.
        max_request_tokens: int = option(2048, low=1)
        max_request_chars: int = option(40_000, low=1)
        length_buckets: bool = True
        max_padding: float = option(0.25, low=0, high=10)  # padded tokens / real tokens - 1, per chunk

    def setup(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer  # imported here: only this handler needs it

        # The tokenizer's thread pool spins after each batch, taking the CPU the engine's launches
        # and the answers need: on 2 cores one thread tokenized a batch of 64 faster, and the stage
        # after it ran 25x slower beside the spinning (make overhead). The environment may say otherwise.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        tokenizer = Tokenizer.from_file(str(model_dir / self.options.tokenizer))
        tokenizer.enable_truncation(max_length=self.options.max_length)
        tokenizer.no_padding()  # padded per chunk in _pad
        self.tokenizer = tokenizer
        self.word_tokenizer = _word_tokenizer(model_dir / self.options.tokenizer, self.options.max_length)
        self.pad_id = tokenizer.token_to_id("[PAD]") or 0
        self.lengths = length_buckets(self.options.max_length)

    def load_model(self, model_dir: Path) -> nn.Module:
        from transformers import BertConfig, BertModel

        config = BertConfig.from_json_file(str(model_dir / self.options.model_config))
        # The pooler is never used (we mean-pool); transformers 4.x checkpoints keep
        # position_ids, a buffer newer versions rebuild.
        bert = load_weights(BertModel(config, add_pooling_layer=False), model_dir / self.options.weights,
                            mmap=self.options.mmap_weights,
                            ignore=("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"))
        return MeanPooledEncoder(bert).eval()

    def warmup_instances(self) -> list[list[str]]:
        """One text per length bucket: with static shapes these are exactly the lengths served."""
        return [[" ".join(["the"] * (length - 2))] for length in self.lengths]

    def example_batch(self, size: int) -> tuple[torch.Tensor, ...]:
        chunk = self._pad(self.tokenizer.encode_batch(["the quick brown fox"] * size))
        return tuple(chunk[name] for name in self.NETWORK_INPUTS)

    def admit(self, parts: list[Instances]) -> list[Instances]:
        """413 over the request's character budget (before tokenizing) or its token budget."""
        texts = [text for part in parts for text in part.values if isinstance(text, str)]
        check_budget(sum(map(len, texts)), self.options.max_request_chars, "characters", "max_request_chars")
        readable = [text for text in texts if len(text) <= self.options.max_chars and _encodable(text)]
        if len(readable) * self.options.max_length <= self.options.max_request_tokens:
            return parts  # truncation keeps it within budget: no need to tokenize twice
        tokens = sum(len(encoding.ids) for encoding in self.tokenizer.encode_batch(readable))
        check_budget(tokens, self.options.max_request_tokens, "tokens", "max_request_tokens")
        return parts

    def preprocess(self, request: Instances) -> list[str]:
        for text, name in zip(request.values, request.names, strict=True):
            self._check_text(text, name)
        return request.values

    def collate(self, per_request: Any) -> dict[str, Any]:
        """Token chunks ready for the model, and where each chunk's rows go in the batch."""
        texts = [text for texts in per_request for text in texts]
        encodings = self._encode(texts)
        lengths = [len(encoding) for encoding in encodings]
        if self.options.length_buckets:
            chunks = _similar_length_chunks(lengths, self.options.max_padding)
        else:
            chunks = [list(range(len(texts)))]
        return {"chunks": [self._pad([encodings[i] for i in chunk]) for chunk in chunks],
                "order": torch.tensor([i for chunk in chunks for i in chunk], dtype=torch.long)}

    def inference(self, batch: dict[str, Any]) -> torch.Tensor:
        pooled = torch.cat([self._embed(chunk) for chunk in batch["chunks"]])
        rows = torch.empty_like(pooled)
        rows[batch["order"].to(pooled.device)] = pooled
        return rows

    def _embed(self, chunk: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.engine(chunk["input_ids"], chunk["attention_mask"], chunk["token_type_ids"])

    def _encode(self, texts: list[str]) -> list[Any]:
        """Each text's encoding, as `self.tokenizer` gives it.

        Printable ASCII texts (most) skip the tokenizer's normalizer and pre-tokenizer, which
        take half its time: lower-cased and split into words here, they give the same tokens
        (tests/unit/test_minilm.py compares both on every kind of character). The tokenizer's
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

    def _pad(self, encodings: list[Any]) -> dict[str, torch.Tensor]:
        width = max(len(encoding) for encoding in encodings)
        if self.options.buckets:
            width = next(length for length in self.lengths if length >= width)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            length = len(encoding)
            ids[row, :length] = encoding.ids
            mask[row, :length] = encoding.attention_mask
            types[row, :length] = encoding.type_ids
        columns = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: to_device(torch.from_numpy(values), self.device) for name, values in columns.items()}

    def _check_text(self, text: Any, where: str) -> None:
        if not isinstance(text, str):
            raise InvalidInput(f"'{where}' must be a string, got {type(text).__name__}")
        if not _encodable(text):  # JSON allows lone surrogates such as "\ud800"
            raise InvalidInput(f"'{where}' is not valid Unicode text")
        if not text.strip():
            raise InvalidInput(f"'{where}' is empty; send some text")
        if len(text) > self.options.max_chars:
            raise PayloadTooLarge(
                f"'{where}' has {len(text)} characters; the limit is {self.options.max_chars}"
            )


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
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def _encodable(text: str) -> bool:
    """Whether `text` is valid Unicode (the tokenizer refuses lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _similar_length_chunks(lengths: list[int], max_padding: float) -> list[list[int]]:
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
