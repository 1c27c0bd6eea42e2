"""The served teacher against a stub OpenAI-compatible server on 127.0.0.1 (started here, in a thread).

The stub answers chat completions like a server would, with faults on demand: timeouts, 5xx, 429 with
Retry-After, malformed bodies, answers that name no class, no logprobs, a refused response_format.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import TOPICS, make_tokenizer, topic_rows, write_jsonl
from tailorkd.cli import main
from tailorkd.errors import TailorkdError
from tailorkd.labels import LabelStore
from tailorkd.prompts import PromptBuilder
from tailorkd.recipe import PromptConfig, TaskConfig, TeacherConfig, load_recipe
from tailorkd.teachers import ServedTeacher, label_served_rows
from tailorkd.teachers.served import class_probs_from_top_logprobs, parse_json_answer

TASK = TaskConfig(name="topic", description="The topic of a news item.",
                  labels=[{"name": t, "description": f"{t} news"} for t in TOPICS])
PROMPT = PromptConfig(instruction="Which topic?", shots=2)
SHOTS = [{"id": "s1", "label": "sport", "text": "The team won."}, {"id": "s2", "label": "tech", "text": "A new chip."}]
KEY = "sk-test-7f3a9c1e5b2d48f0a6e4c8d1b9f2e7a3"


# -- the stub server -------------------------------------------------------------------------------
Reply = tuple[int, dict[str, str], Any]  # status, headers, body (dict -> JSON, str/bytes -> as is)


def completion(content: str | None, logprobs: list[tuple[str, float]] | None = None) -> dict[str, Any]:
    """A chat completion body; ``logprobs``: the top tokens of the first position (the first is the chosen)."""
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content},
                              "finish_reason": "stop", "logprobs": None}
    if logprobs is not None:
        top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in logprobs]
        choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": "stub", "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def topic_of(body: dict[str, Any]) -> str | None:
    """The topic word in the input (the last user message's 'Text:' line), as a sensible teacher would say."""
    text = body["messages"][-1]["content"].rsplit("Text:", 1)[-1].lower()
    return next((t for t in TOPICS if t in text), None)


def sensible(body: dict[str, Any]) -> Reply:
    """Logprobs when asked for (the topic token 0.7, a prefix of another class 0.2, noise 0.1), else JSON."""
    topic = topic_of(body) or "tech"
    other = next(t for t in TOPICS if t != topic)
    if body.get("logprobs"):
        return 200, {}, completion(topic, [(topic.capitalize(), math.log(0.7)), (" " + other[:3], math.log(0.2)),
                                           ("The", math.log(0.1))])
    return 200, {}, completion(json.dumps({"label": topic, "reason": f"it mentions {topic}"}))


class Stub:
    """A threaded HTTP server on 127.0.0.1 whose replies come from ``reply(body, n)`` (n: request number).

    ``(0, {}, seconds)`` as a reply hangs that long (None: until the stub closes), then answers sensibly.
    ``hold_until``: hold every request until that many have been in flight at once (at most 30 s), so
    that a test of parallel requests does not depend on how fast a loaded machine starts the threads.
    """

    def __init__(self, reply: Callable[[dict[str, Any], int], Reply], delay: float = 0.0, hold_until: int = 0):
        self.reply, self.delay = reply, delay
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.closing = threading.Event()
        self.enough_in_flight = threading.Event()
        if hold_until <= 1:
            self.enough_in_flight.set()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep the test output quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    n = len(stub.requests)
                    stub.requests.append({"path": self.path, "body": body, "time": time.monotonic(),
                                          "headers": {k.lower(): v for k, v in self.headers.items()}})
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                    if stub.in_flight >= hold_until:
                        stub.enough_in_flight.set()
                try:
                    stub.enough_in_flight.wait(30)  # less than the client's timeout: no retries
                    status, headers, payload = stub.reply(body, n)
                    if status == 0:  # (0, {}, seconds or None): hang, then answer
                        stub.closing.wait(payload)
                        status, headers, payload = sensible(body)
                    time.sleep(stub.delay)
                finally:
                    # No longer in flight once answering: the client may send its next request as soon as it
                    # reads the answer, before a busy machine runs this thread again.
                    with stub.lock:
                        stub.in_flight -= 1
                try:
                    data = payload if isinstance(payload, bytes) else (
                        payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
                    self.send_response(status)
                    if not isinstance(payload, (str, bytes)):
                        self.send_header("Content-Type", "application/json")
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Stub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()  # ends the hanging requests
        self.httpd.shutdown()
        self.httpd.server_close()

    def received(self, n: int) -> int:
        """The number of requests received, once there are ``n`` (a minute at most): a request the client
        gave up on may reach a busy server's thread after the client has moved on."""
        deadline = time.monotonic() + 60
        while len(self.requests) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.requests)


def teacher_for(stub: Stub, **server: Any) -> ServedTeacher:
    # A timeout far beyond a loaded machine's pauses: a retried request would upset the tests' request counts.
    settings = {"base_url": stub.url, "max_retries": 3, "timeout_s": 60, **server}
    return ServedTeacher(TeacherConfig(model="stub-model", server=settings), TASK, PROMPT, SHOTS)


ROWS = [{"id": f"{t}-0", "text": f"A story about {t} today."} for t in TOPICS]


def predicted(probs: np.ndarray) -> list[str | None]:
    return [None if np.isnan(p).any() else TOPICS[int(p.argmax())] for p in probs]


# -- pure parts ------------------------------------------------------------------------------------
def test_class_probs_from_top_logprobs_maps_tokens_to_classes():
    answers = ["sport", "safety", "tech"]
    probs = class_probs_from_top_logprobs({" Sport": math.log(0.5), "s": math.log(0.2), "\n": math.log(0.2),
                                           "Tech.": math.log(0.05)}, answers)
    # "s" is a prefix of sport and safety: split evenly; "\n" belongs to no class and is dropped.
    want = np.array([0.5 + 0.1, 0.1, 0.05]) / 0.75
    np.testing.assert_allclose(probs, want)
    # A class with no listed token gets min(smallest listed probability, 1e-4) before renormalising.
    probs = class_probs_from_top_logprobs({"sport": math.log(0.9), "The": math.log(0.00002)}, answers)
    np.testing.assert_allclose(probs, np.array([0.9, 0.00002, 0.00002]) / 0.90004)
    probs = class_probs_from_top_logprobs({"tech": math.log(0.6), "Sport": math.log(0.3)}, answers)
    np.testing.assert_allclose(probs, np.array([0.3, 1e-4, 0.6]) / 0.9001)
    # An exact match wins over a prefix of a longer answer.
    probs = class_probs_from_top_logprobs({"tech": 0.0}, ["tech", "technology"])
    assert probs[0] > 0.99
    assert class_probs_from_top_logprobs({"The": math.log(0.8), " ": math.log(0.2)}, answers) is None


def test_parse_json_answer_accepts_labels_and_abstains_on_the_rest():
    answers, names = ["Sport", "Tech news"], ["sport", "tech"]
    got = parse_json_answer('{"label": " sport ", "reason": "a match"}', answers, names)
    assert (got.index, got.reason, got.problem) == (0, "a match", None)
    assert parse_json_answer('```json\n{"label": "TECH NEWS"}\n```', answers, names).index == 1
    assert parse_json_answer('{"label": "tech"}', answers, names).index == 1  # the class name also counts
    assert parse_json_answer('{"label": "sport", "reason": "cut off by the tok', answers, names).index == 0
    assert parse_json_answer('{"label": "weather"}', answers, names).problem == "unknown label"
    for bad in ('{"label": ', "sport", "", None, '["sport"]', '{"label": 3}'):
        assert parse_json_answer(bad, answers, names).problem == "unparseable", bad


def test_chat_rendering_is_the_messages_through_the_template():
    tokenizer = make_tokenizer(chat=True)
    builder = PromptBuilder(TASK, PROMPT, tokenizer, SHOTS)
    messages = builder.messages("Some text", "A title")
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert builder.render("Some text", "A title") == tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)


