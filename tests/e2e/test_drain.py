"""`make stop` drains: under locust load, every request accepted before the drain began is answered.

Each test starts a real TorchServe with token authorization on, puts locust on one
model, and while the load runs calls the real `python -m scripts.serve.server stop`
(what `make stop` runs) in the server's working directory. The load keeps going after
the drain began (for PAST_DRAIN_S, longer than the drain's quiet second), as a client that
has not yet seen readiness turn false would, then ends; the drain must wait for it and lose nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.operate.drain import draining_marker
from scripts.serve import health
from scripts.serve.local import LocalServer
from tests.conftest import FIGURES, ROOT
from tests.e2e.cli import tsctl
from tests.e2e.conftest import Server
from tests.load import BackgroundLoad

pytestmark = pytest.mark.e2e
STORE = Path("model_store").resolve()
TRAFFIC = 50  # requests sent before the drain begins, and again after it began
PAST_DRAIN_S = 2.0  # the load goes on this long after the drain began: more than its 1 s of quiet


def make_stop(server: LocalServer) -> subprocess.Popen[str]:
    """`make stop`'s command, run where TorchServe runs (its key file, pid file and logs are there)."""
    env = {**os.environ, "TMPDIR": str(server.workdir / "tmp"), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "scripts.serve.server", "stop", "--ts-config",
                             str(server.workdir / "config.properties"), "--drain-timeout", "60"],
                            cwd=server.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.parametrize("model", ["tabular", "minilm"])
def test_make_stop_under_load_answers_every_accepted_request(model: str, tmp_path: Path) -> None:
    with LocalServer.start(tmp_path / "server", STORE, [model],
                           extra={"disable_token_authorization": "false"}) as server:
        with BackgroundLoad.start(server, model, tmp_path / "load", 120) as load:
            load.wait_for(lambda replies: len(replies) >= TRAFFIC, "traffic before the drain")
            drain_began = time.time()
            stopper = make_stop(server)
            load.wait_for(lambda replies: sum(r.sent > drain_began for r in replies) >= TRAFFIC
                          and max(r.sent for r in replies) > drain_began + PAST_DRAIN_S,
                          "traffic after the drain began")
            seen_draining = draining_marker(server.workdir).exists()  # readiness false while it drains
            result = load.stop()
        while stopper.poll() is None:
            seen_draining |= draining_marker(server.workdir).exists()
            time.sleep(0.05)
        stopped = time.time()
        output = stopper.stdout.read() if stopper.stdout else ""
        assert stopper.returncode == 0, output
        try:  # wait() returns an exit status or raises: an assert on its value could not fail
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("TorchServe still runs 60 s after make stop")
    replies = load.replies()
    accepted_before = [reply for reply in replies if reply.sent < drain_began]
    failed = [reply for reply in replies if reply.status != 200]
    assert seen_draining and "drained in" in output and "cut off" not in output, output
    assert accepted_before and not [r for r in accepted_before if r.status != 200], failed[:5]
    assert result.failures == len(failed) == 0, failed[:5]
    assert not draining_marker(server.workdir).exists()
    FIGURES[f"drain under load ({model})"] = (
        f"{len(accepted_before)} requests accepted before the drain, {len(replies)} in all, "
        f"{len(failed)} failed; make stop took {stopped - drain_began:.1f} s "
        f"(the load went on {max(r.sent for r in replies) - drain_began:.1f} s past the drain's start)")


def test_tsctl_drain_turns_readiness_false_and_undo_turns_it_back(server: Server) -> None:
    """On the session's server: the test leaves it as it found it (ready), even when it fails."""
    def ready() -> tuple[bool, str]:
        return health.check(server.workdir / "config.properties", server.workdir, live=False, timeout=5)

    assert ready()[0]
    try:
        drained = tsctl(server.workdir, "drain", "--drain-timeout", "30", timeout=120)
        assert drained.returncode == 0 and drained.stdout.startswith("drained in"), drained.stderr
        assert ready() == (False, "not ready: draining (the server finishes what it accepted, then stops)")
        with server.client() as client:  # still serving: a client that ignores readiness is answered
            assert client.predict("tabular", Path("build/examples/tabular.json").read_bytes(),
                                  "application/json").status_code == 200
        undone = tsctl(server.workdir, "drain", "--undo", timeout=120)
        assert undone.returncode == 0 and "undone" in undone.stdout
        assert ready()[0]
    finally:
        draining_marker(server.workdir).unlink(missing_ok=True)
