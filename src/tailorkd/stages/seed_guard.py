"""Stage 3b, seed guard (run by the distill stage, ``distill.seed_guard``): ship the best model the run made,
never one that learned nothing, and say why in one line.

1. Every candidate (``distill.seed_guard.candidates``: the adaptive-KD and standard-KD students, the joint-KD
   student that learns from the teacher and SetFit together, SetFit and the seed-only classifier on the seeds;
   ``stages.guard_candidates``) is trained in the run into a student folder.
2. The collapse check (``evaluation.guard_stats.collapse_reasons``): near-uniform outputs on the pool (for a
   student that learned soft targets), one class for every pool text, a training loss at ln K, a confidence
   temperature at the top of its search. A collapsed candidate never ships.
3. Cross-fitting: the seeds are cut into stratified folds; for each fold every candidate is refitted without
   it, everything the seeds' labels fitted refitted too (the teacher's calibration, ensemble weights and
   temperatures and seed classifier: ``stages.cross_fit``), and predicts the fold. So each seed is judged by
   models that never fitted on it. Not refitted: the prompt (see ``stages.cross_fit``).
4. The choice (``evaluation.guard_stats.choose``): ~20 seeds judge within wide intervals, so the first candidate
   not collapsed ships unless another beats it in at least ``switch_probability`` of the paired bootstrap draws
   and depends on the seeds at least as much (a fold's refit weakens what was fitted on the seeds, so the
   comparison favours the candidate less fitted on them: only a win against that bias is evidence).
   When the teacher check did not find the teacher ok (``weak_teacher: seeds_only``), no candidate that learns
   from the teacher alone ships while one that learns from the seeds (alone, or with the teacher: joint KD) is
   usable: cross-fitting rated a weak teacher's students above SetFit on the seeds (crisis, seed 21: 46.8
   against 21.4), and on test they were 15 points below it.
   The teacher's worth is stated either way: the best candidate that learns from the teacher against the best
   that learns from the seeds alone, paired on the same seeds.
5. ``on_worse`` when the choice is not the adaptive-KD student: ``choose`` ships it; ``warn`` ships the
   adaptive-KD student with a warning (not a collapsed one); ``stop`` stops the run.

``students/seed_guard.json`` records every candidate's collapse check, cross-fitted judgement and predictions,
the paired comparisons, the time the guard took, the choice and its one-line reason; ``RunDir.student_dir()``
(read by classify, export, serve and signals) follows its ``shipped``. It is tied to the adaptive-KD student it
judged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from tailorkd import distributed
from tailorkd.candidates import get_candidate
from tailorkd.data import PreparedData
from tailorkd.errors import TailorkdError
from tailorkd.evaluation.guard_stats import choose, collapse_reasons, guard_folds, paired_comparison, weak_teacher_veto
from tailorkd.run_dir import RunDir
from tailorkd.stages.guard_candidates import GuardContext, key_of, raw_probs

if TYPE_CHECKING:
    from tailorkd.recipe import Recipe

log = logging.getLogger(__name__)

# The choice rule's version: a record of another one decides again (4: the weak-teacher veto, joint KD; 5: a
# challenger less fitted on the seeds than the default cannot replace it).
GUARD_VERSION = 5
# What fold predictions are keyed with besides each candidate's fold_fingerprint: bumped when how a fold is
# refitted changes, not when the choice rule does (cross-fitting costs more than the rest of the run).
FOLDS_VERSION = 3
COLLAPSE_SAMPLE = 256  # pool texts the collapse check reads each candidate's outputs on


def guard(recipe: Recipe, data: PreparedData, rows: Sequence[dict[str, Any]], targets: np.ndarray,
          shots: list[dict[str, Any]], train: Callable[..., bool], jobs: dict[str, Recipe], force: bool = False
          ) -> dict[str, Any] | None:
    """Choose what ships as ``distill.seed_guard`` says; write seed_guard.json and return it (None when the
    recipe has no guard). ``rows``: the pool rows the students trained on, ``targets`` the teacher's [N, M] for
    them; ``train``: the distill stage's ``train_student``; ``jobs``: its ``student_jobs``."""
    run = RunDir(recipe)
    config = recipe.distill.seed_guard
    if config is None:
        if distributed.is_main():
            run.seed_guard.unlink(missing_ok=True)  # an earlier guard's choice no longer applies
        return None
    t0 = time.perf_counter()
    ctx = GuardContext(recipe, data, rows, targets, shots, train, jobs, force)
    names = recipe.task.label_names
    kinds = [get_candidate(name) for name in config.candidates]
    left_out = {k.name: f"not installed ({k.install})" for k in kinds if not k.available()}
    candidates = {k.name: k.build() for k in kinds if k.available()}
    for name, why in left_out.items():
        log.warning("seed guard: candidate %s left out: %s", name, why)
    folders = {name: c.ship(ctx) for name, c in candidates.items()}

    seeds = ctx.seeds
    truth = [str(r["label"]) for r in seeds]
    folds = guard_folds(truth, config.folds, recipe.seed)
    probs = {name: np.full((len(seeds), len(names)), np.nan) for name in candidates}
    split = [[str(seeds[i]["id"]) for i in test] for _, test in folds]
    fold_keys = {name: key_of(FOLDS_VERSION, c.fold_fingerprint(ctx), split) for name, c in candidates.items()}
    t_folds = time.perf_counter()
    made_in: dict[str, float] = {}  # seconds each candidate's cross-fitting took when it was made
    for name, candidate in candidates.items():
        done, spent = ({}, {}) if force else distributed.from_main(_folds_done(run, name, fold_keys[name]))
        if done:
            log.info("seed guard: %s: %d of %d folds predicted before are reused", name, len(done), len(folds))
        for k, (train_index, test_index) in enumerate(folds):
            if str(k) in done:  # the same refit, made before (a changed choice rule, or a guard cut short)
                probs[name][test_index] = np.array(done[str(k)], dtype=float)
                continue
            keep = np.zeros(len(seeds), dtype=bool)
            keep[train_index] = True
            t_fold = time.perf_counter()
            probs[name][test_index] = candidate.fold_probs(ctx, k, keep, [seeds[i] for i in test_index])
            spent[str(k)] = round(time.perf_counter() - t_fold, 3)
            done[str(k)] = np.where(np.isnan(probs[name][test_index]), None, probs[name][test_index]).tolist()
            if distributed.is_main():
                run.write_json(_folds_file(run, name), {"fold_key": fold_keys[name], "folds": done, "seconds": spent})
        made_in[name] = round(sum(spent.values()), 3)
    fold_seconds = time.perf_counter() - t_folds
    judged = np.ones(len(seeds), dtype=bool) if folds else np.zeros(len(seeds), dtype=bool)
    for p in probs.values():
        judged &= ~np.isnan(p).any(axis=1)
    for name, candidate in candidates.items():
        ok = ~np.isnan(probs[name]).any(axis=1)
        candidate.fit_confidence(ctx, folders[name], probs[name][ok], [t for t, o in zip(truth, ok) if o])

    record = distributed.from_main(_decide_on_main(ctx, candidates, folders, probs, judged, folds))
    for name, entry in record["candidates"].items():
        entry.update(fold_key=fold_keys[name], oof_probs=np.where(np.isnan(probs[name]), None, probs[name]).tolist())
    record.update(left_out=left_out, seconds={"total": round(time.perf_counter() - t0, 1),
                                              "cross_fitting": round(fold_seconds, 1),
                                              "cross_fitting_when_made": made_in})
    shipped = record["choice"]
    if shipped != "adaptive_kd" and config.on_worse == "stop":
        if distributed.is_main():
            run.write_json(run.seed_guard, {**record, "shipped": None})  # what stopped it, for the record
        raise TailorkdError(f"{run.seed_guard}: {record['reason']}; the run stops (distill.seed_guard.on_worse: stop)")
    if shipped != "adaptive_kd" and config.on_worse == "warn":
        if record["candidates"].get("adaptive_kd", {}).get("collapsed"):
            log.warning("seed guard: on_worse is warn, but the adaptive-KD student collapsed; %s ships", shipped)
        else:
            log.warning("seed guard: %s; the adaptive-KD student ships anyway (distill.seed_guard.on_worse: warn)",
                        record["reason"])
            shipped = "adaptive_kd"
            record["reason"] = f"the adaptive-KD student ships (on_worse: warn), though {record['reason']}"
    record["shipped"] = shipped
    if distributed.is_main():
        run.write_json(run.seed_guard, record)
    log.info("seed guard: %s", record["reason"])
    return record


