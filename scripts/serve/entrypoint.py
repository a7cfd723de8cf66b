"""The container's main process (tini's child): run TorchServe in the foreground; on SIGTERM, drain.

    python -m scripts.serve.entrypoint [--drain-seconds N] [--server-dir DIR] COMMAND...
    (in the image: ... -- torchserve --start --foreground --ncs)

Why it exists: `torchserve --foreground` is a Python launcher that starts the Java
frontend with Popen and waits; it installs no signal handler. A SIGTERM sent to it
kills the launcher at once, Java is orphaned, and when PID 1 exits the kernel SIGKILLs
Java and its workers. TorchServe has no drain either (pytorch/serve#2008): its JVM
shutdown hook closes the listeners, then the connections, answered or not.

So on SIGTERM (or SIGINT) this process:
1. writes DIR/draining, so `scripts.serve.health` reports not ready (load balancers and
   readiness probes stop sending) while `--live` still passes;
2. keeps TorchServe serving for --drain-seconds (default: $DRAIN_SECONDS, else 5), so the
   requests in flight, and any that still arrive meanwhile, are answered; then waits,
   at most --idle-timeout (default 30) seconds more, until nothing is queued or in a
   worker (scripts/operate/drain.py); a second signal ends the wait early;
3. sends SIGTERM to the Java frontend (the launcher's child) alone; its shutdown hook
   stops listening, closes the connections, unregisters the models (stopping the
   workers) and exits, and the launcher follows;
4. exits 0. If TorchServe exits without being asked, this exits 1, so restart policies
   see a failure (the launcher itself always exits 0).

What is guaranteed: a request that reached TorchServe before step 3 is answered if it
finishes within the drain and the idle wait; one still running at step 3 loses its
connection. Size the grace period (`podman stop -t`, Kubernetes'
terminationGracePeriodSeconds) above the drain plus the idle timeout plus about 10 s
for the JVM's own shutdown.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

import psutil
import requests

from scripts.client.rest import DEFAULT_METRICS, KeyFile, TorchServeClient, TorchServeError
from scripts.config.files import read_properties
from scripts.operate.drain import current_load, draining_marker, wait_idle
from scripts.serve import keeper
from scripts.serve.health import CONFIG_ENV, NO_RETRIES, HealthError, loopback_url, read_target

logger = logging.getLogger(__name__)
DRAIN_ENV = "DRAIN_SECONDS"
KEEPER_ADDRESS_ENV = "KEEPER_HEALTH_ADDRESS"  # the image sets 0.0.0.0:8083
DEFAULT_DRAIN_SECONDS = 5.0

class Signals:
    """Counts SIGTERM/SIGINT: the first starts the drain, a second one cuts it short."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.hurry = threading.Event()

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.handle)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            self.hurry.set()
        self.stop.set()


def stop_frontend(launcher: subprocess.Popen[bytes]) -> None:
    """SIGTERM the Java frontend (the launcher's child), or the launcher if Java is not there yet."""
    try:
        children = psutil.Process(launcher.pid).children()
    except psutil.NoSuchProcess:
        return
    for child in children or []:
        logger.info("entrypoint: SIGTERM to the frontend, pid %d", child.pid)
        child.terminate()
    if not children:
        launcher.terminate()


def wait_for_signal(launcher: subprocess.Popen[bytes], signals: Signals) -> bool:
    """Block until a signal (True) or until TorchServe exits by itself (False)."""
    while not signals.stop.wait(0.5):
        if launcher.poll() is not None:
            return False
    return True


def drain(launcher: subprocess.Popen[bytes], signals: Signals, seconds: float) -> None:
    """Keep serving for `seconds`, unless TorchServe exits or a second signal arrives first."""
    deadline = time.monotonic() + seconds
    while launcher.poll() is None and (left := deadline - time.monotonic()) > 0:
        if signals.hurry.wait(min(0.2, left)):
            return


def wait_until_idle(server_dir: Path, timeout: float) -> None:
    """After the fixed drain, also wait until nothing is queued or in a worker (at most `timeout`).

    A stand-in or a server that cannot be asked (no properties, refused key) skips this:
    the fixed drain is then all there is.
    """
    try:
        ts_config = Path(os.environ.get(CONFIG_ENV) or server_dir / "config.properties")
        with client_for(ts_config, server_dir) as client:
            idle, left = wait_idle(lambda: current_load(client), timeout=timeout)
    except (requests.RequestException, TorchServeError, HealthError, OSError, ValueError) as error:
        logger.info("entrypoint: cannot see TorchServe's load (%s); stopping after the fixed drain",
                    type(error).__name__)
        return
    if idle:
        logger.info("entrypoint: idle: nothing queued or in a worker")
    else:
        logger.warning("entrypoint: still busy after %.0f s more (%d queued, %d in workers); stopping",
                       timeout, left.queued, left.in_worker)


