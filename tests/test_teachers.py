"""The local teacher beyond class scores: stored hidden states and generated reasons, on tiny models."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import TOPICS, topic_rows
from tailorkd.hidden_states import HiddenStateReader
from tailorkd.labels import LabelStore, text_hash
from tailorkd.recipe import PromptConfig, TaskConfig, TeacherConfig
from tailorkd.teachers import LocalTeacher, label_rows
from tailorkd.teachers.local import add_reasons, hidden_key

TASK = TaskConfig(name="topic", description="The topic of a news item.",
                  labels=[{"name": t, "description": f"{t} news"} for t in TOPICS])


def make_teacher(path, shots) -> LocalTeacher:
    return LocalTeacher(TeacherConfig(model=str(path), batch_size=3, device="cpu"), TASK,
                        PromptConfig(instruction="Which topic?", shots=len(shots), max_text_chars=120), shots)


@pytest.fixture
def rows_and_shots():
    rows = topic_rows(3)
    shots = [rows[0], rows[9]]
    return [r for r in rows if r not in shots], shots


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hidden_states_are_stored_with_the_labels_and_resume(tiny_models, tmp_path, rows_and_shots, family):
    rows, shots = rows_and_shots
    teacher = make_teacher(tiny_models[family], shots)
    layers = [1, -1]
    with LabelStore(tmp_path / "labels.sqlite") as store:
        records = label_rows(teacher, rows, store, chunk=4, hidden_layers=layers, rows_per_shard=5)
        assert len(records) == len(rows)
        reader = HiddenStateReader(store, hidden_key(teacher.identity, layers, "last"), teacher.prompt_fingerprint)
        hashes = [text_hash(r["text"]) for r in rows]
        stored = reader.get(hashes, layers)
        # Equal (to float16 precision) to what the teacher computes for the same texts directly.
        _, _, direct = teacher.score_states(rows, hidden_layers=layers)
        for layer in layers:
            assert stored[layer].shape == (len(rows), 32)
            np.testing.assert_allclose(stored[layer], direct[layer], atol=2e-3, rtol=2e-3)
        shards = sorted((tmp_path / "hidden").rglob("*.safetensors"))
        assert len(shards) == 3  # 13 texts, 5 per shard

        # A rerun finds everything done; asking for other layers stores those afresh, labels untouched.
        calls = []
        original = teacher.score_states
        teacher.score_states = lambda *a, **k: calls.append(len(a[0])) or original(*a, **k)
        label_rows(teacher, rows, store, chunk=4, hidden_layers=layers, rows_per_shard=5)
        assert calls == []
        label_rows(teacher, rows, store, chunk=4, hidden_layers=[0], pooling="mean", rows_per_shard=5)
        assert sum(calls) == len(rows)
        assert store.count() == len(rows)
        mean0 = HiddenStateReader(store, hidden_key(teacher.identity, [0], "mean"), teacher.prompt_fingerprint)
        assert mean0.get(hashes, [0])[0].shape == (len(rows), 32)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_reasons_for_a_sample_are_generated_once_and_stored(tiny_models, tmp_path, rows_and_shots, family):
    rows, shots = rows_and_shots
    teacher = make_teacher(tiny_models[family], shots)
    with LabelStore(tmp_path / "labels.sqlite") as store:
        records = label_rows(teacher, rows, store)
        assert add_reasons(teacher, rows, store, sample=4, seed=1, max_new_tokens=6) == 4
        got = store.get(teacher.identity, teacher.prompt_fingerprint, [text_hash(r["text"]) for r in rows],
                        TASK.label_names)
        with_reason = [r for r in rows if got[text_hash(r["text"])].reason is not None]
        assert len(with_reason) == 4
        assert all(isinstance(got[text_hash(r["text"])].reason, str) for r in with_reason)
        assert all("\n" not in got[text_hash(r["text"])].reason for r in with_reason)

        # Generation from the cached few-shot prefix equals generation from scratch (greedy).
        predicted = [records[text_hash(r["text"])].predicted for r in with_reason]
        cached = teacher.reasons(with_reason, predicted, max_new_tokens=6)
        prefix = teacher.scorer.prefix
        teacher.scorer.prefix = None
        try:
            assert teacher.reasons(with_reason, predicted, max_new_tokens=6) == cached
        finally:
            teacher.scorer.prefix = prefix
        assert cached == [got[text_hash(r["text"])].reason for r in with_reason]

        # The same sample again: nothing to generate. A bigger one adds only the missing reasons.
        generate = teacher.reasons
        asked = []
        teacher.reasons = lambda part, *a, **k: asked.extend(part) or generate(part, *a, **k)
        assert add_reasons(teacher, rows, store, sample=4, seed=1, max_new_tokens=6) == 4
        assert asked == []
        assert add_reasons(teacher, rows, store, sample=6, seed=1, max_new_tokens=6) == 6
        assert len(asked) == 2 and not set(r["id"] for r in asked) & set(r["id"] for r in with_reason)


def test_reason_prompt_asks_after_the_teachers_own_answer(tiny_models, rows_and_shots):
    rows, shots = rows_and_shots
    chat = make_teacher(tiny_models["llama"], shots).reason_prompt(rows[0], "tech")
    assert chat.rstrip().endswith("<|im_start|>assistant")
    assert "tech<|im_end|>" in chat and LocalTeacher.REASON_QUESTION in chat
    plain = make_teacher(tiny_models["gpt2"], shots).reason_prompt(rows[0], "sport")
    assert plain.endswith("Answer: sport\nReason:")
