"""The load `make bench` drives with locust (headless, FastHttpUser, closed loop, no think time).

Environment: BENCH_BODIES (a JSON file: {"content_type": ..., "bodies": [base64, ...]}) and
BENCH_PATH (e.g. /predictions/tabular). Every user sends the bodies round robin,
from its own starting point, so all variants see the same inputs.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import random

from locust import FastHttpUser, constant, task

_REQUESTS = json.loads(open(os.environ["BENCH_BODIES"]).read())
BODIES = [base64.b64decode(body) for body in _REQUESTS["bodies"]]
HEADERS = {"Content-Type": _REQUESTS["content_type"]}
PATH = os.environ["BENCH_PATH"]


class ModelClient(FastHttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        start = random.randrange(len(BODIES))
        self.bodies = itertools.islice(itertools.cycle(BODIES), start, None)

    @task
    def predict(self) -> None:
        with self.client.post(PATH, data=next(self.bodies), headers=HEADERS, name=PATH,
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
