"""The teacher's pool targets as the label stage would have made them without some of the seeds (for the seed
guard's cross-fitting, ``stages.seed_guard``).

What the label stage fits on the seeds' labels is refitted on the kept seeds alone: each member's calibration,
the seed classifier (an ensemble member, or the teacher check's fallback), the members' weights and their
temperatures. The teacher's raw distributions are read back from the label store: no text is labelled again,
so a fold costs seconds (a SetFit seed classifier: its training). Not refitted: the prompt (its search and its
shots), since refitting it means labelling the pool again with the teacher; a student never reads a seed, so
what reaches it from the seeds is what is fitted here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tailorkd.calibration import Calibration, fold_calibrated_predictions
from tailorkd.data import PreparedData
from tailorkd.labels import LabelStore, stored_probs
from tailorkd.run_dir import RunDir
from tailorkd.stages.calibrate import calibration_inputs, fit_on
from tailorkd.stages.ensemble import ensemble_record, member_teacher
from tailorkd.stages.label import labels_summary
from tailorkd.teachers import make_seed_model
from tailorkd.teachers.ensemble import combine, matched_temperature, seed_weights, tempered

if TYPE_CHECKING:
    from tailorkd.recipe import Recipe

log = logging.getLogger(__name__)

NOT_REFITTED = "the prompt (its search and its shots): refitting it would label the pool again"
TEMPERATURE_SAMPLE = 20_000


class TeacherRefit:
    """The pool ``rows``' targets refitted on a subset of the seeds (``targets(keep)``); reads what it needs
    once. ``seeds_fitted``: whether anything of the targets was fitted on the seeds' labels (if not, every
    fold's targets are the run's own)."""

    def __init__(self, recipe: Recipe, data: PreparedData, rows: Sequence[dict[str, Any]]):
        self.recipe, self.data, self.rows = recipe, data, list(rows)
        self.names = recipe.task.label_names
        self.seeds = data.rows("seed")
        self.members: list[dict[str, Any]] = []
        summary = labels_summary(recipe)
        run = RunDir(recipe)
        fallback = summary.get("fallback")
        with LabelStore(run.label_store) as store:
            if fallback:  # the seed classifier labelled in the teacher's place
                encoder = str(fallback.get("identity", "")).split("|")[1:2] or [recipe.evaluation.seed_only_encoder]
                self.members.append(self._seed_model_member({"encoder": encoder[0]}))
                self.combine = None
            elif recipe.teacher.ensemble is not None:
                record = ensemble_record(recipe)
                config = recipe.teacher.ensemble
                self.combine = {"how": config.combine, "weights": config.weights, "confidence": config.confidence}
                llm_configs = [None, *config.members]
                for i, member in enumerate(record["members"]):
                    if member.get("judged_as") is not None:  # the seed classifier member
                        self.members.append(self._seed_model_member(config.seed_classifier.model_dump()))
                    else:
                        self.members.append(self._llm_member(store, member, llm_configs[i]))
            else:
                calibrated = recipe.teacher.calibration is not None
                member = {"identity": summary["teacher"], "prompt": summary["prompt"]["fingerprint"],
                          "calibration": {} if calibrated else None}
                self.members.append(self._llm_member(store, member, None))
                self.combine = None
        self.seeds_fitted = any(m["kind"] == "seed_model" or m.get("inputs") is not None or m.get("judged_on")
                                for m in self.members)

    def _seed_model_member(self, config: dict[str, Any]) -> dict[str, Any]:
        from tailorkd.recipe.teacher import SeedClassifierConfig

        return {"kind": "seed_model", "config": SeedClassifierConfig.model_validate(config)}

    def _llm_member(self, store: LabelStore, member: dict[str, Any], config: Any) -> dict[str, Any]:
        """A teacher member: its raw pool distributions and, when anything of it is fitted on the seeds, what it
        is fitted and judged on (its seed scores are stored by the label stage: read back, not scored)."""
        from tailorkd.stages.calibrate import scored_seeds

        raw, _ = stored_probs(store, member["identity"], member["prompt"], self.rows, self.names)
        out: dict[str, Any] = {"kind": "teacher", "raw": raw, "inputs": None, "judged_on": None}
        in_ensemble = self.recipe.teacher.ensemble is not None
        if member.get("calibration") is None and not in_ensemble:
            return out
        recipe = self.recipe if config is None or config.prompt is None else self.recipe.model_copy(
            update={"prompt": config.prompt})
        teacher = member_teacher(recipe, self.data, config)
        if member.get("calibration") is not None:
            out["inputs"] = calibration_inputs(recipe, self.data, teacher, store)
        if in_ensemble:  # judged on every seed, as stages.ensemble.member_judgement judges it
            out["judged_on"] = scored_seeds(recipe, self.data, teacher, store, every_seed=True)
        out["recipe"] = recipe
        return out

    def targets(self, keep: np.ndarray) -> np.ndarray:
        """[N, M] targets of the rows with only the seeds where ``keep`` ([S] bool over the seed split) fitted."""
        keep = np.asarray(keep, dtype=bool)
        kept_ids = {r["id"] for r, k in zip(self.seeds, keep) if k}
        kept_seeds = [r for r in self.seeds if r["id"] in kept_ids]
        probs, judged = [], []
        for member in self.members:
            if member["kind"] == "seed_model":
                model = make_seed_model(member["config"], kept_seeds, self.names, self.recipe.seed)
                probs.append(model.fit()(self.rows))
                j = model.judge() if self.combine else None
            else:
                calibration, j = self._refit_calibration(member, kept_ids)
                probs.append(member["raw"] if calibration is None else calibration.apply(member["raw"]))
            judged.append(None if j is None or j["accuracy"] is None else (j["accuracy"], j["n"]))
        if not self.combine:
            return probs[0]
        weights = (seed_weights(judged, len(self.names)) if self.combine["weights"] == "seed_accuracy"
                   else [1.0 / len(probs)] * len(probs))
        sample = np.sort(np.random.default_rng(self.recipe.seed).choice(
            len(self.rows), min(len(self.rows), TEMPERATURE_SAMPLE), replace=False))
        temperatures = [1.0 if self.combine["confidence"] == "as_labelled" or j is None
                        else matched_temperature(p[sample], j[0]) for p, j in zip(probs, judged)]
        return combine([tempered(p, t) for p, t in zip(probs, temperatures)], weights, self.combine["how"])

    def _refit_calibration(self, member: dict[str, Any], kept_ids: set[str]
                           ) -> tuple[Calibration | None, dict[str, Any] | None]:
        """A member's calibration refitted on the kept seeds, and its judgement on them (what its ensemble weight
        and temperature follow), as the label stage judges it (``stages.ensemble.member_judgement``)."""
        from tailorkd.evaluation.seed_judge import judgement

        inputs, calibration = member["inputs"], None
        if inputs is not None:
            calibration = fit_on(member["recipe"], inputs, [r["id"] in kept_ids for r in inputs["seeds"]])
        if member["judged_on"] is None:
            return calibration, None
        seeds, probs = member["judged_on"]
        keep = np.array([r["id"] in kept_ids for r in seeds], dtype=bool)
        truth = [str(r["label"]) for r, k in zip(seeds, keep) if k]
        if not truth:
            return calibration, None
        if calibration is None:
            predicted = np.asarray([self.names[i] for i in probs[keep].argmax(axis=1)], dtype=object)
        else:
            predicted = fold_calibrated_predictions(calibration, probs[keep], truth, self.recipe.seed)
        return calibration, judgement(truth, predicted, self.names, self.recipe.seed)
