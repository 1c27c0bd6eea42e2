"""`tailorkd serve`: the HTTP service on a tiny trained run (real uvicorn on a free loopback port).

No test measures time. Where threads race (batching, shutdown), the test makes the order itself: a gated
predictor holds the worker while requests queue, and each step waits for a condition it can observe (texts
queued, the worker inside the model, new connections refused), never for a fixed sleep.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import PATIENCE_S, SERVE_TEMPERATURE, TOPICS, gated, running, wait_for
from tailorkd import pipeline
from tailorkd.cli import main
from tailorkd.run_dir import RunDir
from tailorkd.serve.app import ServeError, ServeOptions, create_app, parse_request, request_model
from tailorkd.serve.predictor import ServedModel
from tailorkd.serve.server import check_options, is_loopback

TOKEN = "tiny-s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEMPERATURE = SERVE_TEMPERATURE


@pytest.fixture(scope="module")
def expected(trained):
    """What `tailorkd classify` answers for each text of the fixture."""
    _, recipe, texts = trained
    rows = pipeline.classify(recipe, [{"id": i, "text": t} for i, t in enumerate(texts)])
    return {t: r for t, r in zip(texts, rows)}


def assert_matches(result: dict, want: dict) -> None:
    """One service answer against `tailorkd classify`'s for the same text."""
    probs = np.array([result["probabilities"][t] for t in TOPICS])
    np.testing.assert_allclose(probs, [want["probabilities"][t] for t in TOPICS], atol=1e-5)
    top = np.sort(probs)[-2:]
    if top[1] - top[0] > 1e-5:  # a near tie may break either way when the batches differ
        assert result["label"] == want["label"]
    assert result["confidence"] == pytest.approx(want["confidence"], abs=1e-5)
    assert result["severity"] == want["severity"]


