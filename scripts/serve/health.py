"""Is this TorchServe ready to take traffic? For the image's HEALTHCHECK and Kubernetes exec probes.

    python -m scripts.serve.health [--ts-config PATH] [--server-dir DIR] [--live] [--timeout S]

Exit 0 only when TorchServe answers and every registered model's default version has
at least one READY worker (a worker is READY once `initialize()` returned, and our
handlers warm up inside it, so READY means warm); otherwise exit 1. Either way it
prints one line that says why, naming the model that is not ready. While the
container's entrypoint drains after SIGTERM (DIR/draining exists) it says not ready.
`--live` asks only whether the frontend answers at all (for a livenessProbe: a model
that is still loading, or a draining server, is alive).

Where it looks, as TorchServe itself does:
- the properties: --ts-config, else $TS_CONFIG_FILE, else DIR/config.properties; with
  enable_envvars_config=true, TS_MANAGEMENT_ADDRESS and TS_DISABLE_TOKEN_AUTHORIZATION
  override the file, and $$VAR$$ in a value is replaced by that variable;
- the management key: DIR/key_file.json (DIR defaults to ".", TorchServe's working
  directory). No inference key is needed.

Management keys expire (token_expiration_min, default 60 minutes) and TorchServe never
renews them by itself, so every probe would fail an hour after start. When TorchServe
refuses the key, this asks it for a new one with the file's API key
(POST /token?type=management; TorchServe rewrites key_file.json) and tries once more.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
from urllib3.util.retry import Retry

from scripts.client.rest import (
    KeyFile,
    TorchServeClient,
    TorchServeError,
    Unauthorized,
    ready_workers,
    renew_key,
)
from scripts.config.files import read_properties
from scripts.operate.drain import draining_marker

CONFIG_ENV = "TS_CONFIG_FILE"
DEFAULT_MANAGEMENT = "http://127.0.0.1:8081"
# Environment variables TorchServe 0.12 applies over the file when enable_envvars_config=true.
ENV_OVERRIDES = {"TS_MANAGEMENT_ADDRESS": "management_address",
                 "TS_DISABLE_TOKEN_AUTHORIZATION": "disable_token_authorization"}
ENV_REFERENCE = re.compile(r"\$\$([^$]+[^$])\$\$")  # TorchServe's $$VAR$$ (ConfigManager.resolveEnvVarVals)
NO_RETRIES = Retry(total=0, raise_on_status=False)  # a probe answers now; the prober repeats


class HealthError(RuntimeError):
    """The check could not be made; the message names the file or address and the fix."""


@dataclass(frozen=True)
class Target:
    management_url: str
    token_auth: bool


def read_target(ts_config: Path, environ: Mapping[str, str]) -> Target:
    """The management URL to call (0.0.0.0 becomes loopback) and whether token auth is on."""
    if not ts_config.is_file():
        raise HealthError(f"{ts_config}: no such properties file; fix: pass --ts-config PATH or "
                          f"set {CONFIG_ENV}")
    properties = read_properties(ts_config)
    for key, value in properties.items():
        missing = [name for name in ENV_REFERENCE.findall(value) if name not in environ]
        if missing:
            raise HealthError(f"{ts_config}: key '{key}' names ${missing[0]}$, which is not set; "
                              "fix: set it (TorchServe refuses to start without it too)")
        properties[key] = ENV_REFERENCE.sub(lambda match: environ[match.group(1)], value)
    if properties.get("enable_envvars_config", "false").lower() == "true":
        properties.update({key: environ[env] for env, key in ENV_OVERRIDES.items() if env in environ})
    address = properties.get("management_address", DEFAULT_MANAGEMENT)
    auth_off = properties.get("disable_token_authorization", "false").lower() == "true"
    return Target(loopback_url(address, ts_config), not auth_off)


def loopback_url(address: str, source: Path) -> str:
    """`http(s)://HOST:PORT` to call; a wildcard bind address is reached through loopback."""
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HealthError(f"{source}: key 'management_address': {address!r} is not http(s)://HOST:PORT; "
                          "fix: e.g. management_address=http://0.0.0.0:8081")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(parts.hostname, parts.hostname)
    host = f"[{host}]" if ":" in host else host
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{host}:{port}"


def read_keys(server_dir: Path) -> KeyFile:
    """The keys in DIR/key_file.json (TorchServe rewrites it on rotation); missing means not started."""
    path = server_dir / "key_file.json"
    if not path.is_file():
        raise HealthError(f"not ready: no {path.resolve()} (TorchServe writes it when it starts, in its "
                          "working directory); fix: pass --server-dir with TorchServe's working directory")
    try:
        return KeyFile.read(path)
    except ValueError as error:
        raise HealthError(f"{error}; fix: leave it to TorchServe") from None
    except PermissionError:
        raise HealthError(f"{path}: permission denied; fix: run the check as TorchServe's user") from None


def renew_management_key(target: Target, keys: KeyFile, timeout: float) -> None:
    """Ask TorchServe for a new management key with the API key; it rewrites key_file.json."""
    if not keys.api:
        raise HealthError("not ready: TorchServe refused the management key and key_file.json holds no "
                          "API key to renew it with")
    response = renew_key(target.management_url, keys.api, "management", timeout)
    if not response.ok:
        raise HealthError(f"not ready: TorchServe refused the management key, and renewing it gave "
                          f"{response.status_code}: {response.text.strip()[:200]}")


def model_states(client: TorchServeClient) -> dict[str, tuple[int, int]]:
    """{model: (READY workers, workers)} of each registered model's default version."""
    states = {}
    for entry in client.list_models():
        name = entry["modelName"]
        try:
            description = client.describe(name)
        except TorchServeError as error:
            if error.status != 404:  # a 404: unregistered since the list was read
                raise
            continue
        workers = sum(len(version.get("workers", [])) for version in description)
        states[name] = (ready_workers(description), workers)
    return states


