"""The load `make bench` drives with locust (headless, FastHttpUser, closed loop, no think time).

Environment: BENCH_BODIES (a JSON file: {"content_type": ..., "bodies": [base64, ...]}) and
BENCH_PATH (e.g. /predictions/tabular). Every user sends the bodies round robin,
from its own starting point, so all variants see the same inputs.
Optional: BENCH_TOKEN (sent as `Authorization: Bearer`), and BENCH_RESPONSES (a file
that gets one line per response: sent and answered Unix times, status, X-Model-Version),
which the rollout tests read to see which version answered when.
BENCH_USER_RATE (requests per second per user): each user paces itself to that rate
(locust's constant_throughput) instead of sending the next request at once, so many users
approximate an open loop at users x rate, which `make overload` needs: in a closed loop a
refused client sends again at once, and the refusals multiply.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import random
import time

import gevent
from locust import FastHttpUser, constant, constant_throughput, task

_REQUESTS = json.loads(open(os.environ["BENCH_BODIES"]).read())
BODIES = [base64.b64decode(body) for body in _REQUESTS["bodies"]]
HEADERS = {"Content-Type": _REQUESTS["content_type"]}
if os.environ.get("BENCH_TOKEN"):
    HEADERS["Authorization"] = f"Bearer {os.environ['BENCH_TOKEN']}"
PATH = os.environ["BENCH_PATH"]
RESPONSES = open(os.environ["BENCH_RESPONSES"], "a") if os.environ.get("BENCH_RESPONSES") else None
USER_RATE = float(os.environ.get("BENCH_USER_RATE") or 0)


class ModelClient(FastHttpUser):
    wait_time = constant_throughput(USER_RATE) if USER_RATE > 0 else constant(0)

    def on_start(self) -> None:
        start = random.randrange(len(BODIES))
        self.bodies = itertools.islice(itertools.cycle(BODIES), start, None)
        if USER_RATE > 0:  # a random phase, so paced users do not all send at the same instants
            gevent.sleep(random.uniform(0, 1 / USER_RATE))

    @task
    def predict(self) -> None:
        sent = time.time()
        with self.client.post(PATH, data=next(self.bodies), headers=HEADERS, name=PATH,
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
        if RESPONSES is not None:
            version = response.headers.get("X-Model-Version", "-") if response.headers else "-"
            RESPONSES.write(f"{sent:.6f} {time.time():.6f} {response.status_code} {version}\n")
            RESPONSES.flush()
