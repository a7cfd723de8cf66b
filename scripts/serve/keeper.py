"""The process beside TorchServe: health over HTTP without secrets, and keys that never expire on clients.

    python -m scripts.serve.keeper [--ts-config PATH] [--server-dir DIR] [--health-address HOST:PORT]

Why it exists:
- TorchServe's `/ping` needs the inference key when token authorization is on, and
  says "Healthy" before any model has loaded. A load balancer has no key. So this
  answers `GET /ready` (200 only when every model's default version has READY
  workers and no drain is under way; 503 otherwise) and `GET /live` (200 while the
  frontend answers), each with a JSON body `{"ready"|"live": bool, "detail": "..."}`,
  using `scripts.serve.health` with the management key from key_file.json. The
  answer says nothing secret: model names and worker counts.
- TorchServe's keys expire `token_expiration_min` (default 60) minutes after they
  were made, and TorchServe never renews them. This renews each key when less than
  half of its lifetime is left (`POST /token?type=...` with the API key, which
  never expires). TorchServe then rewrites key_file.json, and every client that
  reads its key from that file (our TorchServeClient, tsctl, the health check)
  re-reads it when a key is refused, so a client never sees the expiry.

It binds to loopback unless told otherwise, and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from scripts.client.rest import renew_key
from scripts.config.files import read_properties
from scripts.serve import health

logger = logging.getLogger(__name__)
DEFAULT_HEALTH_ADDRESS = "127.0.0.1:8083"
DEFAULT_LIFETIME_MIN = 60.0  # TorchServe's token_expiration_min default
RENEWED_TYPES = ("inference", "management")
PID_FILE = "keeper.pid"
LIFETIME_ENV = "TS_TOKEN_EXPIRATION_TIME_MIN"


# ---- keys ----------------------------------------------------------------------------------
def expirations(key_file: dict[str, dict[str, str]]) -> dict[str, datetime]:
    """{"inference"|"management": when that key expires}, from TorchServe's key_file.json document."""
    return {kind: parse_instant(key_file[kind]["expiration time"]) for kind in RENEWED_TYPES}


def parse_instant(text: str) -> datetime:
    """Java's Instant.toString ("2026-11-30T19:40:12.123456789Z"): up to 9 fractional digits."""
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00")
    return datetime.fromisoformat(trimmed)


def due(expires: dict[str, datetime], lifetime_s: float, now: datetime) -> list[str]:
    """The key types with less than half of their lifetime left."""
    return [kind for kind, when in expires.items() if (when - now).total_seconds() < lifetime_s / 2]


@dataclass
class KeyRenewer:
    """Renews TorchServe's keys at half-life; TorchServe writes the new ones to key_file.json."""

    management_url: str
    key_file: Path
    lifetime_s: float
    timeout: float = 5.0

    def renew_due(self, now: datetime | None = None) -> list[str]:
        """Renew what is due now; returns the types renewed."""
        if not self.key_file.is_file():
            return []  # TorchServe has not started (or token authorization is off)
        document = json.loads(self.key_file.read_text())
        kinds = due(expirations(document), self.lifetime_s, now or datetime.now(timezone.utc))
        for kind in kinds:
            renew_key(self.management_url, document["API"]["key"], kind, self.timeout).raise_for_status()
            logger.info("keeper: renewed the %s key (key_file.json rewritten by TorchServe)", kind)
        return kinds

    def poll_interval(self) -> float:
        """Often enough that a key is renewed well before it expires, and at least every 30 s."""
        return max(1.0, min(30.0, self.lifetime_s / 8))

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.poll_interval()):
            try:
                self.renew_due()
            except (requests.RequestException, OSError, ValueError, KeyError) as error:
                logger.warning("keeper: could not renew keys (%s); trying again", error)


def token_lifetime_min(properties: dict[str, str], environ: Mapping[str, str]) -> float:
    """token_expiration_min as TorchServe sees it: TS_TOKEN_EXPIRATION_TIME_MIN wins when
    enable_envvars_config=true (the image)."""
    value = properties.get("token_expiration_min", str(DEFAULT_LIFETIME_MIN))
    if properties.get("enable_envvars_config", "false").lower() == "true":
        value = environ.get(LIFETIME_ENV, value)
    return float(value)


# ---- health over HTTP ------------------------------------------------------------------------
Check = Callable[[bool], tuple[bool, str]]  # live? -> (healthy, why)


