"""Seeds-only classifiers (SetFit, the seed classifier on frozen embeddings) converted to encoder students: the
same probabilities as the classifiers, as folders that load, reload under any recipe student and export."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from helpers import PROMPT, TASK, TOPICS, topic_rows
from tailorkd.errors import TailorkdError
from tailorkd.evaluation.baselines import classifier_probs, fit_seed_classifier
from tailorkd.evaluation.setfit_baseline import fit_setfit, setfit_probs
from tailorkd.models.embedder import SentenceEmbedder
from tailorkd.recipe import StudentConfig, TaskConfig
from tailorkd.seed_students import UNSEEN_CLASS_BIAS, logistic_student, setfit_student
from tailorkd.students import (
    HEAD_CONFIG_FILE,
    STUDENT_FILE,
    EncoderStudent,
    export_student,
    load_student,
    predict_probs,
    save_student,
)

pytest.importorskip("setfit")

BINARY = TaskConfig(name="two", description="d", labels=[{"name": "business"}, {"name": "sport"}])
ROWS = topic_rows(3)
# Seeds of every topic but tech: the task has a class the classifiers never saw.
SEEDS = [r for r in topic_rows(2) if r["label"] != "tech"]
TEXTS_ROWS = ROWS + [{"id": "long", "label": "sport", "text": " ".join(f"The team won match {i}." for i in range(40))}]


@pytest.fixture(scope="module")
def normalised_body(tiny_models, tmp_path_factory):
    """The tiny BERT as a sentence-transformers folder that normalises (Transformer, mean Pooling, Normalize), as
    all-MiniLM-L6-v2 is."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    folder = tmp_path_factory.mktemp("st_bert")
    modules = [Transformer(str(tiny_models["bert"])), Pooling(32, "mean"), Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


@pytest.fixture(scope="module")
def setfit_topics(normalised_body):
    """SetFit on the topic seeds (no tech seed), truncating at 12 tokens so that long texts are cut."""
    model = fit_setfit(SEEDS, TOPICS, str(normalised_body), seed=0, iterations=1)
    model.model_body.max_seq_length = 12
    return model


def _texts(student, rows):
    return [student.input_text(r) for r in rows]


def test_setfit_student_gives_setfit_probabilities_and_zero_for_a_class_without_seeds(setfit_topics):
    student = setfit_student(setfit_topics, TASK, PROMPT)
    assert isinstance(student, EncoderStudent) and student.model.normalize and student.max_length == 12
    probs = predict_probs(student, TEXTS_ROWS, batch_size=4)
    expected = setfit_probs(setfit_topics, _texts(student, TEXTS_ROWS), TOPICS)
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    assert np.ptp(expected[:, :4], axis=0).max() > 1e-3  # the texts get different probabilities: a real check
    assert (probs[:, TOPICS.index("tech")] < 1e-12).all()
    assert float(student.model.head.bias[TOPICS.index("tech")].detach()) == UNSEEN_CLASS_BIAS
    # The conversion copied the model: changing the student leaves SetFit as it was.
    student.model.head.bias.data += 1.0
    np.testing.assert_allclose(setfit_probs(setfit_topics, _texts(student, TEXTS_ROWS), TOPICS), expected, atol=1e-6)


def test_binary_setfit_without_normalize_converts(tiny_models):
    seeds = [r for r in SEEDS if r["label"] in BINARY.label_names]
    model = fit_setfit(seeds, BINARY.label_names, str(tiny_models["bert"]), seed=0, iterations=1)
    assert model.model_head.coef_.shape[0] == 1  # binary: one row of coefficients
    student = setfit_student(model, BINARY, PROMPT)
    assert not student.model.normalize  # a plain encoder folder: sentence-transformers adds no Normalize
    probs = predict_probs(student, TEXTS_ROWS, batch_size=4)
    np.testing.assert_allclose(probs, setfit_probs(model, _texts(student, TEXTS_ROWS), BINARY.label_names), atol=1e-4)


def test_a_setfit_body_without_mean_pooling_is_refused(setfit_topics):
    model = copy.deepcopy(setfit_topics)
    model.model_body[1].pooling_mode = "cls"
    with pytest.raises(TailorkdError, match=r"Transformer -> Pooling \(mean\)"):
        setfit_student(model, TASK, PROMPT)


@pytest.mark.parametrize("task", [TASK, BINARY], ids=["unseen_class", "binary"])
def test_logistic_student_gives_the_seed_classifier_probabilities(tiny_models, task):
    encoder = str(tiny_models["bert"])
    seeds = [r for r in SEEDS if r["label"] in task.label_names]
    from sklearn.linear_model import LogisticRegression

    embed = SentenceEmbedder(encoder, max_length=16)
    x, labels = embed([r["text"] for r in seeds]), [r["label"] for r in seeds]
    # The tiny random encoder's embeddings are close together: the seed classifier's cross-validated C leaves its
    # probabilities near uniform, so the same regression with a weak penalty is checked too.
    fitted = fit_seed_classifier(x, labels, seed=0)
    sharp = LogisticRegression(C=1e4, max_iter=5000).fit(x, labels)
    for classifier in (fitted, sharp):
        student = logistic_student(encoder, classifier, task, PROMPT, max_length=16)
        assert student.model.normalize and student.max_length == 16
        probs = predict_probs(student, TEXTS_ROWS, batch_size=4)
        expected = classifier_probs(classifier, embed(_texts(student, TEXTS_ROWS)), task.label_names)
        np.testing.assert_allclose(probs, expected, atol=1e-4)
    assert np.ptp(expected, axis=0).max() > 1e-2  # the sharp one: the texts get different probabilities


def test_a_one_vs_rest_head_is_refused(tiny_models):
    from sklearn.linear_model import SGDClassifier

    encoder = str(tiny_models["bert"])
    x = SentenceEmbedder(encoder)([r["text"] for r in SEEDS])
    one_vs_rest = SGDClassifier(loss="log_loss", random_state=0).fit(x, [r["label"] for r in SEEDS])
    with pytest.raises(TailorkdError, match="not softmax"):
        logistic_student(encoder, one_vs_rest, TASK, PROMPT)


@pytest.fixture()
def saved_setfit(setfit_topics, tmp_path):
    student = setfit_student(setfit_topics, TASK, PROMPT)
    folder = tmp_path / "setfit"
    save_student(student, "full", folder, {"base_model": "tiny st bert", "system": "setfit"})
    return folder, predict_probs(student, TEXTS_ROWS, batch_size=4), _texts(student, TEXTS_ROWS)


def test_a_converted_student_reloads_under_a_causal_lm_recipe_student(saved_setfit, tiny_models):
    folder, probs, texts = saved_setfit
    info = json.loads((folder / STUDENT_FILE).read_text())
    assert info["max_length"] == 12 and info["kind"] == "encoder" and info["adapter_method"] == "full"
    recipe_student = StudentConfig(model=str(tiny_models["llama"]), max_length=64)
    student = load_student(folder, TASK, PROMPT, [], recipe_student)
    assert isinstance(student, EncoderStudent) and student.max_length == 12 and student.model.normalize
    np.testing.assert_allclose(predict_probs(student, TEXTS_ROWS, batch_size=4), probs, atol=1e-5)


def test_an_old_folder_loads_with_the_recipes_max_length_and_no_normalize(saved_setfit, tiny_models):
    folder, probs, texts = saved_setfit
    (folder / HEAD_CONFIG_FILE).unlink()  # as written before head.json existed
    info = json.loads((folder / STUDENT_FILE).read_text())
    del info["max_length"]
    (folder / STUDENT_FILE).write_text(json.dumps(info))
    student = load_student(folder, TASK, PROMPT, [], StudentConfig(model=str(tiny_models["bert"]), max_length=64))
    assert not student.model.normalize and student.max_length == 64
    assert not np.allclose(predict_probs(student, TEXTS_ROWS, batch_size=4), probs, atol=1e-3)


def test_a_damaged_head_json_or_max_length_is_a_one_line_error(saved_setfit, tiny_models):
    folder, _, _ = saved_setfit
    config = StudentConfig(model=str(tiny_models["bert"]))
    (folder / HEAD_CONFIG_FILE).write_text('{"normalize": "yes"}')
    with pytest.raises(TailorkdError, match=r"head\.json: normalize must be true or false, got 'yes'"):
        load_student(folder, TASK, PROMPT, [], config)
    info = json.loads((folder / STUDENT_FILE).read_text())
    (folder / STUDENT_FILE).write_text(json.dumps({**info, "max_length": "long"}))
    with pytest.raises(TailorkdError, match=r"student\.json: max_length must be a positive integer, got 'long'"):
        load_student(folder, TASK, PROMPT, [], config)


def test_a_normalised_student_exports_with_normalize_in_every_format(saved_setfit, tiny_models, tmp_path):
    from sentence_transformers import SentenceTransformer

    from tailorkd.onnx_student import OnnxClassifier

    folder, probs, texts = saved_setfit
    out = tmp_path / "export"
    about = export_student(folder, out, TASK, PROMPT, [], StudentConfig(model=str(tiny_models["llama"])),
                           check_rows=TEXTS_ROWS, batch_size=4)
    assert about["head"]["normalize"] is True and about["max_length"] == 12
    assert about["onnx"]["check"]["fp32"]["agreement"] == 1.0
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize", "Dense"]
    assert "Normalize, a Dense head" in (out / "README.md").read_text()
    encoded = SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_tensor=True).softmax(-1)
    np.testing.assert_allclose(encoded.double().numpy(), probs, atol=1e-4)
    np.testing.assert_allclose(OnnxClassifier.from_export(out, "fp32").probs(texts), probs, atol=1e-4)