def _folds_file(run: RunDir, name: str) -> Path:
    return run.root / "students" / "guard" / f"{name}.folds.json"


@distributed.on_main
def _folds_done(run: RunDir, name: str, fold_key: str) -> tuple[dict[str, Any], dict[str, float]]:
    """({fold: [T, M] predictions}, {fold: seconds it took}) of candidate ``name`` written by an earlier guard
    for the same candidate and folds (``fold_key``), each fold as soon as it was predicted; ({}, {}) when none
    or for other ones."""
    try:
        done = run.read_json_if_exists(_folds_file(run, name), "seed guard folds")
    except TailorkdError:
        return {}, {}
    if not isinstance(done, dict) or done.get("fold_key") != fold_key or not isinstance(done.get("folds"), dict):
        return {}, {}
    seconds = done.get("seconds") if isinstance(done.get("seconds"), dict) else {}
    return done["folds"], {k: v for k, v in seconds.items() if k in done["folds"]}


@distributed.on_main
def _decide_on_main(ctx: GuardContext, candidates: dict[str, Any], folders: dict[str, Path],
                    probs: dict[str, np.ndarray], judged: np.ndarray, folds: list[Any]) -> dict[str, Any]:
    from tailorkd.evaluation.seed_judge import judgement
    from tailorkd.stages.cross_fit import NOT_REFITTED
    from tailorkd.students import read_student_info

    recipe, config = ctx.recipe, ctx.recipe.distill.seed_guard
    names = recipe.task.label_names
    seeds = ctx.seeds
    truth = [str(r["label"]) for r in seeds]
    sample = _collapse_sample(ctx)
    entries: dict[str, dict[str, Any]] = {}
    for name, folder in folders.items():
        info = read_student_info(folder)
        # A temperature fitted on fold refits (a third fewer seeds) at the top of its search says the refits
        # were weak, not that the model learned nothing (crisis, seed 21: SetFit's hit 20, and it was the best
        # on test): only a temperature fitted on seeds the model never saw is a collapse sign.
        soft = not getattr(candidates[name], "fitted_to_labels", False)
        from_folds = getattr(candidates[name], "confidence_from_folds", False)
        reasons = collapse_reasons(raw_probs(ctx, folder, sample, f"seed guard: {name} on the pool")[0],
                                   train_loss=(info.get("summary") or {}).get("train_loss"),
                                   temperature_at_bound=None if from_folds else _temperature_at_top(folder),
                                   soft_targets=soft)
        predicted = [names[int(i)] if ok else None for i, ok in zip(np.nan_to_num(probs[name]).argmax(axis=1),
                                                                      ~np.isnan(probs[name]).any(axis=1))]
        kind = get_candidate(name)
        learns = "teacher + seeds" if kind.uses_teacher and kind.anchored_to_seeds else \
            "teacher" if kind.uses_teacher else "seeds"
        entries[name] = {"label": kind.label, "uses_teacher": kind.uses_teacher, "learns_from": learns,
                         "folder": str(folder), "collapsed": reasons,
                         "predicted": {str(r["id"]): p for r, p in zip(seeds, predicted)}}
    record: dict[str, Any] = {"version": GUARD_VERSION, "on_worse": config.on_worse,
                              "settings": config.model_dump(mode="json"),
                              "adaptive_kd_student_file": _student_file(RunDir(recipe).student_dir("adaptive_kd")),
                              "candidates": entries, "preference": list(candidates),
                              "seed_labels": {str(r["id"]): str(r["label"]) for r in seeds},
                              "switch_probability": config.switch_probability,
                              "folds": {"k": len(folds), "judged_seeds": int(judged.sum()), "of": len(seeds),
                                        "refitted": "each fold: every candidate and the teacher's seed-fitted parts",
                                        "not_refitted": NOT_REFITTED}}
    collapsed = {n: e["collapsed"] for n, e in entries.items()}
    usable = [n for n in candidates if not collapsed[n]]
    if not usable:
        raise TailorkdError(f"{RunDir(recipe).seed_guard}: every candidate collapsed ("
                            + "; ".join(f"{n}: {', '.join(r)}" for n, r in collapsed.items())
                            + "); nothing is fit to ship: see the teacher check and the seeds")
    kept_truth = [t for t, j in zip(truth, judged) if j]
    if len(set(kept_truth)) < 2:
        choice = usable[0]
        record.update(choice=choice, why="not_judged", comparisons={}, teacher_worth=None,
                      reason=f"{_label(choice)} ships unjudged: {int(judged.sum())} seeds of fewer than two classes "
                             "can be judged by cross-fitting" + _collapsed_note(collapsed))
        return record
    predicted = {n: [names[int(i)] for i in probs[n][judged].argmax(axis=1)] for n in candidates}
    for name in candidates:
        entries[name]["judgement"] = judgement(kept_truth, predicted[name], names, recipe.seed)
    vetoed = _weak_teacher_veto(recipe, usable)
    record["vetoed"] = vetoed
    eligible = [n for n in candidates if n not in vetoed]
    default = next(n for n in eligible if not collapsed[n])
    comparisons = {n: paired_comparison(kept_truth, predicted[n], predicted[default], names, recipe.seed)
                   for n in eligible if n != default and not collapsed[n]}
    choice, why = choose({n: entries[n]["judgement"] for n in candidates}, comparisons, collapsed, eligible,
                         config.switch_probability, {n: get_candidate(n).seed_dependence for n in candidates})
    worth = _teacher_worth(entries, predicted, kept_truth, names, recipe.seed)
    barred = (f"{next(iter(vetoed.values()))}, so no student of it alone ships (distill.seed_guard.weak_teacher: "
              "seeds_only); ") if vetoed else ""
    reason = _reason(choice, why, default, entries, comparisons, worth, collapsed, len(kept_truth), barred)
    record.update(choice=choice, why="weak_teacher" if vetoed else why, default=default, comparisons=comparisons,
                  teacher_worth=worth, reason=reason)
    return record


