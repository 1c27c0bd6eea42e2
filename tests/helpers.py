"""Helpers shared by several test modules (fixtures are in conftest.py): the tiny tokenizer and topic data, a tiny
recipe, a scripted teacher, a briefly trained student, a served app on a loopback port, and the GGUF reference
that converted models are compared with."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tailorkd.recipe import DistillConfig, PromptConfig, StudentConfig, TaskConfig
from tailorkd.teachers import LocalTeacher

CORPUS = [
    "The company reported higher profits and its shares rose on the stock market.",
    "The film won an award and the actor thanked the director at the ceremony.",
    "The minister said the government will hold an election next year.",
    "The team won the match after a late goal in the second half.",
    "The new phone has a faster chip and better software for users.",
    "Floods forced people to leave their homes; officials warned of more rain.",
    "Stay indoors and keep water ready, the agency advised residents.",
    "Labels: business entertainment politics sport tech risk caution safe Answer: Text:",
]

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TOPICS = ["business", "entertainment", "politics", "sport", "tech"]
CAUSAL_FAMILIES = ["llama", "opt", "gpt2", "gemma3"]  # the causal-LM families of conftest's tiny_models


def make_tokenizer(chat: bool):
    """A small byte-level BPE tokenizer trained on CORPUS, with a ChatML template when ``chat``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    if chat:
        fast.chat_template = CHATML
    return fast


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def topic_rows(n_per_class: int = 12) -> list[dict]:
    """Short synthetic texts whose topic word appears in them, so a model can learn it quickly."""
    rows = []
    for label in TOPICS:
        for i in range(n_per_class):
            rows.append({"id": f"{label}-{i}", "text": f"News item {i} about {label}: the {label} story of the day.",
                         "label": label})
    return rows


# ---- a tiny recipe and its run ----------------------------------------------------------------------------


TEST_GUARD_CANDIDATES = ["adaptive_kd", "standard_kd", "seed_only"]


def shipped_systems(guard: dict) -> list[str]:
    """The report's extra system for what the seed guard shipped when it is none of the distilled students."""
    return ["shipped"] if guard["shipped"] not in ("adaptive_kd", "standard_kd", "untrained_student") else []


def shipped_predictions(report: dict) -> str:
    """The predictions file (predictions/<name>.parquet) of the student that ships."""
    return "shipped" if "shipped" in report["systems"] else report["seed_guard"]["shipped"]


def make_recipe(tmp_path, teacher, student, **extra) -> str:
    """A tiny recipe; ``extra`` sections replace the defaults (teacher and student through
    ``teacher_section={...}`` and ``student_section={...}``)."""
    write_jsonl(tmp_path / "news.jsonl", topic_rows(12))
    raw = {
        "name": "tiny", "seed": 3, "output_dir": str(tmp_path / "run"),
        "task": {"name": "topic", "description": "The topic of a news item.",
                 "labels": [{"name": t, "description": f"{t} news"} for t in TOPICS]},
        "data": {"sources": [{"path": "news.jsonl", "columns": {"id": "id"}}],
                 "splits": {"seed_per_class": 2, "test_size": 20}},
        "prompt": {"instruction": "Which topic?", "shots": 3, "max_text_chars": 120},
        "teacher": extra.pop("teacher_section", None) or {"model": str(teacher), "batch_size": 4},
        "student": extra.pop("student_section", None) or {"model": str(student), "max_length": 256},
        "adapter": {"method": "lora", "r": 4, "alpha": 8},
        "distill": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3},
        **extra,
    }
    if isinstance(raw["distill"], dict):
        # SetFit, a default candidate of the seed guard, trains for minutes; tests/test_seed_students.py and
        # tests/test_seed_guard.py cover it.
        raw["distill"].setdefault("seed_guard", {"candidates": TEST_GUARD_CANDIDATES})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


def labels_in_store(run_dir) -> int:
    with sqlite3.connect(run_dir / "labels.sqlite") as conn:
        return conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]


class ScriptedTeacher(LocalTeacher):
    """A tiny local teacher whose answers are scripted: ``answer(text)`` names the class it gives (0.9)."""

    answer = staticmethod(lambda text: "sport")

    def score_states(self, rows, bar=None, hidden_layers=(), pooling="last"):
        probs = np.full((len(rows), len(TOPICS)), 0.1 / (len(TOPICS) - 1))
        for i, row in enumerate(rows):
            probs[i, TOPICS.index(self.answer(row["text"]))] = 0.9
        if bar is not None:
            bar.update(len(rows))
        return probs, np.full(len(rows), 1e-3), {}

    def with_prompt(self, prompt, shots, selector=None):
        other = type(self)(self.config, self.task, prompt, shots, self.model, self.tokenizer, selector, self.weights)
        other.answer = self.answer
        return other


def scripted(recipe, answer) -> ScriptedTeacher:
    """The recipe's teacher (on its fixed shots) answering ``answer(text)`` for every text."""
    from tailorkd.prompts import fixed_shots
    from tailorkd.stages.prepare import load_data

    data = load_data(recipe)
    teacher = ScriptedTeacher(recipe.teacher, recipe.task, recipe.prompt,
                              fixed_shots(recipe.prompt, data.rows("seed"), TOPICS, recipe.seed))
    teacher.answer = answer
    return teacher


