"""A client for TorchServe's inference, management and metrics APIs, built on one requests.Session.

    with TorchServeClient(keys=KeyFile.resolve(Path("key_file.json"))) as client:
        client.register("tabular.mar")                 # synchronous: returns once workers are up
        client.predict("tabular", body, "application/json", version="2.0")
        client.set_default("tabular", "2.0")

- Every call has an explicit timeout (`timeout=` per call, else the client's).
- A non-2xx answer raises `TorchServeError` (a subclass per status that callers act
  on: a refused token, 403, 404, 405, 409, overload) carrying the status, the URL and the server's message.
- Retries with backoff only where repeating is harmless: connection failures
  (the request never reached the server) for every call; read failures and
  502/503/504 only for GET and PUT, which are idempotent here (describe, list,
  metrics, scale, set-default). Registering, unregistering and predicting are
  never re-sent once the server may have seen them, with one exception:
- Overload. TorchServe answers 503 "... has no worker to serve inference request ..."
  when it could not queue a prediction (the model's job queue, `jobQueueSize`, is full;
  or the model has no worker thread at all). No worker saw the request, so predict()
  re-sends it with exponential backoff and full jitter (`overload_backoff`, bounded by
  attempts and total time) and raises `Overloaded` when that runs out. Other 5xx from
  a prediction are never re-sent: the worker may have run it.
- An optional circuit breaker (`breaker=`, scripts/client/breaker.py) makes predict()
  fail fast with `CircuitOpen` after repeated failures. Off by default: see __init__.
- Token authorization: `KeyFile.resolve` takes the keys from the environment
  (TORCHSERVE_INFERENCE_KEY, TORCHSERVE_MANAGEMENT_KEY) or from the server's
  key_file.json; a 401 re-reads that file once, since TorchServe rotates keys
  (`token_expiration_min`, `/token?type=...`). TorchServe answers a bad token with
  400 "Token Authorization failed"; that raises `Unauthorized` too.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from scripts.client.backoff import Backoff
from scripts.client.breaker import CircuitBreaker
from scripts.client.prometheus import Sample, parse_samples

logger = logging.getLogger(__name__)
DEFAULT_INFERENCE, DEFAULT_MANAGEMENT, DEFAULT_METRICS = (  # TorchServe's own defaults
    "http://127.0.0.1:8080", "http://127.0.0.1:8081", "http://127.0.0.1:8082")
INFERENCE_KEY_ENV = "TORCHSERVE_INFERENCE_KEY"
MANAGEMENT_KEY_ENV = "TORCHSERVE_MANAGEMENT_KEY"
SAFE_RETRIES = Retry(
    total=4, connect=4, read=2, status=2, other=0, backoff_factor=0.25, status_forcelist=(502, 503, 504),
    allowed_methods=frozenset({"GET", "PUT"}), raise_on_status=False,
)
# The frontend's words when it refuses a prediction before any worker saw it (TorchServe 0.12,
# ApiUtils.getStreamingInferenceErrorResponseMessage): job queue full, or no worker thread.
OVERLOAD_TEXT = "has no worker to serve inference request"
# Five sends within 10 s; the pauses' ceilings are 0.1, 0.2, 0.4, 0.8 s: a client gives up within
# about 1.5 s plus its sends, and a crowd of refused clients spreads its re-sends over that time.
OVERLOAD_BACKOFF = Backoff(attempts=5, total_seconds=10.0, base_seconds=0.1, max_pause_seconds=2.0)


class TorchServeError(RuntimeError):
    """A non-2xx answer: `status`, `url` and the server's `message`."""

    def __init__(self, status: int, reason: str, url: str, message: str) -> None:
        super().__init__(f"{status} {reason} from {url}: {message}")
        self.status, self.reason, self.url, self.message = status, reason, url, message

    @classmethod
    def from_response(cls, response: requests.Response) -> TorchServeError:
        kind = (Unauthorized if is_auth_failure(response) else Overloaded if is_overload(response)
                else ERRORS_BY_STATUS.get(response.status_code, cls))
        return kind(response.status_code, response.reason or "", response.url, _server_message(response))


