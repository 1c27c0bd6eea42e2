"""The whole workflow, readable top to bottom: prepare -> label -> distill -> evaluate.

Each stage reads the recipe and the previous stage's files in the run folder and writes its own, so
any stage can be rerun alone; ``run`` calls them in order and skips work that is already done:

    <output_dir>/recipe.yaml                    the resolved recipe (overrides applied)
    <output_dir>/data/{seed,pool,test}.parquet  splits (+ rejects.jsonl, stats.json)
    <output_dir>/labels.sqlite                  the teacher's class distributions
    <output_dir>/students/student/              the trained student (student.json + adapter/)
    <output_dir>/predictions/*.parquet          per-text predictions on the test set
    <output_dir>/report.{md,json}               the comparison against human labels
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tailorkd.data import PreparedData, load_prepared, prepare_data
from tailorkd.errors import TailorkdError
from tailorkd.files import write_text_atomic
from tailorkd.labels import LabelStore, text_hash
from tailorkd.prompts import choose_shots
from tailorkd.recipe import Recipe

log = logging.getLogger(__name__)

STUDENT_DIR = "students/student"
# Where each student system lives: the distilled student (adaptive KD) and the paper's two baselines.
STUDENT_DIRS = {"student": STUDENT_DIR, "untrained_student": "students/untrained", "standard_kd": "students/standard_kd"}
# The teacher's prediction on a test text it abstained on: no class, so it counts as wrong.
ABSTAINED = "(abstained)"


def _rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in df.to_dict("records")]


def _fixed_shots(recipe: Recipe, seeds: list[dict[str, Any]], prompt: Any) -> list[dict[str, Any]]:
    """The fixed few-shot examples of ``prompt``: drawn from ``seeds`` with its shot_seed (default: the
    recipe's seed)."""
    return choose_shots(seeds, recipe.task.label_names, prompt.shots,
                        recipe.seed if prompt.shot_seed is None else prompt.shot_seed)


def _shots(recipe: Recipe, data: PreparedData) -> list[dict[str, Any]]:
    """The recipe's fixed few-shot examples (also a causal-LM student's when the teacher's are per text)."""
    return _fixed_shots(recipe, _rows(data.seed), recipe.prompt)


def _per_text_shots(prompt: Any) -> bool:
    """Whether ``prompt`` chooses its shots per text (kNN) rather than fixed ones."""
    return prompt.shot_selection == "knn" and prompt.shots > 0


def _knn_selector(recipe: Recipe, seeds: list[dict[str, Any]], prompt: Any, embedder: Any = None) -> Any:
    """The per-text shot selector of ``prompt`` when it asks for one (shot_selection: knn), else None."""
    from tailorkd.prompts import KnnShotSelector

    if not _per_text_shots(prompt):
        return None
    return KnnShotSelector(seeds, recipe.task.label_names, prompt.shots, prompt.shot_encoder, embed=embedder)


def _selector(recipe: Recipe, data: PreparedData) -> Any:
    return _knn_selector(recipe, _rows(data.seed), recipe.prompt)


def _write_json(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, default=str))


# -- stage 1: data ---------------------------------------------------------------------------------
def prepare(recipe: Recipe, force: bool = False) -> PreparedData:
    """Read the sources and write the seed / pool / test splits (skipped when the recipe's data is unchanged)."""
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    data_dir = out / "data"
    fingerprint = recipe.content_hash("data", "task", "seed")
    stamp = data_dir / "recipe_hash.txt"
    if not force and stamp.is_file() and stamp.read_text().strip() == fingerprint:
        log.info("data: splits in %s are up to date", data_dir)
        return load_prepared(data_dir)
    data = prepare_data(recipe.data, recipe.task.label_names, data_dir, recipe.seed, recipe.base_dir)
    stamp.write_text(fingerprint)
    log.info("data: seed %d, pool %d, test %d, rejects %d -> %s", len(data.seed), len(data.pool), len(data.test),
             len(data.rejects), data_dir)
    return data


def _data(recipe: Recipe) -> PreparedData:
    data_dir = Path(recipe.output_dir) / "data"
    if not (data_dir / "recipe_hash.txt").is_file():
        return prepare(recipe)
    return load_prepared(data_dir)


# -- stage 1b: prompt search (when the recipe has prompt_search) -------------------------------------
SEARCH_FILE = "prompts/search.json"


def _search_hash(recipe: Recipe) -> str:
    """What the search's outcome depends on: data, task, seed, the hand-written prompt, the search settings
    and the teacher that scores (not its calibration, ensemble, reasons or hidden states)."""
    teacher = recipe.teacher.model_dump(mode="json", exclude={"calibration", "ensemble", "reasons", "hidden_states"})
    payload = [recipe.content_hash("data", "task", "seed", "prompt", "prompt_search"), teacher]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _search_payload(recipe: Recipe) -> dict[str, Any] | None:
    """prompts/search.json when it was made for this recipe, else None."""
    path = Path(recipe.output_dir) / SEARCH_FILE
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    return payload if payload.get("search_hash") == _search_hash(recipe) else None


def _teacher_maker(recipe: Recipe) -> Any:
    """make(prompt, shots, selector) -> a teacher of the recipe with that prompt; a local teacher's model
    is loaded once and shared by every prompt."""
    from tailorkd.devices import resolve_device, resolve_dtype
    from tailorkd.models import load_causal_lm
    from tailorkd.teachers import LocalTeacher, ServedTeacher

    config = recipe.teacher
    if config.server is not None:
        return lambda prompt, shots, selector: ServedTeacher(config, recipe.task, prompt, shots, selector)
    model, tokenizer = load_causal_lm(config.model, dtype=resolve_dtype(config.dtype), device=resolve_device(config.device))
    return lambda prompt, shots, selector: LocalTeacher(config, recipe.task, prompt, shots, model, tokenizer, selector)