class CachedCheck:
    """The health check, at most once a second whoever asks: probes must not load TorchServe."""

    def __init__(self, check: Check, max_age: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._check, self._max_age, self._clock = check, max_age, clock
        self._lock = threading.Lock()
        self._answers: dict[bool, tuple[float, tuple[bool, str]]] = {}

    def __call__(self, live: bool) -> tuple[bool, str]:
        with self._lock:
            cached = self._answers.get(live)
            if cached is None or self._clock() - cached[0] > self._max_age:
                cached = (self._clock(), self._check(live))
                self._answers[live] = cached
            return cached[1]


def health_handler(check: Check) -> type[BaseHTTPRequestHandler]:
    class HealthHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            routes = {"/ready": False, "/live": True}
            if self.path not in routes:
                self._answer(404, {"error": f"no such endpoint {self.path}; use /ready or /live"})
                return
            live = routes[self.path]
            healthy, detail = check(live)
            self._answer(200 if healthy else 503, {"live" if live else "ready": healthy, "detail": detail})

        def _answer(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's name
            logger.debug("keeper: " + format, *args)

    return HealthHandler


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"keeper: --health-address {text!r} is not HOST:PORT; "
                         f"fix: e.g. {DEFAULT_HEALTH_ADDRESS}")
    return host.strip("[]"), int(port)


# ---- the process ------------------------------------------------------------------------------
@dataclass
class Keeper:
    """The health server and the key renewer, as threads; `close()` stops both."""

    server: ThreadingHTTPServer
    renewer: KeyRenewer | None
    stop_event: threading.Event

    @classmethod
    def start(cls, ts_config: Path, server_dir: Path, health_address: str) -> Keeper:
        target = health.read_target(ts_config, os.environ)
        check = CachedCheck(lambda live: health.check(ts_config, server_dir, live, timeout=5.0))
        server = ThreadingHTTPServer(parse_address(health_address), health_handler(check))
        server.daemon_threads = True
        stop_event = threading.Event()
        threading.Thread(target=server.serve_forever, name="keeper-health", daemon=True).start()
        renewer = None
        if target.token_auth:
            minutes = token_lifetime_min(read_properties(ts_config), os.environ)
            lifetime = float(minutes) * 60
            renewer = KeyRenewer(target.management_url, server_dir / "key_file.json", lifetime)
            threading.Thread(target=renewer.run, args=(stop_event,), name="keeper-keys", daemon=True).start()
        logger.info("keeper: /ready and /live on http://%s:%d; keys %s", *server.server_address[:2],
                    "renewed at half-life" if renewer else "off (token authorization is off)")
        return cls(server, renewer, stop_event)

    def close(self) -> None:
        self.stop_event.set()
        self.server.shutdown()
        self.server.server_close()


def spawn(ts_config: Path, server_dir: Path, health_address: str, log_dir: Path) -> int:
    """Start the keeper in the background (its own session; `make stop` ends it); returns its pid."""
    log_dir.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "scripts.serve.keeper", "--ts-config", str(ts_config),
               "--server-dir", str(server_dir), "--health-address", health_address]
    with (log_dir / "keeper.log").open("ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    (log_dir / PID_FILE).write_text(f"{process.pid}\n")
    return process.pid


def terminate(log_dir: Path, grace: float = 10.0) -> bool:
    """SIGTERM the keeper `spawn` started (its whole session), if it still runs."""
    pid_file = log_dir / PID_FILE
    if not pid_file.is_file():
        return False
    pid = int(pid_file.read_text())
    pid_file.unlink()
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--ts-config", type=Path, default=Path("config.properties"))
    parser.add_argument("--server-dir", type=Path, default=Path("."),
                        help="TorchServe's working directory (key_file.json, the draining marker)")
    parser.add_argument("--health-address", default=DEFAULT_HEALTH_ADDRESS,
                        help=f"where /ready and /live listen (default {DEFAULT_HEALTH_ADDRESS}: loopback)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        keeper = Keeper.start(args.ts_config, args.server_dir, args.health_address)
    except (health.HealthError, OSError) as error:
        logger.error("keeper: %s", error)
        return 2
    watch_server(lambda: health.check(args.ts_config, args.server_dir, live=True, timeout=5.0)[0], stop)
    keeper.close()
    return 0


def watch_server(alive: Callable[[], bool], stop: threading.Event, every: float = 5.0,
                 gone_after: int = 6) -> None:
    """Return on `stop`, or once TorchServe, seen alive before, has not answered `gone_after`
    checks in a row: a plain `torchserve --stop` must not leave the keeper behind."""
    seen, missed = False, 0
    while not stop.wait(every):
        if alive():
            seen, missed = True, 0
        elif seen:
            missed += 1
            if missed >= gone_after:
                logger.info("keeper: TorchServe has not answered for %.0f s; exiting", every * gone_after)
                return


if __name__ == "__main__":
    raise SystemExit(main())