# ---- a student trained a few steps --------------------------------------------------------------------------

TASK = TaskConfig(name="topic", description="d", labels=[{"name": t} for t in TOPICS])
PROMPT = PromptConfig(instruction="Topic?", shots=0, describe_labels=False)
ROWS = topic_rows(2)  # what trained_student learns from
FEW_STEPS = DistillConfig(epochs=3, learning_rate=3e-2, batch_size=10, warmup_ratio=0.0, max_grad_norm=1.0)


def teacher_targets(rows, sharp=0.9):
    """A teacher that knows the topic: `sharp` on the right class, the rest spread evenly."""
    probs = np.full((len(rows), len(TOPICS)), (1 - sharp) / (len(TOPICS) - 1))
    for i, r in enumerate(rows):
        probs[i, TOPICS.index(r["label"])] = sharp
    return probs


def trained_student(folder, tmp_path, method, kind="auto", steps=FEW_STEPS):
    """A student of ``method`` trained a few steps and saved; returns (student folder, its StudentConfig)."""
    from transformers import set_seed

    from tailorkd.distill import distill_student
    from tailorkd.students import build_student

    set_seed(0)
    config = StudentConfig(model=str(folder), kind=kind, max_length=256)
    student = build_student(config, TASK, PROMPT, [], adapter_method=method)
    distill_student(student, ROWS, teacher_targets(ROWS), training_adapter(method), steps, tmp_path / "student",
                    seed=0, info={"base_model": str(folder)})
    return tmp_path / "student", config


# ---- a served app ---------------------------------------------------------------------------------------------

PATIENCE_S = 300  # how long a wait for a condition may last before the test fails: a safety net, not a timing


def wait_for(condition, what: str) -> None:
    """Poll ``condition`` until it holds; fail after PATIENCE_S (a broken service, not a slow machine)."""
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def running(app, options=None):
    """Uvicorn serving ``app`` from a thread on a free loopback port: yields (base url, server)."""
    from tailorkd.serve.app import ServeOptions
    from tailorkd.serve.server import bind, make_server, url_of

    sock = bind("127.0.0.1", 0)
    server = make_server(app, options or ServeOptions())
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), "the server to start")
        assert server.started, "the server did not start"
        yield url_of(sock), server
    finally:
        server.should_exit = True  # what uvicorn's SIGTERM / SIGINT handler does
        thread.join(PATIENCE_S)
        sock.close()
    assert not thread.is_alive()


# ---- converted GGUF models against transformers' own GGUF loader ----------------------------------------------

SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  Two leading spaces,   three inside, and a tab\there.\n\nNew paragraph: 1234567890 $3.14",
    "Ünïcödé façade — naïve café 東京 🤖",
    "def f(x):\n    return x ** 2  # comment",
]


def gguf_reference(folder: Path, filename: str):
    """The GGUF as transformers' own GGUF loader reads it (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        reference = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=filename)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=filename)
    except ValueError as exc:  # e.g. transformers 4.51 on Gemma-3: "... is not supported yet"
        pytest.skip(f"this transformers cannot load the GGUF: {exc}")
    return reference.eval(), tokenizer


def assert_same_as_reference(path: Path, reference, reference_tokenizer, compare_tokens: bool = True) -> None:
    """The converted model in ``path`` has the reference's weights, tokens (when ``compare_tokens``) and logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    expected, actual = reference.state_dict(), converted.state_dict()
    assert set(expected) == set(actual)
    assert [name for name in expected if not torch.equal(expected[name], actual[name])] == []
    for text in SAMPLE_TEXTS if compare_tokens else []:
        assert tokenizer(text, add_special_tokens=False).input_ids == reference_tokenizer(
            text, add_special_tokens=False
        ).input_ids, text
    ids = tokenizer(SAMPLE_TEXTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(converted(ids).logits, reference(ids).logits, atol=1e-4, rtol=0)


def training_adapter(method: str):
    """The adapter settings the training tests use for ``method``: small and without dropout, each method's own
    (a setting of another method is an error)."""
    from tailorkd.adapters import adapter_config

    settings = {"lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "qlora": {"r": 8, "alpha": 16, "dropout": 0.0},
                "bottleneck": {"dropout": 0.0, "reduction_factor": 4}}
    return adapter_config(method, **settings.get(method, {}))


# -- the service and its dashboard -----------------------------------------------------------------------------
SERVE_TEMPERATURE = 2.0  # the served run's confidence temperature, so that the calibrated path is the one compared
SIGNAL_LABELS = ["risk", "caution", "safe"]
SEVERITY_WEIGHTS = {"none": 0.0, "low": 1 / 3, "medium": 2 / 3, "high": 1.0}
SIGNAL_SEVERITY = {"risk": "high", "caution": "low", "safe": "none"}
# An article text that would run script if the page did not escape it.
HOSTILE_TEXT = 'Storm <img src=x onerror="window.pwned=1"> & <b>flood</b> warning'


class GatedPredictor:
    """The real predictor, held at the gate until ``release`` is set: ``entered`` tells that a call waits."""

    def __init__(self, inner):
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, texts):
        self.entered.set()
        if not self.release.wait(PATIENCE_S):
            raise RuntimeError("the test never opened the gate")
        return self.inner(texts)


