"""The model API under the properties files we ship: only archives of the model store can be registered.

Each server runs with the file's own values (tests/e2e/shipped.py): the model API
on, token authorization as the file says, its allowed_urls. A loopback HTTP server
stands in for a remote host: it hands an archive to whoever asks and records every
request, so "nothing was fetched" is observed, not assumed. A last test runs without
the lock and sees TorchServe fetch from that host and register a directory outside
the store: what the lock is for.
"""

from __future__ import annotations

import http.server
import shutil
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from scripts.client.rest import TorchServeClient, TorchServeError
from scripts.config.files import read_properties
from scripts.serve.local import LocalServer
from tests.e2e.shipped import LOCAL, PRODUCTION, shipped_properties

pytestmark = pytest.mark.e2e
ARCHIVE = Path("model_store/digits.mar")  # small, and not registered at start: a fair candidate
NO_MATCH = "does not match any allowed URL(s)"  # TorchServe: a URL allowed_urls does not match
NOT_A_URL = "Failed to download archive from"  # TorchServe: a matched name that has no URL scheme


@dataclass
class Origin:
    """A stand-in for a remote host that serves ARCHIVE on any path and records what was asked."""

    url: str
    asked: list[str] = field(default_factory=list)


@pytest.fixture()
def origin() -> Iterator[Origin]:
    body = ARCHIVE.read_bytes()
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Origin(f"http://127.0.0.1:{server.server_address[1]}", asked)
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """A private model store holding tabular (served from the start) and digits (a candidate)."""
    store = tmp_path / "store"
    store.mkdir()
    for name in ("tabular.mar", "digits.mar"):
        shutil.copyfile(Path("model_store") / name, store / name)
    return store


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """Good archives outside the store: a .mar file and the same archive unpacked in a directory."""
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copyfile(ARCHIVE, outside / "elsewhere.mar")
    with zipfile.ZipFile(ARCHIVE) as archive:
        archive.extractall(outside / "unpacked")
    return outside


def refusal(client: TorchServeClient, url: str, name: str) -> tuple[int, str]:
    """TorchServe's status and message for registering `url`; fails the test if it registered."""
    with pytest.raises(TorchServeError) as refused:
        client.register(url, model_name=name, timeout=120)
    return refused.value.status, refused.value.message


def test_the_shipped_files_turn_the_model_api_on_and_keep_management_on_loopback() -> None:
    for path in (PRODUCTION, LOCAL):
        properties = read_properties(path)
        assert properties["enable_model_api"] == "true", path
        assert urlsplit(properties["management_address"]).hostname == "127.0.0.1", path
        assert properties["grpc_management_address"] == "127.0.0.1", path
        assert properties["allowed_urls"] == read_properties(PRODUCTION)["allowed_urls"], path
    assert read_properties(PRODUCTION)["disable_token_authorization"] == "false"


@pytest.mark.parametrize("properties_file", [PRODUCTION, LOCAL], ids=["production", "local"])
def test_only_archives_of_the_store_can_be_registered(properties_file: Path, tmp_path: Path, store: Path,
                                                       outside: Path, origin: Origin) -> None:
    port = urlsplit(origin.url).port
    expected = {  # url -> TorchServe's status and a part of its message
        f"{origin.url}/remote.mar": (404, NO_MATCH),
        f"https://127.0.0.1:{port}/remote.mar": (404, NO_MATCH),
        f"HTTP://127.0.0.1:{port}/remote.mar": (404, NO_MATCH),
        "file:///etc/passwd": (404, NO_MATCH),
        f"file://{outside}/elsewhere.mar": (404, NO_MATCH),
        f"file://{store}/digits.mar": (404, NO_MATCH),
        str(outside / "elsewhere.mar"): (400, NOT_A_URL),
        str(outside / "unpacked"): (400, NOT_A_URL),
        "unpacked": (400, NOT_A_URL),  # a directory in the server's working directory
        "/etc/passwd": (400, NOT_A_URL),
        f"{store}/digits.mar": (500, "Model file already exists digits.mar"),  # a path, not a name
        "../store/digits.mar": (404, "Relative path is not allowed"),
    }
    stored = sorted(path.name for path in store.iterdir())
    with LocalServer.start(tmp_path / "server", store, ["tabular"],
                           extra=shipped_properties(properties_file)) as server:
        shutil.copytree(outside / "unpacked", server.workdir / "unpacked")
        with server.client() as client:
            answers = {url: refusal(client, url, f"probe{n}") for n, url in enumerate(expected)}
            for url, (status, message) in expected.items():
                assert answers[url][0] == status and message in answers[url][1], (url, answers[url])
            assert origin.asked == []  # nothing was fetched
            assert sorted(path.name for path in store.iterdir()) == stored  # nothing was copied in
            assert [model["modelName"] for model in client.list_models()] == ["tabular"]

            assert "registered" in client.register("digits.mar", timeout=300)  # a file of the store
            workers = client.describe("digits")[0]["workers"]
            assert workers and all(worker["status"] == "READY" for worker in workers)


def test_without_the_lock_torchserve_fetches_urls_and_registers_directories_outside_the_store(
        tmp_path: Path, store: Path, outside: Path, origin: Origin) -> None:
    """TorchServe's default allowed_urls (file://.*|http(s)?://.*), everything else as shipped."""
    unlocked = {key: value for key, value in shipped_properties(LOCAL).items() if key != "allowed_urls"}
    with LocalServer.start(tmp_path / "server", store, ["tabular"], extra=unlocked) as server, \
            server.client() as client:
        client.register(f"{origin.url}/remote.mar", model_name="fetched", timeout=300)
        client.register(str(outside / "unpacked"), model_name="outsider", timeout=300)
        assert origin.asked == ["/remote.mar"] and (store / "remote.mar").is_file()
        assert {model["modelName"] for model in client.list_models()} == {"tabular", "fetched", "outsider"}
