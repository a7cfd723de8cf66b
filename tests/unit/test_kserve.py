"""deploy/kserve/ and the bundle: the InferenceServices are what the generator writes and KServe's CRD
schema accepts them; the bundle's properties are what KServe's TorchServe wrapper can read and keep
TorchServe on the pod's loopback."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from scripts.config.files import ConfigError, read_properties
from scripts.deploy import kserve
from scripts.deploy.facts import read_all

DEPLOYED = Path("deploy/kserve")
SCHEMA = DEPLOYED / "schema" / "inferenceservice-v1beta1.json"
WRAPPER_PORTS = {8080, 8081}  # kserve_wrapper/__main__.py: ModelServer(http_port=8080, grpc_port=8081)


def strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused: the API server prunes them from a structural schema,
    and with strict field validation (kubectl's default) it rejects the object instead."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: (value if key == "properties" else strict(value)) for key, value in schema.items()}
    if "properties" in schema:
        result["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            result["additionalProperties"] = False
    return result


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(strict(json.loads(SCHEMA.read_text())))


def committed(protocol: str) -> dict[str, Any]:
    text = (DEPLOYED / f"inferenceservice-{protocol}.yaml").read_text()
    (doc,) = [doc for doc in yaml.safe_load_all(text) if doc]
    return doc


def wrapper_config(path: Path) -> dict[str, Any]:
    """The properties as KServe's TorchServe wrapper reads them (pytorch/serve v0.12.0,
    kubernetes/kserve/kserve_wrapper/__main__.py, parse_config): line by line, split at the first '='."""
    configuration: dict[str, Any] = {}
    with path.open() as handle:
        for line in handle:
            if not line.startswith("#") and "=" in line:
                name, value = line.split("=", 1)
                configuration[name.strip()] = value.strip()
    configuration["model_snapshot"] = json.loads(configuration.get("model_snapshot", "{}"))
    return configuration


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kserve") / "bundle"
    kserve.write_bundle(out, read_all())
    return out


def test_committed_inference_services_are_exactly_what_the_generator_writes() -> None:
    generated = kserve.generate(read_all())
    assert sorted(p.name for p in DEPLOYED.glob("*.yaml")) == sorted(generated) == [
        "inferenceservice-v1.yaml", "inferenceservice-v2.yaml"]
    for name, text in generated.items():
        assert (DEPLOYED / name).read_text() == text, f"{name} drifted: run `make kserve-bundle`"


@pytest.mark.parametrize("protocol", kserve.PROTOCOLS)
def test_the_inference_service_validates_against_kserves_crd(protocol: str,
                                                             validator: jsonschema.Draft7Validator) -> None:
    document = committed(protocol)
    validator.validate(document)
    predictor = document["spec"]["predictor"]
    assert predictor["model"]["protocolVersion"] == protocol
    assert 0 <= predictor["canaryTrafficPercent"] <= 100
    # metadata is a bare object in the CRD; the API server checks it as any object's ObjectMeta.
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": document["metadata"]},
                                 "1.30.0", strict=True)


@pytest.mark.parametrize(("path", "value"), [
    (("spec", "predictor", "model", "protocolVersions"), "v1"),   # unknown field
    (("spec", "predictor", "minReplicas"), "two"),                # wrong type
    (("spec", "predictor", "canaryTrafficPercent"), "10%"),       # wrong type
    (("spec", "predictor", "model", "modelFormat"), {}),          # required name missing
])
def test_the_schema_check_refuses_what_kserve_refuses(path: tuple[str, ...], value: Any,
                                                      validator: jsonschema.Draft7Validator) -> None:
    document = copy.deepcopy(committed("v1"))
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert list(validator.iter_errors(document)), path


def test_the_vendored_schema_names_its_kserve_version() -> None:
    readme = (DEPLOYED / "schema" / "README.md").read_text()
    assert "kserve/kserve v0.20.0" in readme and "1fb781055dd1567164358233e1125142ca6ef1fe" in readme
    assert json.loads(SCHEMA.read_text())["properties"]["spec"]["properties"]["predictor"]


def test_the_wrapper_reads_every_model_from_the_one_line_snapshot(bundle: Path) -> None:
    config_file = bundle / "config" / "config.properties"
    config = wrapper_config(config_file)
    models = read_all()
    assert set(config["model_snapshot"]["models"]) == {model.name for model in models}
    assert config["model_store"] == f"{kserve.MOUNT}/model-store"  # where the wrapper looks for archives
    assert read_properties(config_file)["model_snapshot"] == json.dumps(config["model_snapshot"],
                                                                        separators=(",", ":"))
    for model in models:
        entry = config["model_snapshot"]["models"][model.name][model.version]
        assert entry["marName"] == model.archive and entry["defaultVersion"] is True
        assert (entry["minWorkers"], entry["maxWorkers"], entry["batchSize"], entry["maxBatchDelay"],
                entry["responseTimeout"], entry["startupTimeout"]) == (
            model.min_workers, model.max_workers, model.batch_size, model.max_batch_delay,
            model.response_timeout, model.startup_timeout)
        assert (bundle / "model-store" / model.archive).read_bytes() == (Path("model_store") / model.archive
                                                                          ).read_bytes()


def test_torchserve_listens_only_on_the_pods_loopback_off_the_wrappers_ports(bundle: Path) -> None:
    properties = read_properties(bundle / "config" / "config.properties")
    ports = set()
    for key in ("inference_address", "management_address"):
        address = urlsplit(properties[key])
        assert address.hostname == "127.0.0.1", key
        ports.add(address.port)
    assert properties["grpc_inference_address"] == properties["grpc_management_address"] == "127.0.0.1"
    ports |= {int(properties["grpc_inference_port"]), int(properties["grpc_management_port"])}
    assert len(ports) == 4 and not ports & WRAPPER_PORTS
    # The wrapper derives its gRPC target from the inference address's host and grpc_inference_port.
    assert urlsplit(properties["inference_address"]).hostname + ":" + properties["grpc_inference_port"] == (
        "127.0.0.1:7070")


def test_the_bundle_turns_tokens_and_the_model_api_off_and_keeps_env_overrides(bundle: Path) -> None:
    properties = read_properties(bundle / "config" / "config.properties")
    assert properties["disable_token_authorization"] == "true"  # the wrapper sends no token
    assert properties["enable_model_api"] == "false"
    assert properties["enable_envvars_config"] == "true"
    metrics = properties["metrics_config"]
    assert metrics.startswith(kserve.MOUNT + "/")
    shipped = bundle / metrics.removeprefix(kserve.MOUNT + "/")
    assert shipped.read_text() == Path("configs/metrics.yaml").read_text()


def test_a_bundle_without_archives_says_to_run_make_archive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="make archive"):
        kserve.write_bundle(tmp_path / "bundle", read_all(), store=tmp_path)
