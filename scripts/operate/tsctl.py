"""tsctl: operate a running TorchServe: status, versions, register, scale, rollout, rollback, unregister.

    tsctl status                        models, versions, default, workers and their states
    tsctl versions tabular              one model's versions, oldest first, and what rollback picks
    tsctl rollout tabular 2.0           register, wait READY, gate, set default, prune (operate/rollout.py)
    tsctl rollback tabular [--to 1.0]   the previous kept version becomes the default again
    tsctl register model_store/tabular.mar      check an archive, register it as a non-default version
    tsctl scale tabular --version 1.0 --workers 2
    tsctl unregister tabular 1.0
    tsctl gate tabular --version 2.0 --url http://host:8080 [--token-file F]   the golden set only
    tsctl recycle tabular [--if-over]   fresh workers, no request lost (operate/handoff.py)
    tsctl watch [MODEL ...] [--interval 60]   recycle --if-over in a loop (operate/recycle.py)
    tsctl drain [--announce S] [--drain-timeout S] [--undo]   readiness false, wait until idle

`gate` needs only an inference API (a canary Service, another machine): it exits 0
when the version passes, 1 when the gate refuses it (operate/gate.py, operate/canary.py).

Addresses and the model store come from the TorchServe properties file (--ts-config,
default ./config.properties). TorchServe resolves a relative model_store against, and
writes key_file.json into, the directory it was started from: --server-dir (default:
here). Keys come from TORCHSERVE_MANAGEMENT_KEY and TORCHSERVE_INFERENCE_KEY, else
from that key_file.json (or --key-file).
Output is for people; --json prints one JSON document for scripts. Progress goes
to stderr. Exit codes: 0 done, 1 refused (gate, nothing to roll back to, drain not idle), 2 usage
or config, 3 TorchServe error or unreachable, 4 unauthorized, 5 model API off.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

from scripts.client.rest import KeyFile, ModelApiDisabled, TorchServeClient, TorchServeError, Unauthorized
from scripts.config.files import ConfigError, read_properties
from scripts.config.model import load_spec
from scripts.config.policies import RolloutPolicy
from scripts.operate import recycle
from scripts.operate.canary import TOKEN_FIX, describe, inference_keys
from scripts.operate.drain import draining_marker, hold
from scripts.operate.engine_status import engines_by_worker, with_engines
from scripts.operate.exits import Exit, RolloutFailed
from scripts.operate.gate import gate_at
from scripts.operate.registry import register_archive, registered
from scripts.operate.rollout import rollback, rollback_target, rollout
from scripts.operate.rollout_log import RolloutLog
from scripts.operate.views import show_status, show_versions

logger = logging.getLogger(__name__)

UNAUTHORIZED_FIX = ("token authorization is on and the key was missing or wrong: pass --key-file with the "
                    "key_file.json TorchServe wrote in the directory it was started from, or set "
                    "TORCHSERVE_MANAGEMENT_KEY and TORCHSERVE_INFERENCE_KEY")
MODEL_API_FIX = ("this TorchServe runs with enable_model_api=false, so it refuses to register or "
                 "unregister. configs/production.properties and configs/local.properties turn it on "
                 "(enable_model_api=true, behind the management key, with allowed_urls locked to the model "
                 "store): start the server with one of them, or set both lines in its properties file and "
                 "restart once. rollback and scale work without it")


def connect(args: argparse.Namespace) -> tuple[TorchServeClient, Path]:
    """A client for the server the properties file describes, and its model store."""
    if not args.ts_config.is_file():
        raise FileNotFoundError(f"no TorchServe properties file at {args.ts_config}: pass --ts-config "
                                "with the file TorchServe was started with")
    properties = read_properties(args.ts_config)
    store = args.server_dir / properties.get("model_store", "model_store")
    if not store.is_dir():
        raise FileNotFoundError(f"no model store at {store}: pass --server-dir, the directory TorchServe "
                                "was started from")
    client = TorchServeClient(
        properties.get("inference_address", "http://127.0.0.1:8080"),
        properties.get("management_address", "http://127.0.0.1:8081"),
        KeyFile.resolve(args.key_file or args.server_dir / "key_file.json"), timeout=args.timeout,
        metrics_url=properties.get("metrics_address", "http://127.0.0.1:8082"),
    )
    return client, store.resolve()


def store_file(archive: Path, store: Path) -> str:
    """The name TorchServe registers `archive` by: it takes only a file name, looked up in its store."""
    if archive.parent != Path(".") and archive.resolve().parent != store:
        raise ValueError(f"{archive} is not in the model store {store}: TorchServe registers only files "
                         "of its store; copy it there first")
    return archive.name


def gate_url(args: argparse.Namespace) -> str:
    """--url, else the inference address of the local properties file."""
    if args.url:
        return str(args.url)
    if not args.ts_config.is_file():
        raise FileNotFoundError(f"no --url and no TorchServe properties file at {args.ts_config}: pass "
                                "--url with the inference API, e.g. http://tabular-canary:8080")
    return read_properties(args.ts_config).get("inference_address", "http://127.0.0.1:8080")


def rollout_policy(path: Path) -> RolloutPolicy:
    """The rollout: section of a model's YAML, which `rollout` and `gate` cannot do without."""
    policy = load_spec(path).rollout
    if policy is None:
        raise ConfigError(path, "rollout", "missing: a rollout needs a golden set and thresholds",
                          "add a rollout: section (see scripts/config/policies.py)")
    return policy


