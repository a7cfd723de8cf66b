"""deploy/kubernetes/deployment.yaml's container settings, as `podman run` flags.

The image test runs its container under these, read from the manifest, so that it follows the
manifest when the manifest changes:
- the container's securityContext over the pod's: readOnlyRootFilesystem -> `--read-only`, and
  without the tmpfs podman would add at /run, /tmp and /var/tmp (Kubernetes adds none);
  capabilities -> `--cap-drop`/`--cap-add`; allowPrivilegeEscalation false -> no-new-privileges;
  runAsUser/runAsGroup -> `--user`; a seccomp profile other than RuntimeDefault (podman's default)
  is refused rather than silently dropped;
- every emptyDir the container mounts -> a tmpfs of the emptyDir's sizeLimit, executable as an
  emptyDir is, and the container user's (`U`): an emptyDir is writable by the pod's user (mode
  0777, group fsGroup), whereas podman would give the image directory's owner and mode;
- its environment (plain values).
Not reproduced: resources (4 cores exceed a small machine), probes, and what a kubelet does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MANIFEST = Path("deploy/kubernetes/deployment.yaml")
CONTAINER = "torchserve"
QUANTITY = re.compile(r"^(\d+)([KMGTP]i|[kMGTP])?$")
FACTORS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


@dataclass(frozen=True)
class PodSettings:
    flags: list[str]  # for `podman run`
    environment: dict[str, str]
    tmpfs: dict[str, int | None]  # mount path -> size in bytes (None: the emptyDir has no sizeLimit)
    user: str | None  # "UID[:GID]"


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes quantity of bytes ("1Gi", "512M", "1000")."""
    match = QUANTITY.match(str(quantity))
    if match is None:
        raise ValueError(f"not a quantity of bytes this test reads: {quantity!r}")
    return int(match[1]) * FACTORS[match[2]]


def security_flags(pod: dict[str, Any], container: dict[str, Any]) -> tuple[list[str], str | None]:
    """The flags for both securityContexts (the container's wins, as in Kubernetes), and the user."""
    context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    flags = ["--read-only", "--read-only-tmpfs=false"] if context.get("readOnlyRootFilesystem") else []
    capabilities = context.get("capabilities", {})
    flags += [f"--cap-drop={name}" for name in capabilities.get("drop", [])]
    flags += [f"--cap-add={name}" for name in capabilities.get("add", [])]
    if context.get("allowPrivilegeEscalation") is False:
        flags.append("--security-opt=no-new-privileges")
    if context.get("privileged"):
        flags.append("--privileged")
    seccomp = context.get("seccompProfile", {}).get("type", "RuntimeDefault")
    if seccomp != "RuntimeDefault":
        raise ValueError(f"seccompProfile {seccomp}: this test runs podman's default profile only")
    user = None
    if "runAsUser" in context:
        user = str(context["runAsUser"]) + (f":{context['runAsGroup']}" if "runAsGroup" in context else "")
        flags.append(f"--user={user}")
    return flags, user


def empty_dirs(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, int | None]:
    """Every emptyDir the container mounts: path -> sizeLimit in bytes. Another kind of volume
    (a ConfigMap, a PVC) is refused: this test could not reproduce it."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts: dict[str, int | None] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" not in volume:
            raise ValueError(f"volume {mount['name']} is not an emptyDir: the image test cannot mount it")
        limit = (volume["emptyDir"] or {}).get("sizeLimit")
        mounts[mount["mountPath"]] = None if limit is None else quantity_bytes(limit)
    return mounts


def tmpfs_flag(path: str, size: int | None) -> str:
    return f"--tmpfs={path}:rw,exec,U" + ("" if size is None else f",size={size}")


def read(manifest: Path = MANIFEST) -> PodSettings:
    documents = [doc for doc in yaml.safe_load_all(manifest.read_text()) if doc]
    (deployment,) = [doc for doc in documents if doc["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [item for item in pod["containers"] if item["name"] == CONTAINER]
    flags, user = security_flags(pod, container)
    tmpfs = empty_dirs(pod, container)
    flags += [tmpfs_flag(path, size) for path, size in tmpfs.items()]
    environment = {item["name"]: str(item["value"]) for item in container.get("env", [])}
    return PodSettings(flags, environment, tmpfs, user)