class SeedScorer:
    """Scores prompts by the teacher's agreement with the expert seeds: ``scorer(prompt)`` -> (metrics,
    teacher calls, seconds). One teacher model and one sentence encoder serve every prompt; each seed's
    distribution goes into the label store under its prompt, so a prompt scored before costs nothing.
    A seed is never scored by a prompt that shows it: fixed shots leave it out (``loo_shot_groups``), a
    per-text selector never picks a text's own seed."""

    def __init__(self, recipe: Recipe, data: PreparedData, calibrate: bool = True):
        """``calibrate``: the metrics are those after a leave-one-out per-class bias (``loo_calibrated``),
        with the raw ones under "raw"."""
        self.recipe = recipe
        self.calibrate = calibrate
        self.seeds = _rows(data.seed)
        self.names = recipe.task.label_names
        self.make = _teacher_maker(recipe)
        self._selectors: dict[tuple[int, str], Any] = {}
        self._embedders: dict[str, Any] = {}

    def selector(self, prompt: Any) -> Any:
        """The per-text shot selector of ``prompt`` (None for fixed shots), shared between prompts."""
        from tailorkd.evaluation.baselines import SentenceEmbedder

        if not _per_text_shots(prompt):
            return None
        key = (prompt.shots, prompt.shot_encoder)
        if key not in self._selectors:
            if prompt.shot_encoder not in self._embedders:
                self._embedders[prompt.shot_encoder] = SentenceEmbedder(prompt.shot_encoder)
            self._selectors[key] = _knn_selector(self.recipe, self.seeds, prompt, self._embedders[prompt.shot_encoder])
        return self._selectors[key]

    def teacher(self, prompt: Any) -> Any:
        """A teacher with ``prompt`` (its fixed shots drawn as the pipeline draws them)."""
        return self.make(prompt, _fixed_shots(self.recipe, self.seeds, prompt), self.selector(prompt))

    def __call__(self, prompt: Any) -> tuple[dict[str, Any], int, float]:
        from tailorkd.prompts.search import loo_calibrated, seed_metrics

        probs, calls, seconds = self.probs(prompt)
        labels = [r["label"] for r in self.seeds]
        metrics = seed_metrics(probs, labels, self.names)
        if self.calibrate:
            metrics = {**seed_metrics(loo_calibrated(probs, labels, self.names), labels, self.names), "raw": metrics}
        return metrics, calls, seconds

    def probs(self, prompt: Any) -> tuple[np.ndarray, int, float]:
        """The teacher's raw [S, M] distributions on the seeds under ``prompt`` (NaN rows: abstentions),
        the teacher calls it took (texts not yet in the store) and the seconds."""
        from tailorkd.prompts.search import loo_shot_groups

        t0 = time.perf_counter()
        selector = self.selector(prompt)
        if selector is not None:
            groups = [([], self.seeds)]
        else:
            groups = loo_shot_groups(_fixed_shots(self.recipe, self.seeds, prompt), self.seeds)
        found: dict[str, Any] = {}
        calls = 0
        with LabelStore(Path(self.recipe.output_dir) / "labels.sqlite") as store:
            for shots, rows in groups:
                teacher = self.make(prompt, shots, selector)
                done = store.done_hashes(teacher.identity, teacher.prompt_fingerprint)
                calls += sum(text_hash(r["text"]) not in done for r in rows)
                records = _labeller(teacher)(teacher, rows, store, desc="prompt search: seeds")
                found.update({r["id"]: records[text_hash(r["text"])] for r in rows if text_hash(r["text"]) in records})
        none = [math.nan] * len(self.names)
        probs = np.array([found[r["id"]].probs if r["id"] in found else none for r in self.seeds],
                         dtype=float).reshape(len(self.seeds), len(self.names))
        return probs, calls, time.perf_counter() - t0


def tune_prompt(recipe: Recipe, force: bool = False) -> dict[str, Any]:
    """Choose the prompt on the expert seeds (``recipe.prompt_search``; see tailorkd.prompts.search): every
    candidate's seed scores go into the label store, so an interrupted search resumes where it stopped.
    Writes prompts/search.json (ranked candidates, scores, cost), prompts/candidates.md,
    prompts/chosen_prompt.yaml and recipe.tuned.yaml (the recipe with the chosen prompt, no search).
    Skipped when search.json was made for this recipe, unless ``force``."""
    import yaml

    from tailorkd.prompts.search import base_parts, greedy_search, search_space, to_prompt, write_table

    config = recipe.prompt_search
    if config is None:
        raise TailorkdError(f"{recipe.output_dir}: the recipe has no prompt_search section; add one to tune the prompt")
    done = _search_payload(recipe)
    if done is not None and not force:
        log.info("prompt search: %s is up to date", Path(recipe.output_dir) / SEARCH_FILE)
        return done
    out = Path(recipe.output_dir)
    data = _data(recipe)
    if len(data.seed) < 2:
        raise TailorkdError(f"{out / 'data' / 'seed.parquet'}: prompt search needs at least two seeds, "
                            f"found {len(data.seed)}")
    space = search_space(recipe.prompt, config, recipe.task, len(data.seed), recipe.seed,
                         served=recipe.teacher.server is not None)
    scorer = SeedScorer(recipe, data, calibrate=config.calibrate)

    def progress(item: Any) -> None:
        m, p = item.metrics, item.parts
        log.info("prompt search: candidate %d/%d (round %d): %s %.3f, accuracy %.3f [%d %s shots, %s, %s] "
                 "%d teacher calls, %.1fs", item.order + 1, config.max_candidates, item.round, config.metric,
                 m[config.metric], m["accuracy"], p["shots"], p["shot_selection"], p["response_format"],
                 "system" if p["system"] else "no system", item.teacher_calls, item.seconds)

    t0 = time.perf_counter()
    result = greedy_search(base_parts(recipe.prompt), space, lambda parts: scorer(to_prompt(recipe.prompt, parts)),
                           config, recipe.seed, progress)
    chosen_prompt = to_prompt(recipe.prompt, result.chosen.parts)

    def entry(item: Any, rank: int | None = None) -> dict[str, Any]:
        return {**({"rank": rank} if rank is not None else {}), "parts": item.parts, "metrics": item.metrics,
                "round": item.round, "teacher_calls": item.teacher_calls, "seconds": round(item.seconds, 2)}

    payload = {
        "search_hash": _search_hash(recipe),
        "metric": config.metric,
        "seeds": len(data.seed),
        "space": space,
        "base": entry(result.base),
        "chosen": {**entry(result.chosen), "prompt": chosen_prompt.model_dump(mode="json")},
        "candidates": [entry(item, rank) for rank, item in enumerate(result.ranked(config.metric), 1)],
        "rounds": result.rounds,
        "stopped_because": result.stopped_because,
        "teacher_calls": sum(item.teacher_calls for item in result.scored),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    folder = out / "prompts"
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "candidates.md", write_table(result, config.metric) + "\n")
    write_text_atomic(folder / "chosen_prompt.yaml",
                      yaml.safe_dump({"prompt": chosen_prompt.model_dump(mode="json")}, sort_keys=False,
                                     allow_unicode=True))
    tuned = recipe.model_copy(update={"prompt": chosen_prompt, "prompt_search": None}).model_dump(mode="json")
    for source in tuned["data"]["sources"]:  # it lies in the run folder: data paths must not depend on where
        if source.get("path") and not Path(source["path"]).is_absolute():
            source["path"] = str((Path(recipe.base_dir) / source["path"]).resolve())
    write_text_atomic(out / "recipe.tuned.yaml", "# The recipe with the prompt chosen by `tailorkd prompts tune`.\n"
                      + yaml.safe_dump(tuned, sort_keys=False, allow_unicode=True))
    _write_json(out / SEARCH_FILE, payload)  # last: its presence means the search is complete
    log.info("prompt search: %d candidates, %d teacher calls, %.0fs; seeds %s %.3f -> %.3f (%s)",
             len(result.scored), payload["teacher_calls"], payload["seconds"], config.metric,
             result.base.metrics[config.metric], result.chosen.metrics[config.metric], result.stopped_because)
    return payload