def test_identity_and_fingerprint_follow_model_and_mode(monkeypatch):
    def teacher(**server: Any) -> ServedTeacher:
        config = TeacherConfig(model="m", server={"base_url": "http://127.0.0.1:9/v1", **server})
        return ServedTeacher(config, TASK, PROMPT, SHOTS)

    base = teacher()
    assert teacher(concurrency=9, timeout_s=3).identity == base.identity  # how, not what, is asked
    for changed in (teacher(model="other"), teacher(mode="json"), teacher(mode="logprobs"), teacher(temperature=0.5)):
        assert changed.identity != base.identity
    assert base.prompt_fingerprint != PromptBuilder(TASK, PROMPT, make_tokenizer(chat=True), SHOTS).fingerprint()
    json_prompt = base.json_builder.messages("x")
    assert '"label"' in json_prompt[0]["content"] and json_prompt[1]["content"] == '{"label": "sport"}'


# -- answers ---------------------------------------------------------------------------------------
def test_logprobs_path():
    with Stub(lambda body, n: sensible(body)) as stub:
        probs, seconds = teacher_for(stub, mode="logprobs").score(ROWS)
    assert predicted(probs) == TOPICS
    assert probs.sum(1) == pytest.approx(1.0) and (seconds > 0).all()
    # sport: 0.7 on "Sport", 0.2 on " bus" (a prefix of business), "The" dropped, the rest floored at 1e-4.
    np.testing.assert_allclose(probs[TOPICS.index("sport"), TOPICS.index("business")], 0.2 / (0.9 + 3e-4))
    body = next(r["body"] for r in stub.requests if topic_of(r["body"]) == "business")
    assert body["model"] == "stub-model" and body["temperature"] == 0
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1
    assert "response_format" not in body and body["messages"][-1]["content"] == "Text: A story about business today."
    assert stub.requests[0]["path"] == "/v1/chat/completions"


