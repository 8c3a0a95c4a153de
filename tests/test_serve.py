"""The web server: every endpoint, every bad input the server must refuse (and keep serving), the bounded
queue under 50 parallel requests, batching of waiting requests, and the ``visattn serve`` command line."""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra: pip install -e '.[serve]'")
pytest.importorskip("python_multipart", reason="uploads need python-multipart: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from serve_checkpoints import IMAGE_SIZE, load_predictors, train_tiny_checkpoints  # noqa: E402
from visattn.serve import InferencePool, QueueFull, create_app  # noqa: E402
from visattn.serve.limits import ApiError, decode_upload, parse_options  # noqa: E402
from visattn.serve.samples import draw_sample, sample_support  # noqa: E402


@pytest.fixture(scope="module")
def predictors(tmp_path_factory):
    return load_predictors(train_tiny_checkpoints(tmp_path_factory.getbasetemp() / "serve-checkpoints"))


@pytest.fixture(scope="module")
def client(predictors):
    with TestClient(create_app(predictors, workers=2, queue_size=16)) as client:
        yield client


def png_bytes(size: tuple[int, int] = (40, 30), mode: str = "RGB", seed: int = 0) -> bytes:
    pixels = torch.Generator().manual_seed(seed)
    array = (torch.rand(size[1], size[0], 3, generator=pixels) * 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_png(client, name: str, seed: int = 3) -> bytes:
    response = client.get(f"/api/sample/{name}", params={"seed": seed})
    assert response.status_code == 200, response.text
    return base64.b64decode(response.json()["image"].split(",", 1)[1])


def post(client, name: str, data: bytes | None, filename: str = "scene.png", route: str = "predict", **fields):
    files = {"file": (filename, data, "image/png")} if data is not None else None
    return client.post(f"/api/{route}/{name}", files=files, data={k: str(v) for k, v in fields.items()})


def assert_maps(maps, grid):
    maps = torch.tensor(maps)
    assert maps.shape[1:] == tuple(grid)
    torch.testing.assert_close(maps.sum((-2, -1)), torch.ones(maps.shape[0]), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------ endpoints
def test_page_static_files_models_health_and_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '/static/app.js' in page.text and '/static/style.css' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from the network: works offline
    for path, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        response = client.get(path)
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert "http://" not in response.text and "https://" not in response.text
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert {name: m["task"] for name, m in models.items()} == {"captioner": "caption", "classifier": "classify",
                                                               "detector": "detect"}
    for m in models.values():
        assert m["image_size"] == IMAGE_SIZE and m["grid"] == [8, 8] and m["sample"] is True
    assert set(models["captioner"]["options"]) == {"beam_size", "n_best", "max_len", "length_penalty"}
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["workers_alive"] == health["workers"] == 2
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    form = paths["/api/predict/{name}"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"file", "beam_size", "n_best", "top_k", "score_threshold"} <= set(form["properties"])
    caption_form = paths["/api/caption/{name}"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert "score_threshold" not in caption_form["properties"]


def test_predict_caption_returns_n_best_with_one_map_per_word(client):
    response = post(client, "captioner", sample_png(client, "captioner"), beam_size=3, n_best=2)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "caption" and body["model"] == "captioner" and body["image_size"] == [IMAGE_SIZE] * 2
    assert len(body["captions"]) == 2
    for hypothesis in body["captions"]:
        assert len(hypothesis["word_scores"]) == len(hypothesis["words"]) == len(hypothesis["attention"])
        assert_maps(hypothesis["attention"], body["grid"])
    assert body["captions"][0]["score"] >= body["captions"][1]["score"]


def test_predict_classify_and_detect(client):
    classify = post(client, "classifier", png_bytes((50, 40)), top_k=3).json()
    assert classify["task"] == "classify" and classify["image_size"] == [40, 50]
    probabilities = [entry["probability"] for entry in classify["top_k"]]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
    assert classify["label"] == classify["top_k"][0]["label"]
    assert_maps(classify["attention"], classify["grid"])
    assert len(classify["attention"]) == 2  # one map per glimpse
    detect = post(client, "detector", sample_png(client, "detector"), score_threshold=0.0).json()
    assert detect["task"] == "detect" and len(detect["detections"]) == 5  # every query kept at threshold 0
    scores = [d["score"] for d in detect["detections"]]
    assert scores == sorted(scores, reverse=True)
    assert_maps([d["attention"] for d in detect["detections"]], detect["grid"])
    for d in detect["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= IMAGE_SIZE and 0 <= y1 <= y2 <= IMAGE_SIZE
    assert len({d["query"] for d in detect["detections"]}) == 5


def test_task_endpoints_refuse_a_model_of_another_task(client):
    assert post(client, "captioner", png_bytes(), route="caption").status_code == 200
    response = post(client, "classifier", png_bytes(), route="caption")
    assert response.status_code == 400
    assert "'classifier' is a classify model" in response.json()["error"]
    assert "captioner" in response.json()["error"]  # names the model that would do


def test_sample_draws_a_scene_of_the_model_kind_with_references(client):
    for name, keys in (("captioner", {"captions"}), ("classifier", {"label"}), ("detector", {"boxes", "labels"})):
        body = client.get(f"/api/sample/{name}").json()
        assert keys <= set(body["references"]) and body["references"]["objects"]
        image = Image.open(io.BytesIO(base64.b64decode(body["image"].split(",", 1)[1])))
        assert image.size == (IMAGE_SIZE, IMAGE_SIZE) and "procedural" in body["note"]
    first, again = (client.get("/api/sample/captioner", params={"seed": 11}).json() for _ in range(2))
    assert first["image"] == again["image"] and first["references"] == again["references"]
    assert client.get("/api/sample/captioner", params={"seed": 12}).json()["image"] != first["image"]
    assert client.get("/api/sample/captioner", params={"seed": -1}).status_code == 422
    assert client.get("/api/sample/nobody").status_code == 404


def test_samples_only_for_models_of_procedural_scenes():
    from visattn.data.scenes import CLASS_NAMES

    assert sample_support("classify", class_names=list(CLASS_NAMES), image_size=64) is None
    assert "classes" in sample_support("classify", class_names=["cat", "dog"], image_size=64)
    assert "vocabulary" in sample_support("caption", vocab=["<pad>", "a", "dog", "on", "grass"], image_size=224)
    assert "image size" in sample_support("detect", class_names=list(CLASS_NAMES), image_size=16)
    boxes = draw_sample("detect", image_size=48, seed=5)["references"]
    assert len(boxes["boxes"]) == len(boxes["labels"]) >= 1
    with pytest.raises(ValueError, match="unknown task 'segment'; valid: classify, caption, detect"):
        draw_sample("segment", image_size=48)


# ------------------------------------------------------------------------------------------------ bad input
def truncated_png() -> bytes:
    data = png_bytes((64, 64))
    return data[: len(data) // 2]


def bomb_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, format="PNG")  # 81 megapixels in about 10 kB
    return buffer.getvalue()


BAD_UPLOADS = [
    # (name, upload (bytes, a function making them, "ok" for a good image), fields, status, field, words in the message)
    ("no file", None, {}, 422, "file", "no file"),
    ("empty file", b"", {}, 400, "file", "empty file"),
    ("not an image", b"just some text, not pixels", {}, 415, "file", "not an image"),
    ("truncated image", truncated_png, {}, 400, "file", "truncated or corrupt"),
    ("decompression bomb", bomb_png, {}, 413, "file", "decompression-bomb limit"),
    ("option not a number", "ok", {"beam_size": "three"}, 422, "beam_size", "must be an integer"),
    ("option out of range", "ok", {"beam_size": "0"}, 422, "beam_size", "must be in [1, 20]"),
    ("option not finite", "ok", {"length_penalty": "nan"}, 422, "length_penalty", "must be in"),
    ("n_best over beam", "ok", {"beam_size": "2", "n_best": "3"}, 422, "n_best", "cannot exceed beam_size"),
    ("option of another task", "ok", {"score_threshold": "0.5"}, 422, "score_threshold", "detect models"),
    ("unknown option", "ok", {"beam": "3"}, 422, "beam", "valid: beam_size, n_best"),
]


def upload_bytes(upload):
    return png_bytes() if upload == "ok" else upload() if callable(upload) else upload


@pytest.mark.parametrize("case", BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_bad_input_gets_a_4xx_json_error_naming_the_field(client, case):
    _, upload, fields, status, field, words = case
    data = upload_bytes(upload)
    response = post(client, "captioner", data, filename="dir/cat.png", **fields)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field and words in body["error"], body
    assert "Traceback" not in response.text and "/tmp" not in response.text  # no internals leak out
    if field == "file" and upload:
        assert body["error"].startswith("cat.png: ")  # the name the browser sent, without its folder


def test_text_instead_of_a_file_duplicate_fields_and_unknown_models(client):
    response = client.post("/api/predict/captioner", data={"file": "not a file"})
    assert response.status_code == 422 and response.json()["field"] == "file"
    response = client.post("/api/predict/captioner", files=[("file", ("a.png", png_bytes(), "image/png")),
                                                            ("file", ("b.png", png_bytes(), "image/png"))])
    assert response.status_code == 422 and "more than once" in response.json()["error"]
    response = post(client, "nobody", png_bytes())
    assert response.status_code == 404
    assert response.json()["error"] == "unknown model 'nobody'; this server has: captioner, classifier, detector"


def test_upload_over_the_limit_is_413_whether_declared_or_streamed(predictors):
    with TestClient(create_app(predictors, max_upload_mb=0.05)) as small:
        big = png_bytes((400, 400))  # about 470 kB of noise, over 0.05 MB
        response = post(small, "captioner", big)
        assert response.status_code == 413 and "the limit is 0.05 MB" in response.json()["error"]
        boundary = "visattn-test-boundary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def chunks():  # no Content-Length: the body arrives in pieces and is cut off past the limit
            yield head
            for start in range(0, len(big), 16384):
                yield big[start:start + 16384]
            yield tail

        response = small.post("/api/predict/captioner", content=chunks(),
                              headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert response.status_code == 413 and response.json()["field"] == "file"
        assert post(small, "captioner", png_bytes()).status_code == 200  # still serving
    with pytest.raises(ApiError, match="over the upload limit"):
        decode_upload(b"x" * 11, "a.png", max_bytes=10)


def test_the_server_keeps_serving_after_every_bad_input(client):
    for _, upload, fields, *_ in BAD_UPLOADS:
        assert post(client, "captioner", upload_bytes(upload), **fields).status_code in (400, 413, 415, 422)
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["workers_alive"] == 2 and health["queued"] == 0
    assert post(client, "captioner", png_bytes()).status_code == 200


def test_parse_options_checks_each_task():
    assert parse_options("detect", {"file": object(), "score_threshold": "0.25", "top_k": "7"}, model="d") == {
        "score_threshold": 0.25, "top_k": 7}
    with pytest.raises(ApiError, match=r"top_k must be in \[1, 1000\]") as error:
        parse_options("classify", {"top_k": "5000"}, model="c")
    assert error.value.status == 422 and error.value.field == "top_k"


# ------------------------------------------------------------------------------------------------ load
class Gated:
    """A Predictor whose ``predict`` waits for ``release``: lets a test hold the workers busy."""

    def __init__(self, inner):
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batch_sizes: list[int] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, images, **options):
        self.batch_sizes.append(len(images))
        self.entered.set()
        assert self.release.wait(60), "test never released the gate"
        return self.inner.predict(images, **options)


def test_50_parallel_requests_against_2_workers_get_200_or_503_and_the_server_stays_healthy(predictors):
    app = create_app({"captioner": predictors["captioner"]}, workers=2, queue_size=4, max_batch=4)
    data = png_bytes()
    with TestClient(app) as client:
        with ThreadPoolExecutor(max_workers=50) as threads:
            responses = list(threads.map(lambda _: post(client, "captioner", data), range(50)))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503} and codes.count(200) >= 1, codes
        for response in responses:
            if response.status_code == 503:
                assert response.headers["retry-after"] == "1" and "busy" in response.json()["error"]
            else:
                assert response.json()["captions"][0]["words"] == responses[codes.index(200)].json()["captions"][0]["words"]
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["workers_alive"] == 2 and health["queued"] == 0
        assert health["completed"] == codes.count(200) and health["rejected"] <= codes.count(503)
        assert post(client, "captioner", data).status_code == 200


def test_full_queue_answers_503_with_retry_after_and_waiting_requests_run_as_one_batch(predictors):
    gated = Gated(predictors["captioner"])
    app = create_app({"captioner": gated}, workers=1, queue_size=3, max_batch=8, retry_after=7)
    scenes = [png_bytes(seed=i) for i in range(4)]
    with TestClient(app) as client, ThreadPoolExecutor(max_workers=4) as threads:
        running = threads.submit(post, client, "captioner", scenes[0])
        assert gated.entered.wait(30)  # the one worker is busy now
        waiting = [threads.submit(post, client, "captioner", scene) for scene in scenes[1:]]
        pool = app.state.pool
        for _ in range(600):
            if pool.queued == 3:
                break
            threading.Event().wait(0.05)
        assert pool.queued == 3
        refused = post(client, "captioner", scenes[0])
        assert refused.status_code == 503 and refused.headers["retry-after"] == "7"
        gated.release.set()
        answers = [running.result(60), *(future.result(60) for future in waiting)]
    assert [a.status_code for a in answers] == [200] * 4
    assert gated.batch_sizes == [1, 3]  # the three that waited ran as one batch
    for scene, answer in zip(scenes[1:], answers[1:]):  # batched equals alone
        alone = predictors["captioner"].predict(Image.open(io.BytesIO(scene)))[0]
        assert answer.json()["captions"][0]["words"] == alone.words
        torch.testing.assert_close(torch.tensor(answer.json()["captions"][0]["attention"]), alone.attention)


def test_pool_survives_a_failing_predict_and_validates_its_arguments(predictors):
    class Failing:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def predict(self, images, **options):
            if images[0].width == 13:
                raise RuntimeError("CUDA out of memory (pretend)")
            return self.inner.predict(images, **options)

    with TestClient(create_app({"classifier": Failing(predictors["classifier"])}, workers=1)) as client:
        response = post(client, "classifier", png_bytes((13, 20)))
        assert response.status_code == 500 and "RuntimeError: CUDA out of memory" in response.json()["error"]
        assert "Traceback" not in response.text
        assert post(client, "classifier", png_bytes((20, 20))).status_code == 200
        assert client.get("/healthz").json()["workers_alive"] == 1
    with pytest.raises(ValueError, match="queue_size must be an int >= 1"):
        InferencePool({}, queue_size=0)
    assert issubclass(QueueFull, RuntimeError)


# ------------------------------------------------------------------------------------------------ command line
def test_cli_serve_errors_are_one_line(tmp_path, capsys):
    import socket

    from visattn.cli import main
    from visattn.cli.common import CliError
    from visattn.cli.serve import bind_socket, parse_checkpoint_spec

    assert main(["serve", "--checkpoint", str(tmp_path / "missing.safetensors")]) == 1
    assert "missing.safetensors" in capsys.readouterr().err
    assert parse_checkpoint_spec("demo=runs/x.safetensors") == ("demo", tmp_path.__class__("runs/x.safetensors"))
    assert parse_checkpoint_spec("runs/a=b/x.safetensors")[0] is None
    with bind_socket("127.0.0.1", 0) as listening:  # a TCP socket, so asyncio sets TCP_NODELAY on each connection
        assert listening.proto == socket.IPPROTO_TCP
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(CliError, match=f"port {taken.getsockname()[1]} on 127.0.0.1 is in use"):
            bind_socket("127.0.0.1", taken.getsockname()[1])