def resolve_prompt(recipe: Recipe, tune: bool = False) -> Recipe:
    """The recipe every stage after the search works with: with ``prompt_search``, its prompt is the chosen
    one (the search runs first when ``tune``, else it must be done) and the search section is gone, so
    this is idempotent. A recipe without a search is returned as it is."""
    if recipe.prompt_search is None:
        return recipe
    payload = _search_payload(recipe)
    if payload is None:
        if not tune:
            raise TailorkdError(f"{Path(recipe.output_dir) / SEARCH_FILE}: the recipe asks for a prompt search that is "
                                "not done for this recipe; run `tailorkd prompts tune` (or `tailorkd label`)")
        payload = tune_prompt(recipe)
    from tailorkd.recipe import PromptConfig

    chosen = PromptConfig.model_validate(payload["chosen"]["prompt"])
    return recipe.model_copy(update={"prompt": chosen, "prompt_search": None})


# -- stage 2: teacher labels -----------------------------------------------------------------------
def _labels_hash(recipe: Recipe) -> str:
    return recipe.content_hash("data", "task", "seed", "prompt", "teacher")


def _teacher(recipe: Recipe, data: PreparedData, config: Any = None):
    """The recipe's teacher (or the ensemble member ``config``), local or served."""
    from tailorkd.teachers import LocalTeacher, ServedTeacher

    config = config or recipe.teacher
    kind = ServedTeacher if config.server is not None else LocalTeacher
    return kind(config, recipe.task, recipe.prompt, _shots(recipe, data), selector=_selector(recipe, data))


def _labeller(teacher: Any) -> Any:
    from tailorkd.teachers import ServedTeacher, label_rows, label_served_rows

    return label_served_rows if isinstance(teacher, ServedTeacher) else label_rows


def label(recipe: Recipe, teacher: Any = None) -> dict[str, Any]:
    """The teacher labels the unlabelled pool (training targets) and the test set (for its evaluation).

    A served teacher may abstain on a text (its answer names no class); such texts get no label and are
    listed in labels_summary.json, so that later stages can tell them from texts never labelled.
    """
    from tailorkd.teachers.local import hidden_key

    base_recipe, recipe = recipe, resolve_prompt(recipe, tune=True)
    data = _data(recipe)
    teacher = teacher or _teacher(recipe, data)
    labeller = _labeller(teacher)
    out = Path(recipe.output_dir)
    t0 = time.perf_counter()
    pool_rows, test_rows = _rows(data.pool), _rows(data.test)
    options: dict[str, Any] = {}
    hidden = recipe.teacher.hidden_states
    if hidden is not None:
        options = {"hidden_layers": hidden.layers, "pooling": hidden.pooling, "rows_per_shard": hidden.rows_per_shard}
    reasons = None
    with LabelStore(out / "labels.sqlite") as store:
        pool = labeller(teacher, pool_rows, store, desc="teacher: pool", **options)
        test = labeller(teacher, test_rows, store, desc="teacher: test", **options)
        if recipe.teacher.reasons is not None:
            from tailorkd.teachers.local import add_reasons

            reasons = add_reasons(teacher, pool_rows, store, recipe.teacher.reasons.sample, recipe.seed,
                                  recipe.teacher.reasons.max_new_tokens)
        calibration = None
        if recipe.teacher.calibration is not None:
            calibration = _fit_calibration(recipe, data, teacher, labeller, store, pool)
        ensemble = None
        if recipe.teacher.ensemble is not None:
            ensemble = _label_ensemble(recipe, data, store, teacher, calibration)
    summary = {
        "recipe_hash": _labels_hash(recipe),
        "teacher": teacher.identity,
        "prompt": teacher.builder.describe(),
        "pool_labelled": len(pool),
        "test_labelled": len(test),
        "abstained": {split: [r["id"] for r in rows if text_hash(r["text"]) not in found]
                      for split, rows, found in (("pool", pool_rows, pool), ("test", test_rows, test))},
        "pool_predicted_counts": pd.Series([r.predicted for r in pool.values()]).value_counts().to_dict(),
        "hidden_states": None if hidden is None else {
            "teacher_key": hidden_key(teacher.identity, hidden.layers, hidden.pooling),
            "layers": hidden.layers, "pooling": hidden.pooling},
        "pool_reasons": reasons,
        "calibration": None if calibration is None else {
            "method": calibration.method, **{k: v for k, v in calibration.details.items() if k != "candidates"}},
        "ensemble": ensemble,
        "seconds": time.perf_counter() - t0,
    }
    if base_recipe.prompt_search is not None:
        del teacher  # one model in memory at a time
        summary["prompt_search"] = _label_with_base_prompt(base_recipe, recipe, data)
        summary["seconds"] = time.perf_counter() - t0
    _write_json(out / "labels_summary.json", summary)
    return summary


def _label_with_base_prompt(base_recipe: Recipe, recipe: Recipe, data: PreparedData) -> dict[str, Any]:
    """With a prompt search: where the teacher's test labels under the hand-written prompt are (labelled
    now when ``prompt_search.evaluate_base_on_test``), so the report can set them beside the chosen prompt's."""
    import gc

    base = base_recipe.model_copy(update={"prompt_search": None})
    info: dict[str, Any] = {"search": SEARCH_FILE, "chosen_is_hand_written": base.prompt == recipe.prompt,
                            "base_teacher": None, "base_prompt": None}
    if not base_recipe.prompt_search.evaluate_base_on_test:
        return info
    gc.collect()
    teacher = _teacher(base, data)
    with LabelStore(Path(recipe.output_dir) / "labels.sqlite") as store:
        _labeller(teacher)(teacher, _rows(data.test), store, desc="teacher, hand-written prompt: test")
    info.update(base_teacher=teacher.identity, base_prompt=teacher.prompt_fingerprint)
    return info


CALIBRATION_FILE = "calibration.json"


def _held_out_seeds(recipe: Recipe, data: PreparedData) -> list[dict[str, Any]]:
    """The expert seeds that are not few-shot examples: the only labelled texts that may judge a teacher.
    With per-text shots every seed is held out (a seed is never chosen as its own example)."""
    if _per_text_shots(recipe.prompt):
        return _rows(data.seed)
    shot_ids = {s["id"] for s in _shots(recipe, data)}
    return [r for r in _rows(data.seed) if r["id"] not in shot_ids]


def _with_shots(recipe: Recipe, teacher: Any, shots: list[dict[str, Any]]) -> Any:
    """``teacher`` (of ``recipe.prompt``) with other fixed shots; a local one shares its loaded model."""
    from tailorkd.teachers import ServedTeacher

    if isinstance(teacher, ServedTeacher):
        return ServedTeacher(teacher.config, recipe.task, recipe.prompt, shots)
    return type(teacher)(teacher.config, recipe.task, recipe.prompt, shots, teacher.model, teacher.tokenizer)


