"""A small client for TorchServe's inference and management APIs, built on one requests.Session.

Every call has an explicit timeout; a non-2xx answer raises `TorchServeError`
with the status, the URL and the server's message. With token authorization on,
pass the keys from the server's key_file.json (`KeyFile.read`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests


class TorchServeError(RuntimeError):
    """A non-2xx answer: carries the status code and the server's message."""

    def __init__(self, response: requests.Response) -> None:
        self.status = response.status_code
        try:
            message = response.json().get("message", response.text)
        except (ValueError, AttributeError):
            message = response.text
        super().__init__(f"{response.status_code} {response.reason} from {response.url}: {message}")
        self.message = message


@dataclass(frozen=True)
class KeyFile:
    """The tokens TorchServe writes to key_file.json when token authorization is on."""

    inference: str | None = None
    management: str | None = None

    @classmethod
    def read(cls, path: Path) -> KeyFile:
        if not path.exists():
            return cls()
        keys = json.loads(path.read_text())
        return cls(keys["inference"]["key"], keys["management"]["key"])


class TorchServeClient:
    """One method per endpoint; use as a context manager to close the session."""

    def __init__(
        self,
        inference_url: str = "http://127.0.0.1:8080",
        management_url: str = "http://127.0.0.1:8081",
        keys: KeyFile | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.keys = keys or KeyFile()
        self.timeout = timeout
        self.session = requests.Session()

    def __enter__(self) -> TorchServeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.session.close()

    # ---- inference API -----------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        return self._request("GET", self.inference_url, "/ping", self.keys.inference).json()

    def predict(
        self, model: str, body: bytes | str, content_type: str, version: str | None = None,
        check: bool = True,
    ) -> requests.Response:
        """POST one request; with check=False a 4xx/5xx is returned rather than raised."""
        path = f"/predictions/{model}" + (f"/{version}" if version else "")
        headers = {"Content-Type": content_type}
        return self._request("POST", self.inference_url, path, self.keys.inference,
                             data=body, headers=headers, check=check)

    # ---- management API ------------------------------------------------------------
    def list_models(self) -> list[dict[str, Any]]:
        answer = self._request("GET", self.management_url, "/models?limit=1000", self.keys.management)
        return list(answer.json().get("models", []))

    def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        path = f"/models/{model}" + (f"/{version}" if version else "")
        return list(self._request("GET", self.management_url, path, self.keys.management).json())

    # ---- the one place requests are sent ---------------------------------------------
    def _request(
        self, method: str, base: str, path: str, token: str | None, check: bool = True,
        **kwargs: Any,
    ) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = self.session.request(
            method, base + path, headers=headers, timeout=kwargs.pop("timeout", self.timeout), **kwargs
        )
        if check and not response.ok:
            raise TorchServeError(response)
        return response


def ready_workers(description: list[dict[str, Any]]) -> int:
    """How many workers of the described model versions are READY."""
    return sum(
        1 for version in description for worker in version.get("workers", [])
        if worker.get("status") == "READY"
    )
