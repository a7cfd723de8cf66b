"""deploy/kubernetes/: the committed manifests are what the generator writes from the model YAMLs,
they validate offline against the Kubernetes versions we support, and their numbers follow the models."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

from scripts.config.files import ConfigError
from scripts.deploy import autoscaling, kubernetes, sizing
from scripts.deploy.facts import read_all, read_facts

# The oldest Kubernetes we claim (1.30: autoscaling/v2 long GA, the PDB's unhealthyPodEvictionPolicy
# on by default) and the newest kubernetes-validate bundles, so a removal shows up too.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
DEPLOYED = Path("deploy/kubernetes")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def committed() -> dict[str, list[dict[str, Any]]]:
    return {path.name: documents(path) for path in sorted(DEPLOYED.glob("*.yaml"))}


def only(kind: str) -> dict[str, Any]:
    (found,) = [doc for docs in committed().values() for doc in docs if doc["kind"] == kind]
    return found


def pod_spec() -> dict[str, Any]:
    return only("Deployment")["spec"]["template"]["spec"]


def test_committed_manifests_are_exactly_what_the_generator_writes() -> None:
    generated = kubernetes.generate(read_all(), autoscaling.read_metric())
    assert sorted(path.name for path in DEPLOYED.glob("*")) == sorted(generated)
    for name, text in generated.items():
        assert (DEPLOYED / name).read_text() == text, f"{name} drifted: run `make manifests`"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_in_strict_mode(version: str) -> None:
    """Through the library: a missing schema raises SchemaNotFoundError here instead of the CLI's
    WARN-and-exit-0, and strict mode refuses any field the schema does not know."""
    docs = [doc for docs in committed().values() for doc in docs]
    assert {doc["kind"] for doc in docs} == {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy",
                                             "HorizontalPodAutoscaler", "ConfigMap"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def command_line_passes(files: list[str], version: str) -> tuple[bool, str]:
    """`kubernetes-validate --strict` as a person runs it, passing only if every line is an INFO pass:
    the tool WARNs and exits 0 when it has no schema for a kind or apiVersion."""
    command = [str(Path(sys.executable).with_name("kubernetes-validate")), "--strict", "-k", version, *files]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = result.stdout.splitlines()
    passed = result.returncode == 0 and not result.stderr and all(
        line.startswith("INFO ") and " passed " in line for line in lines)
    return passed, result.stdout + result.stderr


def test_the_command_line_passes_every_file_with_no_warning() -> None:
    files = sorted(str(path) for path in DEPLOYED.glob("*.yaml"))
    passed, output = command_line_passes(files, KUBERNETES_VERSIONS[0])
    assert passed, output
    assert len(output.splitlines()) == sum(len(docs) for docs in committed().values())


def test_validation_catches_a_removed_api_an_unknown_field_and_a_wrong_type() -> None:
    hpa = only("HorizontalPodAutoscaler")
    with pytest.raises(SchemaNotFoundError):  # TorchServe's own example still uses it
        kubernetes_validate.validate({**hpa, "apiVersion": "autoscaling/v2beta2"}, "1.30.0", strict=True)
    deployment = only("Deployment")
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(typo, "1.30.0", strict=True)
    wrong = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(wrong, "1.30.0", strict=True)


def test_a_removed_api_fails_the_command_line_check_although_the_tool_only_warns(tmp_path: Path) -> None:
    stale = tmp_path / "stale.yaml"
    stale.write_text(yaml.safe_dump({**only("HorizontalPodAutoscaler"), "apiVersion": "autoscaling/v2beta2"}))
    passed, output = command_line_passes([str(stale)], "1.30.0")
    assert not passed and output.startswith("WARN ") and "autoscaling/v2beta2" in output, output


def test_probes_cover_load_and_warm_up_and_are_the_images_health_command() -> None:
    models = read_all()
    container = pod_spec()["containers"][0]
    startup, ready, live = (container[key] for key in ("startupProbe", "readinessProbe", "livenessProbe"))
    budget = sizing.FRONTEND_START_S + sum(model.startup_timeout for model in models)
    assert startup["periodSeconds"] * startup["failureThreshold"] >= budget
    assert startup["periodSeconds"] * (startup["failureThreshold"] - 1) < budget
    assert startup["exec"]["command"] == ready["exec"]["command"] == ["python", "-m", "scripts.serve.health"]
    assert live["exec"]["command"] == ["python", "-m", "scripts.serve.health", "--live"]


def test_the_probe_command_runs_and_fails_when_no_server_answers(tmp_path: Path) -> None:
    """The probes' command as written, against properties whose management port nothing listens on."""
    config = tmp_path / "config.properties"
    config.write_text("management_address=http://127.0.0.1:9\ndisable_token_authorization=true\n")
    for extra, word in (([], "not ready"), (["--live"], "not live")):
        result = subprocess.run([sys.executable, "-m", "scripts.serve.health", "--ts-config", str(config),
                                 "--server-dir", str(tmp_path), *extra],
                                capture_output=True, text=True, check=False, timeout=60)
        assert result.returncode == 1 and result.stdout.startswith(word), result.stdout + result.stderr