def client_for(ts_config: Path, server_dir: Path) -> TorchServeClient:
    """A client for the server this container runs, with its management key (no retries: we wait)."""
    properties = read_properties(ts_config)
    target = read_target(ts_config, os.environ)
    metrics = loopback_url(properties.get("metrics_address", DEFAULT_METRICS), ts_config)
    keys = KeyFile.read(server_dir / "key_file.json") if target.token_auth else KeyFile()
    return TorchServeClient(management_url=target.management_url, keys=keys, timeout=5,
                            metrics_url=metrics, retries=NO_RETRIES)


def supervise(command: Sequence[str], server_dir: Path, drain_seconds: float,
              idle_timeout: float = 30.0) -> int:
    signals = Signals()
    signals.install()
    marker = draining_marker(server_dir)
    marker.unlink(missing_ok=True)  # left over from a previous run in the same directory
    # Its own process group: a terminal's Ctrl-C reaches only this process, which decides.
    launcher = subprocess.Popen(list(command), start_new_session=True)
    companion = start_keeper(server_dir)
    try:
        return serve_until_signal(launcher, signals, marker, drain_seconds, idle_timeout, server_dir)
    finally:
        if companion is not None:
            companion.close()


def start_keeper(server_dir: Path, environ: Mapping[str, str] = os.environ) -> keeper.Keeper | None:
    """The keeper's threads in this process: /ready and /live on $KEEPER_HEALTH_ADDRESS, keys renewed.

    Without a readable properties file (a stand-in for TorchServe) there is nothing to keep.
    """
    ts_config = Path(environ.get(CONFIG_ENV) or server_dir / "config.properties")
    address = environ.get(KEEPER_ADDRESS_ENV) or keeper.DEFAULT_HEALTH_ADDRESS
    try:
        return keeper.Keeper.start(ts_config, server_dir, address)
    except (HealthError, OSError) as error:
        logger.info("entrypoint: no keeper (%s)", error)
        return None


def serve_until_signal(launcher: subprocess.Popen[bytes], signals: Signals, marker: Path,
                       drain_seconds: float, idle_timeout: float, server_dir: Path) -> int:
    """Wait for SIGTERM, then drain and stop TorchServe (steps 1-4 of the module docstring)."""
    if not wait_for_signal(launcher, signals):
        logger.error("entrypoint: TorchServe exited by itself (code %s); see its log above",
                     launcher.returncode)
        return 1
    marker.write_text("SIGTERM received: draining\n")
    logger.info("entrypoint: signal received; serving for %.1f s more before stopping TorchServe",
                drain_seconds)
    drain(launcher, signals, drain_seconds)
    if launcher.poll() is None and not signals.hurry.is_set():
        wait_until_idle(server_dir, idle_timeout)
    stop_frontend(launcher)
    launcher.wait()  # no timeout: the runtime's grace period is the limit, then SIGKILL
    logger.info("entrypoint: TorchServe stopped")
    return 0


def drain_default(environ: Mapping[str, str] = os.environ) -> float:
    value = environ.get(DRAIN_ENV, "")
    if not value:
        return DEFAULT_DRAIN_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        raise SystemExit(f"entrypoint: {DRAIN_ENV}={value!r} is not a number of seconds; "
                         f"fix: e.g. {DRAIN_ENV}=5") from None
    if seconds < 0:
        raise SystemExit(f"entrypoint: {DRAIN_ENV}={value!r} is negative; fix: 0 or more seconds")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--drain-seconds", type=float, default=None,
                        help=f"seconds to keep serving after SIGTERM (default: ${DRAIN_ENV}, else 5)")
    parser.add_argument("--server-dir", type=Path, default=Path("."),
                        help="TorchServe's working directory, where the draining marker goes")
    parser.add_argument("--idle-timeout", type=float, default=30.0,
                        help="after the drain, wait at most this long for nothing queued or in a worker")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the TorchServe command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command: e.g. `-- torchserve --start --foreground --ncs`")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seconds = args.drain_seconds if args.drain_seconds is not None else drain_default()
    return supervise(command, args.server_dir, seconds, args.idle_timeout)


if __name__ == "__main__":
    raise SystemExit(main())