def _weak_teacher_veto(recipe: Recipe, usable: list[str]) -> dict[str, str]:
    """``weak_teacher_veto`` for this run's teacher check (none when ``weak_teacher`` is judge)."""
    from tailorkd.stages.teacher_check import load_teacher_check

    if recipe.distill.seed_guard.weak_teacher != "seeds_only":
        return {}
    return weak_teacher_veto(load_teacher_check(recipe), {n: get_candidate(n).teacher_only for n in usable})


def _collapse_sample(ctx: GuardContext) -> list[dict[str, Any]]:
    from tailorkd.data.pool_rows import take_rows

    n = len(ctx.rows)
    index = np.sort(np.random.default_rng(ctx.recipe.seed).choice(n, min(n, COLLAPSE_SAMPLE), replace=False))
    return list(take_rows(ctx.rows, index))


def _temperature_at_top(folder: Path) -> float | None:
    """The fitted confidence temperature when it hit the top of its search (the seeds asked to flatten its
    answers as far as allowed: they are noise to it), else None. The bottom is no sign of collapse: a model
    right on every seed sharpens."""
    from tailorkd.confidence import T_BOUNDS
    from tailorkd.files import read_json
    from tailorkd.students import CONFIDENCE_FILE

    path = folder / CONFIDENCE_FILE
    fitted = read_json(path, "student confidence calibration") if path.is_file() else None
    value = fitted.get("temperature") if isinstance(fitted, dict) else None
    if isinstance(value, (int, float)) and abs(value - T_BOUNDS[1]) / T_BOUNDS[1] < 1e-3:
        return float(value)
    return None


