"""The one owner of a run folder: every path of a run, every stage's fingerprint, and how files are written.

    <output_dir>/recipe.yaml                     the resolved recipe (overrides applied)
    <output_dir>/corpus/                         pool-*.parquet shards, duplicates.parquet, rejects.jsonl,
                                                 funnel.json; corpus.json, the stamp, written last (corpus)
    <output_dir>/data/                           seed / pool / test splits, rejects, stats (prepare)
    <output_dir>/data/prepare.json               the prepare stage's fingerprint (written last)
    <output_dir>/prompts/                        search.json, candidates.md, chosen_prompt.yaml (prompt search)
    <output_dir>/recipe.tuned.yaml               the recipe with the chosen prompt
    <output_dir>/teacher_check.json              the teacher judged before it labels the pool (label stage)
    <output_dir>/labels.sqlite (+ hidden/)       the teachers' class distributions (and hidden states)
    <output_dir>/labels_summary.json             what the label stage did (written last)
    <output_dir>/calibration.json, ensemble.json the fitted calibration and ensemble weights
    <output_dir>/students/<system>/              each trained student (student.json written last;
                                                 confidence.json: its fitted temperature)
    <output_dir>/signals/                        tailorkd signals: signals.sqlite, signals/daily.parquet, alerts
    <output_dir>/predictions/<system>.parquet    per-text predictions on the test set
    <output_dir>/predictions/<baseline>.json     a seeds-only baseline's fingerprint and cost (written last):
                                                 an evaluation rerun reuses it rather than fitting it anew
    <output_dir>/report.{md,json}, figures/      the comparison against human labels

Every file a later stage trusts is written atomically (temporary file, fsync, rename); a JSON file that
does not parse is a one-line error naming it, never a traceback.

A stage's fingerprint is a hash of the recipe sections it depends on, listed in ``STAGE_INPUTS`` and
nowhere else. Every stage records it in a stamp that ``RunDir`` writes and reads (``write_stamp``,
``stamp``): a JSON file written last, whose ``fingerprint`` (and ``version``, for stages whose output format
changes) says which inputs it was made from. A stage whose stamp is missing or differs from the recipe's is
not current and is redone (``tailorkd.stages.registry`` states the rule for every stage).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tailorkd.files import read_json, write_json_atomic, write_text_atomic
from tailorkd.recipe.corpus import CORPUS_EXECUTION_FIELDS
from tailorkd.recipe.fingerprint import sections_hash

# Fields of the teacher section that do not change how the teacher scores a prompt.
_TEACHER_AFTER_SCORING = frozenset({"calibration", "ensemble", "reasons", "hidden_states", "check"})

# Fields of the distill section that act on trained students without changing how they train.
_AFTER_TRAINING = frozenset({"seed_guard"})


def _evaluation_except(*kept: str) -> frozenset[str]:
    """Every field of the evaluation section but ``kept`` (the ones a seeds-only baseline is fitted by)."""
    from tailorkd.recipe.evaluation import EvaluationConfig

    return frozenset(EvaluationConfig.model_fields) - set(kept)


# stage -> {recipe section: fields of that section left out}. The prompt search is judged by the teacher that
# scores, not by what is done with its labels afterwards; distillation depends on everything before it.
# The corpus (an optional section) feeds the pool, so every stage that reads the pool covers it; a recipe
# without it hashes as before (``RunDir.fingerprint`` leaves out optional sections a recipe does not set).
# The corpus stage's own stamp also covers its input files and the seed texts (tailorkd.corpus.build).
_CORPUS = CORPUS_EXECUTION_FIELDS
STAGE_INPUTS: dict[str, dict[str, frozenset[str]]] = {
    "corpus": {"corpus": _CORPUS | {"pool"}},
    "prepare": {"data": frozenset(), "task": frozenset(), "seed": frozenset(), "corpus": _CORPUS},
    "prompt_search": {"data": frozenset(), "task": frozenset(), "seed": frozenset(), "prompt": frozenset(),
                      "prompt_search": frozenset(), "teacher": _TEACHER_AFTER_SCORING},
    "label": {"data": frozenset(), "task": frozenset(), "seed": frozenset(), "prompt": frozenset(),
              "teacher": frozenset(), "corpus": _CORPUS},
    "distill": {"data": frozenset(), "task": frozenset(), "seed": frozenset(), "prompt": frozenset(),
                "teacher": frozenset(), "student": frozenset(), "adapter": frozenset(), "distill": _AFTER_TRAINING,
                "corpus": _CORPUS},
    # The seeds-only baselines of the evaluation: fitted on the seeds, judged on the test split; no teacher.
    "seed_only": {"data": frozenset(), "task": frozenset(), "seed": frozenset(), "corpus": _CORPUS,
                  "evaluation": _evaluation_except("seed_only_encoder")},
    "setfit": {"data": frozenset(), "task": frozenset(), "seed": frozenset(), "corpus": _CORPUS,
               "evaluation": _evaluation_except("seed_only_encoder", "setfit_iterations")},
}

# Where each stage's stamp lies (relative to the run folder). A stage's other stamped files (the label stage's
# calibration.json, ensemble.json, teacher_check.json; each student's student.json; each baseline's record)
# are named by path when stamped.
STAMP_FILES = {"corpus": "corpus/corpus.json", "prepare": "data/prepare.json",
               "prompt_search": "prompts/search.json", "label": "labels_summary.json"}

# The key a stamp records its fingerprint under; stamps written before RunDir owned them used the others, and
# are read alike so that finished runs stay current. student.json keeps "recipe_hash": served and exported
# students report it as their version.
STAMP_KEY = "fingerprint"
_OLDER_STAMP_KEYS = ("recipe_hash", "search_hash")
STAMP_KEYS = (STAMP_KEY, *_OLDER_STAMP_KEYS, "version")  # what a stamp adds to the record it vouches for

# Optional sections that only some recipes set: hashed only when set, so adding one kept old fingerprints.
_OPTIONAL_INPUTS = frozenset({"corpus"})


def register_stage_files(stage: str, inputs: Mapping[str, frozenset[str]] | None, stamp_file: str | None) -> None:
    """Record a stage's fingerprint inputs and stamp file (a stage tailorkd does not ship; see
    ``tailorkd.stages.registry.Stage``); a built-in stage's are listed above, and none is replaced."""
    for table, value, what in ((STAGE_INPUTS, inputs, "inputs"), (STAMP_FILES, stamp_file, "stamp file")):
        if value is not None:
            if stage in table:
                raise ValueError(f"stage {stage!r} already has {what}")
            table[stage] = dict(value) if isinstance(value, Mapping) else value


