"""A real TorchServe (Java frontend, Python workers) on free loopback ports, for the session.

It serves the archives `make archive` put in model_store/ from its own working
directory (see scripts/serve/local.py) and is stopped afterwards even when
tests fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.serve.local import LocalServer

MODELS = ("tabular", "digits", "minilm")


Server = LocalServer  # stopped at once (SIGKILL to its group): see LocalServer.stop


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    store = Path("model_store").resolve()
    missing = [name for name in MODELS if not (store / f"{name}.mar").exists()]
    if missing:
        pytest.fail(f"no archives for {missing} in {store}: run `make archive` (or `make test`)")
    with Server.start(tmp_path_factory.mktemp("torchserve"), store, MODELS) as instance:
        yield instance