def readiness(target: Target, keys: KeyFile, timeout: float) -> tuple[bool, str]:
    with TorchServeClient(management_url=target.management_url, keys=keys, timeout=timeout,
                          retries=NO_RETRIES) as client:
        states = model_states(client)
    if not states:
        return False, "not ready: no model is registered yet"
    waiting = [f"{name} has {ready} READY of {total} workers" for name, (ready, total) in states.items()
               if ready == 0]
    if waiting:
        return False, "not ready: " + "; ".join(waiting)
    return True, "ready: " + ", ".join(f"{name} ({ready} READY)" for name, (ready, _) in states.items())


def liveness(target: Target, timeout: float) -> tuple[bool, str]:
    """Any HTTP answer from the management API proves the frontend is up (no key needed)."""
    response = requests.get(f"{target.management_url}/models", timeout=timeout)
    return True, f"live: TorchServe answers at {target.management_url} (HTTP {response.status_code})"


def check(ts_config: Path, server_dir: Path, live: bool, timeout: float,
          environ: Mapping[str, str] = os.environ) -> tuple[bool, str]:
    """(healthy, the one line saying why)."""
    try:
        target = read_target(ts_config, environ)
        if live:
            return liveness(target, timeout)
        if draining_marker(server_dir).exists():
            return False, "not ready: draining (the server finishes what it accepted, then stops)"
        keys = read_keys(server_dir) if target.token_auth else KeyFile()
        try:
            return readiness(target, keys, timeout)
        except Unauthorized:
            renew_management_key(target, keys, timeout)
            return readiness(target, read_keys(server_dir), timeout)
    except HealthError as error:
        return False, str(error)
    except requests.RequestException as error:
        state = "not live" if live else "not ready"
        return False, f"{state}: TorchServe does not answer ({type(error).__name__}: {short(error)})"
    except TorchServeError as error:
        return False, f"not ready: {error}"


def short(error: Exception) -> str:
    """The innermost reason of a requests error (e.g. 'Connection refused'), not urllib3's whole chain."""
    text = str(error)
    found = re.findall(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return found[-1] if found else text[:200]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--server-dir", type=Path, default=Path("."),
                        help="TorchServe's working directory, which holds key_file.json (default: .)")
    parser.add_argument("--ts-config", type=Path, default=None,
                        help=f"TorchServe's properties (default: ${CONFIG_ENV}, else DIR/config.properties)")
    parser.add_argument("--live", action="store_true", help="only check that the frontend answers")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per HTTP call (default 5)")
    args = parser.parse_args(argv)
    ts_config = args.ts_config or Path(os.environ.get(CONFIG_ENV) or args.server_dir / "config.properties")
    healthy, line = check(ts_config, args.server_dir, args.live, args.timeout)
    print(line)
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