def _student_file(folder: Path) -> str | None:
    from tailorkd.students import STUDENT_FILE, student_file_hash

    return student_file_hash(folder) if (folder / STUDENT_FILE).is_file() else None


def _teacher_worth(entries: dict[str, dict[str, Any]], predicted: dict[str, list[str]], truth: list[str],
                   names: list[str], seed: int) -> dict[str, Any] | None:
    """The best candidate that learns from the teacher against the best that learns from the seeds alone (by
    cross-fitted macro-F1; collapsed ones left out), paired on the same seeds."""
    usable = {n: e for n, e in entries.items() if not e["collapsed"] and "judgement" in e}
    taught = [n for n, e in usable.items() if e["uses_teacher"]]
    alone = [n for n, e in usable.items() if not e["uses_teacher"]]
    if not taught or not alone:
        return None
    best_taught = max(taught, key=lambda n: usable[n]["judgement"]["macro_f1"])
    best_alone = max(alone, key=lambda n: usable[n]["judgement"]["macro_f1"])
    return {"with_teacher": best_taught, "seeds_alone": best_alone,
            **paired_comparison(truth, predicted[best_taught], predicted[best_alone], names, seed)}


def _label(name: str) -> str:
    label = get_candidate(name).label
    return label[0].upper() + label[1:]