def test_the_pod_environment_moves_management_to_loopback_and_turns_tokens_off_for_the_health_check() -> None:
    """The image's properties plus the Deployment's TS_* variables, read the way the health check reads
    them (as TorchServe does with enable_envvars_config=true)."""
    from scripts.serve.health import read_target

    env = {item["name"]: item["value"] for item in pod_spec()["containers"][0]["env"]}
    image_properties = Path("deploy/container/torchserve.properties")
    assert "enable_envvars_config=true" in image_properties.read_text().splitlines()
    target = read_target(image_properties, env)
    assert target.management_url == "http://127.0.0.1:8081" and target.token_auth is False
    assert env["TS_GRPC_MANAGEMENT_ADDRESS"] == "127.0.0.1" and env["TS_ENABLE_MODEL_API"] == "false"


def test_shutdown_waits_out_the_slowest_response_and_the_grace_period_covers_it() -> None:
    models = read_all()
    spec = pod_spec()
    env = {item["name"]: item["value"] for item in spec["containers"][0]["env"]}
    drain = int(env["DRAIN_SECONDS"])
    assert drain == sizing.ENDPOINT_PROPAGATION_S + max(model.response_timeout for model in models)
    assert spec["terminationGracePeriodSeconds"] == drain + sizing.STOP_S


def test_resources_follow_the_workers_with_requests_equal_to_limits() -> None:
    workers = sum(model.max_workers for model in read_all())
    resources = pod_spec()["containers"][0]["resources"]
    assert resources["requests"] == resources["limits"]
    assert resources["limits"]["cpu"] == str(sizing.FRONTEND_CPU + sizing.CPU_PER_WORKER * workers)
    assert resources["limits"]["memory"] == (
        f"{sizing.FRONTEND_MEMORY_MIB + sizing.MEMORY_PER_WORKER_MIB * workers}Mi")


def test_the_pod_runs_non_root_read_only_with_writable_emptydirs_where_torchserve_writes() -> None:
    spec = pod_spec()
    pod, container = spec["securityContext"], spec["containers"][0]["securityContext"]
    assert pod["runAsUser"] == 10001 and pod["runAsNonRoot"] is True
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["allowPrivilegeEscalation"] is False and container["readOnlyRootFilesystem"] is True
    assert container["capabilities"] == {"drop": ["ALL"]}
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in spec["containers"][0]["volumeMounts"]}
    assert set(mounts) == {"/var/lib/torchserve", "/tmp"}
    assert all("emptyDir" in volume for volume in mounts.values())


def test_rollout_never_drops_below_the_replicas_and_objects_point_at_each_other() -> None:
    deployment, service = only("Deployment"), only("Service")
    spec = deployment["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0 and spec["replicas"] >= 2
    pod_labels = spec["template"]["metadata"]["labels"]
    for selector in (spec["selector"]["matchLabels"], service["spec"]["selector"],
                     only("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                     only("NetworkPolicy")["spec"]["podSelector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    assert only("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_the_service_exposes_inference_and_metrics_but_never_management() -> None:
    ports = {port["port"] for port in only("Service")["spec"]["ports"]}
    assert ports == {8080, 7070, 8082}
    container_ports = {port["containerPort"] for port in pod_spec()["containers"][0]["ports"]}
    assert container_ports == ports


def test_the_hpa_scales_on_the_shared_metric_with_the_seeds_stabilisation() -> None:
    metric = autoscaling.read_metric()
    spec = only("HorizontalPodAutoscaler")["spec"]
    assert spec["minReplicas"] == 2
    (pods,) = [entry["pods"] for entry in spec["metrics"] if entry["type"] == "Pods"]
    assert pods["metric"]["name"] == metric.name
    assert float(pods["target"]["averageValue"]) == float(metric.target)
    up, down = spec["behavior"]["scaleUp"], spec["behavior"]["scaleDown"]
    assert (up["stabilizationWindowSeconds"], up["policies"]) == (
        300, [{"type": "Percent", "value": 50, "periodSeconds": 60}])
    assert (down["stabilizationWindowSeconds"], down["policies"]) == (
        600, [{"type": "Percent", "value": 25, "periodSeconds": 120}])


def test_the_deployment_reads_the_model_yamls_before_make_models(tmp_path: Path) -> None:
    """`make manifests` needs no weights: the facts come from the YAML's text alone."""
    for path in sorted(Path("configs/models").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        raw["files"] = [f"build/never-built/{Path(file).name}" for file in raw["files"]]
        (tmp_path / path.name).write_text(yaml.safe_dump(raw))
    assert [replace(model, source=Path(model.source.name)) for model in read_all(tmp_path)] == [
        replace(model, source=Path(model.source.name)) for model in read_all()]


@pytest.mark.parametrize(("change", "key"), [
    ({"version": 1.0}, "version"),
    ({"model_config": {"maxWorkers": 1}}, "model_config.minWorkers"),
    ({"model_config": {"minWorkers": 2, "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 0,
                       "responseTimeout": 1, "startupTimeout": 1}}, "model_config.minWorkers"),
])
def test_a_bad_model_yaml_names_the_file_and_the_key(tmp_path: Path, change: dict[str, Any],
                                                     key: str) -> None:
    raw = {**yaml.safe_load(Path("configs/models/tabular.yaml").read_text()), **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as caught:
        read_facts(path)
    assert caught.value.key == key and str(path) in str(caught.value) and "fix:" in str(caught.value)