class Unauthorized(TorchServeError):
    """Token authorization is on and the key is missing, wrong or expired (TorchServe says 400)."""


class Forbidden(TorchServeError):
    """403: e.g. unregistering the default version while others exist."""


class NotFound(TorchServeError):
    """404: no such model or version."""


class ModelApiDisabled(TorchServeError):
    """405 on register/unregister: the server runs with enable_model_api=false."""


class Conflict(TorchServeError):
    """409: e.g. this version is registered already."""


class Overloaded(TorchServeError):
    """503 "has no worker to serve inference request": TorchServe did not queue the prediction.

    Its job queue (`jobQueueSize`) was full, or the model had no worker thread at all.
    No worker saw the request, so sending it again later is safe. predict() raises this
    once its backoff ran out; `attempts` says how many times it was sent.
    """

    attempts: int = 1

    @classmethod
    def after(cls, response: requests.Response, attempts: int) -> Overloaded:
        error = cls(response.status_code, response.reason or "", response.url, _server_message(response))
        error.attempts = attempts
        return error

    def __str__(self) -> str:
        sends = f"{self.attempts} sends" if self.attempts > 1 else "1 send"
        return (f"overloaded: {self.url} refused the request before any worker saw it ({sends}; "
                f"its job queue is full, or it has no worker), so retrying later is safe. "
                f"TorchServe said: {self.status} {self.message}")