def test_json_path_with_smoothing():
    with Stub(lambda body, n: sensible(body)) as stub:
        probs, _ = teacher_for(stub, mode="json", json_smoothing=0.2).score(ROWS)
    assert predicted(probs) == TOPICS
    np.testing.assert_allclose(probs[0], [0.8, 0.05, 0.05, 0.05, 0.05])
    body = stub.requests[0]["body"]
    assert body["response_format"] == {"type": "json_object"} and "logprobs" not in body
    assert "JSON object" in body["messages"][0]["content"]


def test_json_reasons_are_stored_beside_the_labels(tmp_path):
    from tailorkd.labels import LabelStore, text_hash
    from tailorkd.teachers import label_served_rows

    with Stub(lambda body, n: sensible(body)) as stub, LabelStore(tmp_path / "labels.sqlite") as store:
        teacher = teacher_for(stub, mode="json")
        records = label_served_rows(teacher, ROWS, store, chunk=2)
        assert [records[text_hash(r["text"])].reason for r in ROWS] == [f"it mentions {t}" for t in TOPICS]
    # logprobs answers carry no reason
    with Stub(lambda body, n: sensible(body)) as stub, LabelStore(tmp_path / "other.sqlite") as store:
        lp = teacher_for(stub, mode="logprobs")
        assert all(r.reason is None for r in label_served_rows(lp, ROWS, store).values())


def test_json_path_without_response_format_when_the_server_refuses_it():
    def reply(body: dict[str, Any], n: int) -> Reply:
        if "response_format" in body:
            return 400, {}, {"error": {"message": "response_format is not supported", "type": "invalid_request_error"}}
        return sensible(body)

    with Stub(reply) as stub:
        probs, _ = teacher_for(stub, mode="json", concurrency=1).score(ROWS)
    assert predicted(probs) == TOPICS
    # One refusal, then the prompt alone for every text.
    assert ["response_format" in r["body"] for r in stub.requests] == [True] + [False] * len(ROWS)