def _fit_calibration(recipe: Recipe, data: PreparedData, teacher: Any, labeller: Any, store: LabelStore,
                     pool: dict[str, Any], write: bool = True) -> Any:
    """Score the calibration inputs (content-free, random in-domain, held-out seeds), fit the recipe's
    calibration and (``write``) write calibration.json, with the pool's predicted-label counts before and
    after."""
    from tailorkd.calibration import calibrate, domain_inputs
    from tailorkd.prompts.search import loo_shot_groups

    config = recipe.teacher.calibration
    names = recipe.task.label_names

    def probs_of(rows: list[dict[str, Any]], desc: str, by: Any = teacher) -> tuple[list[dict[str, Any]], np.ndarray]:
        found = labeller(by, rows, store, desc=desc) if rows else {}
        kept = [r for r in rows if text_hash(r["text"]) in found]  # a served teacher may abstain
        return kept, np.array([found[text_hash(r["text"])].probs for r in kept]).reshape(len(kept), len(names))

    pool_texts = _rows(data.pool)
    _, content_free = probs_of([{"id": f"content-free-{i}", "text": t} for i, t in enumerate(config.content_free)],
                               "teacher: content-free")
    domain_rows = [{"id": f"domain-{i}", "text": t} for i, t in
                   enumerate(domain_inputs([r["text"] for r in pool_texts], config.domain_samples, recipe.seed,
                                           config.domain_words))]
    _, domain = probs_of(domain_rows, "teacher: in-domain random")
    if config.seeds == "all" and not _per_text_shots(recipe.prompt):
        # Every seed, none scored by a prompt that shows it: the seeds that are not shots with the teacher's
        # own shots, each shown seed with its shot swapped for an unused seed of its class.
        held_out, parts, own_shots = [], [], _shots(recipe, data)
        for shots, rows in loo_shot_groups(own_shots, _rows(data.seed)):
            by = teacher if shots == own_shots else _with_shots(recipe, teacher, shots)
            kept, probs = probs_of(rows, "teacher: seeds, leave-one-out shots", by)
            held_out += kept
            parts.append(probs)
        seed_probs = np.concatenate(parts) if parts else np.zeros((0, len(names)))
    else:
        held_out, seed_probs = probs_of(_held_out_seeds(recipe, data), "teacher: held-out seeds")
    try:
        calibration = calibrate(config.method, names, content_free=content_free, domain=domain,
                                seed_probs=seed_probs, seed_labels=[r["label"] for r in held_out])
    except ValueError as e:
        raise TailorkdError(f"teacher.calibration: {e}") from e
    pool_probs = np.array([rec.probs for rec in pool.values()]).reshape(len(pool), len(names))
    counts = {
        "before": pd.Series([names[i] for i in pool_probs.argmax(1)], dtype=object).value_counts().to_dict(),
        "after": pd.Series([names[i] for i in calibration.apply(pool_probs).argmax(1)], dtype=object).value_counts().to_dict(),
    }
    calibration.details["pool_predicted_counts"] = counts
    calibration.details["seeds"] = "all" if config.seeds == "all" or _per_text_shots(recipe.prompt) else "not_shown"
    if write:
        _write_json(Path(recipe.output_dir) / CALIBRATION_FILE,
                    {"recipe_hash": _labels_hash(recipe), **calibration.to_dict()})
    log.info("calibration: %s (%s); pool predictions %s -> %s", calibration.method,
             calibration.details["chosen_because"], counts["before"], counts["after"])
    return calibration


ENSEMBLE_FILE = "ensemble.json"


def _held_out_accuracy(recipe: Recipe, data: PreparedData, teacher: Any, store: LabelStore,
                       calibration: Any) -> float | None:
    """A teacher's accuracy on the seeds that are not few-shot examples (with a calibration: on the seeds
    that judged it, see ``teacher.calibration.seeds``), after its calibration (the leave-one-out figure for a
    seed-fitted bias, which saw those seeds); None without such seeds."""
    if calibration is not None:
        scored = calibration.details.get("candidates", {}).get(calibration.method)
        if scored:
            return float(scored["accuracy"])
    held_out = _held_out_seeds(recipe, data)
    found = _labeller(teacher)(teacher, held_out, store, desc="teacher: held-out seeds") if held_out else {}
    kept = [r for r in held_out if text_hash(r["text"]) in found]
    if not kept:
        return None
    names = recipe.task.label_names
    probs = np.array([found[text_hash(r["text"])].probs for r in kept])
    if calibration is not None:
        probs = calibration.apply(probs)
    return float(np.mean([names[i] == r["label"] for i, r in zip(probs.argmax(1), kept)]))


def _label_ensemble(recipe: Recipe, data: PreparedData, store: LabelStore, main: Any, main_calibration: Any
                    ) -> dict[str, Any]:
    """Every extra teacher labels pool and test (each keyed by its own identity in the store) and is
    calibrated like the main one; the members' weights go with their calibrations into ensemble.json."""
    import gc

    from tailorkd.teachers.ensemble import seed_weights

    config = recipe.teacher.ensemble
    pool_rows, test_rows = _rows(data.pool), _rows(data.test)
    members = [{"model": recipe.teacher.model, "identity": main.identity, "prompt": main.prompt_fingerprint,
                "calibration": main_calibration.to_dict() if main_calibration else None,
                "held_out_seed_accuracy": _held_out_accuracy(recipe, data, main, store, main_calibration)}]
    for i, member_config in enumerate(config.members):
        # A member with a prompt of its own: its shots, held-out seeds and calibration follow that prompt.
        member_recipe = recipe if member_config.prompt is None else recipe.model_copy(
            update={"prompt": member_config.prompt})
        teacher = _teacher(member_recipe, data, member_config)
        labeller = _labeller(teacher)
        pool = labeller(teacher, pool_rows, store, desc=f"teacher {i + 2}: pool")
        labeller(teacher, test_rows, store, desc=f"teacher {i + 2}: test")
        calibration = None
        if recipe.teacher.calibration is not None:
            calibration = _fit_calibration(member_recipe, data, teacher, labeller, store, pool, write=False)
        members.append({"model": member_config.model, "identity": teacher.identity, "prompt": teacher.prompt_fingerprint,
                        "own_prompt": member_config.prompt is not None,
                        "calibration": calibration.to_dict() if calibration else None,
                        "held_out_seed_accuracy": _held_out_accuracy(member_recipe, data, teacher, store, calibration)})
        del teacher  # one model in memory at a time
        gc.collect()
    if config.seed_classifier is not None:
        members.append(_label_with_seed_classifier(recipe, data, store, config.seed_classifier.encoder,
                                                   pool_rows + test_rows))
    weights = (seed_weights([m["held_out_seed_accuracy"] for m in members]) if config.weights == "seed_accuracy"
               else [1.0 / len(members)] * len(members))
    for member, weight in zip(members, weights):
        member["weight"] = weight
    payload = {"recipe_hash": _labels_hash(recipe), "combine": config.combine, "weights": config.weights,
               "members": members}
    _write_json(Path(recipe.output_dir) / ENSEMBLE_FILE, payload)
    log.info("ensemble (%s): %s", config.combine,
             ", ".join(f"{m['model']} w={m['weight']:.2f} (seeds {m['held_out_seed_accuracy']})" for m in members))
    return {"combine": config.combine, "members": [{k: m[k] for k in ("model", "identity", "weight",
                                                                      "held_out_seed_accuracy")} for m in members]}


