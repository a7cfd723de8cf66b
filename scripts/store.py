"""The model store's layout beyond what TorchServe reads: every version ever built, kept aside.

model_store/NAME.mar is what TorchServe loads at start (load_models=all) and what
a registration names (TorchServe takes only a url's file name, in the store).
model_store/.versions/NAME-VERSION.mar keeps each version `make archive` built;
the directory is hidden, so TorchServe never loads it by itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

VERSIONS = ".versions"


def version_archive(store: Path, name: str, version: str) -> Path:
    """Where the archive of one version of a model is kept."""
    return store / VERSIONS / f"{name}-{version}.mar"


def keep_version(archive: Path, kept: Path) -> None:
    """Copy `archive` to `kept` (replacing what was there) in one rename.

    A copy, not a hard link: a later `cp` onto one name would rewrite both.
    """
    kept.parent.mkdir(parents=True, exist_ok=True)
    staged = kept.with_name(f".{kept.name}.new")
    shutil.copyfile(archive, staged)
    staged.replace(kept)
