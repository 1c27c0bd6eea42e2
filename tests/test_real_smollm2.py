"""The real SmolLM2-135M-Instruct as teacher on a handful of texts (the packaged weights, offline)."""

from __future__ import annotations

import pytest
import torch

from real_texts import SHOTS, TASK, TEXTS
from tailorkd.models import REGISTRY, missing_requirements
from tailorkd.recipe import PromptConfig, TeacherConfig
from tailorkd.teachers import LocalTeacher

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def teacher():
    missing = missing_requirements(REGISTRY["smollm2-135m-instruct"])
    if missing:
        pytest.skip(f"SmolLM2 package not installed: {missing}")
    prompt = PromptConfig(instruction="Classify the topic of the news text.", shots=5)
    return LocalTeacher(TeacherConfig(model="smollm2-135m-instruct", batch_size=8), TASK, prompt, SHOTS)


def test_smollm2_teacher_labels_obvious_texts(teacher):
    assert teacher.builder.use_chat  # SmolLM2-Instruct's own chat template
    probs, seconds = teacher.score([{"text": t} for t, _ in TEXTS])
    assert probs.shape == (5, 5) and probs.sum(1) == pytest.approx(1.0)
    assert (seconds > 0).all()
    predicted = [TASK.label_names[i] for i in probs.argmax(1)]
    right = sum(p == want for p, (_, want) in zip(predicted, TEXTS))
    assert right >= 4, f"SmolLM2 few-shot predicted {predicted}"


def test_cached_batched_scores_equal_one_text_at_a_time(teacher):
    prompts = [teacher.encode({"text": t}) for t, _ in TEXTS]
    batched = teacher.scorer.score_exact(prompts)
    prefix, teacher.scorer.prefix = teacher.scorer.prefix, None
    try:
        single = torch.cat([teacher.scorer.score_exact([p]) for p in prompts])
    finally:
        teacher.scorer.prefix = prefix
    assert prefix is not None and len(prefix[0]) > 50  # the shared part really was cached
    torch.testing.assert_close(batched, single, atol=2e-3, rtol=1e-4)
