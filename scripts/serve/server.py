"""Start TorchServe on the archives in model_store/, wait until every model is READY, stop it.

    python -m scripts.serve.server start [--ts-config configs/local.properties]
    python -m scripts.serve.server stop [--ts-config ...] [--drain-timeout 60] [--announce 0]

`start` runs `torchserve --start` in the background (logs in ./logs), waits until
each archive's model has READY workers (a worker is READY once `initialize()`
returned), starts the keeper beside it (scripts/serve/keeper.py: /ready and /live
without a key, keys renewed before they expire), prints a working curl line per
model and tries each one.
Before starting, `start` checks every archive TorchServe will load (scripts/build/store.py:
a damaged or foreign one, or two archives of one model, stop it with exit 2). While
waiting, a model still loading is shown as warming every 5 s, with the last line its
worker logged. A model is named as unable to load only on evidence: its worker died
while loading, crash-loops, or its own startupTimeout (its archive's model-config)
passed; never for being slower than the others. It is named with its worker log's
last lines, the TorchServe just started is stopped and the exit code is 1
(scripts/serve/startup.py).
`stop` drains first (scripts/operate/drain.py: readiness false, the requests
TorchServe accepted finish), then stops TorchServe and the keeper.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import requests

from scripts.build.store import ArchiveError, check_startup, startup_archives
from scripts.client.rest import KeyFile, TorchServeClient, TorchServeError, ready_workers
from scripts.config.files import read_properties
from scripts.config.model import CONFIG_DIR, ConfigError, Example, load_spec
from scripts.operate.drain import drain, draining_marker
from scripts.serve import keeper
from scripts.serve.startup import FRONTEND_START_S, CannotLoad, LoadWatch, outer_timeout, startup_budgets

logger = logging.getLogger(__name__)
LOG_DIR = Path("logs")
STOP_WAIT = 60.0  # seconds for a TorchServe this start launched to stop after a failed start


def torchserve_command(*args: str) -> list[str]:
    """The torchserve launcher of this interpreter's environment."""
    return [str(Path(sys.executable).with_name("torchserve")), *args]


def wait_until_ready(
    client: TorchServeClient, models: Iterable[str], timeout: float, log_hint: Path,
    watch: LoadWatch | None = None,
) -> None:
    """Poll the management API until every model has a READY worker, or raise TimeoutError;
    with a `watch`, raise CannotLoad as soon as a model shows it will not load, and log its progress."""
    pending = set(models)
    deadline = time.monotonic() + timeout
    while pending:
        for name in sorted(pending):
            try:
                description = client.describe(name)
            except (requests.RequestException, TorchServeError):
                continue  # frontend not up yet, or the model not registered yet
            if ready_workers(description) > 0:
                pending.discard(name)
                logger.info("  %s: READY", name)
            elif watch and (progress := watch.observe(name, description)):
                logger.info("  %s", progress)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"not READY after {timeout:.0f}s: {sorted(pending)}; see {log_hint}")
        if pending:
            time.sleep(0.2)


def curl_line(url: str, example: Example) -> str:
    data = f"@{example.file}" if example.file else example.data or ""
    return (f"curl -s -X POST {url} -H {shlex.quote('Content-Type: ' + example.content_type)} "
            f"--data-binary {shlex.quote(data)}")


def show_examples(client: TorchServeClient, store: Path) -> None:
    """Print and try a curl line for every model whose config gives an example."""
    for config in sorted(CONFIG_DIR.glob("*.yaml")):
        try:
            spec = load_spec(config)
        except ConfigError:
            continue
        if spec.example is None or not (store / f"{spec.name}.mar").exists():
            continue
        if spec.example.file is not None and not spec.example.file.exists():
            print(f"\n# {spec.name}: example file {spec.example.file} is missing (`make models`)")
            continue
        url = f"{client.inference_url}/predictions/{spec.name}"
        example = spec.example
        body = example.file.read_bytes() if example.file else (example.data or "").encode()
        try:
            answer = client.predict(spec.name, body, example.content_type, check=False)
        except (requests.RequestException, TorchServeError) as error:  # TorchServeError: overloaded
            print(f"\n# {spec.name}: example request failed: {error}")
            continue
        preview = " ".join(answer.text.split())[:100]
        print(f"\n# {spec.name}  (answered {answer.status_code}: {preview}...)")
        print(curl_line(url, example))


