"""The properties files we ship, as `LocalServer.start(extra=...)`.

A test that copied a file's values into a dict would prove the copy. This passes the
file's own values instead, and leaves to LocalServer only what a private server must
own: its free loopback ports, its model store and the absolute paths of the metrics
config and the log configuration (relative ones would resolve against the server's working directory).
"""

from __future__ import annotations

from pathlib import Path

from scripts.config.files import read_properties

PRODUCTION = Path("configs/production.properties")
LOCAL = Path("configs/local.properties")
# LocalServer writes these itself (scripts/serve/local.py, write_properties).
SERVER_OWNED = ("inference_address", "management_address", "metrics_address", "grpc_inference_port",
                "grpc_management_port", "initial_worker_port", "model_store", "load_models",
                "metrics_config", "vmargs")


def shipped_properties(path: Path) -> dict[str, str]:
    """Every key=value of `path` except those LocalServer owns."""
    return {key: value for key, value in read_properties(path).items() if key not in SERVER_OWNED}
