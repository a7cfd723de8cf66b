"""Turn configs/models/*.yaml into self-contained .mar archives in model_store/.

    python -m scripts.build.archive configs/models/*.yaml [--store model_store] [--force] [--device gpu]

Every config is checked before anything is written (its text by scripts/config/model.py,
what it needs of the built tree and the handler by scripts/build/checks.py); a bad one
stops the run with one line naming the file, the key and the fix. Each archive is built
in a private staging folder (its own TMPDIR, since torch-model-archiver stages in
$TMPDIR/<model-name>) and moved into place in one rename, so model_store/ never
holds half an archive. What torch-model-archiver wrote is checked before that
rename (scripts/build/store.check_archive: a sound zip, its manifest, its handler
file, the right name and version), so the store never receives an archive TorchServe
could not load. An archive whose inputs have not changed is not rebuilt, unless the
one in the store is damaged.
Every version built is also kept as model_store/.versions/NAME-VERSION.mar (a copy;
hidden, so TorchServe's load_models=all skips it): the rollout CLI puts a
version's archive back as model_store/NAME.mar when it becomes the default again.
With `backend: onnx` or `quantize: int8` the staged model is exported and/or
checked on held-out data first (scripts/build/optimize.py); a failed check is a config
error (exit 2) and no archive is written.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version as package_version
from pathlib import Path

import yaml

from scripts.build.checks import load_buildable
from scripts.build.optimize import prepare
from scripts.build.store import ArchiveError, check_archive, keep_version, version_archive
from scripts.config.model import DEVICES, ConfigError, ModelSpec

logger = logging.getLogger(__name__)
HANDLERS_PACKAGE = Path("handlers")
FINGERPRINTS = ".fingerprints"  # hidden, inside the store: TorchServe skips it


def archive_path(spec: ModelSpec, store: Path) -> Path:
    return store / f"{spec.name}.mar"


def fingerprint(spec: ModelSpec) -> str:
    """A hash of everything that goes into the archive, to skip unchanged models."""
    digest = hashlib.sha256(package_version("torch-model-archiver").encode())
    digest.update(spec.device.encode())  # the gpu profile is another archive of the same YAML
    inputs = [spec.source, *sorted(HANDLERS_PACKAGE.rglob("*.py")), *spec.files]
    for path in inputs:
        digest.update(str(path).encode())
        with path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def stage(spec: ModelSpec, staging: Path) -> tuple[Path, Path]:
    """Lay out what the archive carries: the handlers package, the files, the model-config."""
    extra = staging / "extra"
    shutil.copytree(HANDLERS_PACKAGE, extra / "handlers",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for file in spec.files:
        shutil.copyfile(file, extra / file.name)
    model_config = staging / "model-config.yaml"
    model_config.write_text(yaml.safe_dump(dict(spec.model_config), sort_keys=False))
    return extra, model_config


def build_archive(spec: ModelSpec, store: Path) -> Path:
    """Run torch-model-archiver in a private staging folder, then rename into `store`."""
    store.mkdir(parents=True, exist_ok=True)
    # Hidden (TorchServe skips hidden entries of the model store) and on the same
    # file system as the store, so the final rename is atomic.
    with tempfile.TemporaryDirectory(prefix=f".staging-{spec.name}-", dir=store) as tmp:
        staging = Path(tmp)
        extra, model_config = stage(spec, staging)
        prepare(spec, extra)  # ONNX export, int8 gate: raises ConfigError before anything is written
        (staging / "out").mkdir()
        (staging / "tmp").mkdir()
        command = [
            str(Path(sys.executable).with_name("torch-model-archiver")),
            "--model-name", spec.name,
            "--version", spec.version,
            "--handler", str(spec.handler),
            "--extra-files", str(extra),
            "--config-file", str(model_config),
            "--export-path", str(staging / "out"),
            "--force",
        ]
        env = {**os.environ, "TMPDIR": str(staging / "tmp")}
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"torch-model-archiver failed for {spec.source} (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        built = staging / "out" / f"{spec.name}.mar"
        check_built(spec, built)
        target = archive_path(spec, store)
        built.replace(target)
    return target


def check_built(spec: ModelSpec, built: Path) -> None:
    """Refuse (RuntimeError) an archive TorchServe could not load, or one of another name or version."""
    try:
        info = check_archive(built)
    except ArchiveError as error:
        raise RuntimeError(f"torch-model-archiver wrote an archive for {spec.source} that TorchServe could "
                           f"not load, so it was not put in the store: {error}") from None
    if (info.name, info.version) != (spec.name, spec.version):
        raise RuntimeError(f"torch-model-archiver wrote {info.name} {info.version} for {spec.source}, which "
                           f"asks for {spec.name} {spec.version}; nothing was put in the store")


def intact(target: Path) -> bool:
    """Whether the archive in the store still reads as one (structure only: a quick check)."""
    try:
        check_archive(target, verify_data=False)
    except ArchiveError as error:
        logger.warning("%s; rebuilding it", error)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("configs", nargs="+", type=Path, help="configs/models/*.yaml")
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--force", action="store_true", help="rebuild even if unchanged")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="gpu: lay each YAML's gpu: profile over its model_config (default cpu)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        specs = [load_buildable(path, device=args.device) for path in args.configs]  # all, before any write
    except ConfigError as error:
        logger.error("error: %s", error)
        return 2
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        logger.error("error: two configs share a model name: %s", sorted(names))
        return 2
    fingerprints = args.store / FINGERPRINTS
    fingerprints.mkdir(parents=True, exist_ok=True)
    for number, spec in enumerate(specs, start=1):
        prefix = f"[{number}/{len(specs)}] {spec.name} {spec.version}"
        stamp, current = fingerprints / f"{spec.name}.sha256", fingerprint(spec)
        target = archive_path(spec, args.store)
        kept = version_archive(args.store, spec.name, spec.version)
        unchanged = target.exists() and stamp.exists() and stamp.read_text() == current
        if not args.force and unchanged and intact(target):
            if not kept.exists():
                keep_version(target, kept)
            logger.info("%s: up to date (%s)", prefix, target)
            continue
        logger.info("%s: archiving %s (%s profile) ...", prefix, spec.source, spec.device)
        try:
            build_archive(spec, args.store)
        except ConfigError as error:  # a gate refused the archive; nothing was written
            logger.error("error: %s", error)
            return 2
        except (RuntimeError, OSError) as error:
            logger.error("error: %s", error)
            return 1
        stamp.write_text(current)
        keep_version(target, kept)
        logger.info("%s: wrote %s (%.1f MB)", prefix, target, target.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
