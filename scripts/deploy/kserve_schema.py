"""Vendor the InferenceService schema from KServe's CRD, so the unit tests validate offline.

    python -m scripts.deploy.kserve_schema CRD.yaml --source "kserve/kserve v0.20.0 (commit SHA)"

CRD.yaml is kserve/kserve's config/crd/full/serving.kserve.io_inferenceservices.yaml.
Writes only the openAPIV3Schema of the version the CRD serves and stores, as JSON, to
deploy/kserve/schema/, with a README naming where it came from. Run it again to move
to a newer KServe; the unit tests then check our InferenceServices against that one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from scripts.config.files import ConfigError

logger = logging.getLogger(__name__)

SCHEMA_DIR = Path("deploy/kserve/schema")
CRD_PATH = "config/crd/full/serving.kserve.io_inferenceservices.yaml"


def served_schema(crd: dict[str, Any], source: Path) -> tuple[str, dict[str, Any]]:
    """(version name, its openAPIV3Schema) of the one version that is both served and stored."""
    versions = [v for v in crd.get("spec", {}).get("versions", []) if v.get("served") and v.get("storage")]
    if crd.get("kind") != "CustomResourceDefinition" or len(versions) != 1:
        raise ConfigError(source, "spec.versions", "not a CRD with exactly one served, stored version",
                          f"pass kserve/kserve's {CRD_PATH}")
    return versions[0]["name"], versions[0]["schema"]["openAPIV3Schema"]


def vendor(crd_file: Path, source: str, out: Path = SCHEMA_DIR) -> Path:
    raw = crd_file.read_bytes()
    version, schema = served_schema(yaml.safe_load(raw), crd_file)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"inferenceservice-{version}.json"
    target.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    (out / "README.md").write_text(
        f"# KServe's InferenceService schema, vendored\n\n"
        f"`{target.name}` is the `openAPIV3Schema` of version `{version}` (served and stored) from\n"
        f"{source}, `{CRD_PATH}`\n(sha256 of that file: `{hashlib.sha256(raw).hexdigest()}`).\n\n"
        f"Written by `python -m scripts.deploy.kserve_schema`; tests/unit/test_kserve.py validates\n"
        f"deploy/kserve/inferenceservice-*.yaml against it, with unknown fields refused as the API\n"
        f"server's strict field validation refuses them.\n")
    logger.info("wrote %s (%s, %d bytes)", target, version, target.stat().st_size)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("crd", type=Path, help=f"kserve/kserve's {CRD_PATH}")
    parser.add_argument("--source", required=True, help='e.g. "kserve/kserve v0.20.0 (commit 1fb7810...)"')
    parser.add_argument("--out", type=Path, default=SCHEMA_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    vendor(args.crd, args.source, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
