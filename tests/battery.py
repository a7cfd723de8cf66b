"""Requests shared by the unit tests (through the harness) and the end-to-end tests (over HTTP).

`bad_calls()` is the bad-input battery: distinct malformed requests across the
three models and the three request shapes, each with the status it must get and
words its error message must contain. `good_calls()` are well-formed requests in
every shape, each with the labels (or embeddings) its answer must hold.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any

import numpy as np
import requests
from PIL import Image

from scripts.build import datasets
from scripts.build.models import digit_png
from scripts.harness import FormField, RawRequest
from tests.helpers import SENTENCES, reference_digits, reference_tabular

MODELS = ("tabular", "digits", "minilm")
# Routes TorchServe offers for one model; all of them hand the handler the same raw body.
ROUTES = {
    "predictions": "/predictions/{model}",
    "versioned": "/predictions/{model}/1.0",
    "kserve-v1": "/v1/models/{model}:predict",
    "oip": "/v2/models/{model}/infer",
}


@dataclass(frozen=True)
class Call:
    """One request: a raw body with its content type, or multipart form fields."""

    model: str
    body: bytes = b""
    content_type: str = "application/json"
    route: str = "predictions"
    form: tuple[FormField, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    def raw_request(self) -> RawRequest:
        if self.form:
            return RawRequest.multipart(*self.form)
        return RawRequest(self.body, self.content_type, dict(self.headers))

    def path(self) -> str:
        return ROUTES[self.route].format(model=self.model)

    def send(self, inference_url: str, token: str | None = None, session: requests.Session | None = None,
             timeout: float = 60) -> requests.Response:
        """Over HTTP to a served model: the body with its content type and headers, or the form fields
        as multipart (a file part has a file name and a content type; a plain field has neither).
        `token`: the inference key, where token authorization is on."""
        url = inference_url + self.path()
        post = (session or requests).post
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if self.form:
            files = [(f.name, (f.name if f.content_type else None, f.value, f.content_type))
                     for f in self.form]
            return post(url, files=files, headers=headers, timeout=timeout)
        headers |= {"Content-Type": self.content_type, **dict(self.headers)}
        return post(url, data=self.body, headers=headers, timeout=timeout)


@dataclass(frozen=True)
class Bad:
    call: Call
    status: int
    message: str  # words the error message must contain
    oip: bool = False  # an OIP request: its error body is exactly {"error": "..."}


@dataclass(frozen=True)
class Good:
    call: Call
    expected: list[Any]  # one label per instance, or one embedding per text
    answers: Callable[[Any], list[Any]] = field(repr=False)


def as_json(document: Any) -> bytes:
    return json.dumps(document).encode()


def oip(name: str, datatype: str, shape: list[int], data: Any, **extra: Any) -> bytes:
    return as_json({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}],
                    **extra})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@cache
def huge_png(side: int) -> bytes:
    """side x side pixels in a few kilobytes of PNG."""
    return encoded(Image.new("L", (side, side)), "PNG")


def bad_calls() -> list[Bad]:
    row = datasets.breast_cancer().held_out_x[0].tolist()
    png = digit_png(datasets.digits().held_out_x[0])
    tabular, digits, minilm = (partial(Call, model) for model in MODELS)
    return [
        # ---- tabular: native JSON
        Bad(tabular(body=b"{oops"), 400, "not valid JSON"),
        Bad(tabular(body=b""), 400, "empty request body"),
        Bad(tabular(body=b"[1, 2, 3]"), 400, 'expected a JSON object {"features"'),
        Bad(tabular(body=as_json({"feature": row})), 400, 'expected a JSON object {"features"'),
        Bad(tabular(body=as_json({"features": row[:29]})), 400, "exactly 30 numbers, got 29 values"),
        Bad(tabular(body=as_json({"features": row[:29] + ["7"]})), 400, "'features[29]' must be a number"),
        Bad(tabular(body=b'{"features": [NaN' + b", 1" * 29 + b"]}"), 400, "finite float32"),
        Bad(tabular(body=as_json({"features": row[:29] + [1e39]})), 400, "finite float32"),
        Bad(tabular(body=as_json({"features": [10**400] + row[1:]})), 400, "'features[0]' must be a finite"),
        Bad(tabular(body=as_json({"features": [row] * 257})), 413, "the limit is 256"),
        Bad(tabular(body=b"[" * 5000 + b"]" * 5000), 400, "too deeply nested"),
        Bad(tabular(body=as_json({"features": [3e38] * 30})), 400, "output for this input is not finite"),
        Bad(tabular(body=png, content_type="image/png"), 415, "send application/json"),
        Bad(tabular(body=as_json({"features": row}), content_type="text/plain"), 415,
            "content type 'text/plain' is not supported"),
        Bad(tabular(body=as_json({"features": row}), content_type="application/x-www-form-urlencoded"),
            415, "url-encoded forms are not read"),
        Bad(tabular(body=b"features=1&x=2", content_type="application/x-www-form-urlencoded"),
            415, "url-encoded forms are not read"),
        # ---- tabular: KServe v1 and OIP
        Bad(tabular(body=as_json({"instances": [row[:3]]}), route="kserve-v1"), 400,
            "'instances[0]' must hold exactly 30 numbers"),
        Bad(tabular(body=as_json({"instances": []}), route="kserve-v1"), 400, "non-empty list"),
        Bad(tabular(body=as_json({"instances": [{"feature": row}]}), route="kserve-v1"), 400,
            "'instances[0]' must be [30 numbers] or"),
        Bad(tabular(body=as_json({"instances": [row], "inputs": []}), route="oip"), 400,
            "unknown keys ['instances']", oip=True),
        Bad(tabular(body=oip("features", "BYTES", [1, 30], [str(v) for v in row]), route="oip"), 400,
            "datatype' is BYTES; this model takes", oip=True),
        Bad(tabular(body=oip("features", "FP32", [2, 30], row), route="oip"), 400,
            "holds 60 elements but data has 30", oip=True),
        Bad(tabular(body=oip("features", "FP32", [1, 29], row[:29]), route="oip"), 400,
            "this model takes [N, 30]", oip=True),
        Bad(tabular(body=oip("features", "INT8", [1, 30], [300] * 30), route="oip"), 400,
            "not a valid INT8 value", oip=True),
        Bad(tabular(body=oip("features", "FP32", [1, 30], row, outputs=[{"name": "logits"}]),
                    route="oip"), 400, "requested outputs ['logits'] do not exist", oip=True),
        Bad(tabular(body=as_json({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 30],
                                              "data": row}] * 2}), route="oip"), 400,
            "exactly one tensor", oip=True),
        Bad(tabular(body=as_json({"inputs": [{"name": "a", "shape": [1, 30], "data": row}]}), route="oip"),
            400, "missing ['datatype']", oip=True),
        Bad(tabular(body=oip("features", "FP99", [1, 30], row), route="oip"), 400,
            "'FP99' is not an OIP datatype", oip=True),
        Bad(tabular(body=oip("features", ["FP32"], [1, 30], row), route="oip"), 400,
            "['FP32'] is not an OIP datatype", oip=True),
        Bad(tabular(body=oip("feats", "FP32", [1, 30], row), route="oip"), 400,
            "this model's input is 'features'", oip=True),
        Bad(tabular(body=oip("features", "FP16", [1, 30], [1e6] * 30), route="oip"), 400,
            "not a valid FP16 value", oip=True),
        Bad(tabular(body=oip("features", "FP32", [2, 30], [row[:20] + row[:10], row[:29]]), route="oip"),
            400, "'inputs[0].data[1]' must be a list of 30", oip=True),
        Bad(tabular(body=oip("features", "FP32", [1, 30], row, outputs=[{"name": "label"}] * 2),
                    route="oip"), 400, "more than once", oip=True),
        Bad(Call("tabular", oip("features", "FP32", [1, 30], row), "application/octet-stream", "oip",
                 headers=(("Inference-Header-Content-Length", "120"),)), 400,
            "binary tensor data extension is not supported", oip=True),
        # ---- digits
        Bad(digits(body=png[: len(png) // 2], content_type="image/png"), 400, "truncated"),
        Bad(digits(body=b"\x00\x01garbage" * 40, content_type="application/octet-stream"), 400,
            "not a readable image"),
        Bad(digits(body=b"", content_type="image/png"), 400, "empty body"),
        Bad(digits(body=huge_png(2049), content_type="image/png"), 413, "the limit is 4194304"),
        Bad(digits(body=huge_png(10_000), content_type="image/png"), 413, "the limit is 4194304"),
        Bad(digits(body=encoded(Image.new("L", (16, 16)), "PPM"), content_type="image/x-portable-pixmap"),
            415, "'image/x-portable-pixmap' is not supported"),
        Bad(digits(body=encoded(Image.new("L", (16, 16)), "PPM"), content_type="application/octet-stream"),
            400, "not a readable image (expected PNG, JPEG"),
        Bad(digits(body=encoded(Image.new("RGB", (16, 16), "white"), "WEBP",
                                exif=b"EM\x00*\x00\x00\x00\x08" + b"\x00" * 16), content_type="image/webp"),
            400, "cannot be read as grey levels"),
        Bad(digits(body=png, content_type="text/csv"), 415, "content type 'text/csv' is not supported"),
        Bad(digits(body=as_json({"image": "not base64!"})), 400, "'image' is not valid base64"),
        Bad(digits(body=as_json({"image": b64(b"garbage" * 10)})), 400, "'image': body is not a readable"),
        Bad(digits(body=as_json({"image": [b64(png)] * 17})), 413, "the limit is 16"),
        Bad(digits(body=as_json({"image": "data:image/png;base64"})), 400, "without a ','"),
        Bad(digits(body=as_json({"instances": [123]}), route="kserve-v1"), 400,
            "'instances[0]' must be base64 image bytes"),
        Bad(digits(body=oip("image", "FP32", [1, 64], [0.0] * 64), route="oip"), 400,
            "datatype' is FP32; this model takes BYTES", oip=True),
        Bad(digits(form=(FormField("first", png, "image/png"), FormField("second", b"junk", "image/png"))),
            400, "form field 'second'"),
        # ---- minilm
        Bad(minilm(body=as_json({"text": ""})), 400, "'text' is empty"),
        Bad(minilm(body=as_json({"text": 5})), 400, "'text' must be a string, got int"),
        Bad(minilm(body=b'{"text": "\\ud800"}'), 400, "not valid Unicode"),
        Bad(minilm(body=as_json({"text": "x" * 20_001})), 413, "the limit is 20000"),
        Bad(minilm(body=as_json({"text": ["a"] * 65})), 413, "the limit is 64"),
        Bad(minilm(body=b"\xff\xfe bad", content_type="text/plain"), 400, "not valid UTF-8"),
        Bad(minilm(body=png, content_type="image/png"), 415, "send application/json"),
        Bad(minilm(body=oip("text", "BYTES", [2], ["only one"]), route="oip"), 400,
            "holds 2 elements but data has 1", oip=True),
        Bad(minilm(body=oip("text", "BYTES", [1], [7]), route="oip"), 400, "not a valid BYTES value",
            oip=True),
        Bad(minilm(body=as_json({"instances": [{"txt": "x"}]}), route="kserve-v1"), 400,
            "'instances[0]' must be a string"),
    ]


def good_calls() -> list[Good]:
    """Well-formed requests in every shape, on every route, with the answers they must carry."""
    cancer, digit_split = datasets.breast_cancer(), datasets.digits()
    rows, images = cancer.held_out_x[:6], digit_split.held_out_x[:6]
    classes, digits = reference_tabular(rows).tolist(), reference_digits(images).tolist()
    pngs = [digit_png(image) for image in images]
    r = [row.tolist() for row in rows]
    texts = SENTENCES[:3]
    return [
        Good(Call("tabular", as_json({"features": r[0]})), classes[:1], lambda a: [a["class_index"]]),
        Good(Call("tabular", as_json({"features": r[1:3]}), route="versioned"), classes[1:3],
             lambda a: [x["class_index"] for x in a]),
        Good(Call("tabular", as_json({"instances": r[3:5]}), route="kserve-v1"), classes[3:5],
             lambda a: [x["class_index"] for x in a["predictions"]]),
        Good(Call("tabular", oip("features", "FP64", [2, 30], r[4:6], id="t-1"), route="oip"),
             classes[4:6], lambda a: oip_output(a, "class_index", "t-1")),
        Good(Call("digits", pngs[0], "image/png"), digits[:1], lambda a: [a["digit"]]),
        Good(Call("digits", as_json({"image": [b64(p) for p in pngs[1:3]]})), digits[1:3],
             lambda a: [x["digit"] for x in a]),
        Good(Call("digits", as_json({"instances": [{"b64": b64(pngs[3])}]}), route="kserve-v1"),
             digits[3:4], lambda a: [x["digit"] for x in a["predictions"]]),
        Good(Call("digits", oip("image", "BYTES", [2], [b64(p) for p in pngs[4:6]]),
                  route="oip"), digits[4:6], lambda a: oip_output(a, "digit")),
        Good(Call("digits", form=(FormField("a", pngs[0], "image/png"),
                                  FormField("b", pngs[1], "image/png"))),
             digits[:2], lambda a: [x["digit"] for x in a]),
        Good(Call("minilm", as_json({"text": texts[0]})), texts[:1], lambda a: [a["embedding"]]),
        Good(Call("minilm", texts[1].encode(), "text/plain"), texts[1:2], lambda a: [a["embedding"]]),
        Good(Call("minilm", as_json({"instances": texts[:2]}), route="kserve-v1"), texts[:2],
             lambda a: [x["embedding"] for x in a["predictions"]]),
        Good(Call("minilm", oip("text", "BYTES", [3], texts), route="oip"), texts,
             lambda a: np.reshape(oip_output(a, "embedding"), (-1, 384)).tolist()),
        Good(Call("minilm", form=(FormField("text", texts[2].encode()),)), texts[2:3],
             lambda a: [a["embedding"]]),  # one field: one answer, not a list
    ]


def oip_output(answer: dict[str, Any], name: str, request_id: str | None = None) -> list[Any]:
    """The data of one named output of an OIP response, after checking the response's frame."""
    assert set(answer) == {"model_name", "model_version", "id", "outputs"}, answer.keys()
    assert answer["model_version"] == "1.0"
    if request_id is not None:
        assert answer["id"] == request_id
    (tensor,) = [t for t in answer["outputs"] if t["name"] == name]
    return list(tensor["data"])


def check_good(good: Good, answer: Any, embeddings: dict[str, np.ndarray]) -> None:
    """Assert the answer holds the expected labels, or embeddings matching the reference."""
    got = good.answers(answer)
    if good.call.model != "minilm":
        assert got == good.expected, (good.call, got)
        return
    for text, vector in zip(good.expected, got, strict=True):
        cosine = float(np.dot(embeddings[text], vector) / np.linalg.norm(vector))
        assert cosine >= 0.9999, (good.call.route, text, cosine)


def check_bad(bad: Bad, status: int, body: str) -> None:
    assert status == bad.status, (bad, status, body)
    document = json.loads(body)
    if bad.oip:
        assert set(document) == {"error"}, document
    else:
        assert document["code"] == bad.status and document["type"], document
    assert bad.message in document["error"], (bad.message, document["error"])
