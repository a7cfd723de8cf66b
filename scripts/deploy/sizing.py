"""The numbers a pod spec needs, derived from the models' workers and timeouts, each with its reason.

Measured on our 2-core machine with the three example models served by
scripts/serve/local.py (one worker each, after 20 requests each, RSS from psutil):
the Java frontend 220 MB, the tabular and digits workers 266 and 281 MB, the
minilm worker 565 MB; all three were READY 24 s after the start.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scripts.deploy.facts import ModelFacts, total_workers
from scripts.serve.startup import FRONTEND_START_S  # the frontend's share of a start, as make serve waits

# Startup: the frontend (JVM) starts, then every model's workers load and warm up.
PROBE_PERIOD_S = 10          # how often each probe runs (an exec probe starts a Python: keep it sparse)
PROBE_TIMEOUT_S = 10         # one health command; it makes one or two loopback requests
# Shutdown: endpoints stop sending, requests already admitted finish, then TorchServe stops.
ENDPOINT_PROPAGATION_S = 10  # a terminating pod leaves the Service's endpoints; proxies follow within seconds
STOP_S = 30                  # SIGTERM to exit: frontend and workers (scripts/serve/local.py waits 30 s)
# Resources: one core per worker and one for the frontend; memory from the measurements above.
FRONTEND_CPU = 1
CPU_PER_WORKER = 1
FRONTEND_MEMORY_MIB = 768    # 220 MB measured idle, plus queued request bodies and JVM heap growth
MEMORY_PER_WORKER_MIB = 640  # the largest worker measured (minilm, 565 MB) plus room for a full batch
TMP_SIZE = "1Gi"             # extracted archives (~100 MB for the examples), worker sockets, the JVM's files
SERVER_DIR_SIZE = "1Gi"      # TorchServe's logs (log4j rolls each file at 100 MB) and key_file.json


@dataclass(frozen=True)
class Budget:
    """Everything the Deployment derives from the models."""

    startup_s: int              # how long the startup probe lets load and warm-up take
    startup_failures: int       # failureThreshold of the startup probe: startup_s / PROBE_PERIOD_S
    drain_s: int                # preStop sleep: endpoints follow, in-flight requests finish
    grace_s: int                # terminationGracePeriodSeconds: drain_s + STOP_S
    cpu: int                    # cores, requests = limits
    memory_mib: int             # MiB, requests = limits


def startup_seconds(models: Sequence[ModelFacts]) -> int:
    """The frontend's start plus every model's startupTimeout, summed.

    Summed, not the largest: the pod is given fewer cores than a machine where each
    model's startupTimeout was chosen, so concurrent loads can take as long as
    serial ones. A budget too long only delays the restart of a pod that will never
    start; one too short restarts pods that would have come up, in a loop.
    """
    return FRONTEND_START_S + sum(model.startup_timeout for model in models)


def drain_seconds(models: Sequence[ModelFacts]) -> int:
    """Time between the pod leaving the endpoints and SIGTERM: TorchServe has no drain of its own
    (`torchserve --stop` resets connections in flight), so wait out the slowest model's
    responseTimeout, after which TorchServe itself gives up on a batch."""
    return ENDPOINT_PROPAGATION_S + max(model.response_timeout for model in models)


def budget(models: Sequence[ModelFacts]) -> Budget:
    startup = startup_seconds(models)
    drain = drain_seconds(models)
    workers = total_workers(models)
    return Budget(
        startup_s=startup,
        startup_failures=math.ceil(startup / PROBE_PERIOD_S),
        drain_s=drain,
        grace_s=drain + STOP_S,
        cpu=FRONTEND_CPU + CPU_PER_WORKER * workers,
        memory_mib=FRONTEND_MEMORY_MIB + MEMORY_PER_WORKER_MIB * workers,
    )


def resources(plan: Budget) -> dict[str, dict[str, str]]:
    """Requests equal to limits (Guaranteed QoS): memory is not compressible, and whole cores let a
    node's static CPU manager pin them, so torch's thread count matches the cores it gets."""
    amounts = {"cpu": str(plan.cpu), "memory": f"{plan.memory_mib}Mi",
               "ephemeral-storage": _sum_gi(TMP_SIZE, SERVER_DIR_SIZE)}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _sum_gi(*sizes: str) -> str:
    return f"{sum(int(size.removesuffix('Gi')) for size in sizes)}Gi"