@pytest.mark.parametrize("refusal", ["no logprobs in the answer", "HTTP 400"])
def test_auto_falls_back_to_json_for_good(refusal, caplog):
    def reply(body: dict[str, Any], n: int) -> Reply:
        if body.get("logprobs"):
            if refusal == "HTTP 400":
                return 400, {}, {"error": {"message": "logprobs not supported"}}
            return 200, {}, completion("sport")  # logprobs: null, as a server without them answers
        return sensible(body)

    with Stub(reply) as stub, caplog.at_level(logging.WARNING):
        teacher = teacher_for(stub, mode="auto", concurrency=1)
        probs, _ = teacher.score(ROWS)
    assert predicted(probs) == TOPICS
    asked_logprobs = [bool(r["body"].get("logprobs")) for r in stub.requests]
    assert asked_logprobs == [True] + [False] * len(ROWS)
    assert teacher.answers_by_method == {"json": len(ROWS)}
    assert sum("answering in JSON from now on" in r.message for r in caplog.records) == 1


def test_auto_keeps_logprobs_when_the_server_gives_them():
    with Stub(lambda body, n: sensible(body)) as stub:
        teacher = teacher_for(stub, mode="auto")
        assert predicted(teacher.score(ROWS)[0]) == TOPICS
    assert all(r["body"]["logprobs"] for r in stub.requests) and teacher.answers_by_method == {"logprobs": len(ROWS)}


def test_logprobs_mode_fails_clearly_when_the_server_gives_none():
    with Stub(lambda body, n: (200, {}, completion("sport"))) as stub:
        with pytest.raises(TailorkdError, match="gives no logprobs.*mode to json or auto"):
            teacher_for(stub, mode="logprobs").score(ROWS[:1])


def test_unknown_label_and_malformed_json_are_abstentions_not_stored_and_asked_again(tmp_path, caplog):
    bad_answers = {"business": '{"label": "economy", "reason": "money"}', "politics": '{"label": "politics", "rea'
                   , "tech": "I think it is about computers."}

    def reply(body: dict[str, Any], n: int) -> Reply:
        topic = topic_of(body)
        if topic in bad_answers and not body.get("logprobs"):
            return 200, {}, completion(bad_answers[topic])
        if body.get("logprobs") and topic == "entertainment":
            return 200, {}, completion("The", [("The", -0.1), ("\n", -3.0)])  # no class among the top tokens
        return sensible(body)

    with Stub(reply) as stub, LabelStore(tmp_path / "labels.sqlite") as store, caplog.at_level(logging.WARNING):
        teacher = teacher_for(stub, mode="json")
        probs, _ = teacher.score(ROWS)
        # "politics" was cut off after a complete label field: still a label.
        assert predicted(probs) == [None, "entertainment", "politics", "sport", None]
        assert teacher.abstentions == {"unknown label": 1, "unparseable": 1}
        records = label_served_rows(teacher, ROWS, store)
        assert len(records) == 3 and store.count() == 3  # the two abstentions are neither returned nor stored
        assert "abstained on 2 of 5 texts" in caplog.text
        before = len(stub.requests)
        label_served_rows(teacher, ROWS, store)  # a rerun asks again only the two abstentions
        assert len(stub.requests) - before == 2

        lp = teacher_for(stub, mode="logprobs")
        assert predicted(lp.score(ROWS)[0]) == ["business", None, "politics", "sport", "tech"]
        assert lp.abstentions == {"no class among the top tokens": 1}


