"""Seeds-only classifiers as ordinary encoder students: SetFit, or a logistic regression on frozen embeddings.

Both read a text the same way: a sentence encoder's last hidden states, mean-pooled over the real tokens and
L2-normalised (when the encoder's sentence-transformers pipeline normalises), then a logistic regression. That is
exactly an ``EncoderStudent`` whose ``MeanPoolClassifier`` normalises the pooled vector, with the regression's
coefficients as its linear head. Converted, they save with ``save_student(student, "full", folder, info)`` and are
student folders like any distilled one: ``load_student``, classify, serve, export and signals read them.

The student reads ``EncoderStudent.input_text(row)`` (title + '. ' + text, whitespace collapsed, clipped to
prompt.max_text_chars) where the baselines embed ``embedding_text(row)``: the same text for rows with clean
whitespace shorter than max_text_chars. Given the same texts, the student's probabilities are the classifier's.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch

from tailorkd.errors import TailorkdError
from tailorkd.models import load_encoder
from tailorkd.recipe import PromptConfig, TaskConfig
from tailorkd.students import EncoderStudent, MeanPoolClassifier

# The bias of a class the classifier never saw (no seed): its probability is exp(-1e4) = 0, as the baselines give,
# while its logit stays finite for anything that reads logits (losses, margins).
UNSEEN_CLASS_BIAS = -1e4


def setfit_student(model: Any, task: TaskConfig, prompt: PromptConfig) -> EncoderStudent:
    """The trained ``setfit.SetFitModel`` ``model`` as an encoder student (a copy: ``model`` is left as it is).

    Its sentence-transformers body must be Transformer, mean Pooling and optionally Normalize (as SetFit builds
    it on MiniLM); its head a scikit-learn logistic regression (SetFit's default). The student truncates where
    the body does (its max_seq_length), so its probabilities equal ``setfit_probs(model, texts, names)``.
    """
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    body = list(model.model_body)
    kinds = [type(module).__name__ for module in body]
    if (len(body) not in (2, 3) or not isinstance(body[0], Transformer) or not isinstance(body[1], Pooling)
            or not _mean_pooling(body[1]) or (len(body) == 3 and not isinstance(body[2], Normalize))):
        raise TailorkdError(f"SetFit model: its body is {' -> '.join(kinds)}; only Transformer -> Pooling (mean) "
                            "[-> Normalize] converts to an encoder student")
    encoder = copy.deepcopy(body[0].auto_model)
    tokenizer = copy.deepcopy(body[0].tokenizer)
    limits = [n for n in (body[0].max_seq_length, getattr(encoder.config, "max_position_embeddings", None)) if n]
    if not limits:
        raise TailorkdError("SetFit model: its body sets no max_seq_length and its encoder no "
                            "max_position_embeddings; set model.model_body.max_seq_length")
    normalize = len(body) == 3 or bool(getattr(model, "normalize_embeddings", False))
    return _student(encoder, tokenizer, model.model_head, normalize, task, prompt, int(min(limits)), "SetFit model")


def logistic_student(encoder: str, classifier: Any, task: TaskConfig, prompt: PromptConfig,
                     max_length: int = 256) -> EncoderStudent:
    """The seed classifier ``classifier`` (``baselines.fit_seed_classifier``, fitted on ``SentenceEmbedder(
    encoder)`` embeddings) with ``encoder`` (registry name, folder or Hub id) as an encoder student: its
    probabilities equal ``classifier_probs(classifier, SentenceEmbedder(encoder, max_length=max_length)(texts),
    names)``."""
    model, tokenizer = load_encoder(encoder)
    return _student(model, tokenizer, classifier, True, task, prompt, max_length, f"seed classifier on {encoder}")


def _mean_pooling(pooling: Any) -> bool:
    mode = getattr(pooling, "pooling_mode", None)
    if mode is None and hasattr(pooling, "get_pooling_mode_str"):  # sentence-transformers before 6
        mode = pooling.get_pooling_mode_str()
    return mode in ("mean", ("mean",), ["mean"])


def _student(encoder: Any, tokenizer: Any, classifier: Any, normalize: bool, task: TaskConfig,
             prompt: PromptConfig, max_length: int, what: str) -> EncoderStudent:
    encoder.eval()
    classifier_model = MeanPoolClassifier(encoder, len(task.labels), normalize=normalize)
    weight, bias = head_weights(classifier, task.label_names, encoder.config.hidden_size, what)
    with torch.no_grad():
        classifier_model.head.weight.copy_(torch.from_numpy(weight))
        classifier_model.head.bias.copy_(torch.from_numpy(bias))
    _check_head(classifier, weight, bias, normalize, task.label_names, what)
    return EncoderStudent(classifier_model, tokenizer, task, prompt, max_length)


def head_weights(classifier: Any, label_names: Sequence[str], hidden_size: int, what: str = "classifier"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """([M, H] weight, [M] bias) of the linear head whose softmax is ``classifier.predict_proba`` (a fitted
    scikit-learn logistic regression: ``coef_``, ``intercept_``, ``classes_``), rows in ``label_names`` order.

    A binary regression has one row w (P(classes_[1]) = sigmoid(w x + b)): its two logits are -(w x + b)/2 and
    (w x + b)/2, whose softmax is the same. A label the classifier has no class for gets weight 0 and bias
    UNSEEN_CLASS_BIAS (probability 0)."""
    names = [str(name) for name in label_names]
    missing = [name for name in ("coef_", "intercept_", "classes_") if not hasattr(classifier, name)]
    if missing:
        raise TailorkdError(f"{what}: its head ({type(classifier).__name__}) has no {', '.join(missing)}; only a "
                            "fitted scikit-learn logistic regression converts to an encoder student")
    classes = [str(c) for c in classifier.classes_]
    unknown = sorted(set(classes) - set(names))
    if unknown:
        raise TailorkdError(f"{what}: classes {unknown} are not among the task's labels {names}")
    coef = np.asarray(classifier.coef_, dtype=np.float64)
    intercept = np.atleast_1d(np.asarray(classifier.intercept_, dtype=np.float64))
    if coef.ndim != 2 or coef.shape[1] != hidden_size:
        raise TailorkdError(f"{what}: its head reads {coef.shape[-1]} features, the encoder gives {hidden_size}")
    if coef.shape[0] == 1 and len(classes) == 2:
        coef, intercept = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    if coef.shape[0] != len(classes) or intercept.shape != (len(classes),):
        raise TailorkdError(f"{what}: its head has {coef.shape[0]} rows of coefficients for {len(classes)} classes")
    weight = np.zeros((len(names), hidden_size), dtype=np.float32)
    bias = np.full(len(names), UNSEEN_CLASS_BIAS, dtype=np.float32)
    for row, cls in enumerate(classes):
        weight[names.index(cls)] = coef[row]
        bias[names.index(cls)] = intercept[row]
    return weight, bias


def _check_head(classifier: Any, weight: np.ndarray, bias: np.ndarray, normalize: bool, label_names: Sequence[str],
                what: str) -> None:
    """The head's softmax must be ``classifier.predict_proba``: a regression fitted one-vs-rest (each class its own
    sigmoid, renormalised) is not a linear softmax head, and converting it would ship other probabilities."""
    x = np.random.default_rng(0).normal(size=(8, weight.shape[1])).astype(np.float32)
    if normalize:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    logits = x.astype(np.float64) @ weight.T.astype(np.float64) + bias
    ours = np.exp(logits - logits.max(1, keepdims=True))
    ours /= ours.sum(1, keepdims=True)
    names = [str(name) for name in label_names]
    columns = [names.index(str(c)) for c in classifier.classes_]
    theirs = np.asarray(classifier.predict_proba(x), dtype=np.float64)
    if not np.allclose(ours[:, columns], theirs, atol=1e-5):
        raise TailorkdError(f"{what}: its head's probabilities are not softmax(coef_ x + intercept_) (a one-vs-rest "
                            "fit?); only a multinomial or binary logistic regression converts to an encoder student")
