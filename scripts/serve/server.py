"""Start TorchServe on the archives in model_store/, wait until every model is READY, stop it.

    python -m scripts.serve.server start [--ts-config configs/local.properties]
    python -m scripts.serve.server stop

`start` runs `torchserve --start` in the background (logs in ./logs), waits until
each archive's model has READY workers (a worker is READY once `initialize()`
returned), prints a working curl line per model and tries each one.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import requests

from scripts.client.rest import KeyFile, TorchServeClient, TorchServeError, ready_workers
from scripts.config.files import read_properties
from scripts.config.model import CONFIG_DIR, ConfigError, Example, load_spec

logger = logging.getLogger(__name__)
LOG_DIR = Path("logs")


def torchserve_command(*args: str) -> list[str]:
    """The torchserve launcher of this interpreter's environment."""
    return [str(Path(sys.executable).with_name("torchserve")), *args]


def wait_until_ready(
    client: TorchServeClient, models: Iterable[str], timeout: float, log_hint: Path
) -> None:
    """Poll the management API until every model has a READY worker, or raise TimeoutError."""
    pending = set(models)
    deadline = time.monotonic() + timeout
    while pending:
        for name in sorted(pending):
            try:
                if ready_workers(client.describe(name)) > 0:
                    pending.discard(name)
                    logger.info("  %s: READY", name)
            except (requests.RequestException, TorchServeError):
                pass  # frontend not up yet, or the model not registered yet
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"not READY after {timeout:.0f}s: {sorted(pending)}; see {log_hint}")
        if pending:
            time.sleep(0.5)


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
        except requests.RequestException as error:
            print(f"\n# {spec.name}: example request failed: {error}")
            continue
        preview = " ".join(answer.text.split())[:100]
        print(f"\n# {spec.name}  (answered {answer.status_code}: {preview}...)")
        print(curl_line(url, example))


def start(ts_config: Path, timeout: float) -> int:
    properties = read_properties(ts_config)
    store = Path(properties.get("model_store", "model_store"))
    models = sorted(path.stem for path in store.glob("*.mar"))
    if not models:
        logger.error("error: no archives in %s; run `make archive` first", store)
        return 1
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
    inference = properties.get("inference_address", "http://127.0.0.1:8080")
    management = properties.get("management_address", "http://127.0.0.1:8081")
    keys = KeyFile.read(Path("key_file.json"))
    with TorchServeClient(inference, management, keys) as client:
        logger.info("==> waiting for READY workers: %s", ", ".join(models))
        try:
            wait_until_ready(client, models, timeout, LOG_DIR / "model_log.log")
        except TimeoutError as error:
            logger.error("error: %s", error)
            return 1
        print(f"\nTorchServe is up: inference {inference}, management {management}, "
              f"metrics {properties.get('metrics_address', '')}; logs in {LOG_DIR}/; stop with `make stop`.")
        show_examples(client, store)
    return 0


def stop() -> int:
    return subprocess.run(torchserve_command("--stop"), check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser("start", help="start TorchServe and wait for READY models")
    start_parser.add_argument("--ts-config", type=Path, default=Path("configs/local.properties"))
    start_parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for READY")
    commands.add_parser("stop", help="stop TorchServe")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return start(args.ts_config, args.timeout) if args.command == "start" else stop()


if __name__ == "__main__":
    raise SystemExit(main())