def test_texts_another_labeller_stored_meanwhile_are_not_asked_for(tmp_path):
    from tailorkd.labels import make_record, text_hash

    path = tmp_path / "labels.sqlite"
    names = TASK.label_names

    def reply(body: dict[str, Any], n: int) -> Reply:
        if n == 0:  # while the first chunk is asked, another process stores the last three texts
            with LabelStore(path) as other:
                other.put_batch(teacher.identity, teacher.prompt_fingerprint, names,
                                [make_record(r["id"], r["text"], [0.2] * 5, names, 0.0) for r in ROWS[2:]])
        return sensible(body)

    with Stub(reply) as stub, LabelStore(path) as store:
        teacher = teacher_for(stub, mode="json", concurrency=1)
        records = label_served_rows(teacher, ROWS, store, chunk=2)  # re-reads what is done before each chunk
    assert [topic_of(r["body"]) for r in stub.requests] == TOPICS[:2]
    assert [records[text_hash(r["text"])].probs for r in ROWS[2:]] == [[0.2] * 5] * 3 and len(records) == 5


# -- transport faults ------------------------------------------------------------------------------
def test_timeouts_are_retried_then_fail_clearly():
    # The first attempt (by the client's retry count, not by arrival: on a loaded machine the retry may reach
    # the server first) hangs until the stub closes, so it times out whatever the load; the retry is answered
    # at once, with seconds to spare.
    def first_attempt_hangs(body: dict[str, Any], n: int) -> Reply:
        return (0, {}, None) if stub.requests[n]["headers"]["x-stainless-retry-count"] == "0" else sensible(body)

    with Stub(first_attempt_hangs) as stub:
        probs, _ = teacher_for(stub, mode="json", timeout_s=3).score(ROWS[:1])
        assert predicted(probs) == ["business"] and stub.received(2) == 2
    with Stub(lambda body, n: (0, {}, None)) as stub:
        with pytest.raises(TailorkdError, match=r"no answer within 0.3s, 1 retries included"):
            teacher_for(stub, mode="json", timeout_s=0.3, max_retries=1).score(ROWS[:1])
        assert stub.received(2) == 2


def test_5xx_is_retried_with_backoff_until_success():
    with Stub(lambda body, n: (500, {}, {"error": {"message": "overloaded"}}) if n < 2 else sensible(body)) as stub:
        probs, _ = teacher_for(stub, mode="json").score(ROWS[:1])
        assert predicted(probs) == ["business"] and len(stub.requests) == 3
        gaps = np.diff([r["time"] for r in stub.requests])
        # The wait grows: 0.5 s, then 1 s, each less up to 25 % jitter (the openai client's backoff). Lower
        # bounds only: a gap is the wait plus the time to answer, which a loaded machine only lengthens.
        assert gaps[0] >= 0.375 and gaps[1] >= 0.75
    with Stub(lambda body, n: (503, {}, {"error": {"message": "down"}})) as stub:
        with pytest.raises(TailorkdError, match="HTTP 503 after retries: .*down"):
            teacher_for(stub, mode="json", max_retries=2).score(ROWS[:1])
        assert len(stub.requests) == 3


def test_429_waits_for_retry_after():
    with Stub(lambda body, n: (429, {"Retry-After": "1.5"}, {"error": {"message": "slow down"}}) if n == 0
              else sensible(body)) as stub:
        probs, _ = teacher_for(stub, mode="json").score(ROWS[:1])
        assert predicted(probs) == ["business"]
        assert stub.requests[1]["time"] - stub.requests[0]["time"] >= 1.5


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_are_not_retried(status):
    with Stub(lambda body, n: (status, {}, {"error": {"message": "no such model"}})) as stub:
        with pytest.raises(TailorkdError, match=f"HTTP {status}"):
            teacher_for(stub, mode="json").score(ROWS[:1])
        assert len(stub.requests) == (2 if status == 400 else 1)  # a 400 first drops response_format


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", {"object": "error", "detail": "?"}])
def test_malformed_response_body_is_a_clear_error(body):
    def reply(request: dict[str, Any], n: int) -> Reply:
        if isinstance(body, bytes):
            return 200, {"Content-Type": "application/json"}, body
        return 200, {}, body

    with Stub(reply) as stub:
        with pytest.raises(TailorkdError, match="not JSON|not a chat completion"):
            teacher_for(stub, mode="json").score(ROWS[:1])
        assert len(stub.requests) == 1