def run_gate(args: argparse.Namespace) -> dict[str, Any]:
    """The golden set against --url; needs no management API and no model store."""
    local_keys = None if args.url else args.key_file or args.server_dir / "key_file.json"
    keys = inference_keys(args.token_file, local_keys)
    policy = rollout_policy(args.policy or Path(f"configs/models/{args.model}.yaml"))
    with ExitStack() as stack:
        client = stack.enter_context(TorchServeClient(gate_url(args), keys=keys, timeout=args.timeout))
        baseline = stack.enter_context(TorchServeClient(args.baseline_url, keys=keys, timeout=args.timeout)
                                       ) if args.baseline_url else None
        return gate_at(args.model, args.version, client, policy, baseline)


def run_recycle(args: argparse.Namespace) -> dict[str, Any]:
    client, store = connect(args)
    with client:
        return recycle.run(client, store, args)


def run(args: argparse.Namespace) -> Any:
    if args.command == "gate":
        return run_gate(args)
    client, store = connect(args)
    log = RolloutLog(args.log, getattr(args, "model", ""))
    with client:
        if args.command == "status":
            states = {model["modelName"]: registered(client, model["modelName"]).__dict__
                      for model in client.list_models() if args.model in (None, model["modelName"])}
            return with_engines(states, engines_by_worker(client.metrics_url))
        if args.command == "versions":
            now = registered(client, args.model)
            return {**now.__dict__, "rollback_to": rollback_target(now, log)}
        if args.command == "register":
            return register_archive(client, store, store_file(Path(args.archive), store))
        if args.command == "scale":
            return {"message": client.scale(args.model, args.version, min_workers=args.workers,
                                            max_workers=args.max_workers)}
        if args.command == "unregister":
            return {"message": client.unregister(args.model, args.version)}
        if args.command == "drain":
            if args.undo:
                draining_marker(args.server_dir).unlink(missing_ok=True)
                return {"idle": None, "message": "readiness follows the models again (drain undone)"}
            report = hold(client, args.server_dir, args.announce, timeout=args.drain_timeout)
            return {"idle": report.idle, "queued": report.left.queued, "in_worker": report.left.in_worker,
                    "waited_s": round(report.waited_s, 1), "marker": str(draining_marker(args.server_dir))}
        if args.command == "rollback":
            return rollback(client, store, args.model, log, to=args.to)
        policy = rollout_policy(args.config or Path(f"configs/models/{args.model}.yaml"))
        return rollout(client, store, args.model, args.version, policy, log)


def failure(error: Exception, args: argparse.Namespace) -> tuple[Exit, str]:
    """The exit code and the one message a failed command prints."""
    if isinstance(error, RolloutFailed):
        return error.code, str(error)
    if isinstance(error, Unauthorized) and args.command == "gate":
        return Exit.UNAUTHORIZED, f"{error}\n  fix: {TOKEN_FIX}"
    if isinstance(error, requests.ConnectionError) and args.command == "gate":
        url = error.request.url if error.request else ""
        return Exit.SERVER, (f"cannot reach TorchServe's inference API ({url}): is --url right, and does "
                             "the Service have ready endpoints?")
    if isinstance(error, Unauthorized):
        tried = args.key_file or args.server_dir / "key_file.json"
        return Exit.UNAUTHORIZED, (f"{error}\n  keys tried: {tried} and the environment\n"
                                   f"  fix: {UNAUTHORIZED_FIX}")
    if isinstance(error, ModelApiDisabled):
        return Exit.MODEL_API_OFF, f"{error}\n  fix: {MODEL_API_FIX}"
    if isinstance(error, TorchServeError):
        return Exit.SERVER, str(error)
    if isinstance(error, requests.ConnectionError):
        return Exit.SERVER, (f"cannot reach TorchServe ({error.request.url if error.request else ''}): is it "
                             f"running, and does {args.ts_config} give its addresses?")
    if isinstance(error, requests.RequestException):
        return Exit.SERVER, f"TorchServe did not answer in time or broke the connection: {error}"
    return Exit.USAGE, str(error)