def unregister_stage_files(stage: str, inputs: Mapping[str, frozenset[str]] | None, stamp_file: str | None) -> None:
    """Forget what ``register_stage_files`` recorded for ``stage``."""
    if inputs is not None:
        STAGE_INPUTS.pop(stage, None)
    if stamp_file is not None:
        STAMP_FILES.pop(stage, None)


def _inputs(stage: str, recipe: Any) -> dict[str, frozenset[str]]:
    return {name: fields for name, fields in STAGE_INPUTS[stage].items()
            if name not in _OPTIONAL_INPUTS or getattr(recipe, name, None) is not None}


# Where each student system is trained to.
STUDENT_FOLDERS = {"adaptive_kd": "adaptive_kd", "untrained_student": "untrained", "standard_kd": "standard_kd",
                   "setfit": "setfit", "seed_only": "seed_only"}
SEED_GUARD_FILE = "seed_guard.json"


class RunDir:
    """The run folder of ``recipe`` (its ``output_dir``)."""

    def __init__(self, recipe: Any):
        self.recipe = recipe
        self.root = Path(recipe.output_dir)

    # -- fingerprints ------------------------------------------------------------------------------------
    def fingerprint(self, stage: str, recipe: Any = None) -> str:
        """The fingerprint of ``stage`` for ``recipe`` (default: this run's)."""
        return sections_hash(recipe or self.recipe, _inputs(stage, recipe or self.recipe))

    def section_fingerprints(self, stage: str, recipe: Any = None) -> dict[str, str]:
        """Each input section of ``stage`` hashed alone, so a stale stage can say which section changed."""
        return {name: sections_hash(recipe or self.recipe, {name: fields})
                for name, fields in _inputs(stage, recipe or self.recipe).items()}

    # -- stamps ------------------------------------------------------------------------------------------
    def has_stamp_file(self, stage: str) -> bool:
        return stage in STAMP_FILES

    def stamp_file(self, stage: str) -> Path:
        """Where ``stage``'s own stamp lies (``STAMP_FILES``)."""
        try:
            return self.root / STAMP_FILES[stage]
        except KeyError:
            raise ValueError(f"stage {stage!r} has no stamp file of its own; name the stamped file") from None

    def write_stamp(self, stage: str, record: dict[str, Any], path: Path | None = None, *,
                    fingerprint: str | None = None, version: int | None = None) -> dict[str, Any]:
        """Write ``record`` to ``path`` (default: the stage's stamp file) atomically, stamped with the stage's
        fingerprint (``fingerprint``: one the stage computes itself) and ``version``; return what was written."""
        stamped = {STAMP_KEY: fingerprint or self.fingerprint(stage), **record}
        if version is not None:
            stamped["version"] = version
        self.write_json(path or self.stamp_file(stage), stamped)
        return stamped

    def stamp(self, stage: str, path: Path | None = None, *, fingerprint: str | None = None,
              version: int | None = None, recipe: Any = None) -> dict[str, Any] | None:
        """The stamped record at ``path`` (default: the stage's stamp file) when it was made for this recipe
        (``recipe``: another one, e.g. a baseline student's) and ``version``, else None. A file that does not
        parse is a TailorkdError naming it."""
        path = path or self.stamp_file(stage)
        record = self.read_json_if_exists(path, f"{stage} stamp")
        expected = fingerprint or self.fingerprint(stage, recipe)
        if not isinstance(record, dict) or not self.stamp_matches(record, expected):
            return None
        if version is not None and record.get("version", record.get("scoring_version")) != version:
            return None
        return record

    @staticmethod
    def stamp_matches(record: dict[str, Any], fingerprint: str) -> bool:
        """Whether a stamped record (read by its own reader, e.g. student.json's) carries ``fingerprint``."""
        recorded = next((record[key] for key in (STAMP_KEY, *_OLDER_STAMP_KEYS) if key in record), None)
        return recorded == fingerprint

    def clear_stamp(self, stage: str, path: Path | None = None) -> None:
        """Remove a stamp before the files it vouches for are rewritten, so a stage killed half way reads as
        not done, never as done."""
        (path or self.stamp_file(stage)).unlink(missing_ok=True)

    # -- paths -------------------------------------------------------------------------------------------
    @property
    def recipe_file(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def corpus_dir(self) -> Path:
        """The corpus stage's folder: pool shards, duplicates, rejects, funnel.json, corpus.json."""
        return self.root / "corpus"

    @property
    def corpus_stamp(self) -> Path:
        return self.stamp_file("corpus")

    @property
    def funnel(self) -> Path:
        return self.corpus_dir / "funnel.json"

    @property
    def corpus_shards(self) -> list[Path]:
        """The pool shards of the finished corpus (those its stamp lists; none without a valid stamp)."""
        stamp = self.read_json_if_exists(self.corpus_stamp, "corpus stamp")
        return [self.corpus_dir / s["file"] for s in stamp.get("shards", [])] if isinstance(stamp, dict) else []

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def prepare_stamp(self) -> Path:
        return self.stamp_file("prepare")

    @property
    def prompts_dir(self) -> Path:
        return self.root / "prompts"

    @property
    def search(self) -> Path:
        return self.stamp_file("prompt_search")

    @property
    def search_table(self) -> Path:
        return self.prompts_dir / "candidates.md"

    @property
    def chosen_prompt(self) -> Path:
        return self.prompts_dir / "chosen_prompt.yaml"

    @property
    def tuned_recipe(self) -> Path:
        return self.root / "recipe.tuned.yaml"

    @property
    def label_store(self) -> Path:
        return self.root / "labels.sqlite"

    @property
    def teacher_check(self) -> Path:
        return self.root / "teacher_check.json"

    @property
    def labels_summary(self) -> Path:
        return self.stamp_file("label")

    @property
    def calibration(self) -> Path:
        return self.root / "calibration.json"

    @property
    def ensemble(self) -> Path:
        return self.root / "ensemble.json"

    def student_dir(self, system: str | None = None) -> Path:
        """The folder of student system ``system`` (adaptive_kd, untrained_student, standard_kd, or a seed-guard
        candidate: setfit, seed_only, one registered; ``tailorkd.candidates``); None: the student that ships, the
        adaptive-KD one unless the seed guard chose another."""
        if system is None:
            guard = self.seed_guard_record()
            system = guard["shipped"] if guard is not None else "adaptive_kd"
        return self.root / "students" / STUDENT_FOLDERS.get(system, system)

    def seed_guard_record(self) -> dict[str, Any] | None:
        """students/seed_guard.json when it judged the adaptive-KD student there now (not one trained since)."""
        guard = self.read_json_if_exists(self.seed_guard, "seed guard")
        adaptive = self.root / "students" / STUDENT_FOLDERS["adaptive_kd"] / "student.json"
        shipped = guard.get("shipped") if isinstance(guard, dict) else None
        if (not isinstance(shipped, str) or not shipped.isidentifier() or not adaptive.is_file()
                or not (self.student_dir(shipped) / "student.json").is_file()):
            return None
        current = hashlib.sha256(adaptive.read_bytes()).hexdigest()[:16]
        return guard if guard.get("adaptive_kd_student_file") == current else None

    @property
    def seed_guard(self) -> Path:
        """The seed guard's judgement of the trained student and which student ships (stages.seed_guard)."""
        return self.root / "students" / SEED_GUARD_FILE

    @property
    def signals_dir(self) -> Path:
        """`tailorkd signals` output when no other folder is given (signals.sqlite, *.parquet, alerts.jsonl)."""
        return self.root / "signals"

    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    def predictions(self, system: str) -> Path:
        return self.predictions_dir / f"{system}.parquet"

    def baseline_stamp(self, system: str) -> Path:
        """A seeds-only baseline's record beside its predictions: the fingerprint it was fitted under and
        what the report says of it (model, cost)."""
        return self.predictions_dir / f"{system}.json"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    # -- reading and writing -----------------------------------------------------------------------------
    def read_json(self, path: Path, what: str = "file") -> Any:
        """A JSON file of the run; one that does not parse is a TailorkdError naming it."""
        return read_json(path, what)

    def read_json_if_exists(self, path: Path, what: str = "file") -> Any:
        return self.read_json(path, what) if path.is_file() else None

    def write_json(self, path: Path, payload: Any) -> None:
        write_json_atomic(path, payload)

    def write_text(self, path: Path, text: str) -> None:
        write_text_atomic(path, text)
