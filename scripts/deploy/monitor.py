"""A real Prometheus on configs/monitoring/prometheus.yml, scraping a running TorchServe.

    make monitor                      # after `make serve`; Ctrl-C stops it
    python -m scripts.deploy.monitor [--ts-config configs/local.properties] [--port 9090]

The shipped scrape config is used as it is. Only a target whose port differs from
the server's `metrics_address` is rewritten (into a copy in a temporary directory,
which also holds the data and is deleted on exit).

It runs in the foreground on purpose. A monitoring session is something you watch
and then end; nothing else depends on it. In the foreground, Ctrl-C stops
Prometheus and removes its data, and no pid file or forgotten daemon can remain.
`make serve` backgrounds TorchServe only because other commands must reach it.

`Prometheus` is also what tests/e2e/test_prometheus.py starts: its own process
group, stopped by group even when the caller fails, and `query()` for the HTTP API.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import requests
import yaml

from scripts.config.files import read_properties
from scripts.serve.local import stop_group

logger = logging.getLogger(__name__)
SCRAPE_CONFIG = Path("configs/monitoring/prometheus.yml")
INSTALL = "scripts/deploy/install_prometheus.sh"


def rewrite_targets(config: dict[str, Any], metrics_address: str,
                    labels: dict[str, str] | None = None) -> list[str]:
    """Point the torchserve job's targets at `metrics_address` where the port differs, and add
    target `labels` if given; in place. Returns what changed, empty when the file fits as it is.
    """
    wanted = urlsplit(metrics_address).netloc
    changes = []
    for job in config.get("scrape_configs", []):
        if job.get("job_name") != "torchserve":
            continue
        for group in job.get("static_configs", []):
            if labels:
                group["labels"] = {**group.get("labels", {}), **labels}
                changes.append(f"labels {labels}")
            targets = group.get("targets", [])
            for index, target in enumerate(targets):
                if target != wanted:
                    changes.append(f"{target} -> {wanted}")
                    targets[index] = wanted
    return changes


@dataclass
class Prometheus:
    """One Prometheus process in its own process group, with its data under `workdir`."""

    workdir: Path
    url: str
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, workdir: Path, metrics_address: str, port: int, source: Path = SCRAPE_CONFIG,
              labels: dict[str, str] | None = None, timeout: float = 60) -> Prometheus:
        """Start Prometheus on 127.0.0.1:`port`, scraping `metrics_address` (with extra target
        `labels`, e.g. the pod and namespace Kubernetes discovery would add); wait until ready."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError(f"no prometheus on PATH: run {INSTALL} (apt-get install prometheus)")
        config = yaml.safe_load(source.read_text())
        changes = rewrite_targets(config, metrics_address, labels)
        config_file = source
        if changes:
            config_file = workdir / "prometheus.yml"
            config_file.write_text(yaml.safe_dump(config, sort_keys=False))
            logger.info("scrape config rewritten: %s", ", ".join(changes))
        command = [binary, f"--config.file={config_file}", f"--storage.tsdb.path={workdir / 'data'}",
                   f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
        with (workdir / "prometheus.log").open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        server = cls(workdir, f"http://127.0.0.1:{port}", process)
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with code {self.process.returncode}: "
                                   f"{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready after {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.2)

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant vector of `expr` (at time `at`, else now): [{"metric": {...}, "value": [t, "v"]}]."""
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        answer = requests.get(f"{self.url}/api/v1/query", params=params, timeout=30).json()
        if answer.get("status") != "success":
            raise ValueError(f"Prometheus refused {expr!r}: {answer.get('errorType')}: {answer.get('error')}")
        if answer["data"]["resultType"] != "vector":
            raise ValueError(f"{expr!r} gives a {answer['data']['resultType']}, not an instant vector")
        return list(answer["data"]["result"])

    def targets(self) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.url}/api/v1/targets", timeout=10).json()
        return list(answer["data"]["activeTargets"])

    def wait_scraped(self, timeout: float = 60) -> dict[str, Any]:
        """The torchserve target once a scrape of it succeeded; TimeoutError with its last error."""
        deadline = time.monotonic() + timeout
        while True:
            target = next((t for t in self.targets() if t["labels"].get("job") == "torchserve"), {})
            if target.get("health") == "up":
                return target
            if time.monotonic() > deadline:
                raise TimeoutError(f"Prometheus could not scrape {target.get('scrapeUrl')}: "
                                   f"{target.get('lastError') or 'no scrape yet'}")
            time.sleep(0.5)

    def log_tail(self, lines: int = 5) -> str:
        path = self.workdir / "prometheus.log"
        return " | ".join(path.read_text().splitlines()[-lines:]) if path.exists() else "(no log)"

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 20 s."""
        stop_group(self.process, grace=20)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def check_metrics(metrics_address: str, ts_config: Path) -> None:
    """Fail early, with the fix, when no TorchServe answers on the metrics port."""
    try:
        requests.get(f"{metrics_address}/metrics", timeout=5).raise_for_status()
    except requests.RequestException as error:
        raise RuntimeError(f"no TorchServe metrics at {metrics_address}/metrics ({type(error).__name__}): "
                           f"start the server first with `make serve` (or pass the --ts-config it was "
                           f"started with; read {ts_config})") from None


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ts-config", type=Path, default=Path("configs/local.properties"),
                        help="the properties TorchServe was started with (its metrics_address)")
    parser.add_argument("--port", type=int, default=9090, help="Prometheus's own port on 127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    signal.signal(signal.SIGTERM, _raise_exit)  # stop by group on `kill` too, not only Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored (`&`)
    try:
        metrics = read_properties(args.ts_config).get("metrics_address", "http://127.0.0.1:8082")
        check_metrics(metrics, args.ts_config)
        with tempfile.TemporaryDirectory(prefix="prometheus-") as workdir, \
                Prometheus.start(Path(workdir), metrics, args.port) as server:
            target = server.wait_scraped()
            logger.info("Prometheus %s scrapes %s (up); data in %s (deleted on exit)",
                        server.url, target["scrapeUrl"], workdir)
            logger.info("try: curl -s '%s/api/v1/query' --data-urlencode "
                        "'query=sum by (ModelName, Status) (HandlerResponses_total)'", server.url)
            logger.info("Ctrl-C stops it")
            return server.process.wait()
    except KeyboardInterrupt:
        logger.info("stopped")
        return 0
    except (OSError, RuntimeError, TimeoutError, requests.RequestException) as error:
        logger.error("error: %s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
