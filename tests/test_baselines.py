"""The seed-only baseline on the real packaged MiniLM encoder."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from helpers import TOPICS, topic_rows
from tailorkd.errors import TailorkdError
from tailorkd.evaluation.baselines import fit_seed_classifier, judge_seed_classifier, seed_only_baseline
from tailorkd.models.embedder import embed_texts, embedding_text


def test_seed_only_baseline_learns_topics_from_a_few_seeds():
    rows = [{**r, "text": r["text"].replace("News item", "Report")} for r in topic_rows(6)]
    seeds = [r for r in rows if r["id"].endswith(("-0", "-1"))]  # 2 per class
    test = [r for r in rows if r not in seeds]
    names = TOPICS + ["weather"]  # a class without seeds gets probability 0
    result = seed_only_baseline(seeds, test, names, "minilm-l6", seed=0)
    probs = result["probs"]
    assert probs.shape == (len(test), len(names)) and np.allclose(probs.sum(1), 1.0)
    assert (probs[:, names.index("weather")] == 0).all()
    accuracy = np.mean([names[i] == r["label"] for i, r in zip(probs.argmax(1), test)])
    assert accuracy >= 0.9  # the topic word is in every text: real embeddings separate them
    assert result["seeds"] == 10 and result["C"] in (0.1, 1.0, 10.0, 100.0) and result["seconds_per_text"] > 0


def test_embeddings_are_normalised_and_seeds_of_one_class_are_refused():
    x = embed_texts(["one text", "another, longer text about markets"], "minilm-l6")
    assert x.shape == (2, 384) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    with pytest.raises(TailorkdError, match="at least two classes"):
        seed_only_baseline([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}], [], ["x", "y"], "minilm-l6", 0)


def test_seed_only_baseline_emits_no_future_warning():
    # scikit-learn's FutureWarnings about changing LogisticRegressionCV defaults reached `make demo`'s terminal.
    rows = topic_rows(4)
    seeds = [r for r in rows if r["id"].endswith(("-0", "-1"))]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        result = seed_only_baseline(seeds, rows, TOPICS, "minilm-l6", seed=0)
    assert result["probs"].shape == (len(rows), len(TOPICS))


def _clustered(n_per_class: int, classes: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 16))
    x = np.concatenate([c + 0.8 * rng.normal(size=(n_per_class, 16)) for c in centres])
    return x / np.linalg.norm(x, axis=1, keepdims=True), [f"c{i}" for i in range(classes) for _ in range(n_per_class)]


def test_seed_classifier_fits_as_with_the_old_defaults_without_future_warnings():
    from sklearn.linear_model import LogisticRegressionCV

    for n_per_class, classes, seed in ((2, 3, 0), (4, 2, 1), (5, 5, 2), (1, 3, 3)):
        x, labels = _clustered(n_per_class, classes, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            model = fit_seed_classifier(x, labels, seed)
            judge_seed_classifier(x, labels, sorted(set(labels)), seed)
        if n_per_class >= 2:  # cross-validated C: the same fit as scikit-learn's defaults gave before
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                before = LogisticRegressionCV(Cs=[0.1, 1.0, 10.0, 100.0], cv=min(5, n_per_class), max_iter=2000,
                                              random_state=seed).fit(x, labels)
            assert float(np.atleast_1d(model.C_)[0]) == float(np.atleast_1d(before.C_)[0])
            np.testing.assert_array_equal(model.predict_proba(x), before.predict_proba(x))


def test_embedding_text_puts_the_title_first():
    assert embedding_text({"title": "Markets", "text": "Shares fell."}) == "Markets. Shares fell."
    assert embedding_text({"title": None, "text": "Shares fell."}) == "Shares fell."


def test_setfit_tunes_the_encoder_on_seed_pairs_and_learns_topics():
    from tailorkd.evaluation.setfit_baseline import fit_setfit, setfit_baseline, setfit_probs

    rows = [{**r, "text": r["text"].replace("News item", "Report")} for r in topic_rows(6)]
    seeds = [r for r in rows if r["id"].endswith(("-0", "-1"))]  # 2 per class
    test = [r for r in rows if r not in seeds]
    names = TOPICS + ["weather"]  # a class without seeds gets probability 0
    result = setfit_baseline(seeds, test, names, "minilm-l6", seed=0, iterations=4)
    probs = result["probs"]
    assert probs.shape == (len(test), len(names)) and np.allclose(probs.sum(1), 1.0)
    assert (probs[:, names.index("weather")] == 0).all()
    accuracy = np.mean([names[i] == r["label"] for i, r in zip(probs.argmax(1), test)])
    assert accuracy >= 0.9
    assert result["seeds"] == 10 and result["train_seconds"] > 0 and result["iterations"] == 4
    # The encoder itself moved (contrastive pairs), and the same seed trains the same model.
    model = fit_setfit(seeds, names, "minilm-l6", seed=0, iterations=4)
    texts = [embedding_text(r) for r in test[:4]]
    tuned = model.model_body.encode(texts, normalize_embeddings=True)
    frozen = embed_texts(texts, "minilm-l6")
    assert np.min(np.sum(tuned * frozen, axis=1)) < 0.999
    np.testing.assert_allclose(setfit_probs(model, [embedding_text(r) for r in test], names), probs, atol=1e-5)


def test_setfit_without_the_library_is_a_one_line_error(monkeypatch):
    import builtins

    from tailorkd.evaluation.setfit_baseline import fit_setfit

    real_import = builtins.__import__

    def no_setfit(name, *args, **kwargs):
        if name == "setfit":
            raise ImportError("No module named 'setfit'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_setfit)
    with pytest.raises(TailorkdError, match=r"^evaluation.systems: setfit needs the setfit library.*\[setfit\]"):
        fit_setfit([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], ["x", "y"], "minilm-l6", 0)