def _f1(entries: dict[str, dict[str, Any]], name: str) -> str:
    return f"{100 * entries[name]['judgement']['macro_f1']:.1f}"


def _collapsed_note(collapsed: dict[str, Sequence[str]]) -> str:
    bad = [f"{get_candidate(n).shown} collapsed ({r[0]})" for n, r in collapsed.items() if r]
    return f"; {'; '.join(bad)}" if bad else ""


def _reason(choice: str, why: str, default: str, entries: dict[str, dict[str, Any]],
            comparisons: dict[str, dict[str, Any]], worth: dict[str, Any] | None,
            collapsed: dict[str, Sequence[str]], n: int, barred: str = "") -> str:
    """What ships and why, in one line, with the teacher's worth on the task (``barred``: what the weak-teacher
    rule barred, said first)."""
    if why == "clear_win":
        c = comparisons[choice]
        because = (f"cross-fitted on {n} seeds it scores macro-F1 {_f1(entries, choice)} against "
                   f"{_f1(entries, default)} for {get_candidate(default).label}, higher in "
                   f"{100 * c['probability_better']:.0f}% of paired draws")
    else:
        rivals = [f"{get_candidate(n_).shown} {_f1(entries, n_)}" for n_ in comparisons]
        because = (f"the first choice not collapsed, and no candidate fitted on the seeds at least as much beats it "
                   f"clearly (cross-fitted macro-F1 on {n} seeds: {_f1(entries, choice)}"
                   + (f"; {', '.join(rivals)}" if rivals else "") + ")")
    line = f"{_label(choice)} ships: {barred}{because}"
    if worth is not None:
        d, ci = worth["macro_f1_difference"], worth["interval"]
        verdict = ("the teacher helped" if ci["low"] > 0 else "the teacher did not help" if ci["high"] < 0
                   else "the teacher's worth is unclear")
        line += (f"; on this task {verdict} ({get_candidate(worth['with_teacher']).shown} minus "
                 f"{get_candidate(worth['seeds_alone']).shown}: "
                 f"{100 * d:+.1f} macro-F1, {100 * ci['level']:.0f}% interval [{100 * ci['low']:+.1f}, "
                 f"{100 * ci['high']:+.1f}])")
    return line + _collapsed_note(collapsed)


def guard_is_current(recipe: Recipe) -> bool:
    """Whether seed_guard.json was written by this guard version for the recipe's guard settings."""
    record = RunDir(recipe).seed_guard_record()
    config = recipe.distill.seed_guard
    return (record is not None and config is not None and record.get("version") == GUARD_VERSION
            and record.get("settings") == config.model_dump(mode="json"))
