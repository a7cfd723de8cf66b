"""`tsctl gate`'s own parts: where its inference token comes from, and its verdict for people.

`tsctl gate` runs the golden-set gate against any TorchServe inference URL (`gate_at`,
in gate.py beside the rules it applies). A rollout on one machine registers, gates
and switches through one server's management API (rollout.py). In a cluster a new
version arrives as a new image behind a canary Service instead, so the gate has to
stand on its own: it needs only the inference API, a model name, an optional
version and a token.

    tsctl gate tabular --url http://tabular-canary:8080 --token-file /var/run/secrets/ts/inference

The candidate is /predictions/MODEL[/VERSION] at --url. A policy with `compare:`
also asks the current version, at --baseline-url (the stable Service), or else
the default version at --url; comparing an endpoint with itself is refused.
Tokens: --token-file (the key alone, as a mounted Secret, or TorchServe's
key_file.json), else TORCHSERVE_INFERENCE_KEY. A local key_file.json is used only
when --url is not given, so a local key never travels to another host.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scripts.client.rest import INFERENCE_KEY_ENV, KeyFile

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


def describe(result: dict[str, Any]) -> str:
    """The verdict for people: one line, then the reasons and the figures."""
    what = f"{result['model']} {result['version'] or '(default version)'} at {result['url']}"
    lines = [f"{what}: {'passed' if result['passed'] else 'refused'} the golden-set gate"]
    lines += [f"  {reason}" for reason in result["reasons"]]
    lines.append("  " + " ".join(f"{key}={value}" for key, value in result["figures"].items()))
    return "\n".join(lines)
