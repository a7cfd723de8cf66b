"""One model's YAML in configs/models/, parsed once into a frozen dataclass and checked.

    name: tabular                  # the model's URL name: /predictions/tabular
    version: "1.0"                 # a string: quote it
    handler: handlers/tabular.py   # a module of the handlers/ package
    files:                         # packed at the archive root (weights, tokenizer, ...)
      - build/weights/tabular/tabular.safetensors
    example:                       # what `make serve` prints as a curl line
      content_type: application/json
      file: build/examples/tabular.json
    rollout:                       # the gate `tsctl rollout` applies (scripts/config/policies.py)
      golden: configs/golden/tabular.jsonl
      min_accuracy: 0.95
      p95_ms: 250
    recycle:                       # when `tsctl recycle --if-over` replaces the workers
      max_rss_mb: 1500             # (scripts/config/policies.py); optional
    gpu:                           # the GPU profile: model_config keys laid over the ones below by
      batchSize: 64                # `make archive DEVICE=gpu` and the CUDA image (optional; the
      handler: {backend: torch}    # handler options merge key by key)
    model_config:                  # written as the archive's TorchServe model-config
      batchSize: 8
      maxBatchDelay: 20
      minWorkers: 1
      maxWorkers: 1
      responseTimeout: 30
      startupTimeout: 120
      jobQueueSize: 250            # requests waiting for a worker; more are refused with 503 at once.
                                   # About latency budget (s) x measured req/s, and >= batchSize
      deviceType: gpu              # GPU when present, else CPU
      handler:                     # the handler's own options (its `Options` dataclass)
        class_names: [malignant, benign]

Every problem raises `ConfigError` with the file, the key and the fix, in one line.
`load_spec` is the one reader of these files, and it reads only their text: keys,
types, names, the gpu: overlay, the queue rule, the example and the rollout/recycle
policies. So tsctl and `make manifests` need neither torch nor built weights. What
needs the built tree (the files exist, the handler module defines one ModelHandler
whose options parse in both profiles) is checked by scripts/build/checks.py before an
archive is built or a handler is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scripts.config.files import ConfigError
from scripts.config.policies import RecyclePolicy, RolloutPolicy, parse_policy, parse_recycle

CONFIG_DIR = Path("configs/models")  # one YAML per model, relative to the repository root
METRICS_CONFIG = Path("configs/metrics.yaml")  # the metrics the servers export (metrics_config=)

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
VERSION_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*$")
TOP_LEVEL_KEYS = {"name", "version", "handler", "files", "example", "model_config", "rollout", "recycle",
                  "gpu"}
DEVICES = ("cpu", "gpu")  # the profiles an archive is built for: `gpu` applies the YAML's gpu: overlay
SECTIONS = {"cpu": "model_config", "gpu": "gpu"}  # where each profile's keys come from, for messages
REQUIRED_KEYS = ("name", "version", "handler", "files", "model_config")
# TorchServe model-config keys we check the type of (positive integers unless noted).
COUNT_KEYS = {"batchSize": 1, "maxBatchDelay": 0, "minWorkers": 1, "maxWorkers": 1,
              "responseTimeout": 1, "startupTimeout": 1, "jobQueueSize": 1}
DEVICE_TYPES = ("cpu", "gpu")
# Other keys TorchServe's model-config understands; passed through unchecked.
PASS_THROUGH_KEYS = {"parallelType", "parallelLevel", "deviceIds", "useJobTicket",
                     "continuousBatching", "maxSequenceJobQueueSize", "sequenceMaxIdleMSec",
                     "useVenv", "torchrun", "handler"}


# Names at the archive root that the archive step itself writes.
RESERVED_NAMES = {"handlers", "model-config.yaml", "MAR-INF"}


@dataclass(frozen=True)
class Example:
    content_type: str
    file: Path | None = None
    data: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A checked model config; paths are relative to the repository root."""

    source: Path
    name: str
    version: str
    handler: Path
    files: tuple[Path, ...]
    model_config: Mapping[str, Any]
    example: Example | None
    rollout: RolloutPolicy | None = None
    recycle: RecyclePolicy | None = None  # when tsctl replaces its workers
    device: str = "cpu"  # the profile model_config was built for ("gpu": the YAML's gpu: overlay applied)
    # Every profile the YAML gives, by device: "cpu" always, "gpu" when it has a gpu: overlay.
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def load_spec(path: Path, root: Path = Path("."), device: str = "cpu") -> ModelSpec:
    """Read and check `path` for the `device` profile; raise ConfigError on the first problem.

    Both profiles are checked whichever is asked for, so a bad gpu: overlay fails on a CPU
    machine too, before anyone ships it to a GPU. `root` is what the YAML's paths are relative to.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(path, "-", f"cannot be read ({error})",
                          "give the model's YAML, e.g. configs/models/tabular.yaml") from None
    except yaml.YAMLError as error:
        raise ConfigError(path, "-", f"not valid YAML ({error})", "fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(path, "-", "expected a mapping at the top", "see configs/models/*.yaml")
    _check_keys(path, raw)
    name = _pattern(path, raw, "name", NAME_PATTERN, "letters, digits, '_' or '-', e.g. name: tabular")
    version = _pattern(path, raw, "version", VERSION_PATTERN, 'a quoted string, e.g. version: "1.0"')
    handler = _handler_path(path, raw)
    files = _files(path, raw.get("files"), reserved={handler.name})
    profiles = {"cpu": _model_config(path, raw["model_config"])}
    if raw.get("gpu") is not None:
        profiles["gpu"] = _model_config(path, gpu_profile(path, profiles["cpu"], raw["gpu"]), "gpu")
    example = _example(path, raw.get("example"))
    rollout = parse_policy(path, raw.get("rollout"), root)
    recycle = parse_recycle(path, raw.get("recycle"))
    return ModelSpec(path, name, version, handler, files, profiles.get(device, profiles["cpu"]),
                     example, rollout, recycle, device, profiles)


def gpu_profile(path: Path, model_config: Mapping[str, Any], overlay: Any) -> dict[str, Any]:
    """model_config with the gpu: overlay laid over it; `handler` options merge key by key."""
    if not isinstance(overlay, dict):
        raise ConfigError(path, "gpu", "expected a mapping of model_config keys",
                          "write gpu: {batchSize: 64, handler: {backend: torch}}")
    handler = overlay.get("handler", {})
    if not isinstance(handler, dict):
        raise ConfigError(path, "gpu.handler", "expected a mapping of handler options",
                          "write handler: {backend: torch}")
    merged = {**model_config, **overlay}
    if handler or "handler" in model_config:
        merged["handler"] = {**(model_config.get("handler") or {}), **handler}
    return merged


def _check_keys(path: Path, raw: dict[str, Any]) -> None:
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(path, str(key), "unknown key",
                              f"remove it or use one of {sorted(TOP_LEVEL_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise ConfigError(path, key, "missing", "add it (see the docstring of scripts/config/model.py)")


def _pattern(path: Path, raw: dict[str, Any], key: str, pattern: re.Pattern[str], fix: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ConfigError(path, key, f"invalid value {value!r}", f"write {fix}")
    return value


def _handler_path(path: Path, raw: dict[str, Any]) -> Path:
    value = raw["handler"]
    handler = Path(str(value))
    if handler.parts[:1] != ("handlers",) or handler.suffix != ".py" or len(handler.parts) != 2:
        raise ConfigError(path, "handler", f"{value!r} is not a module of the handlers/ package",
                          "write e.g. handler: handlers/tabular.py")
    return handler


def _files(path: Path, value: Any, reserved: set[str]) -> tuple[Path, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(path, "files", f"expected a list of paths, got {value!r}",
                          "write files: [build/weights/NAME/NAME.safetensors]")
    files = tuple(Path(item) for item in value)
    names = [file.name for file in files]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        raise ConfigError(path, "files", f"two files would land at the archive root as {duplicate}",
                          "give every file a distinct name")
    clash = sorted(set(names) & (reserved | RESERVED_NAMES))
    if clash:
        raise ConfigError(path, "files", f"{clash[0]} would replace a file the archive needs",
                          "rename that file")
    return files


def _model_config(path: Path, value: Any, section: str = "model_config") -> dict[str, Any]:
    """Check a model-config (`section` names where its keys come from in messages: model_config or gpu)."""
    if not isinstance(value, dict):
        raise ConfigError(path, "model_config", "expected a mapping", "see configs/models/*.yaml")
    for key, item in value.items():
        where = f"{section}.{key}"
        if key in COUNT_KEYS:
            low = COUNT_KEYS[key]
            if isinstance(item, bool) or not isinstance(item, int) or item < low:
                raise ConfigError(path, where, f"expected an integer >= {low}, got {item!r}",
                                  f"write e.g. {key}: {max(low, 1)}")
        elif key == "deviceType":
            if item not in DEVICE_TYPES:
                raise ConfigError(path, where, f"expected one of {list(DEVICE_TYPES)}, got {item!r}",
                                  "write deviceType: gpu (GPU when present, else CPU) or cpu")
        elif key not in PASS_THROUGH_KEYS:
            known = sorted(set(COUNT_KEYS) | {"deviceType"} | PASS_THROUGH_KEYS)
            raise ConfigError(path, where, "not a TorchServe model-config key",
                              f"remove it or use one of {known}")
    if value.get("minWorkers", 1) > value.get("maxWorkers", value.get("minWorkers", 1)):
        raise ConfigError(path, f"{section}.minWorkers", "is greater than maxWorkers",
                          "make minWorkers <= maxWorkers")
    _check_queue(path, value, section)
    return value


def _check_queue(path: Path, value: dict[str, Any], section: str) -> None:
    """A queue that cannot hold one batch makes every batch wait out maxBatchDelay to fill."""
    queue, batch = value.get("jobQueueSize"), value.get("batchSize", 1)
    if queue is not None and queue < batch:
        raise ConfigError(path, f"{section}.jobQueueSize", f"{queue} is smaller than batchSize {batch}, "
                          "so a full batch can never wait in the queue",
                          f"make it >= {batch}: about latency budget (s) x measured requests/s")


def _example(path: Path, value: Any) -> Example | None:
    if value is None:
        return None
    texts = value if isinstance(value, dict) else {}
    if not isinstance(value, dict) or not isinstance(value.get("content_type"), str) or not (
        isinstance(texts.get("file"), str) ^ isinstance(texts.get("data"), str)
    ) or set(value) - {"content_type", "file", "data"}:
        raise ConfigError(path, "example", f"expected content_type and one of file/data, got {value!r}",
                          "write example: {content_type: application/json, data: '{...}'}")
    file = Path(value["file"]) if "file" in value else None
    return Example(str(value["content_type"]), file, value.get("data"))