def _label_with_seed_classifier(recipe: Recipe, data: PreparedData, store: LabelStore, encoder: str,
                                rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The seed classifier as an ensemble member: fitted on all the seeds, its distributions for ``rows``
    go into the store like a teacher's (keyed by encoder and by the seed set, so other seeds refit it); its
    weight comes from its leave-one-out accuracy on the seeds."""
    from tailorkd.evaluation.baselines import (SentenceEmbedder, _text, classifier_probs, fit_seed_classifier,
                                               leave_one_out_accuracy)
    from tailorkd.labels import make_record

    seeds = _rows(data.seed)
    names = recipe.task.label_names
    identity = f"seed-classifier|{encoder}|logistic-regression"
    fingerprint = "seeds-" + hashlib.sha256(json.dumps(
        sorted([str(r["id"]), str(r["label"]), text_hash(r["text"])] for r in seeds)).encode()).hexdigest()[:16]
    embed = SentenceEmbedder(encoder)
    x_seed = embed([_text(r) for r in seeds])
    labels = [str(r["label"]) for r in seeds]
    done = store.done_hashes(identity, fingerprint)
    todo = [r for r in rows if text_hash(r["text"]) not in done]
    if todo:
        model = fit_seed_classifier(x_seed, labels, recipe.seed)
        t0 = time.perf_counter()
        probs = classifier_probs(model, embed([_text(r) for r in todo]), names)
        per_text = (time.perf_counter() - t0) / len(todo)
        store.put_batch(identity, fingerprint, names,
                        [make_record(r["id"], r["text"], p, names, per_text) for r, p in zip(todo, probs)])
    accuracy = leave_one_out_accuracy(x_seed, labels, recipe.seed)
    log.info("ensemble: seed classifier (%s) labelled %d texts; leave-one-out seed accuracy %.3f", encoder,
             len(todo), accuracy)
    return {"model": f"seed classifier: logistic regression on {encoder} embeddings of {len(seeds)} seeds",
            "identity": identity, "prompt": fingerprint, "calibration": None, "held_out_seed_accuracy": accuracy}


def _ensemble_probs(recipe: Recipe, rows: list[dict[str, Any]], store: LabelStore, calibrated: bool
                    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Combined [N, M] distribution, summed per-text seconds and each member's [N, M] distribution."""
    from tailorkd.calibration import Calibration
    from tailorkd.teachers.ensemble import combine

    path = Path(recipe.output_dir) / ENSEMBLE_FILE
    if not path.is_file():
        raise TailorkdError(f"{path}: the recipe asks for a teacher ensemble but none is labelled; run `tailorkd label`")
    payload = json.loads(path.read_text())
    if payload.get("recipe_hash") != _labels_hash(recipe):
        raise TailorkdError(f"{path}: made for another teacher, prompt or data; run `tailorkd label` again")
    names = recipe.task.label_names
    hashes = [text_hash(r["text"]) for r in rows]
    member_probs, seconds = [], np.zeros(len(rows))
    for member in payload["members"]:
        found = store.get(member["identity"], member["prompt"], hashes, names)
        probs = np.array([found[h].probs if h in found else [math.nan] * len(names) for h in hashes]).reshape(
            len(rows), len(names))
        if calibrated and member["calibration"]:
            probs = Calibration.from_dict(member["calibration"]).apply(probs)
        member_probs.append(probs)
        seconds += np.array([found[h].seconds if h in found else 0.0 for h in hashes])
    return combine(member_probs, [m["weight"] for m in payload["members"]], payload["combine"]), seconds, member_probs


def _calibration(recipe: Recipe) -> Any:
    """The fitted calibration of the run, or None when the recipe asks for none."""
    from tailorkd.calibration import Calibration

    if recipe.teacher.calibration is None:
        return None
    path = Path(recipe.output_dir) / CALIBRATION_FILE
    if not path.is_file():
        raise TailorkdError(f"{path}: the recipe asks for teacher calibration but none is fitted; run `tailorkd label`")
    payload = json.loads(path.read_text())
    if payload.pop("recipe_hash", None) != _labels_hash(recipe):
        raise TailorkdError(f"{path}: fitted for another teacher, prompt or data; run `tailorkd label` again")
    calibration = Calibration.from_dict(payload)
    if calibration.label_names != recipe.task.label_names:
        raise TailorkdError(f"{path}: fitted for labels {calibration.label_names}, the recipe has "
                            f"{recipe.task.label_names}")
    return calibration


def _teacher_records(recipe: Recipe, data: PreparedData, split: str, calibrated: bool = True,
                     combined: bool = True) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Rows of a split with the teacher's stored probabilities (calibrated as the recipe asks, unless
    ``calibrated`` is False; the ensemble's combination when the recipe has one, unless ``combined`` is False:
    then the main teacher's own) and per-text seconds (label stage must be done).

    A text the teacher abstained on (listed in labels_summary.json) gets a row of NaN probabilities and NaN
    seconds; any other text without a label is an error.
    """
    out = Path(recipe.output_dir)
    summary_path = out / "labels_summary.json"
    if not summary_path.is_file():
        raise TailorkdError(f"{out}: no teacher labels yet; run `tailorkd label` first")
    summary = json.loads(summary_path.read_text())
    if summary.get("recipe_hash") != _labels_hash(recipe):
        raise TailorkdError(f"{summary_path}: the teacher labels were made with another teacher, prompt or data "
                            f"than the recipe now asks for; run `tailorkd label` again")
    rows = _rows(getattr(data, split))
    with LabelStore(out / "labels.sqlite") as store:
        found = store.get(summary["teacher"], summary["prompt"]["fingerprint"], [text_hash(r["text"]) for r in rows],
                          recipe.task.label_names)
    abstained = set(summary.get("abstained", {}).get(split, []))
    missing = [r["id"] for r in rows if text_hash(r["text"]) not in found and r["id"] not in abstained]
    if missing:
        raise TailorkdError(f"{out / 'labels.sqlite'}: {len(missing)} {split} texts have no teacher label "
                            f"(e.g. {missing[:3]}); rerun `tailorkd label`")
    if recipe.teacher.ensemble is not None and combined:
        with LabelStore(out / "labels.sqlite") as store:
            probs, seconds, _ = _ensemble_probs(recipe, rows, store, calibrated)
        return rows, probs, np.where(np.isnan(probs).any(axis=1), math.nan, seconds)
    none = [math.nan] * len(recipe.task.label_names)
    recs = [found.get(text_hash(r["text"])) for r in rows]
    probs = np.array([r.probs if r else none for r in recs], dtype=float).reshape(len(rows), len(none))
    calibration = _calibration(recipe) if calibrated else None
    if calibration is not None:
        probs = calibration.apply(probs)
    return rows, probs, np.array([r.seconds if r else math.nan for r in recs], dtype=float)


# -- stage 3: distillation -------------------------------------------------------------------------
def distill(recipe: Recipe, force: bool = False) -> Path:
    """Train the student's adapter on the teacher's distributions over the pool (stage by stage when the
    recipe sets distill.stages or distill.progressive). An interrupted run resumes from its last checkpoint
    in students/student/trainer/ unless ``force``."""
    from transformers import set_seed

    from tailorkd.distill import distill_student
    from tailorkd.distill.trainer import TRAINING_FORMAT
    from tailorkd.students import STUDENT_FILE, build_student

    recipe = resolve_prompt(recipe)
    data = _data(recipe)
    rows, probs, _ = _teacher_records(recipe, data, "pool")
    answered = ~np.isnan(probs).any(axis=1)
    if not answered.all():
        log.info("distill: %d of %d pool texts left out: the teacher abstained on them", (~answered).sum(), len(rows))
        if not answered.any():
            raise TailorkdError(f"{recipe.output_dir}: the teacher abstained on every pool text; nothing to train on")
        rows, probs = [r for r, ok in zip(rows, answered) if ok], probs[answered]
    base_hash = recipe.content_hash("data", "task", "seed", "prompt", "teacher", "student", "distill")
    jobs = [("student", recipe.adapter, recipe.distill)]
    # The paper's baselines, trained on the same targets when the recipe evaluates them: the student
    # untouched (method none) and standard KD (every weight trains, one stage, soft targets only).
    if "untrained_student" in recipe.evaluation.systems:
        jobs.append(("untrained_student", recipe.adapter.model_copy(update={"method": "none"}), recipe.distill))
    if "standard_kd" in recipe.evaluation.systems:
        plain = recipe.distill.model_copy(update={"stages": None, "progressive": None, "hidden_state_loss": None,
                                                  "learning_rate": recipe.distill.standard_kd_learning_rate})
        jobs.append(("standard_kd", recipe.adapter.model_copy(update={"method": "full"}), plain))
    main_folder = Path(recipe.output_dir) / STUDENT_DIR
    for system, adapter, config in jobs:
        out = Path(recipe.output_dir) / STUDENT_DIRS[system]
        fingerprint = hashlib.sha256(json.dumps([base_hash, adapter.model_dump(mode="json"),
                                                 config.model_dump(mode="json")], sort_keys=True).encode()).hexdigest()[:16]
        if system == "student":  # the main student keeps the hash it always had
            fingerprint = recipe.content_hash("data", "task", "seed", "prompt", "teacher", "student", "adapter", "distill")
        info_path = out / STUDENT_FILE
        if not force and info_path.is_file():
            done = json.loads(info_path.read_text())
            if (done.get("recipe_hash") == fingerprint
                    and done.get("summary", {}).get("training_format") == TRAINING_FORMAT):
                log.info("distill: %s in %s is up to date", system, out)
                continue
        states = (_teacher_hidden_states(recipe, rows) if config.hidden_state_loss is not None else None)
        set_seed(recipe.seed)
        student = build_student(recipe.student, recipe.task, recipe.prompt, _shots(recipe, data), adapter.method)
        summary = distill_student(student, rows, probs, adapter, config, out, recipe.seed,
                                  info={"recipe_hash": fingerprint, "base_model": recipe.student.model,
                                        "system": system},
                                  teacher_states=states, resume=not force)
        log.info("distill: %s, %d steps in %.1fs, final loss %s -> %s", system, summary["steps"],
                 summary["train_seconds"], summary["train_loss"], out)
        del student
    return main_folder


def _teacher_hidden_states(recipe: Recipe, rows: list[dict[str, Any]]) -> dict[int, np.ndarray]:
    """The teacher's stored pooled hidden states of ``rows``, {layer: [N, H]}, for the hidden-state loss."""
    from tailorkd.hidden_states import HiddenStateReader

    out = Path(recipe.output_dir)
    stored = json.loads((out / "labels_summary.json").read_text()).get("hidden_states")
    if not stored:
        raise TailorkdError(f"{out / 'labels_summary.json'}: distill.hidden_state_loss needs the teacher's hidden "
                            "states, but the label stage stored none; set teacher.hidden_states in the recipe and run "
                            "`tailorkd label` again")
    layers = recipe.distill.hidden_state_loss.teacher_layers or stored["layers"]
    with LabelStore(out / "labels.sqlite") as store:
        prompt = json.loads((out / "labels_summary.json").read_text())["prompt"]["fingerprint"]
        return HiddenStateReader(store, stored["teacher_key"], prompt).get([text_hash(r["text"]) for r in rows], layers)


# -- stage 4: evaluation ---------------------------------------------------------------------------
def _predictions_frame(rows: list[dict[str, Any]], probs: np.ndarray, names: list[str]) -> pd.DataFrame:
    """One row per text; a row of NaN probabilities (the teacher abstained) is predicted as ABSTAINED, which
    is no class, so it counts as wrong."""
    answered = ~np.isnan(probs).any(axis=1)
    best = np.where(answered[:, None], probs, 0.0).argmax(1)
    frame = pd.DataFrame({"id": [r["id"] for r in rows], "label": [r["label"] for r in rows],
                          "predicted": [names[i] if ok else ABSTAINED for i, ok in zip(best, answered)],
                          "confidence": np.where(answered, np.where(answered[:, None], probs, 0.0).max(1), np.nan)})
    for j, name in enumerate(names):
        frame[f"p_{name}"] = probs[:, j]
    return frame


def _latency(per_text_seconds: np.ndarray, measured: str) -> dict[str, Any] | None:
    """Median and 95th percentile of seconds per text (NaN entries, e.g. abstentions, left out)."""
    known = per_text_seconds[~np.isnan(per_text_seconds)]
    if not len(known):
        return None
    return {"median": float(np.median(known)), "p95": float(np.percentile(known, 95)), "measured": measured}


def _cost(texts_per_second: float | None = None, latency: dict[str, Any] | None = None,
          training: dict[str, Any] | None = None) -> dict[str, Any]:
    """A system's cost block (the same keys for every system; None where not measured). ``training``: a
    student's training summary (parameters, train_seconds, peak_memory)."""
    training = training or {}
    params = training.get("parameters") or {}
    memory = training.get("peak_memory") or {}
    return {
        "texts_per_second": texts_per_second,
        "latency_seconds": latency,
        "trainable_parameters": params.get("trainable"),
        "total_parameters": params.get("total"),
        "peak_training_memory_gb": memory.get("process_peak_gb"),
        "training_memory_added_gb": memory.get("added_by_training_gb"),
        "memory_source": memory.get("source"),
        "training_seconds": training.get("train_seconds"),
    }


def _timed_student_probs(student: Any, rows: list[dict[str, Any]], batch_size: int
                         ) -> tuple[np.ndarray, np.ndarray, float]:
    """The student's [N, M] probabilities, batch by batch through ``predict_probs`` so each batch is timed:
    also each text's share of its batch's seconds and the summed seconds."""
    from tailorkd.students import predict_probs

    parts, per_text, total = [], np.zeros(len(rows)), 0.0
    batches = math.ceil(len(rows) / batch_size)
    for k, start in enumerate(range(0, len(rows), batch_size)):
        batch = rows[start : start + batch_size]
        t0 = time.perf_counter()
        parts.append(predict_probs(student, batch, batch_size, desc=f"student: test batch {k + 1}/{batches}"))
        seconds = time.perf_counter() - t0  # predict_probs copies to the CPU, so a GPU batch is finished here
        per_text[start : start + len(batch)] = seconds / len(batch)
        total += seconds
    probs = np.concatenate(parts) if parts else np.zeros((0, len(student.task.labels)))
    return probs, per_text, total


def _severity_counts(frame: pd.DataFrame, names: list[str]) -> dict[str, dict[str, int]]:
    """{level: {human label: texts}} of a predictions frame with a severity column."""
    table = pd.crosstab(frame["severity"], frame["label"]).reindex(columns=names, fill_value=0)
    return {str(level): {name: int(row[name]) for name in names} for level, row in table.iterrows()}


def evaluate(recipe: Recipe, timings: dict[str, float] | None = None) -> dict[str, Any]:
    """Score every system of ``recipe.evaluation.systems`` on the human-labelled test set; write each one's
    predictions, the figures and report.md / report.json.

    Each system yields a predictions frame (``_predictions_frame``) and a cost block (``_cost``); metrics,
    agreement with the teacher, severity levels and the comparison with the teacher are then computed alike
    for all of them. ``timings`` (seconds per stage, from ``run``) go into the report with this stage's own.
    """
    t_start = time.perf_counter()
    from transformers import set_seed

    from tailorkd.evaluation import write_report
    from tailorkd.evaluation.metrics import agreement, system_metrics
    from tailorkd.students import load_student

    recipe = resolve_prompt(recipe)
    data = _data(recipe)
    out = Path(recipe.output_dir)
    names = recipe.task.label_names
    systems: dict[str, Any] = {}
    frames: dict[str, pd.DataFrame] = {}
    test_rows = _rows(data.test)
    pred_dir = out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)

    if "teacher" in recipe.evaluation.systems:
        rows, probs, seconds = _teacher_records(recipe, data, "test")
        frames["teacher"] = _predictions_frame(rows, probs, names)
        mean_seconds = float(np.nanmean(seconds)) if (~np.isnan(seconds)).any() else math.nan
        systems["teacher"] = {
            "model": recipe.teacher.model,
            "abstained": int((frames["teacher"]["predicted"] == ABSTAINED).sum()),
            "cost": _cost(texts_per_second=1.0 / mean_seconds if mean_seconds > 0 else None,
                          latency=_latency(seconds, "per text, as stored by the label stage")),
        }
        calibration = _calibration(recipe)
        if calibration is not None:
            _, raw, _ = _teacher_records(recipe, data, "test", calibrated=False)
            raw_frame = _predictions_frame(rows, raw, names)
            systems["teacher"]["calibration"] = {
                "method": calibration.method,
                "chosen_because": calibration.details.get("chosen_because"),
                "held_out_seeds": calibration.details.get("candidates", {}),
                "uncalibrated_metrics": system_metrics([r["label"] for r in rows], raw_frame["predicted"].tolist(),
                                                       raw_frame["confidence"].to_numpy(), names, seed=recipe.seed),
            }

    for system in ("untrained_student", "standard_kd", "student"):
        if system not in recipe.evaluation.systems:
            continue
        folder = out / STUDENT_DIRS[system]
        set_seed(recipe.seed)
        student = load_student(folder, recipe.task, recipe.prompt, _shots(recipe, data), recipe.student)
        probs, per_text, elapsed = _timed_student_probs(student, test_rows, recipe.evaluation.batch_size)
        frames[system] = _predictions_frame(test_rows, probs, names)
        info = json.loads((folder / "student.json").read_text())
        training = info.get("summary", {})
        systems[system] = {
            "model": recipe.student.model,
            "kind": student.kind,
            "adapter": info.get("adapter_method", recipe.adapter.method),
            "cost": _cost(texts_per_second=len(test_rows) / elapsed if elapsed > 0 else None,
                          latency=_latency(per_text, f"per batch of up to {recipe.evaluation.batch_size}, "
                                                     "divided by its texts"),
                          training=training),
            "training": training,
        }
        del student

    if "seed_only" in recipe.evaluation.systems:
        from tailorkd.evaluation.baselines import seed_only_baseline

        baseline = seed_only_baseline(_rows(data.seed), test_rows, names, recipe.evaluation.seed_only_encoder,
                                      recipe.seed)
        frames["seed_only"] = _predictions_frame(test_rows, baseline["probs"], names)
        systems["seed_only"] = {
            "model": f"logistic regression on {recipe.evaluation.seed_only_encoder} embeddings of "
                     f"{baseline['seeds']} seeds (C={baseline['C']:g})",
            "cost": _cost(texts_per_second=1.0 / baseline["seconds_per_text"] if baseline["seconds_per_text"] > 0
                          else None),
        }

    # Every system alike from here on.
    for name, frame in frames.items():
        if recipe.alerts is not None:
            frame["severity"] = [recipe.alerts.level(p, c) for p, c in zip(frame["predicted"], frame["confidence"])]
            systems[name]["severity_counts"] = _severity_counts(frame, names)
        frame.to_parquet(pred_dir / f"{name}.parquet", index=False)
        metrics = system_metrics(frame["label"].tolist(), frame["predicted"].tolist(), frame["confidence"].to_numpy(),
                                 names, seed=recipe.seed)
        if name != "teacher" and "teacher" in frames:
            agreed = agreement(frame["predicted"].tolist(), frames["teacher"]["predicted"].tolist(), names)
            metrics["agreement_with_teacher"], metrics["kappa_with_teacher"] = agreed["agreement"], agreed["kappa"]
        systems[name] = {"model": systems[name].pop("model"), "metrics": metrics, **systems[name]}

    labels_summary_path = out / "labels_summary.json"
    labels_summary = json.loads(labels_summary_path.read_text()) if labels_summary_path.is_file() else {}
    report = {
        "recipe": {"name": recipe.name, "hash": recipe.content_hash(), "task": recipe.task.name},
        "data": data.stats,
        "prompt": labels_summary.get("prompt"),
        "systems": systems,
        "vs_teacher": {name: _versus(systems[name], systems["teacher"]) for name in systems
                       if name != "teacher" and "teacher" in systems},
    }
    languages = _by_language(data.test, frames, names)
    if languages:
        report["by_language"] = languages
    if labels_summary.get("prompt_search"):
        report["prompt_search"] = _prompt_search_block(recipe, data, labels_summary["prompt_search"])
    if timings is not None:
        timings = {**timings, "evaluate": round(time.perf_counter() - t_start, 2)}
        timings["total"] = round(sum(timings.values()), 2)
        report["timings_seconds"] = timings
    return write_report(report, recipe, out)