def test_concurrency_bound_is_respected_and_used():
    rows = [{"id": str(i), "text": f"Item {i} on sport."} for i in range(12)]
    # The first requests are held until 3 are in flight (a client sending fewer at once would wait 30 s and
    # fail below); each then takes 0.3 s, time for a client sending more than 3 at once to show it.
    with Stub(lambda body, n: sensible(body), delay=0.3, hold_until=3) as stub:
        probs, _ = teacher_for(stub, mode="json", concurrency=3).score(rows)
    assert predicted(probs) == ["sport"] * 12
    # Three requests were in flight at once (really in parallel), never more. No wall-clock bound: on a
    # loaded machine the threads may start late, and in-flight counts say the same without the noise.
    assert stub.max_in_flight == 3


# -- the key ---------------------------------------------------------------------------------------
def test_missing_key_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TAILORKD_TEST_KEY", raising=False)
    config = TeacherConfig(model="m", server={"base_url": "http://127.0.0.1:9/v1", "api_key_env": "TAILORKD_TEST_KEY"})
    with pytest.raises(TailorkdError, match="TAILORKD_TEST_KEY is not set"):
        ServedTeacher(config, TASK, PROMPT, SHOTS)


def test_no_key_variable_sends_no_real_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # must not be picked up and sent to a local server
    with Stub(lambda body, n: sensible(body)) as stub:
        teacher_for(stub, mode="json").score(ROWS[:1])
    assert KEY not in json.dumps(stub.requests)


def test_error_messages_never_echo_the_key(monkeypatch):
    monkeypatch.setenv("TAILORKD_TEST_KEY", KEY)
    with Stub(lambda body, n: (401, {}, {"error": {"message": f"Incorrect API key provided: {KEY}"}})) as stub:
        with pytest.raises(TailorkdError) as info:
            teacher_for(stub, mode="json", api_key_env="TAILORKD_TEST_KEY").score(ROWS[:1])
    assert "HTTP 401" in str(info.value) and KEY not in str(info.value)


def test_a_key_pasted_into_the_recipe_is_refused_without_echoing_it(tmp_path, capsys):
    path = make_served_recipe(tmp_path, "http://127.0.0.1:9/v1", "unused", api_key_env=KEY)
    assert main(["validate", path]) == 2
    err = capsys.readouterr().err
    assert "teacher.server" in err and "api_key_env must be the name of an environment variable" in err
    assert KEY not in err


