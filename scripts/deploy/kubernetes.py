"""Kubernetes manifests for the toolkit's image, generated from the model YAMLs (`make manifests`).

    python -m scripts.deploy.kubernetes [--out deploy/kubernetes]

Writes one file per object (Deployment, Service, PodDisruptionBudget, NetworkPolicy,
HorizontalPodAutoscaler and the Prometheus adapter's rules), each opening with the
reasons for its settings. The numbers come from configs/models/*.yaml through
scripts/deploy/sizing.py; the image's layout (paths, user, ports, properties) is
deploy/container/Containerfile's. The files are committed, and a unit test checks
that regenerating them gives the committed bytes.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.deploy import autoscaling, sizing
from scripts.deploy.facts import ModelFacts, read_all
from scripts.deploy.manifest_text import KUBERNETES_NOTES, render

logger = logging.getLogger(__name__)

OUT = Path("deploy/kubernetes")
NAME = "torchserve"
IMAGE = "torchserve-toolkit:latest"
SERVER_DIR = "/var/lib/torchserve"  # the image's WORKDIR and HOME: key_file.json, logs
UID = 10001                         # the image's user `serve`
SELECTOR = {"app.kubernetes.io/name": "torchserve-toolkit", "app.kubernetes.io/instance": NAME}
LABELS = {**SELECTOR, "app.kubernetes.io/component": "inference"}
CLIENT_LABEL = {"torchserve-toolkit/client": "true"}   # pods allowed to call the inference API
MONITORING_NAMESPACE = "monitoring"                    # where Prometheus runs: it may scrape 8082
PORTS = {"http-inference": 8080, "grpc-inference": 7070, "http-metrics": 8082}
# TS_<PROPERTY> overrides of the image's properties (it sets enable_envvars_config=true).
SERVER_ENV = {
    # Management only on the pod's loopback: the probes run inside the pod, nothing else needs it.
    "TS_MANAGEMENT_ADDRESS": "http://127.0.0.1:8081",
    "TS_GRPC_MANAGEMENT_ADDRESS": "127.0.0.1",
    # TorchServe 0.12 cannot take its keys from a Secret (see the Deployment's notes).
    "TS_DISABLE_TOKEN_AUTHORIZATION": "true",
    "TS_ENABLE_MODEL_API": "false",
}
HEALTH = ["python", "-m", "scripts.serve.health"]


def deployment(models: Sequence[ModelFacts]) -> dict[str, Any]:
    plan = sizing.budget(models)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "labels": LABELS},
        "spec": {
            "replicas": autoscaling.MIN_REPLICAS,
            "selector": {"matchLabels": SELECTOR},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
            "minReadySeconds": 10,
            "progressDeadlineSeconds": plan.startup_s + 300,
            "template": {"metadata": {"labels": LABELS, "annotations": _scrape_annotations()},
                         "spec": _pod_spec(plan)},
        },
    }


def _pod_spec(plan: sizing.Budget) -> dict[str, Any]:
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": plan.grace_s,
        "securityContext": {"runAsUser": UID, "runAsGroup": UID, "fsGroup": UID, "runAsNonRoot": True,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": SELECTOR}}],
        "containers": [_container(plan)],
        "volumes": [{"name": "server", "emptyDir": {"sizeLimit": sizing.SERVER_DIR_SIZE}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": sizing.TMP_SIZE}}],
    }


def _container(plan: sizing.Budget) -> dict[str, Any]:
    env = {**SERVER_ENV, "DRAIN_SECONDS": str(plan.drain_s)}
    return {
        "name": "torchserve",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in PORTS.items()],
        "env": [{"name": key, "value": value} for key, value in env.items()],
        "resources": sizing.resources(plan),
        "startupProbe": _probe(HEALTH, plan.startup_failures),
        "readinessProbe": _probe(HEALTH, 3),
        "livenessProbe": _probe([*HEALTH, "--live"], 3, period=2 * sizing.PROBE_PERIOD_S),
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False,
                            "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "server", "mountPath": SERVER_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }


def _probe(command: list[str], failures: int, period: int = sizing.PROBE_PERIOD_S) -> dict[str, Any]:
    return {"exec": {"command": command}, "periodSeconds": period, "timeoutSeconds": sizing.PROBE_TIMEOUT_S,
            "failureThreshold": failures, "successThreshold": 1}


def _scrape_annotations() -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORTS["http-metrics"]),
            "prometheus.io/path": "/metrics"}


def service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NAME, "labels": LABELS},
        "spec": {"type": "ClusterIP", "selector": SELECTOR,
                 "ports": [{"name": name, "port": port, "targetPort": name, "protocol": "TCP"}
                           for name, port in PORTS.items()]},
    }


def disruption_budget() -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": NAME, "labels": LABELS},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR},
                 "unhealthyPodEvictionPolicy": "AlwaysAllow"},
    }


def network_policy() -> dict[str, Any]:
    inference = [{"port": PORTS["http-inference"], "protocol": "TCP"},
                 {"port": PORTS["grpc-inference"], "protocol": "TCP"}]
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": NAME, "labels": LABELS},
        "spec": {
            "podSelector": {"matchLabels": SELECTOR},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": CLIENT_LABEL}}],
                 "ports": inference},
                {"from": [prometheus], "ports": [{"port": PORTS["http-metrics"], "protocol": "TCP"}]},
            ],
            "egress": [],
        },
    }


def manifests(models: Sequence[ModelFacts],
              metric: autoscaling.ScalingMetric) -> dict[str, list[dict[str, Any]]]:
    """File name -> the objects it holds."""
    adapter = f"{NAME}-prometheus-adapter"
    return {
        "deployment.yaml": [deployment(models)],
        "service.yaml": [service()],
        "poddisruptionbudget.yaml": [disruption_budget()],
        "networkpolicy.yaml": [network_policy()],
        "hpa.yaml": [autoscaling.horizontal_pod_autoscaler(metric, NAME, LABELS)],
        "prometheus-adapter-rules.yaml": [autoscaling.adapter_config_map(
            metric, adapter, {**SELECTOR, "app.kubernetes.io/component": "autoscaling"})],
    }


def generate(models: Sequence[ModelFacts], metric: autoscaling.ScalingMetric) -> dict[str, str]:
    """File name -> its text, header notes included."""
    plan = sizing.budget(models)
    return {name: render(KUBERNETES_NOTES[name](models, plan, metric), objects)
            for name, objects in manifests(models, metric).items()}


def write(out: Path, files: dict[str, str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        logger.info("wrote %s", out / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the manifests")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write(args.out, generate(read_all(), autoscaling.read_metric()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