def gated(model):
    """``model`` with its predictor behind a GatedPredictor: (the gated ServedModel, the gate)."""
    from tailorkd.serve.predictor import ServedModel

    gate = GatedPredictor(model.predict)
    return ServedModel(gate, model.label_names, model.name, model.version, model.info, model.alerts), gate


def write_signals(folder: Path, seed: int = 0) -> Path:
    """A signals folder like `tailorkd signals` writes: three topics over ten days, one of them turning risky
    in its last days (so both rules fire there), one topic quiet, one with a single day; the shares estimated
    by PACC with a confusion from 30 labelled texts, as a run's seeds give it."""
    import pandas as pd

    from tailorkd.quantify import LabelledPredictions, ShareEstimator, corrected_shares
    from tailorkd.recipe import SignalRule
    from tailorkd.signals import daily_signals, find_alerts

    rng = np.random.default_rng(seed)
    rows = []
    for topic, days, risky_from in (("floods", 10, 7), ("wildfire <east>", 10, 99), ("port strike", 1, 99)):
        for day in range(1, days + 1):
            p_risk = 0.7 if day >= risky_from else 0.1
            for k in range(int(rng.integers(12, 20))):
                label = rng.choice(SIGNAL_LABELS, p=[p_risk, (1 - p_risk) / 2, (1 - p_risk) / 2])
                confidence = float(rng.uniform(0.4, 1.0))
                if k == 0:  # the hostile text: each day's most confident risk article, so each alert lists it
                    label, confidence = "risk", 0.99
                probs = {f"p_{name}": confidence if name == label else (1 - confidence) / 2 for name in SIGNAL_LABELS}
                rows.append({"key": f"{topic}-{day}-{k}", "id": f"{topic[:4]}-{day}-{k}", "topic": topic,
                             "day": f"2024-05-{day:02d}", "label": label, "severity": SIGNAL_SEVERITY[label],
                             "confidence": confidence, "source": "wire",
                             "text": HOSTILE_TEXT if k == 0 else f"{topic} report {day}.{k}", **probs})
    frame = pd.DataFrame(rows)
    daily = daily_signals(frame, SIGNAL_LABELS, ["risk"], SEVERITY_WEIGHTS, baseline_days=5)
    truth = np.repeat(np.arange(len(SIGNAL_LABELS)), 10)
    # a student right 80% of the time on the labelled texts, its errors spread evenly, as sure as on the feed
    said = np.where(rng.random(len(truth)) < 0.8, truth, (truth + rng.integers(1, 3, len(truth))) % 3)
    sure = rng.uniform(0.4, 1.0, len(truth))[:, None]
    labelled = LabelledPredictions(np.eye(3)[said] * sure + (1 - np.eye(3)[said]) * (1 - sure) / 2, truth,
                                   "30 labelled texts")
    daily, replicates = corrected_shares(frame, daily, SIGNAL_LABELS, ["risk"],
                                         ShareEstimator("pacc", 3, labelled, replicates=100, seed=seed))
    rules = [SignalRule(name="high risk share", kind="share_above", threshold=0.5),
             SignalRule(name="risk rising", kind="rise_over_baseline", threshold=2.0, baseline_days=5)]
    alerts = find_alerts(daily, frame, rules, ["risk"], top_articles=3, replicates=replicates)
    folder.mkdir(parents=True, exist_ok=True)
    daily.to_parquet(folder / "daily.parquet", index=False)
    (folder / "alerts.jsonl").write_text("".join(json.dumps(a) + "\n" for a in alerts), encoding="utf-8")
    (folder / "summary.json").write_text(json.dumps({"title": "floods: crisis signals", "labels": SIGNAL_LABELS,
                                                     "risk_labels": ["risk"], "model": "abc123-T0.5",
                                                     "alert_on": "estimate",
                                                     "quantifier": {"method": "pacc", "labelled": labelled.source}}))
    return folder


def fake_model():
    """A served model that answers every text with equal probabilities (the dashboard needs no real one)."""
    from tailorkd.serve.predictor import ServedModel

    return ServedModel(predict=lambda texts: np.full((len(texts), 3), 1 / 3), label_names=SIGNAL_LABELS, name="floods",
                       version="v1", info={"base_model": "none", "runtime": "test"})


def browser():
    """Headless Chromium driven by its own ChromeDriver; skipped where they are not installed, except where
    $TAILORKD_REQUIRE_BROWSER is set (CI installs them: a missing browser there is a failure)."""
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("TAILORKD_REQUIRE_BROWSER"):
            pytest.fail("Chromium and ChromeDriver are required here (apt-get install chromium chromium-driver)")
        pytest.skip("no Chromium / ChromeDriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1600", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)
