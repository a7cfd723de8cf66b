"""The common alternative to TorchServe, as a benchmark baseline: one FastAPI + uvicorn process
calling the model once per request (no batching), with the same model code and answers.

    BENCH_MODEL=tabular python -m uvicorn scripts.measure.baselines.fastapi_app:app --port 8090
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from handlers.batch import native_answers
from scripts.measure.baselines.plain_handler import load_model, model_files, plain_batch

KIND = os.environ.get("BENCH_MODEL", "tabular")


def _load() -> Any:
    """The model from its build folder."""
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return load_model(KIND, *model_files(KIND), device)


MODEL = _load()
app = FastAPI()


def _answer(body: bytes) -> Any:
    parsed = body if KIND == "digits" else json.loads(body)
    with torch.inference_mode():
        rows = MODEL.inference(plain_batch(KIND, MODEL, [parsed])).cpu()
    return native_answers(MODEL, MODEL.postprocess(rows), 1)[0]


@app.get("/ping")
async def ping() -> dict[str, str]:
    return {"status": "Healthy"}


@app.post("/predictions/{name}")
async def predict(name: str, request: Request) -> Any:
    return await run_in_threadpool(_answer, await request.body())
