"""How `make serve` tells a model still warming up from one that cannot load (scripts/serve/startup.py).

Synthetic describe answers, worker logs written as TorchServe writes logs/model_log.log, and a fake
clock: nothing sleeps. The same rules against a real TorchServe are in tests/e2e/test_startup.py
(a slow warm-up, a startupTimeout too short) and tests/e2e/test_bad_archives.py (a handler that raises).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.build.store import read_archive
from scripts.serve.startup import (
    FRONTEND_START_S,
    TRACEBACK_WAIT_S,
    CannotLoad,
    LoadWatch,
    outer_timeout,
    startup_budgets,
    worker_log,
)

PREFIX = "2026-11-30T19:08:43,290 [INFO ] W-{port}-{model}_1.0-stdout MODEL_LOG - "
STARTED, DIED = "Torch worker started.", "Backend worker process died."


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def describe(*pids: int, status: str = "UNLOADING") -> list[dict[str, object]]:
    return [{"modelVersion": "1.0", "workers": [{"id": str(9000 + n), "pid": pid, "status": status}
                                                for n, pid in enumerate(pids)]}]


def write(log: Path, model: str, *texts: str, port: int = 9000) -> None:
    with log.open("a") as stream:
        stream.writelines(PREFIX.format(port=port, model=model) + text + "\n" for text in texts)


def test_a_model_warming_for_ten_minutes_while_the_others_are_ready_is_not_failed(tmp_path: Path) -> None:
    log, clock = tmp_path / "model_log.log", Clock()
    watch = LoadWatch({"minilm": 900.0, "tabular": 120.0}, model_log=log, clock=clock, every=10.0)
    write(log, "tabular", STARTED, "warm-up: batch sizes [1, 2, 4] x 1 input shapes in 0.1s", port=9001)
    write(log, "minilm", STARTED, "model_name: minilm, batchSize: 16")
    lines = []
    for step in range(1200):  # a describe every 0.5 s for 600 s; tabular is READY, so not observed
        clock.now = 1000.0 + step * 0.5
        if step == 300:
            write(log, "minilm", "warm-up: 3 of 5 batch sizes, 150 s")
        lines.append(watch.observe("minilm", describe(4242, status="UNLOADING")))
    shown = [line for line in lines if line]
    assert len(shown) == 59  # one every 10 s, the first 10 s after it was first described
    assert shown[0] == ('minilm: warming (10 s of its startupTimeout 900 s, worker up; last log line: '
                        '"model_name: minilm, batchSize: 16")')
    assert shown[-1].startswith("minilm: warming (590 s of its startupTimeout 900 s, worker up;")
    assert shown[-1].endswith('last log line: "warm-up: 3 of 5 batch sizes, 150 s")')


def test_a_model_is_failed_once_its_own_startup_timeout_passes(tmp_path: Path) -> None:
    log, clock = tmp_path / "model_log.log", Clock()
    watch = LoadWatch({"minilm": 180.0}, model_log=log, clock=clock, slack=10.0)
    write(log, "minilm", STARTED, "warm-up: sleeping")
    watch.observe("minilm", describe(4242))  # first described: its clock starts
    clock.now += 189.0
    watch.observe("minilm", describe(4242))
    clock.now += 2.0
    with pytest.raises(CannotLoad) as failed:
        watch.observe("minilm", describe(4242))
    assert str(failed.value) == (
        "minilm cannot load: not READY 191 s after TorchServe registered it, past its startupTimeout "
        "(180 s in its archive's model-config), after which TorchServe stops a loading worker")
    assert failed.value.log == [STARTED, "warm-up: sleeping"]  # how far it got
    assert "raise startupTimeout in minilm's model YAML" in failed.value.fix


def test_without_a_startup_timeout_torchserves_default_applies(tmp_path: Path) -> None:
    clock = Clock()
    watch = LoadWatch({}, clock=clock, slack=0.0)
    watch.observe("digits", describe())
    clock.now += 120.0
    assert watch.observe("digits", describe()) == (
        "digits: warming (120 s of its startupTimeout 120 s, no worker yet; last log line: none yet)")
    clock.now += 1.0
    with pytest.raises(CannotLoad, match=r"past its startupTimeout \(120 s"):
        watch.observe("digits", describe())


def test_a_worker_that_died_with_a_traceback_in_this_start_fails_the_model_at_once(tmp_path: Path) -> None:
    log, clock = tmp_path / "model_log.log", Clock()
    write(log, "broken", STARTED, "ValueError: a start of yesterday's server", DIED)  # before this start
    watch = LoadWatch({"broken": 120.0}, model_log=log, clock=clock)
    write(log, "broken", STARTED, "Traceback (most recent call last):", '  File "tabular.py", line 9',
          "warm-up: still going")
    assert watch.observe("broken", describe(11)) is None  # a traceback the handler logged and survived
    write(log, "tabular", DIED, port=9001)  # another model's worker
    assert watch.observe("broken", describe(11)) is None
    write(log, "broken", "Traceback (most recent call last):", '  File "weights.py", line 50, in load',
          "ValueError: weights are not safetensors", DIED, "Traceback (most recent call last):",
          "RuntimeError: 500 - Unknown exception")
    clock.now += 3.0
    with pytest.raises(CannotLoad) as failed:
        watch.observe("broken", describe(11))
    assert str(failed.value) == ("broken cannot load: its worker died while loading (TorchServe restarts it, "
                                 "but an initialize() that raised fails again)")
    assert failed.value.log[-2:] == ['  File "weights.py", line 50, in load',
                                     "ValueError: weights are not safetensors"]
    assert "yesterday" not in " ".join(failed.value.log) and not failed.value.fix


def test_a_worker_restarted_twice_before_ready_is_a_crash_loop() -> None:
    watch = LoadWatch(restarts=2)
    for pids in [(11, 12), (11, 12), (13, 14), (13, 14)]:  # each pid seen again while it lives
        watch.observe("broken", describe(*pids))
    with pytest.raises(CannotLoad, match="broken cannot load: its worker died 2 times while loading"):
        watch.observe("broken", describe(15, 16))


def test_a_slow_model_with_the_same_workers_is_not_a_crash_loop() -> None:
    watch = LoadWatch(restarts=2)
    for _ in range(100):
        watch.observe("minilm", describe(21, status="LOADING"))
    watch.observe("minilm", [{"modelVersion": "1.0", "workers": [{"id": "9000", "status": "LOADING"}]}])


def test_a_log_rolled_over_during_the_start_is_read_from_its_beginning(tmp_path: Path) -> None:
    log = tmp_path / "model_log.log"
    write(log, "broken", *["an old line"] * 100)
    watch = LoadWatch(model_log=log)
    log.rename(tmp_path / "model_log.30-Nov.log")  # as log4j rolls it: a new file under the old name
    write(log, "broken", STARTED, "KeyError: 'weights'", DIED)
    with pytest.raises(CannotLoad, match="its worker died while loading"):
        watch.observe("broken", describe(11))


def test_the_outer_timeout_never_undercuts_a_models_startup_timeout() -> None:
    budgets = startup_budgets([read_archive(Path("model_store/tabular.mar"))])
    assert budgets == {"tabular": 120.0}  # configs/models/tabular.yaml's startupTimeout
    assert outer_timeout(300.0, {"minilm": 180.0, "tabular": 120.0}) == 300.0
    assert outer_timeout(100.0, {"minilm": 180.0, "tabular": 120.0}) == FRONTEND_START_S + 180.0
    assert outer_timeout(100.0, {}) == 100.0


def test_the_worker_log_gives_the_handlers_error_of_the_latest_failed_start(tmp_path: Path) -> None:
    log = tmp_path / "model_log.log"
    lines = [(1, "broken", STARTED), (1, "broken", "ValueError: an older start"), (2, "tabular", STARTED),
             (1, "broken", STARTED), (2, "tabular", "ValueError: not this model"),
             (1, "broken", "Traceback (most recent call last):"), (1, "broken", '  File "x.py", line 1'),
             (3, "broken", "KeyError: another worker's line"),
             (1, "broken", "ValueError: weights are not safetensors"), (1, "broken", ""), (1, "broken", DIED),
             (1, "broken", "RuntimeError: 507 - System out of memory"), (1, "broken", STARTED)]
    for port, model, text in lines:
        write(log, model, text, port=40000 + port)
    assert worker_log(log, "broken", lines=3) == [
        "Traceback (most recent call last):", '  File "x.py", line 1',
        "ValueError: weights are not safetensors"]
    assert worker_log(log, "tab") == [] and worker_log(tmp_path / "missing.log", "broken") == []


def test_a_worker_restarted_after_its_startup_timeout_is_named_for_the_timeout(tmp_path: Path) -> None:
    log, clock = tmp_path / "model_log.log", Clock()
    watch = LoadWatch({"tooslow": 5.0}, model_log=log, clock=clock, slack=10.0)
    write(log, "tooslow", STARTED, "warm-up: waiting on purpose, 4 of 60 s")
    watch.observe("tooslow", describe(11))
    clock.now += 6.0  # TorchServe stopped the worker at its startupTimeout and started another
    with pytest.raises(CannotLoad, match=r"past its startupTimeout \(5 s"):
        watch.observe("tooslow", describe(12))


def test_a_death_line_before_its_traceback_waits_briefly_for_the_traceback(tmp_path: Path) -> None:
    """TorchServe logs a worker's stdout (the death line) and stderr (the traceback) on two threads."""
    log, clock = tmp_path / "model_log.log", Clock()
    watch = LoadWatch({"broken": 120.0}, model_log=log, clock=clock)
    write(log, "broken", STARTED, DIED)
    assert watch.observe("broken", describe(11)) is None  # no error line yet: not named without it
    write(log, "broken", "Traceback (most recent call last):", "ValueError: weights are not safetensors")
    with pytest.raises(CannotLoad) as failed:
        watch.observe("broken", describe(11))
    assert failed.value.log[-1] == "ValueError: weights are not safetensors"


def test_a_death_with_no_traceback_is_named_after_the_short_wait(tmp_path: Path) -> None:
    log, clock = tmp_path / "model_log.log", Clock()
    watch = LoadWatch({"broken": 120.0}, model_log=log, clock=clock)
    write(log, "broken", STARTED, DIED)
    assert watch.observe("broken", describe(11)) is None
    clock.now += TRACEBACK_WAIT_S
    with pytest.raises(CannotLoad, match="its worker died while loading"):
        watch.observe("broken", describe(11))
