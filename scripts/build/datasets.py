"""The example models' data: scikit-learn's bundled datasets, split the same way everywhere.

Training uses `train`, the end-to-end tests measure accuracy on `held_out`; both
come from one seeded split, so they never overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

SEED = 0
HELD_OUT_FRACTION = 0.25


@dataclass(frozen=True)
class Split:
    train_x: np.ndarray
    train_y: np.ndarray
    held_out_x: np.ndarray
    held_out_y: np.ndarray


def _split(features: np.ndarray, labels: np.ndarray) -> Split:
    train_x, held_x, train_y, held_y = train_test_split(
        features, labels, test_size=HELD_OUT_FRACTION, random_state=SEED, stratify=labels
    )
    return Split(train_x, train_y, held_x, held_y)


def breast_cancer() -> Split:
    """30 features per row; labels 0 = malignant, 1 = benign (scikit-learn's order)."""
    data = load_breast_cancer()
    return _split(data.data.astype(np.float32), data.target.astype(np.int64))


def digits() -> Split:
    """8x8 images with values 0..16 (ink is high), labels 0..9."""
    data = load_digits()
    return _split(data.images.astype(np.float32), data.target.astype(np.int64))

