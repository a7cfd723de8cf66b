"""The runtime switches (handlers/runtime.py, engines.py, weights.py) on the CPU, through real Contexts."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from handlers.batch import forward_batch
from handlers.engines import BucketedEngine, quantize_int8
from handlers.options import OptionsError, parse_options
from handlers.runtime import batch_sizes, length_buckets, to_device, worker_threads
from handlers.tabular import TabularHandler
from handlers.weights import mapped_safetensors
from scripts.build import datasets
from scripts.harness import LocalModel
from tests.fixtures.handlers import EchoHandler

TABULAR = Path("configs/models/tabular.yaml")
WEIGHTS = sorted(Path("build/weights").glob("*/*.safetensors"))


def test_warmed_sizes_are_powers_of_two_up_to_the_batch_size() -> None:
    assert batch_sizes(16, buckets=True) == [1, 2, 4, 8, 16]
    assert batch_sizes(5, buckets=True) == [1, 2, 4, 8]
    assert batch_sizes(3, buckets=False) == [1, 2, 3]
    assert batch_sizes(64, buckets=False) == [1, 2, 4, 8, 16, 32, 64]  # eager: a few sizes, not 64
    assert batch_sizes(5, buckets=False) == [1, 2, 4, 5]
    assert length_buckets(256) == [16, 32, 64, 128, 256]
    assert length_buckets(100) == [16, 32, 64, 100]


def test_threads_default_to_the_cores_shared_by_the_workers() -> None:
    cores = len(os.sched_getaffinity(0))
    assert worker_threads(0, {"minWorkers": 1}) == cores
    assert worker_threads(0, {"minWorkers": 64}) == 1
    assert worker_threads(3, {"minWorkers": 64}) == 3


@pytest.mark.parametrize(("raw", "key"), [
    ({"backend": "onnx", "compile": True}, "backend"),
    ({"backend": "onnx", "precision": "fp16"}, "backend"),
    ({"onnx_spinning": True}, "onnx_spinning"),
    ({"threads": -1}, "threads"),
    ({"max_quantization_loss": 2}, "max_quantization_loss"),
    ({"compile_cache_dir": "/tmp/x"}, "compile_cache_dir"),
    ({"precision": "fp8"}, "precision"),
])
def test_contradictory_runtime_options_are_refused_with_their_key(raw: dict, key: str) -> None:
    with pytest.raises(OptionsError) as caught:
        parse_options(TabularHandler.Options, raw)
    assert caught.value.key == key


def test_bucketed_engine_sees_only_bucket_shapes_and_returns_the_real_rows() -> None:
    seen: list[int] = []

    def engine(rows: torch.Tensor) -> torch.Tensor:
        seen.append(len(rows))
        return rows * 3

    bucketed = BucketedEngine(engine, [1, 2, 4, 8])
    for count in range(1, 21):
        rows = torch.randn(count, 5)
        assert torch.equal(bucketed(rows), rows * 3)
    assert set(seen) == {1, 2, 4, 8}


def test_host_tensors_stay_put_on_the_cpu() -> None:
    tensor = torch.ones(3)
    assert to_device(tensor, torch.device("cpu")) is tensor


@pytest.mark.parametrize("path", WEIGHTS, ids=lambda path: path.parent.name)
def test_mapped_weights_equal_safetensors_own_loader_and_live_in_the_file(path: Path) -> None:
    mapped, loaded = mapped_safetensors(path), load_file(str(path))
    assert mapped.keys() == loaded.keys()
    for name, tensor in loaded.items():
        assert mapped[name].dtype == tensor.dtype and torch.equal(mapped[name], tensor), name
    maps = Path("/proc/self/maps").read_text()
    assert str(path.resolve()) in maps  # file-backed pages, shareable between workers


def test_warm_up_runs_every_bucket_and_a_few_sizes_of_an_eager_engine(tmp_path: Path) -> None:
    def sizes_seen(options: dict) -> set[int]:
        handler = EchoHandler()
        seen: set[int] = set()
        original = handler.load_model

        def load_model(model_dir: Path) -> torch.nn.Module:
            module = original(model_dir)
            module.register_forward_pre_hook(lambda _, inputs: seen.add(len(inputs[0])))
            return module

        handler.load_model = load_model  # type: ignore[method-assign]
        LocalModel(handler, "echo", tmp_path, {"batchSize": 12, "handler": options})
        return seen

    assert sizes_seen({}) == {1, 2, 4, 8, 12}  # eager: powers of two, then batchSize itself
    assert sizes_seen({"static_shapes": True}) == {1, 2, 4, 8, 16}  # every bucket it pads to
    assert sizes_seen({"warmup": False}) == set()


def _held_out_rows(count: int) -> list[torch.Tensor]:
    rows = torch.from_numpy(datasets.breast_cancer().held_out_x)
    return [rows[i:i + 1] for i in range(count)]


def test_bf16_autocast_keeps_the_tabular_answers() -> None:
    rows = _held_out_rows(64)
    with LocalModel.from_config(TABULAR) as fp32, \
            LocalModel.from_config(TABULAR, {"precision": "bf16"}) as bf16:
        expected = forward_batch(fp32.handler, rows, len(rows))
        found = forward_batch(bf16.handler, rows, len(rows))
    assert found.dtype == torch.float32
    assert torch.allclose(found, expected, atol=0.05)
    assert (found.argmax(1) == expected.argmax(1)).float().mean() >= 0.95


def test_int8_skip_patterns_must_match_a_layer() -> None:
    with pytest.raises(OptionsError, match="matches no Linear layer"):
        quantize_int8(torch.nn.Sequential(torch.nn.Linear(4, 4)), ["encoder.*"])
    kept = quantize_int8(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)), ["1"])
    assert type(kept[1]) is torch.nn.Linear and type(kept[0]) is not torch.nn.Linear


def test_compiled_buckets_never_recompile_after_warm_up() -> None:
    """torch.compile with static shapes: warm-up compiles every bucket, random batches add no graph."""
    from torch._dynamo.utils import counters

    rows = _held_out_rows(64)
    with LocalModel.from_config(TABULAR) as eager, \
            LocalModel.from_config(TABULAR, {"compile": True}) as compiled:
        graphs_after_warm_up = counters["stats"]["unique_graphs"]
        assert graphs_after_warm_up >= len(compiled.handler.batch_sizes)
        generator = random.Random(0)
        with torch.compiler.set_stance("fail_on_recompile"):  # a recompilation would raise here
            for _ in range(30):
                count = generator.randint(1, 40)
                batch = generator.sample(rows, count)
                found = forward_batch(compiled.handler, batch, count)
                assert torch.allclose(found, forward_batch(eager.handler, batch, count), atol=1e-5)
        assert counters["stats"]["unique_graphs"] == graphs_after_warm_up
