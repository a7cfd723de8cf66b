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

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from handlers import (
    TOKEN_INPUTS,
    Input,
    Instances,
    ModelHandler,
    Output,
    RuntimeOptions,
    TextBatch,
    TextEncoder,
    check_budget,
    is_unicode,
    load_weights,
    option,
    text_list,
)
from handlers.architectures import MINILM_WIDTH, MeanPooledEncoder


class MiniLMHandler(ModelHandler):
    """Every text of a batch tokenised together; texts of similar length run together (handlers/text.py)."""

    INPUT = Input("text", frozenset({"BYTES"}), raw_types=frozenset({"text/plain"}))
    OUTPUTS = (Output("embedding", "FP32", (MINILM_WIDTH,)),)
    NETWORK_INPUTS = {name: ("sequence",) for name in TOKEN_INPUTS}

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
        length_buckets: bool = True  # texts of similar length run together (padding a third less)
        max_padding: float = option(0.25, low=0, high=10)  # padded tokens / real tokens - 1, per chunk

    def setup(self, model_dir: Path) -> None:
        self.encoder = TextEncoder(model_dir / self.options.tokenizer, self.options.max_length,
                                   bucketed=self.options.buckets)

    def load_model(self, model_dir: Path) -> nn.Module:
        from transformers import BertConfig, BertModel  # imported here: only this handler needs it

        config = BertConfig.from_json_file(str(model_dir / self.options.model_config))
        # The pooler is never used (we mean-pool); transformers 4.x checkpoints keep
        # position_ids, a buffer newer versions rebuild.
        bert = load_weights(BertModel(config, add_pooling_layer=False), model_dir / self.options.weights,
                            mmap=self.options.mmap_weights,
                            ignore=("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"))
        return MeanPooledEncoder(bert).eval()

    def warmup_instances(self) -> list[list[str]]:
        """One text per length bucket ("the" is one token, plus [CLS] and [SEP]): with static shapes
        these are exactly the lengths served."""
        return [[" ".join(["the"] * (length - 2))] for length in self.encoder.lengths]

    def example_batch(self, size: int) -> tuple[torch.Tensor, ...]:
        (chunk,) = self.encoder.batch(["the quick brown fox"] * size, self.device).chunks
        return chunk

    def admit(self, parts: list[Instances]) -> list[Instances]:
        """413 over the request's character budget (before tokenizing) or its token budget."""
        texts = [text for part in parts for text in part.values if isinstance(text, str)]
        check_budget(sum(map(len, texts)), self.options.max_request_chars, "characters", "max_request_chars")
        readable = [text for text in texts if len(text) <= self.options.max_chars and is_unicode(text)]
        if len(readable) * self.options.max_length <= self.options.max_request_tokens:
            return parts  # truncation keeps it within budget: no need to tokenize twice
        tokens = self.encoder.count_tokens(readable)
        check_budget(tokens, self.options.max_request_tokens, "tokens", "max_request_tokens")
        return parts

    def preprocess(self, request: Instances) -> list[str]:
        return text_list(request.values, self.options.max_chars, request.names)

    def collate(self, per_request: list[list[str]]) -> TextBatch:
        texts = [text for texts in per_request for text in texts]
        max_padding = self.options.max_padding if self.options.length_buckets else None
        return self.encoder.batch(texts, self.device, max_padding)

    def inference(self, batch: TextBatch) -> torch.Tensor:
        return batch.run(self.engine)