# Languages with fewer test texts than this are scored together as "other": a score on 1-4 texts says little.
MIN_TEXTS_PER_LANGUAGE = 5


def _by_language(test: pd.DataFrame, frames: dict[str, pd.DataFrame], names: list[str]) -> dict[str, Any] | None:
    """Accuracy and macro-F1 of every system per language of the test texts, when they have two or more
    (known from the source or data.detect_language); languages with fewer than MIN_TEXTS_PER_LANGUAGE
    texts are pooled as "other (<codes>)". None when there is one language or none."""
    from tailorkd.evaluation import classification_metrics

    if "language" not in test.columns or test["language"].dropna().nunique() < 2:
        return None
    language = dict(zip(test["id"], test["language"].fillna("unknown")))
    counts = pd.Series(list(language.values())).value_counts()
    rare = sorted(str(lang) for lang, n in counts.items() if n < MIN_TEXTS_PER_LANGUAGE)
    if len(rare) > 1:
        other = f"other ({', '.join(rare)})"
        language = {k: (other if v in rare else v) for k, v in language.items()}
    out: dict[str, Any] = {}
    for lang, n in pd.Series(list(language.values())).value_counts().items():
        entry: dict[str, Any] = {"n": int(n)}
        for system, frame in frames.items():
            part = frame[frame["id"].map(language) == lang]
            m = classification_metrics(part["label"].tolist(), part["predicted"].tolist(), names)
            entry[system] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
        out[str(lang)] = entry
    return out


