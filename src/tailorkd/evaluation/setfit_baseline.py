"""SetFit on the expert seeds: a stronger seeds-only bar than logistic regression on frozen embeddings.

SetFit (Tunstall et al. 2022, "Efficient Few-Shot Learning Without Prompts") fine-tunes the sentence encoder
contrastively on pairs of seeds (same class: similar; different classes: not), then fits a logistic-regression
head on the tuned embeddings. With ~20 seeds the frozen encoder's embeddings mix topic and style; the pairs
pull each class together. The ``setfit`` library does both (its Trainer on sentence-transformers); it is an
optional dependency (``pip install 'tailorkd[setfit]'``), imported only here.

Measured against the logistic regression on frozen MiniLM embeddings (test macro-F1): 36.2 vs 31.1 on a task
no one here tuned to (21 seeds, economy news tone; issue 14), 87.4 vs 81.9 on BBC News, 54.4 vs 61.4 on
CrisisLexT26 tweets (the quality suite, docs/recipes.md): better on long texts, not everywhere, so opt-in.
``teachers.seed_classifier.SetFitSeedModel`` is the same model as a teacher-ensemble member
(``teacher.ensemble.seed_classifier.method: setfit``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
import warnings
from typing import Any, Sequence

import numpy as np

from tailorkd.errors import TailorkdError
from tailorkd.models.embedder import embedding_text

SETFIT_PIP = "pip install 'tailorkd[setfit]'"


def _setfit() -> Any:
    try:
        import setfit
        from datasets import Dataset  # noqa: F401  (the Trainer's input type)
    except ImportError:
        raise TailorkdError(f"evaluation.systems: setfit needs the setfit library, which is not installed; run "
                            f"`{SETFIT_PIP}` (or leave setfit out of evaluation.systems)") from None
    return setfit


def fit_setfit(seeds: Sequence[dict[str, Any]], label_names: Sequence[str], encoder: str, seed: int,
               iterations: int = 20, epochs: int = 1, batch_size: int = 16) -> Any:
    """A SetFitModel trained on the seeds: ``iterations`` pairs per seed (SetFit's num_iterations; half of them
    of the seed's class), ``epochs`` over the pairs, then its logistic-regression head on the tuned encoder."""
    from datasets import Dataset

    from tailorkd.models.loading import resolve_model

    setfit = _setfit()
    labels = [str(r["label"]) for r in seeds]
    if len(set(labels)) < 2:
        raise TailorkdError(f"the SetFit baseline needs seeds of at least two classes, got {sorted(set(labels))}")
    unknown = sorted(set(labels) - set(label_names))
    if unknown:
        raise TailorkdError(f"seed labels {unknown} are not among the task's labels {list(label_names)}")
    # Quiet: the library logs and prints a line per logging step and a deprecation note per call.
    quiet = [logging.getLogger(name) for name in ("setfit", "sentence_transformers", "transformers", "datasets")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        model = setfit.SetFitModel.from_pretrained(resolve_model(encoder), labels=list(label_names))
        with tempfile.TemporaryDirectory(prefix="tailorkd-setfit-") as out, \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = setfit.TrainingArguments(output_dir=out, batch_size=batch_size, num_epochs=epochs,
                                            num_iterations=iterations, seed=seed, report_to="none",
                                            save_strategy="no", show_progress_bar=False)
            trainer = setfit.Trainer(model=model, args=args, train_dataset=Dataset.from_dict(
                {"text": [embedding_text(r) for r in seeds], "label": labels}))
            with warnings.catch_warnings():  # its data loader asks for pinned memory even without a GPU
                warnings.filterwarnings("ignore", message=".*pin_memory.*")
                trainer.train()
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    return model


def setfit_probs(model: Any, texts: Sequence[str], label_names: Sequence[str]) -> np.ndarray:
    """[N, M] probabilities in the task's label order (a class without seeds gets 0)."""
    probs = np.zeros((len(texts), len(label_names)))
    if not len(texts):
        return probs
    known = np.asarray(model.predict_proba(list(texts), show_progress_bar=False), dtype=float)
    names = [str(name) for name in label_names]
    for j, cls in enumerate(model.model_head.classes_):  # the head knows only the classes that have seeds
        probs[:, names.index(str(cls))] = known[:, j]
    return probs


def setfit_baseline(seeds: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], label_names: Sequence[str],
                    encoder: str, seed: int, iterations: int = 20) -> dict[str, Any]:
    """Train SetFit on the seeds, predict ``rows``: {"probs": [N, M] in label order, "seconds_per_text",
    "train_seconds", "seeds", "iterations"}."""
    t0 = time.perf_counter()
    model = fit_setfit(seeds, label_names, encoder, seed, iterations)
    t1 = time.perf_counter()
    probs = setfit_probs(model, [embedding_text(r) for r in rows], label_names)
    return {"probs": probs, "seconds_per_text": (time.perf_counter() - t1) / max(len(rows), 1),
            "train_seconds": t1 - t0, "seeds": len(seeds), "iterations": iterations}
