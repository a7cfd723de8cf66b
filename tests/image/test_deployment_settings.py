"""The manifest-to-podman translation the image test runs under (no container needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.image.deployment import quantity_bytes, read


def manifest(tmp_path: Path, pod: dict[str, Any], container: dict[str, Any]) -> Path:
    deployment = {"kind": "Deployment", "spec": {"template": {"spec": {
        **pod, "containers": [{"name": "sidecar"}, {"name": "torchserve", **container}]}}}}
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump_all([{"kind": "Service"}, deployment]))
    return path


def test_the_containers_context_wins_and_every_empty_dir_becomes_a_tmpfs(tmp_path: Path) -> None:
    pod = {"securityContext": {"runAsUser": 1, "runAsGroup": 2, "readOnlyRootFilesystem": False},
           "volumes": [{"name": "a", "emptyDir": {"sizeLimit": "512Mi"}}, {"name": "b", "emptyDir": {}}]}
    container = {"securityContext": {"runAsUser": 3, "readOnlyRootFilesystem": True,
                                     "allowPrivilegeEscalation": False,
                                     "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}},
                 "volumeMounts": [{"name": "a", "mountPath": "/a"}, {"name": "b", "mountPath": "/b"}],
                 "env": [{"name": "PORT", "value": 8080}]}
    settings = read(manifest(tmp_path, pod, container))
    assert settings.flags == ["--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL",
                              "--cap-add=NET_BIND_SERVICE", "--security-opt=no-new-privileges", "--user=3:2",
                              f"--tmpfs=/a:rw,exec,U,size={512 * 2**20}", "--tmpfs=/b:rw,exec,U"]
    assert settings.tmpfs == {"/a": 512 * 2**20, "/b": None} and settings.user == "3:2"
    assert settings.environment == {"PORT": "8080"}


def test_what_podman_here_cannot_reproduce_is_refused(tmp_path: Path) -> None:
    config_map = {"volumes": [{"name": "c", "configMap": {"name": "x"}}]}
    with pytest.raises(ValueError, match="not an emptyDir"):
        read(manifest(tmp_path, config_map, {"volumeMounts": [{"name": "c", "mountPath": "/c"}]}))
    with pytest.raises(ValueError, match="seccompProfile Unconfined"):
        read(manifest(tmp_path, {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}, {}))


@pytest.mark.parametrize(("quantity", "size"), [("1Gi", 2**30), ("2688Mi", 2688 * 2**20), ("1G", 10**9),
                                                ("64k", 64_000), ("1000", 1000)])
def test_quantities(quantity: str, size: int) -> None:
    assert quantity_bytes(quantity) == size


def test_a_quantity_it_cannot_read_is_refused() -> None:
    with pytest.raises(ValueError):
        quantity_bytes("1.5Gi")
