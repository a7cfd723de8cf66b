"""`tsctl gate`: the golden-set gate against any TorchServe inference URL.

A rollout on one machine registers, gates and switches through one server's
management API (rollout.py). In a cluster a new version arrives as a new image
behind a canary Service instead, so the gate has to stand on its own: it needs
only the inference API, a model name, an optional version and a token.

    tsctl gate tabular --url http://tabular-canary:8080 --token-file /var/run/secrets/ts/inference

The candidate is /predictions/MODEL[/VERSION] at --url. A policy with `compare:`
also asks the current version, at --baseline-url (the stable Service), or else
the default version at --url; comparing an endpoint with itself is refused.
Tokens: --token-file (the key alone, as a mounted Secret, or TorchServe's
key_file.json), else TORCHSERVE_INFERENCE_KEY. A local key_file.json is used only
when --url is not given, so a local key never travels to another host.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from scripts.client.rest import INFERENCE_KEY_ENV, KeyFile, NotFound, TorchServeClient
from scripts.operate.gate import Answer, Verdict, ask, judge
from scripts.operate.golden import read_golden
from scripts.operate.policy import RolloutPolicy

TOKEN_FIX = (f"pass --token-file with the inference key (a file holding the key alone, e.g. a mounted "
             f"Secret, or the key_file.json TorchServe wrote) or set {INFERENCE_KEY_ENV}")


def read_token(path: Path) -> KeyFile:
    """The inference key in `path`: TorchServe's key_file.json (re-read if the server rotates
    keys), or a file holding the key alone (a mounted Secret)."""
    text = path.read_text().strip()
    if text.startswith("{"):
        return KeyFile.read(path)
    if not text or len(text.split()) != 1:
        raise ValueError(f"{path} holds no token: write the inference key alone on one line, or give "
                         "the key_file.json TorchServe wrote")
    return KeyFile(inference=text)


def inference_keys(token_file: Path | None, local_key_file: Path | None,
                   environ: dict[str, str] | None = None) -> KeyFile:
    """--token-file first, then the environment, then (local only) the server's key_file.json."""
    env = dict(os.environ) if environ is None else environ
    if token_file is not None:
        return read_token(token_file)
    if env.get(INFERENCE_KEY_ENV):
        return KeyFile(inference=env[INFERENCE_KEY_ENV])
    return KeyFile.resolve(local_key_file, env) if local_key_file is not None else KeyFile()


def gate_at(model: str, version: str | None, client: TorchServeClient, policy: RolloutPolicy,
            baseline: TorchServeClient | None = None) -> dict[str, Any]:
    """Send the golden set to the candidate (and the baseline, if the policy compares); the verdict.

    Raises Unauthorized or a connection error before any golden request when the
    server refuses the token or cannot be reached, and NotFound when it does not
    serve the model or version, so that those never read as a refused candidate.
    """
    golden = read_golden(policy.golden)
    client.ping()
    compared = None
    if policy.compare:
        other = baseline or client
        if other.inference_url == client.inference_url and version is None:
            raise ValueError(f"the policy compares {policy.compare!r} with the current version, but the "
                             "candidate is the default version at --url, so it would be compared with "
                             "itself: pass --baseline-url (the stable Service) or --version")
        compared = _served(ask(other, model, None, golden), model, None, other.inference_url)
    answers = _served(ask(client, model, version, golden), model, version, client.inference_url)
    verdict = judge(policy, golden, answers, compared)
    return verdict_document(model, version, client.inference_url, verdict)


def verdict_document(model: str, version: str | None, url: str, verdict: Verdict) -> dict[str, Any]:
    return {"model": model, "version": version, "url": url, **asdict(verdict)}


def describe(result: dict[str, Any]) -> str:
    """The verdict for people: one line, then the reasons and the figures."""
    what = f"{result['model']} {result['version'] or '(default version)'} at {result['url']}"
    lines = [f"{what}: {'passed' if result['passed'] else 'refused'} the golden-set gate"]
    lines += [f"  {reason}" for reason in result["reasons"]]
    lines.append("  " + " ".join(f"{key}={value}" for key, value in result["figures"].items()))
    return "\n".join(lines)


def _served(answers: list[Answer], model: str, version: str | None, url: str) -> list[Answer]:
    """The answers, unless every one was 404: then the model is not served there at all."""
    if answers and all(answer.status == 404 for answer in answers):
        message = json.dumps(answers[0].body) if answers[0].body is not None else "no body"
        raise NotFound(404, "Not Found", f"{url}/predictions/{model}" + (f"/{version}" if version else ""),
                       f"{model} {version or '(default)'} is not served there ({message})")
    return answers
