"""scripts.serve.entrypoint with a stand-in for TorchServe: real processes, real signals.

The stand-in mimics `torchserve --foreground`: a launcher process that starts a
"frontend" child and waits for it. The frontend records, when SIGTERM reaches it,
whether the draining marker was already there. The launcher must never be signalled:
it records a SIGTERM of its own too. The real image is stopped in tests/image/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.serve.entrypoint import drain_default

FRONTEND = textwrap.dedent("""
    import pathlib, signal, sys, time
    out = pathlib.Path(sys.argv[1])
    def on_term(signum, frame):
        marker = (out / "draining").exists()
        (out / "frontend-term").write_text("marker" if marker else "no marker")
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    (out / "frontend-up").write_text("up")
    while True:
        time.sleep(0.05)
""")
LAUNCHER = textwrap.dedent("""
    import pathlib, signal, subprocess, sys
    out = pathlib.Path(sys.argv[1])
    signal.signal(signal.SIGTERM, lambda *_: (out / "launcher-term").write_text("term"))
    (out / "launcher.pid").write_text(str(__import__("os").getpid()))
    if sys.argv[2] == "exit-now":
        sys.exit(0)
    child = subprocess.Popen([sys.executable, str(out / "frontend.py"), str(out)])
    (out / "frontend.pid").write_text(str(child.pid))
    child.wait()
""")


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "frontend.py").write_text(FRONTEND)
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    yield tmp_path
    for name in ("frontend.pid", "launcher.pid"):  # whatever a failed test left running
        if (tmp_path / name).exists():
            try:
                os.kill(int((tmp_path / name).read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def start(out: Path, drain: float, mode: str = "serve") -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "scripts.serve.entrypoint", "--drain-seconds", str(drain),
               "--server-dir", str(out), "--", sys.executable, str(out / "launcher.py"), str(out), mode]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def wait_for(path: Path, process: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def test_sigterm_drains_then_stops_only_the_frontend(stand_in: Path) -> None:
    entrypoint = start(stand_in, drain=1)
    wait_for(stand_in / "frontend-up", entrypoint)
    entrypoint.send_signal(signal.SIGTERM)
    output, _ = entrypoint.communicate(timeout=60)
    assert entrypoint.returncode == 0, output
    assert (stand_in / "frontend-term").read_text() == "marker"  # the drain began before the stop
    assert not (stand_in / "launcher-term").exists()  # the launcher exited because Java did
    assert "serving for 1.0 s more" in output and "TorchServe stopped" in output


def test_a_second_signal_cuts_the_drain_short(stand_in: Path) -> None:
    entrypoint = start(stand_in, drain=3600)
    wait_for(stand_in / "frontend-up", entrypoint)
    entrypoint.send_signal(signal.SIGTERM)
    wait_for(stand_in / "draining", entrypoint)
    entrypoint.send_signal(signal.SIGTERM)
    output, _ = entrypoint.communicate(timeout=60)  # an hour's drain would outlast this
    assert entrypoint.returncode == 0, output
    assert (stand_in / "frontend-term").read_text() == "marker"


def test_torchserve_exiting_by_itself_is_a_failure(stand_in: Path) -> None:
    """The real launcher exits 0 even when Java died; restart policies must still see a failure."""
    entrypoint = start(stand_in, drain=1, mode="exit-now")
    output, _ = entrypoint.communicate(timeout=60)
    assert entrypoint.returncode == 1
    assert "TorchServe exited by itself (code 0)" in output


def test_a_stale_marker_is_removed_at_start(stand_in: Path) -> None:
    (stand_in / "draining").write_text("left from the last run")
    entrypoint = start(stand_in, drain=0)
    wait_for(stand_in / "frontend-up", entrypoint)
    assert not (stand_in / "draining").exists()
    entrypoint.send_signal(signal.SIGTERM)
    assert entrypoint.wait(timeout=60) == 0


@pytest.mark.parametrize(("value", "expected"), [("", 5.0), ("0", 0.0), ("12.5", 12.5)])
def test_drain_seconds_from_the_environment(value: str, expected: float) -> None:
    assert drain_default({"DRAIN_SECONDS": value}) == expected


@pytest.mark.parametrize(("value", "words"), [("soon", "is not a number of seconds"), ("-1", "is negative")])
def test_a_bad_drain_seconds_names_the_variable_and_the_fix(value: str, words: str) -> None:
    with pytest.raises(SystemExit, match=f"DRAIN_SECONDS='{value}' {words}.*fix"):
        drain_default({"DRAIN_SECONDS": value})