def show(args: argparse.Namespace, result: Any) -> None:
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    elif args.command == "status":
        show_status(result)
    elif args.command == "versions":
        show_versions(args.model, result)
    elif args.command == "gate":
        print(describe(result))
    elif args.command in ("rollout", "rollback"):
        print(f"{args.model}: {result['version']} is the default (was {result['previous']}); "
              f"steps logged in {args.log}")
    elif args.command == "register":
        print("\n  ".join([result["message"], *result["store"]]))
    elif args.command == "drain" and result["idle"] is not None:
        print(f"drained in {result['waited_s']} s: nothing queued or in a worker; readiness stays false "
              f"({result['marker']}) until the server stops or `tsctl drain --undo`" if result["idle"] else
              f"not idle after {result['waited_s']} s: {result['queued']} queued, {result['in_worker']} in "
              "workers; readiness stays false")
    else:
        print(result["message"])


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tsctl", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--ts-config", type=Path, default=Path("config.properties"))
    top.add_argument("--server-dir", type=Path, default=Path("."),
                     help="the directory TorchServe was started from (default: here)")
    top.add_argument("--key-file", type=Path, help="default: key_file.json in --server-dir")
    top.add_argument("--json", action="store_true", help="one JSON document on stdout")
    top.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP call (not registration)")
    top.add_argument("--log", type=Path, default=Path("logs/rollout.jsonl"), help="rollout log (JSON lines)")
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("status").add_argument("model", nargs="?")
    commands.add_parser("versions").add_argument("model")
    commands.add_parser("register").add_argument("archive", help="a .mar in the model store")
    scale = commands.add_parser("scale")
    scale.add_argument("model")
    scale.add_argument("--version")
    scale.add_argument("--workers", type=int, required=True)
    scale.add_argument("--max-workers", type=int)
    go = commands.add_parser("rollout")
    go.add_argument("model")
    go.add_argument("version")
    go.add_argument("--config", type=Path, help="default: configs/models/MODEL.yaml (golden set, thresholds)")
    back = commands.add_parser("rollback")
    back.add_argument("model")
    back.add_argument("--to", help="a registered version (default: the newest older than the default)")
    gone = commands.add_parser("unregister")
    gone.add_argument("model")
    gone.add_argument("version")
    add_gate(commands.add_parser("gate", help="the golden-set gate against any inference URL"))
    recycle.add_commands(commands)
    drain = commands.add_parser("drain", help="readiness false, then wait until nothing is queued or in a "
                                "worker; the server stays up (make stop drains and stops)")
    drain.add_argument("--announce", type=float, default=0.0,
                       help="seconds to wait for load balancers to see readiness false (default 0)")
    drain.add_argument("--drain-timeout", type=float, default=60.0,
                       help="give up after this long (default 60)")
    drain.add_argument("--undo", action="store_true", help="make the server ready again")
    return top


def add_gate(gate: argparse.ArgumentParser) -> None:
    gate.add_argument("model")
    gate.add_argument("--version", help="default: the default version at --url")
    gate.add_argument("--url", help="the inference API, e.g. http://tabular-canary:8080 (default: "
                      "inference_address of --ts-config, with its key_file.json)")
    gate.add_argument("--token-file", type=Path, help="the inference key alone (a mounted Secret) or a "
                      "key_file.json; default: $TORCHSERVE_INFERENCE_KEY")
    gate.add_argument("--policy", type=Path,
                      help="default: configs/models/MODEL.yaml (golden set, thresholds)")
    gate.add_argument("--baseline-url", help="where the current version answers, for a policy with "
                      "compare: (default: the default version at --url)")
    gate.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="as tsctl --json")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        result = run_recycle(args) if args.command in recycle.COMMANDS else run(args)
        show(args, result)
    except (RolloutFailed, TorchServeError, requests.RequestException, ConfigError, ValueError,
            OSError) as error:
        code, message = failure(error, args)
        if args.json:
            print(json.dumps({"error": message, "exit_code": int(code)}))
        logger.error("error: %s", message)
        return int(code)
    refused = (args.command == "gate" and not result["passed"]) or (
        args.command == "drain" and result["idle"] is False)
    return int(Exit.REFUSED if refused else Exit.OK)


if __name__ == "__main__":
    raise SystemExit(main())