def _prompt_search_block(recipe: Recipe, data: PreparedData, info: dict[str, Any]) -> dict[str, Any]:
    """The search's effect for the report: seed scores of the hand-written and the chosen prompt, and both
    prompts' uncalibrated teacher on the test set (the hand-written one when it was labelled)."""
    from tailorkd.evaluation import classification_metrics

    payload = json.loads((Path(recipe.output_dir) / SEARCH_FILE).read_text())
    names = recipe.task.label_names

    def brief(metrics: dict[str, Any]) -> dict[str, Any]:
        return {k: metrics[k] for k in ("accuracy", "macro_f1") if k in metrics}

    def test_metrics(probs: np.ndarray, rows: list[dict[str, Any]]) -> dict[str, Any]:
        frame = _predictions_frame(rows, probs, names)
        return brief(classification_metrics(frame["label"].tolist(), frame["predicted"].tolist(), names))

    rows, chosen_raw, _ = _teacher_records(recipe, data, "test", calibrated=False, combined=False)
    test = {"chosen": test_metrics(chosen_raw, rows)}
    if info.get("chosen_is_hand_written"):
        test["hand_written"] = test["chosen"]
    elif info.get("base_teacher"):
        with LabelStore(Path(recipe.output_dir) / "labels.sqlite") as store:
            found = store.get(info["base_teacher"], info["base_prompt"], [text_hash(r["text"]) for r in rows], names)
        none = [math.nan] * len(names)
        probs = np.array([found[text_hash(r["text"])].probs if text_hash(r["text"]) in found else none for r in rows],
                         dtype=float).reshape(len(rows), len(names))
        test["hand_written"] = test_metrics(probs, rows)
    return {
        "metric": payload["metric"],
        "candidates": len(payload["candidates"]),
        "rounds": payload["rounds"],
        "stopped_because": payload["stopped_because"],
        "teacher_calls": payload["teacher_calls"],
        "seconds": payload["seconds"],
        "chosen_parts": payload["chosen"]["parts"],
        "hand_written_parts": payload["base"]["parts"],
        "seeds": {"n": payload["seeds"], "hand_written": payload["base"]["metrics"],
                  "chosen": payload["chosen"]["metrics"]},
        "test": test,
        "test_note": "teacher without calibration or ensemble, so that only the prompt differs",
    }