def metric(metrics_text: str, name: str, **labels) -> float:
    """The value of sample ``name`` with ``labels`` in a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


# -- answers ----------------------------------------------------------------------------------------------
def test_answers_equal_tailorkd_classify(trained, model, expected):
    _, recipe, texts = trained
    assert model.info["temperature"] == TEMPERATURE
    with running(create_app(model, token=TOKEN)) as (url, _), httpx.Client(base_url=url) as client:
        for start in range(0, len(texts), 7):  # several requests of several texts
            part = texts[start : start + 7]
            r = client.post("/v1/classify", json={"texts": part}, headers=AUTH)
            assert r.status_code == 200, r.text
            body = r.json()
            assert len(body["results"]) == len(part)
            for result, text in zip(body["results"], part):
                assert set(result) == {"label", "confidence", "severity", "probabilities"}
                assert_matches(result, expected[text])
            info = body["model"]
            assert info["name"] == recipe.name and info["labels"] == TOPICS and info["temperature"] == TEMPERATURE
            assert info["version"] == json.loads((RunDir(recipe).student_dir() / "student.json").read_text())[
                "recipe_hash"]
            assert body["latency_ms"] >= 0
        # Severity comes from the recipe's alerts: every business prediction here is at least "low".
        assert {r["severity"] for r in expected.values() if r["label"] == "business"} <= {"high", "low"}
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        docs = client.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        schema = client.get("/openapi.json").json()
        body_schema = schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body_schema["properties"]["texts"]["maxItems"] == ServeOptions().max_texts


# -- bad requests ------------------------------------------------------------------------------------------
STREAMED = "streamed"  # a body sent in chunks without a Content-Length


def _chunks(total: int):
    for _ in range(total // 100):
        yield b" " * 100


LIMITS = ServeOptions(max_texts=3, max_chars=40, max_body_bytes=600)
BAD = [  # (what, request kwargs, status, a part of the message)
    ("empty body", {"content": b""}, 400, "body: empty"),
    ("malformed JSON", {"content": b'{"texts": ["a",'}, 400, "body: malformed JSON"),
    ("not UTF-8", {"content": b'{"texts": ["caf\xe9"]}'}, 400, "body: not UTF-8"),
    ("body not an object", {"json": ["a", "b"]}, 422, "body: must be a JSON object"),
    ("texts missing", {"json": {}}, 422, "texts: missing"),
    ("misspelt field", {"json": {"text": ["a"]}}, 422, "text: unknown field"),
    ("texts not a list", {"json": {"texts": "a"}}, 422, "texts: must be a list of strings"),
    ("a text not a string", {"json": {"texts": ["a", 7]}}, 422, "texts[1]: must be a string"),
    ("empty text list", {"json": {"texts": []}}, 422, "texts: empty list"),
    ("too many texts", {"json": {"texts": ["a", "b", "c", "d"]}}, 422, "texts: 4 texts, at most 3"),
    ("text too long", {"json": {"texts": ["a", "b" * 41]}}, 422, "texts[1]: 41 characters, at most 40"),
    ("empty text", {"json": {"texts": [""]}}, 422, "texts[0]: empty text"),
    ("blank text", {"json": {"texts": ["  \n"]}}, 422, "texts[0]: the text is blank"),
    ("lone surrogate", {"content": b'{"texts": ["\\ud800"]}'}, 422, "texts[0]: not valid Unicode"),
    ("body too large", {"json": {"texts": ["a" * 700]}}, 413, "body: 7"),
    ("body too large, streamed", {"content": STREAMED}, 413, "body: more than 600 bytes"),
    ("no token", {"json": {"texts": ["a"]}, "headers": {}}, 401, "missing bearer token"),
    ("wrong token", {"json": {"texts": ["a"]}, "headers": {"Authorization": "Bearer nope"}}, 401,
     "invalid bearer token"),
    ("token of another scheme", {"json": {"texts": ["a"]}, "headers": {"Authorization": f"Basic {TOKEN}"}}, 401,
     "missing bearer token"),
    ("a token prefix", {"json": {"texts": ["a"]}, "headers": {"Authorization": f"Bearer {TOKEN[:-1]}"}}, 401,
     "invalid bearer token"),
]


def test_every_bad_request_gets_a_4xx_with_a_message_and_the_service_goes_on(model, expected, caplog):
    good_text = next(iter(expected))[:40]
    with running(create_app(model, LIMITS, token=TOKEN)) as (url, _), httpx.Client(base_url=url) as client:
        first = client.post("/v1/classify", json={"texts": [good_text]}, headers=AUTH)
        assert first.status_code == 200
        good_answer = first.json()["results"][0]
        for what, kwargs, status, message in BAD:
            kwargs = dict(kwargs)
            headers = kwargs.pop("headers", AUTH)
            if kwargs.get("content") is STREAMED:
                kwargs["content"] = _chunks(700)  # a generator: httpx sends it chunked, without Content-Length
            r = client.post("/v1/classify", headers=headers, **kwargs)
            assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
            error = r.json()["error"]
            assert message in error["message"], f"{what}: {error}"
            assert "\n" not in error["message"] and error["type"]
            if status == 401:
                assert r.headers["www-authenticate"] == "Bearer"
            # The service keeps serving, with the same answer.
            ok = client.post("/v1/classify", json={"texts": [good_text]}, headers=AUTH)
            assert ok.status_code == 200, f"after {what}: {ok.text}"
            assert ok.json()["results"][0]["probabilities"] == pytest.approx(good_answer["probabilities"],
                                                                              abs=1e-6)
        for path, method, status in (("/nowhere", "GET", 404), ("/v1/classify", "GET", 405)):
            r = client.request(method, path, headers=AUTH)
            assert r.status_code == status and path in r.json()["error"]["message"]
        assert client.get("/healthz").status_code == 200
    assert TOKEN not in caplog.text


def test_a_stalled_body_is_a_408_and_frees_the_connection(model):
    """A client that declares 100 bytes and sends 9 gets a 408 once the body timeout has passed (nothing else
    can answer it: the rest never comes), and the service goes on."""
    options = ServeOptions(body_timeout=0.5)
    with running(create_app(model, options, token=TOKEN), options) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=PATIENCE_S) as stalled:
            stalled.sendall(f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"texts\":".encode())
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = stalled.recv(4096)
                if not chunk:
                    break
                answer += chunk
        status, _, body = answer.partition(b"\r\n")
        assert status.startswith(b"HTTP/1.1 408"), answer
        assert b"body: not received within 0.5 s" in body
        assert httpx.post(f"{url}/v1/classify", json={"texts": ["a"]}, headers=AUTH).status_code == 200


def test_bodies_json_cannot_read_are_400s():
    options = ServeOptions()
    body_type = request_model(options.max_texts, options.max_chars)
    for body, message in ((b"[" * 100_000 + b"]" * 100_000, "body: JSON that cannot be read"),
                          (b'{"texts": [' + b"1" * 5000 + b"]}", "body: JSON that cannot be read"),
                          (b"\xef\xbb\xbf{}", "body: malformed JSON")):
        with pytest.raises(ServeError) as caught:
            parse_request(body, body_type, options)
        assert caught.value.status == 400 and message in caught.value.message
    assert parse_request(b'{"texts": ["ok"]}', body_type, options).texts == ["ok"]

def test_auth_guards_metrics_but_not_health(model):
    with running(create_app(model, token=TOKEN)) as (url, _), httpx.Client(base_url=url) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/metrics", headers=AUTH).status_code == 200
        assert client.get("/healthz").status_code == 200
    # Without a token (what --no-auth gives on a loopback address) nothing asks for one.
    with running(create_app(model, token=None)) as (url, _), httpx.Client(base_url=url) as client:
        assert client.post("/v1/classify", json={"texts": ["a"]}).status_code == 200
        assert client.get("/metrics").status_code == 200


def test_options_token_and_loopback_rules(trained, monkeypatch, capsys):
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.2")
    assert not is_loopback("example.org")
    assert check_options(ServeOptions(), environ={"TAILORKD_SERVE_TOKEN": "abc"}) == "abc"
    assert check_options(ServeOptions(token_env="MY_TOKEN"), environ={"MY_TOKEN": "xyz"}) == "xyz"
    assert check_options(ServeOptions(auth=False, host="::1"), environ={}) is None

    recipe_path = trained[0]
    monkeypatch.delenv("TAILORKD_SERVE_TOKEN", raising=False)
    cases = [
        ([], "$TAILORKD_SERVE_TOKEN is not set"),
        (["--token-env", "OTHER_TOKEN"], "$OTHER_TOKEN is not set"),
        (["--no-auth", "--host", "0.0.0.0"], "--no-auth is only allowed on a loopback address"),
        (["--no-auth", "--host", "192.168.1.20"], "not --host 192.168.1.20"),
        (["--no-auth", "--max-texts", "100", "--max-queue", "50"], "--max-queue: must be at least --max-texts"),
        (["--no-auth", "--max-wait-ms", "-1"], "--max-wait-ms: must be between 0 and"),
        (["--no-auth", "--max-batch-size", "0"], "--max-batch-size: must be at least 1"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(["serve", recipe_path, *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    monkeypatch.setenv("TAILORKD_SERVE_TOKEN", "   ")
    assert main(["serve", recipe_path]) == 2
    assert "$TAILORKD_SERVE_TOKEN is not set" in capsys.readouterr().err


# -- metrics ----------------------------------------------------------------------------------------------
def test_metrics_count_requests_texts_and_errors(model):
    with running(create_app(model, token=TOKEN)) as (url, _), httpx.Client(base_url=url) as client:
        for texts in (["one"], ["two", "three"], ["four", "five", "six"]):
            assert client.post("/v1/classify", json={"texts": texts}, headers=AUTH).status_code == 200
        assert client.post("/v1/classify", json={"texts": []}, headers=AUTH).status_code == 422
        assert client.post("/v1/classify", content=b"{", headers=AUTH).status_code == 400
        assert client.post("/v1/classify", json={"texts": ["x"]}).status_code == 401
        assert client.get("/healthz").status_code == 200
        text = client.get("/metrics", headers=AUTH).text
    path = "/v1/classify"
    assert metric(text, "tailorkd_serve_requests_total", path=path, status="200") == 3
    assert metric(text, "tailorkd_serve_requests_total", path=path, status="422") == 1
    assert metric(text, "tailorkd_serve_requests_total", path=path, status="400") == 1
    assert metric(text, "tailorkd_serve_requests_total", path=path, status="401") == 1
    assert metric(text, "tailorkd_serve_requests_total", path="/healthz", status="200") == 1
    assert metric(text, "tailorkd_serve_request_seconds_count", path=path) == 6
    assert metric(text, "tailorkd_serve_texts_total") == 6
    assert metric(text, "tailorkd_serve_batch_texts_sum") == 6
    assert metric(text, "tailorkd_serve_batch_texts_count") == metric(text, "tailorkd_serve_batch_requests_count") >= 1
    for kind in ("invalid_request", "malformed_json", "unauthorized"):
        assert metric(text, "tailorkd_serve_errors_total", type=kind) == 1
    assert metric(text, "tailorkd_serve_queue_texts") == 0


# -- dynamic batching -------------------------------------------------------------------------------------
def test_concurrent_requests_share_batches(model, expected):
    served, gate = gated(model)
    texts = list(expected)
    clients, rounds = 8, 3
    app = create_app(served, ServeOptions(max_batch_size=64, max_wait_ms=0), token=TOKEN)
    answers: dict[tuple[int, int], tuple[list[str], httpx.Response]] = {}
    with running(app) as (url, _):
        def client_thread(c: int) -> None:
            with httpx.Client(base_url=url, timeout=PATIENCE_S) as client:
                for k in range(rounds):
                    mine = [texts[(c * rounds + k + j) % len(texts)] for j in range(2)]
                    answers[c, k] = (mine, client.post("/v1/classify", json={"texts": mine}, headers=AUTH))

        # A first request takes the worker into the model and holds it there ...
        first = threading.Thread(target=lambda: answers.__setitem__(
            (-1, 0), (texts[:1], httpx.post(f"{url}/v1/classify", json={"texts": texts[:1]}, headers=AUTH,
                                            timeout=PATIENCE_S))))
        first.start()
        wait_for(gate.entered.is_set, "the worker to enter the model")
        # ... while every client's first request queues behind it.
        threads = [threading.Thread(target=client_thread, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        wait_for(lambda: app.state.batcher.queued == 2 * clients, "the clients' texts to queue")
        gate.release.set()
        for t in threads + [first]:
            t.join(PATIENCE_S)
        metrics_text = httpx.get(f"{url}/metrics", headers=AUTH).text
    assert len(answers) == clients * rounds + 1
    for mine, r in answers.values():
        assert r.status_code == 200, r.text
        for result, text in zip(r.json()["results"], mine, strict=True):
            assert_matches(result, expected[text])
    # The queued first requests of all 8 clients went into one model call.
    batches = metric(metrics_text, "tailorkd_serve_batch_requests_count")
    assert batches < clients * rounds + 1
    at_most_4 = metric(metrics_text, "tailorkd_serve_batch_requests_bucket", le="4.0")
    at_most_8 = metric(metrics_text, "tailorkd_serve_batch_requests_bucket", le="8.0")
    assert at_most_8 - at_most_4 >= 1
    assert metric(metrics_text, "tailorkd_serve_texts_total") == 2 * clients * rounds + 1


def test_a_request_larger_than_a_batch_spans_batches(model, expected):
    texts = list(expected)[:10]
    with running(create_app(model, ServeOptions(max_batch_size=3), token=TOKEN)) as (url, _):
        r = httpx.post(f"{url}/v1/classify", json={"texts": texts}, headers=AUTH, timeout=PATIENCE_S)
        metrics_text = httpx.get(f"{url}/metrics", headers=AUTH).text
    assert r.status_code == 200
    for result, text in zip(r.json()["results"], texts, strict=True):
        assert_matches(result, expected[text])
    assert metric(metrics_text, "tailorkd_serve_batch_texts_count") == 4  # 3 + 3 + 3 + 1
    assert metric(metrics_text, "tailorkd_serve_batch_texts_bucket", le="4.0") == 4


def test_a_failing_model_is_a_500_and_the_service_goes_on(model):
    calls = []

    def flaky(texts):
        calls.append(len(texts))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return model.predict(texts)

    served = ServedModel(flaky, model.label_names, model.name, model.version, model.info, model.alerts)
    with running(create_app(served, token=TOKEN)) as (url, _), httpx.Client(base_url=url) as client:
        r = client.post("/v1/classify", json={"texts": ["a"]}, headers=AUTH)
        assert r.status_code == 500 and "RuntimeError" in r.json()["error"]["message"]
        assert client.post("/v1/classify", json={"texts": ["a"]}, headers=AUTH).status_code == 200
        assert client.get("/healthz").status_code == 200


# -- graceful shutdown --------------------------------------------------------------------------------------
def test_shutdown_lets_an_in_flight_request_finish(model, expected):
    served, gate = gated(model)
    text = next(iter(expected))
    app = create_app(served, token=TOKEN)
    result: dict[str, httpx.Response] = {}
    with running(app) as (url, server):
        port = int(url.rsplit(":", 1)[1])
        request = threading.Thread(target=lambda: result.__setitem__("r", httpx.post(
            f"{url}/v1/classify", json={"texts": [text]}, headers=AUTH, timeout=PATIENCE_S)))
        request.start()
        wait_for(gate.entered.is_set, "the request to reach the model")
        server.should_exit = True  # what the SIGTERM / SIGINT handler sets

        def refused() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) != 0

        wait_for(refused, "the server to stop accepting connections")
        gate.release.set()  # only now, with the shutdown under way, does the held request run
        request.join(PATIENCE_S)
    assert result["r"].status_code == 200
    assert_matches(result["r"].json()["results"][0], expected[text])
    assert not app.state.batcher.running  # the app's shutdown drained and stopped the worker


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_command_finishes_a_held_request_on_a_stop_signal(trained, expected, tmp_path, sig):
    """`tailorkd serve` in its own process: a request waits in the batcher (a minute's --max-wait-ms), the
    signal comes, and the request still gets its answer before the process ends."""
    recipe_path, _, texts = trained
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "TAILORKD_SERVE_TOKEN": TOKEN}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tailorkd", "serve", recipe_path, "--port", "0",
                                 "--max-wait-ms", "60000", "--max-batch-size", "8"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        def announced() -> str | None:
            assert proc.poll() is None, log_path.read_text()
            found = re.search(r"on (http://127\.0\.0\.1:\d+);", log_path.read_text())
            return found.group(1) if found else None

        wait_for(announced, "the server to announce its address")
        url = announced()

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, "the server to be healthy")
        result: dict[str, httpx.Response] = {}
        request = threading.Thread(target=lambda: result.__setitem__("r", httpx.post(
            f"{url}/v1/classify", json={"texts": texts[:1]}, headers=AUTH, timeout=PATIENCE_S)))
        request.start()
        wait_for(lambda: httpx.get(f"{url}/healthz").json()["queued_texts"] == 1, "the text to wait in the batcher")
        proc.send_signal(sig)
        request.join(PATIENCE_S)
        proc.wait(PATIENCE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_path.read_text()
    assert result["r"].status_code == 200, output
    assert_matches(result["r"].json()["results"][0], expected[texts[0]])
    assert "Application shutdown complete" in output
    # uvicorn re-raises the signal it handled: SIGTERM then ends the process as SIGTERM does, SIGINT exits 0.
    assert proc.returncode == (-signal.SIGTERM if sig == signal.SIGTERM else 0), output
    assert TOKEN not in output


# -- the benchmark script, tiny ------------------------------------------------------------------------------
def test_load_benchmark_runs_on_the_tiny_run(trained, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_serve_load",
                                                  Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "serve_load.json"
    report = bench.main(["--recipe", trained[0], "--clients", "1,4", "--requests", "12", "--bad-share", "0.25",
                         "--output", str(out)])
    assert json.loads(out.read_text()) == report
    for level in report["levels"]:
        assert level["good"]["wrong"] == 0 and level["good"]["dropped"] == 0
        assert level["bad"]["not_4xx"] == 0 and level["bad"]["sent"] >= 1
    assert report["healthy_at_end"] is True