def start(ts_config: Path, timeout: float, health_address: str = keeper.DEFAULT_HEALTH_ADDRESS) -> int:
    properties = read_properties(ts_config)
    store = Path(properties.get("model_store", "model_store"))
    try:  # TorchServe would register a damaged archive anyway, and two of one model in directory order
        archives = check_startup(store, startup_archives(store, properties.get("load_models", "")))
    except ArchiveError as error:
        logger.error("error: TorchServe was not started:\n%s", error)
        return 2
    models = sorted({info.name for info in archives})
    draining_marker(Path(".")).unlink(missing_ok=True)  # a drain that was cut short must not outlive it
    if not models:
        logger.error("error: %s loads no archive from %s (load_models=%s); run `make archive` first",
                     ts_config, store, properties.get("load_models", ""))
        return 1
    budgets = startup_budgets(archives)
    watch = LoadWatch(budgets, model_log=LOG_DIR / "model_log.log")  # before the start: only its log counts
    wait = outer_timeout(timeout, budgets)
    # --ncs: no config snapshots, so a later plain `torchserve --start` reads ./config.properties.
    command = torchserve_command("--start", "--ts-config", str(ts_config), "--ncs")
    logger.info("==> %s  (logs: %s/)", " ".join(command), LOG_DIR)
    LOG_DIR.mkdir(exist_ok=True)
    with (LOG_DIR / "torchserve.out").open("ab") as console:  # keep the terminal free
        result = subprocess.run(
            command, env={**os.environ, "LOG_LOCATION": str(LOG_DIR)}, check=False,
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
        )
    if result.returncode != 0:
        logger.error("error: torchserve did not start (is one already running? `make stop`)")
        return 1
    with TorchServeClient.from_properties(properties, KeyFile.read(Path("key_file.json"))) as client:
        raised = "" if wait == timeout else f"; --timeout {timeout:.0f} is below the largest startupTimeout"
        logger.info("==> waiting for READY workers: %s (at most %.0f s%s)", ", ".join(models), wait, raised)
        try:
            wait_until_ready(client, models, wait, LOG_DIR / "model_log.log", watch)
        except (CannotLoad, TimeoutError) as error:
            refuse_to_serve(error)
            return 1
        keeper.spawn(ts_config, Path("."), health_address, LOG_DIR)
        print(f"\nTorchServe is up: inference {client.inference_url}, management {client.management_url}, "
              f"metrics {client.metrics_url}, health http://{health_address}/ready "
              f"and /live; logs in {LOG_DIR}/; stop (drain first) with `make stop`.")
        show_examples(client, store)
    return 0


def refuse_to_serve(error: CannotLoad | TimeoutError) -> None:
    """Say which model cannot load and why, then stop the TorchServe this start launched."""
    logger.error("error: %s", error)
    if isinstance(error, CannotLoad):
        if error.log:
            logger.error("  the last lines its workers wrote to %s:\n    %s", LOG_DIR / "model_log.log",
                         "\n    ".join(error.log))
        logger.error("  fix: %s; take %s's .mar out of the store to serve the others", error.fix or (
            "the traceback says why; `python -m scripts.build.store check ARCHIVE` checks an archive, "
            "`make archive` rebuilds it"), error.model)
    pid = frontend_pid()
    logger.error("==> stopping the TorchServe this start launched (torchserve --stop)")
    if stop_started(pid):
        logger.error("    stopped: nothing of it is left running")
    else:
        logger.error("    it did not stop within %.0f s: TorchServe (pid %s) is LEFT RUNNING; stop it with "
                     "`make stop`", STOP_WAIT, pid)


def frontend_pid() -> int | None:
    """The TorchServe frontend's pid, from the pid file `torchserve --start` wrote under TMPDIR."""
    try:
        return int((Path(tempfile.gettempdir()) / ".model_server.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_started(pid: int | None, wait: float = STOP_WAIT) -> bool:
    """`torchserve --stop`, then wait until the frontend `pid` is gone (its workers go with it)."""
    subprocess.run(torchserve_command("--stop"), check=False, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + wait
    while pid is not None and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return pid is None


def stop(ts_config: Path, drain_timeout: float, announce: float) -> int:
    """Drain (readiness false, let accepted requests finish), stop TorchServe, then the keeper."""
    properties = read_properties(ts_config)
    client = TorchServeClient.from_properties(properties, KeyFile.read(Path("key_file.json")), timeout=10)
    codes: list[int] = []

    def torchserve_stop() -> None:
        codes.append(subprocess.run(torchserve_command("--stop"), check=False).returncode)

    with client:
        try:
            report = drain(client, Path("."), torchserve_stop, announce=announce, timeout=drain_timeout)
            logger.info("==> drained in %.1f s%s", report.waited_s, "" if report.idle else
                        f" (cut off: {report.left.queued} queued, {report.left.in_worker} in workers)")
        except (requests.RequestException, TorchServeError) as error:
            logger.info("==> no drain: TorchServe does not answer at %s (%s)", client.management_url,
                        type(error).__name__)
            if not codes:
                torchserve_stop()
    keeper.terminate(LOG_DIR)
    return codes[-1] if codes else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser("start", help="start TorchServe and wait for READY models")
    start_parser.add_argument("--ts-config", type=Path, default=Path("configs/local.properties"))
    start_parser.add_argument(
        "--timeout", type=float, default=300.0,
        help=f"seconds to wait for every model to be READY (default 300); raised, if lower, to "
             f"{FRONTEND_START_S} s for the frontend plus the largest startupTimeout of the archives, so it "
             "never undercuts a model's own budget. Each model is also given up on by itself once its "
             "startupTimeout passes")
    start_parser.add_argument("--ready-grace", type=float, default=None,
                              help="deprecated, ignored: a slow model is not failed for trailing the others")
    start_parser.add_argument("--health-address", default=keeper.DEFAULT_HEALTH_ADDRESS,
                              help="where the keeper answers /ready and /live without a key")
    stop_parser = commands.add_parser("stop", help="drain, then stop TorchServe")
    stop_parser.add_argument("--ts-config", type=Path, default=Path("configs/local.properties"))
    stop_parser.add_argument("--drain-timeout", type=float, default=60.0,
                             help="seconds to wait for accepted requests to finish (default 60)")
    stop_parser.add_argument("--announce", type=float, default=0.0,
                             help="seconds to keep serving after readiness turns false (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # "Retrying..." while TorchServe comes up
    if args.command == "start":
        if args.ready_grace is not None:  # kept so scripts that pass it still start: it only warns
            logger.warning("warning: --ready-grace is deprecated and ignored: a model is given up on only "
                           "when its worker dies, crash-loops or its own startupTimeout passes")
        return start(args.ts_config, args.timeout, args.health_address)
    return stop(args.ts_config, args.drain_timeout, args.announce)


if __name__ == "__main__":
    raise SystemExit(main())