def _versus(system: dict[str, Any], teacher: dict[str, Any]) -> dict[str, float | None]:
    """A system's accuracy and macro-F1 as shares of the teacher's, and its speed as a multiple of it."""
    s, t = system["metrics"], teacher["metrics"]
    speed, teacher_speed = system["cost"]["texts_per_second"], teacher["cost"]["texts_per_second"]
    return {
        "accuracy_ratio": s["accuracy"] / t["accuracy"] if t["accuracy"] else None,
        "macro_f1_ratio": s["macro_f1"] / t["macro_f1"] if t["macro_f1"] else None,
        "speedup": speed / teacher_speed if speed and teacher_speed else None,
    }



def classify(recipe: Recipe, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trained student's prediction for each row ({"text", optional "id", "title"}): id, label,
    confidence (its probability), severity (from ``recipe.alerts``; "none" without it) and probabilities."""
    from tailorkd.recipe import NO_ALERT
    from tailorkd.students import load_student, predict_probs

    recipe = resolve_prompt(recipe)
    names = recipe.task.label_names
    folder = Path(recipe.output_dir) / STUDENT_DIR
    # The few-shot examples the student was trained and evaluated with (a causal-LM student reads them).
    shots = _shots(recipe, _data(recipe)) if (folder / "student.json").is_file() else []
    student = load_student(folder, recipe.task, recipe.prompt, shots, recipe.student)
    probs = predict_probs(student, rows, recipe.evaluation.batch_size, desc="student: classify")
    out = []
    for i, (row, p) in enumerate(zip(rows, probs)):
        best = int(p.argmax())
        confidence = float(p[best])
        out.append({"id": row.get("id", i), "label": names[best], "confidence": confidence,
                    "severity": recipe.alerts.level(names[best], confidence) if recipe.alerts else NO_ALERT,
                    "probabilities": {name: float(v) for name, v in zip(names, p)}})
    return out

def run(recipe: Recipe, force: bool = False) -> dict[str, Any]:
    """Every stage in order; finished, valid work is skipped unless ``force``."""
    timings: dict[str, float] = {}

    def timed(name: str, stage: Any) -> Any:
        start = time.perf_counter()
        result = stage()
        timings[name] = round(time.perf_counter() - start, 2)
        return result

    timed("prepare", lambda: prepare(recipe, force))
    if recipe.prompt_search is not None:
        timed("prompt_search", lambda: tune_prompt(recipe, force))
    timed("label", lambda: label(recipe))
    timed("distill", lambda: distill(recipe, force))
    return evaluate(recipe, timings=timings)