# -- the pipeline end to end -----------------------------------------------------------------------
def make_served_recipe(tmp_path: Path, url: str, student: Any, **server: Any) -> str:
    rows = topic_rows(12)
    for i, row in enumerate(rows):  # texts of item 5 name no topic: a sensible teacher has no answer for them
        if row["id"].endswith("-5"):
            row["text"] = f"News item 5 of the day, number {i}."
    write_jsonl(tmp_path / "news.jsonl", rows)
    raw = {
        "name": "served", "seed": 3, "output_dir": str(tmp_path / "run"),
        "task": {"name": "topic", "description": "The topic of a news item.",
                 "labels": [{"name": t, "description": f"{t} news"} for t in TOPICS]},
        "data": {"sources": [{"path": "news.jsonl", "columns": {"id": "id"}}],
                 "splits": {"seed_per_class": 2, "test_size": 20}},
        "prompt": {"instruction": "Which topic?", "shots": 3, "max_text_chars": 120},
        "teacher": {"model": "stub-model", "server": {"base_url": url, "max_retries": 2, **server}},
        "student": {"model": str(student), "max_length": 256},
        "adapter": {"method": "lora", "r": 4, "alpha": 8},
        "distill": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


def no_topic_abstains(body: dict[str, Any], n: int) -> Reply:
    if topic_of(body) is None:
        if body.get("logprobs"):
            return 200, {}, completion("News", [("News", -0.1), ("Item", -2.5)])
        return 200, {}, completion('{"label": "none of them"}')
    return sensible(body)


@pytest.mark.parametrize("mode", ["logprobs", "json"])
def test_cli_run_with_a_served_teacher_end_to_end(tiny_models, tmp_path, monkeypatch, caplog, capsys, mode):
    monkeypatch.setenv("TAILORKD_TEST_KEY", KEY)
    with Stub(no_topic_abstains) as stub, caplog.at_level(logging.DEBUG):
        recipe_path = make_served_recipe(tmp_path, stub.url, tiny_models["gpt2"], mode=mode,
                                         api_key_env="TAILORKD_TEST_KEY", concurrency=3)
        assert main(["run", recipe_path]) == 0
        asked = len(stub.requests)
        assert main(["run", recipe_path]) == 0  # every stage is current: the server is asked nothing
        assert len(stub.requests) == asked
        assert main(["label", recipe_path, "--force"]) == 0  # labelling again asks only for the abstentions
        asked_again = len(stub.requests) - asked
    run = tmp_path / "run"
    recipe = load_recipe(recipe_path)
    report = json.loads((run / "report.json").read_text())
    summary = json.loads((run / "labels_summary.json").read_text())

    # The key went to the server, and nowhere else: not to the logs, the console, the run folder.
    assert all(r["headers"].get("authorization") == f"Bearer {KEY}" for r in stub.requests)
    assert KEY not in caplog.text
    out = capsys.readouterr()
    assert KEY not in out.out + out.err
    for path in run.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert "TAILORKD_TEST_KEY" in (run / "recipe.yaml").read_text()

    # The five item-5 texts name no topic: the teacher abstained on them. The teacher check asked for every
    # seed too (each once: a shown seed with its shot swapped) and for its pool sample (here the whole pool), so
    # an abstention of the pool is asked twice per run: by the check, then by the labelling.
    pool = pd.read_feather(run / "data" / "pool.arrow")
    test = pd.read_parquet(run / "data" / "test.parquet")
    seed = pd.read_parquet(run / "data" / "seed.parquet")
    item5 = lambda frame: sorted(frame["id"][frame["id"].str.endswith("-5")])  # noqa: E731
    assert sorted(summary["abstained"]["pool"]) == item5(pool)
    assert sorted(summary["abstained"]["test"]) == item5(test)
    assert asked == len(pool) + len(test) + len(seed) + len(item5(pool))
    assert asked_again == 2 * len(item5(pool)) + len(item5(test)) + len(item5(seed))
    assert summary["teacher"] == f"served:stub-model|mode={mode}|temp=0|" + (
        "top=20" if mode == "logprobs" else "smooth=0")
    assert summary["prompt"]["format"] == "messages"
    # (The seed guard labels nothing: its cross-fitting reads the stored labels back.)
    with LabelStore(run / "labels.sqlite") as store:
        assert store.count() == sum(len(split) - len(item5(split)) for split in (pool, test, seed))

    # Training left the pool's abstentions out; the test set counts them as the teacher's errors.
    student = report["systems"]["adaptive_kd"]
    training = student["training"]
    assert training["train_examples"] + training.get("validation_examples", 0) == len(pool) - len(item5(pool))
    teacher = report["systems"]["teacher"]
    frame = pd.read_parquet(run / "predictions" / "teacher.parquet")
    assert teacher["abstained"] == len(item5(test)) == int((frame["predicted"] == "(abstained)").sum())
    answered = frame[frame["predicted"] != "(abstained)"]
    assert (answered["predicted"] == answered["label"]).all()  # the stub's teacher is right when it answers
    assert teacher["metrics"]["accuracy"] == pytest.approx(len(answered) / len(frame))
    assert answered[[f"p_{t}" for t in TOPICS]].sum(1).to_numpy() == pytest.approx(1.0)
    assert recipe.teacher.server is not None and recipe.teacher.server.mode == mode
    assert re.search(r"left out: the teacher abstained", caplog.text)