ERRORS_BY_STATUS: dict[int, type[TorchServeError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 405: ModelApiDisabled, 409: Conflict,
}


def is_overload(response: requests.Response) -> bool:
    """TorchServe refused to queue the request (503 with the frontend's words): safe to re-send."""
    return response.status_code == 503 and OVERLOAD_TEXT in response.text


def is_auth_failure(response: requests.Response) -> bool:
    """TorchServe 0.12 refuses a missing or wrong token with 400 "Token Authorization failed"."""
    return response.status_code == 401 or (
        response.status_code == 400 and "Token Authorization failed" in response.text)


def _not_a_key_file(path: Path, error: Exception) -> ValueError:
    return ValueError(f"{path} is not TorchServe's key file ({error!r}); TorchServe rewrites it at start: "
                      "do not edit it")


@dataclass(frozen=True)
class KeyFile:
    """The tokens for the inference and management APIs, and the key file they came from.

    `api` is TorchServe's API key, which renews the other two (`POST /token?type=...`).
    """

    inference: str | None = None
    management: str | None = None
    source: Path | None = None
    api: str | None = None

    @classmethod
    def read(cls, path: Path, torn_wait_s: float = 1.0) -> KeyFile:
        """The keys in TorchServe's key_file.json; no keys when the file is absent (auth off).

        TorchServe rewrites the file in place each time a key is renewed, so a read can land
        between its truncation and its write: text that is not JSON is read again for up to
        `torn_wait_s` before it counts as damage. (Found by a soak with 6 s keys: a client
        re-reading its keys after a 400 got an empty file.)
        """
        deadline = time.monotonic() + torn_wait_s
        while True:
            if not path.exists():
                return cls(source=path)
            try:
                keys = json.loads(path.read_text())
                return cls(keys["inference"]["key"], keys["management"]["key"], path,
                           (keys.get("API") or {}).get("key"))
            except json.JSONDecodeError as error:
                if time.monotonic() > deadline:
                    raise _not_a_key_file(path, error) from None
                time.sleep(0.02)
            except (KeyError, TypeError) as error:
                raise _not_a_key_file(path, error) from None

    @classmethod
    def resolve(cls, path: Path, environ: Mapping[str, str] = os.environ) -> KeyFile:
        """Keys from the environment where set, else from `path` (what the CLI and scripts use)."""
        from_file = cls.read(path)
        return replace(from_file, inference=environ.get(INFERENCE_KEY_ENV) or from_file.inference,
                       management=environ.get(MANAGEMENT_KEY_ENV) or from_file.management)


class TorchServeClient:
    """One method per endpoint; use as a context manager to close the session.

    `overload_backoff`: how predict() re-sends an overload refusal (`NO_RETRY` from
    scripts.client.backoff: never). `breaker`: None (the default) or a CircuitBreaker
    that predict() consults. Off by default because its state is worth something only
    across many calls of a long-lived client (a service calling a model); tsctl and the
    scripts make a few calls and must see every server answer, not a breaker's verdict.
    """

    def __init__(
        self,
        inference_url: str = DEFAULT_INFERENCE,
        management_url: str = DEFAULT_MANAGEMENT,
        keys: KeyFile | None = None,
        timeout: float = 30.0,
        metrics_url: str = DEFAULT_METRICS,
        retries: Retry = SAFE_RETRIES,
        overload_backoff: Backoff = OVERLOAD_BACKOFF,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.metrics_url = metrics_url.rstrip("/")
        self.keys = keys or KeyFile()
        self.timeout = timeout
        self.overload_backoff = overload_backoff
        self.breaker = breaker
        self.session = requests.Session()
        adapter = HTTPAdapter(max_retries=retries, pool_maxsize=32)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    @classmethod
    def from_properties(cls, properties: Mapping[str, str], keys: KeyFile,
                        **options: Any) -> TorchServeClient:
        """A client for the server a TorchServe properties file describes (TorchServe's defaults where
        an address is unset); `options` as for the constructor."""
        return cls(properties.get("inference_address", DEFAULT_INFERENCE),
                   properties.get("management_address", DEFAULT_MANAGEMENT), keys,
                   metrics_url=properties.get("metrics_address", DEFAULT_METRICS), **options)

    def __enter__(self) -> TorchServeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.session.close()

    # ---- inference API -----------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        return self._inference("GET", "/ping").json()

    def predict(
        self, model: str, body: bytes | str, content_type: str, version: str | None = None,
        check: bool = True, timeout: float | None = None,
    ) -> requests.Response:
        """POST one request; with check=False a 4xx/5xx is returned rather than raised.

        An overload refusal is re-sent with `overload_backoff`; when that runs out, `Overloaded` is
        raised even with check=False: the answer says nothing about the model, so a caller scoring
        answers (the rollout gate) must not score it. With a breaker, `CircuitOpen` while it is open.
        """
        path = _model_path("/predictions", model, version)
        started, retries = time.monotonic(), self.overload_backoff.pauses()
        response = self._predict_once(path, body, content_type, timeout)
        attempts = 1
        while is_overload(response):
            pause = next(retries, None)
            if pause is None:
                raise Overloaded.after(response, attempts)
            logger.info("%s overloaded (503, not queued): re-sending after %.2f s, attempt %d of %d "
                        "(%.1f s so far)", response.url, pause, attempts + 1, self.overload_backoff.attempts,
                        time.monotonic() - started)
            response = self._predict_once(path, body, content_type, timeout)
            attempts += 1
        if check and not response.ok:
            raise TorchServeError.from_response(response)
        return response

    # ---- management API ----------------------------------------------------------------
    def list_models(self) -> list[dict[str, Any]]:
        return list(self._management("GET", "/models", params={"limit": 1000}).json().get("models", []))

    def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        """One entry per version (`version="all"` for every version; None for the default)."""
        return list(self._management("GET", _model_path("/models", model, version)).json())

    def register(self, url: str, *, model_name: str | None = None, initial_workers: int | None = None,
                 synchronous: bool = True, timeout: float = 600.0) -> str:
        """Register an archive of the model store; batch size, delay and workers come from the
        archive's model-config. Synchronous: returns once its workers have started."""
        params = {"url": url, "model_name": model_name, "initial_workers": initial_workers,
                  "synchronous": str(synchronous).lower()}
        return _message(self._management("POST", "/models", params=_present(params), timeout=timeout))

    def scale(self, model: str, version: str | None = None, *, min_workers: int,
              max_workers: int | None = None, synchronous: bool = True, timeout: float = 600.0) -> str:
        params = {"min_worker": min_workers, "max_worker": max_workers or min_workers,
                  "synchronous": str(synchronous).lower()}
        return _message(self._management("PUT", _model_path("/models", model, version),
                                         params=params, timeout=timeout))

    def set_default(self, model: str, version: str) -> str:
        return _message(self._management("PUT", f"/models/{model}/{version}/set-default"))

    def unregister(self, model: str, version: str | None = None, timeout: float = 120.0) -> str:
        return _message(self._management("DELETE", _model_path("/models", model, version),
                                         timeout=timeout))

    # ---- metrics API -------------------------------------------------------------------
    def metrics(self, names: tuple[str, ...] = ()) -> list[Sample]:
        """Every sample the server exports now, or only the metric families in `names`."""
        params = [("name[]", name) for name in names]
        text = self._request("GET", self.metrics_url + "/metrics", None, params=params).text
        return parse_samples(text)

    # ---- the one place requests are sent ---------------------------------------------------
    def _predict_once(self, path: str, body: bytes | str, content_type: str,
                      timeout: float | None) -> requests.Response:
        """One send, through the breaker when there is one: 5xx and connection failures count
        against the server; any other answer (a 4xx is the client's mistake) counts for it."""
        if self.breaker is None:
            return self._inference("POST", path, data=body, headers={"Content-Type": content_type},
                                   check=False, timeout=timeout)
        self.breaker.before_call()
        try:
            response = self._inference("POST", path, data=body, headers={"Content-Type": content_type},
                                       check=False, timeout=timeout)
        except BaseException:
            self.breaker.record_failure()
            raise
        if response.status_code >= 500:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()
        return response

    def _inference(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self._request(method, self.inference_url + path, "inference", **kwargs)

    def _management(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self._request(method, self.management_url + path, "management", **kwargs)

    def _request(self, method: str, url: str, api: str | None, check: bool = True,
                 timeout: float | None = None, **kwargs: Any) -> requests.Response:
        response = self._send(method, url, api, timeout, kwargs)
        if api and is_auth_failure(response) and self._reload_keys():
            response = self._send(method, url, api, timeout, kwargs)  # the key was rotated
        if check and not response.ok:
            raise TorchServeError.from_response(response)
        return response

    def _send(self, method: str, url: str, api: str | None, timeout: float | None,
              kwargs: dict[str, Any]) -> requests.Response:
        headers = dict(kwargs.get("headers", {}))
        token = getattr(self.keys, api) if api else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.session.request(method, url, **{**kwargs, "headers": headers},
                                    timeout=timeout or self.timeout)

    def _reload_keys(self) -> bool:
        """Re-read the key file after a 401; True when it now holds different keys."""
        if self.keys.source is None:
            return False
        fresh = KeyFile.resolve(self.keys.source)
        changed = fresh != self.keys
        self.keys = fresh
        return changed


def _server_message(response: requests.Response) -> str:
    """The `message` of TorchServe's JSON error body, else the body as text."""
    try:
        answer = response.json()
        message = answer.get("message", response.text) if isinstance(answer, dict) else response.text
    except ValueError:
        message = response.text
    return str(message).strip()


def _model_path(prefix: str, model: str, version: str | None) -> str:
    return f"{prefix}/{model}" + (f"/{version}" if version else "")


def _present(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}


def _message(response: requests.Response) -> str:
    """The `status` text TorchServe's management API answers with."""
    try:
        answer = response.json()
    except ValueError:
        return response.text.strip()
    return str(answer.get("status", answer)) if isinstance(answer, dict) else str(answer)


def renew_key(management_url: str, api_key: str, kind: str, timeout: float) -> requests.Response:
    """Ask TorchServe for a new `kind` ("inference" or "management") key with its API key, which
    never expires (`POST /token?type=...`); TorchServe then rewrites key_file.json."""
    return requests.post(f"{management_url.rstrip('/')}/token", params={"type": kind},
                         headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)


def ready_workers(description: list[dict[str, Any]]) -> int:
    """How many workers of the described model versions are READY."""
    return sum(
        1 for version in description for worker in version.get("workers", [])
        if worker.get("status") == "READY"
    )
