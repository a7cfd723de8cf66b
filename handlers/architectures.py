"""The example models' network definitions, shared by training (scripts/) and serving.

Weights are stored as safetensors state dicts; these classes give them a shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TABULAR_FEATURES = 30
TABULAR_CLASSES = 2
DIGITS_SIDE = 8
DIGITS_CLASSES = 10
MINILM_WIDTH = 384  # all-MiniLM-L6-v2 embeddings


class TabularMLP(nn.Module):
    """Standardise the 30 breast-cancer features, then a two-layer MLP.

    The scaler's mean and scale are buffers, so they travel in the state dict with
    the weights and a client sends raw feature values.
    """

    def __init__(self, features: int = TABULAR_FEATURES, classes: int = TABULAR_CLASSES) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(features))
        self.register_buffer("feature_scale", torch.ones(features))
        self.net = nn.Sequential(
            nn.Linear(features, 64),
            nn.ReLU(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.feature_mean) / self.feature_scale)


class DigitsCNN(nn.Module):
    """A small CNN for scikit-learn's 8x8 digits; input [N, 1, 8, 8] with values in 0..16."""

    def __init__(self, classes: int = DIGITS_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images / 16.0))


class MeanPooledEncoder(nn.Module):
    """A BERT encoder with sentence-transformers' mean pooling and L2 normalisation on top.

    Input: token ids, attention mask and token type ids, [N, length] each; output:
    one unit-length embedding per text. Padding tokens (mask 0) do not count.
    """

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)
