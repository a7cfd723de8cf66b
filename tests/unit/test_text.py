"""The text toolkit (handlers/text.py): checked values, the tokenizer's own ids, chunks in order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from handlers import InvalidInput, PayloadTooLarge, TextEncoder, text_list
from handlers.text import TextBatch, similar_length_chunks

TOKENIZER = Path("build/weights/minilm/tokenizer.json")
MAX_LENGTH = 256
TEXTS = [
    "Hello, World! It's 3.14 o'clock_now; (tabs\tand\nnewlines) [x] {y} <z> a~b|c^d`e@f#g$h%i&j*k+l=m",
    "naïve café 東京 and ünïcödé", "UPPER lower MiXeD 123abc abc123", "  padded  ", "x" * 300,
    " ".join(["tokens"] * 400), "emoji 🙂 here", "\x7f\x01control", "don't-stop_me now...",
]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(TOKENIZER, MAX_LENGTH)


def reference_ids(texts: list[str]) -> list[list[int]]:
    """The tokenizer's own ids, through its normalizer and pre-tokenizer."""
    reference = Tokenizer.from_file(str(TOKENIZER))
    reference.enable_truncation(max_length=MAX_LENGTH)
    reference.no_padding()  # the file pads to 128; the encoder pads per chunk
    return [encoding.ids for encoding in reference.encode_batch(texts)]


def batch_ids(batch: TextBatch) -> list[list[int]]:
    """Each text's ids, unpadded, read back from the chunks in the batch's order."""
    rows = [(chunk, row) for chunk in batch.chunks for row in range(len(chunk[0]))]
    found: list[list[int]] = [[]] * len(rows)
    for position, ((ids, mask, types), row) in zip(batch.order.tolist(), rows, strict=True):
        assert types[row].tolist() == [0] * len(ids[row])
        found[position] = ids[row][:int(mask[row].sum())].tolist()
    return found


@settings(max_examples=100, deadline=None)
@given(extra=st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=80)
                      .filter(str.strip), min_size=1, max_size=6))
def test_tokens_equal_the_tokenizers_own(encoder: TextEncoder, extra: list[str]) -> None:
    """The fast ASCII path gives the ids the whole tokenizer gives, chunked or not."""
    texts = TEXTS + extra
    expected = reference_ids(texts)
    assert encoder.word_tokenizer is not None  # the fast path is the one compared
    assert batch_ids(encoder.batch(texts, CPU, max_padding=0.25)) == expected
    assert batch_ids(encoder.batch(texts, CPU)) == expected
    assert encoder.count_tokens(texts) == sum(map(len, expected))


def test_one_chunk_pads_to_the_longest_and_buckets_pad_to_a_bucket(encoder: TextEncoder) -> None:
    texts = ["short", "a somewhat longer text than that"]
    (ids, mask, types), = encoder.batch(texts, CPU).chunks
    longest = max(map(len, reference_ids(texts)))
    assert ids.shape == mask.shape == types.shape == (2, longest)
    bucketed = TextEncoder(TOKENIZER, MAX_LENGTH, bucketed=True)
    (ids, _, _), = bucketed.batch(texts, CPU).chunks
    assert ids.shape == (2, 16) and bucketed.lengths == [16, 32, 64, 128, MAX_LENGTH]


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(min_value=1, max_value=300), max_size=40),
       max_padding=st.sampled_from([0.0, 0.1, 0.25, 1.0]))
def test_length_chunks_cover_every_text_once_and_bound_padding(lengths: list[int],
                                                              max_padding: float) -> None:
    chunks = similar_length_chunks(lengths, max_padding)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    for chunk in chunks:
        real = sum(lengths[i] for i in chunk)
        assert len(chunk) == 1 or max(lengths[i] for i in chunk) * len(chunk) <= real * (1 + max_padding)


def test_run_gives_each_text_its_row_in_the_batch_order(encoder: TextEncoder) -> None:
    texts = ["one", "a much longer text, which lands in another chunk than the short ones", "two"]
    batch = encoder.batch(texts, CPU, max_padding=0.0)
    assert len(batch.chunks) > 1

    def network(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        return mask.sum(dim=1, keepdim=True).float()  # each text's token count

    assert batch.run(network).flatten().tolist() == [float(len(ids)) for ids in reference_ids(texts)]


def test_text_list_passes_good_texts_and_names_the_first_bad_one() -> None:
    names = ["text[0]", "text[1]"]
    assert text_list(["fine", "also fine"], 20, names) == ["fine", "also fine"]
    cases = [(["ok", 42], InvalidInput, "'text[1]' must be a string, got int"),
             (["ok", "\ud800"], InvalidInput, "'text[1]' is not valid Unicode text"),
             ([" \n", "ok"], InvalidInput, "'text[0]' is empty; send some text"),
             (["ok", "x" * 21], PayloadTooLarge, "'text[1]' has 21 characters; the limit is 20")]
    for values, error, message in cases:
        with pytest.raises(error) as raised:
            text_list(values, 20, names)
        assert raised.value.message == message
