"""A teacher kind is one class plus one ``register_teacher_kind`` call: a keyword-rule teacher registered here is
named by a recipe, checked with its options at recipe load, and labels through the real label stage."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

from helpers import TOPICS, make_recipe
from tailorkd.data.pool_rows import windows
from tailorkd.errors import TailorkdError
from tailorkd.labels import LabelStore, StoredLabels, make_record, unlabelled_rows
from tailorkd.recipe import TeacherConfig, load_recipe
from tailorkd.stages.label import label, teacher_records
from tailorkd.stages.prepare import load_data
from tailorkd.teachers import (
    TeacherKind,
    get_teacher_kind,
    make_teacher,
    register_teacher_kind,
    teacher_kinds,
    unregister_teacher_kind,
)
from tailorkd.teachers.base import Teacher


class KeywordOptions(BaseModel):
    """``teacher.options`` of the keyword teacher: the words that vote for each class."""

    model_config = ConfigDict(extra="forbid")
    keywords: dict[str, list[str]]


class KeywordTeacher:
    """Each class gets a share of the text's keyword hits (plus one, so no class is impossible)."""

    def __init__(self, config: TeacherConfig, task: Any, prompt: Any, shots: list[dict[str, Any]],
                 selector: Any = None):
        self.config, self.task = config, task
        self.keywords = KeywordOptions.model_validate(config.options).keywords
        self.calls = 0

    @property
    def identity(self) -> str:
        rules = json.dumps(self.keywords, sort_keys=True).encode()
        return f"keywords|{hashlib.sha256(rules).hexdigest()[:12]}"

    @property
    def prompt_fingerprint(self) -> str:
        return "no-prompt"

    def describe_prompt(self) -> dict[str, Any]:
        return {"format": "keyword rules", "fingerprint": self.prompt_fingerprint}

    def score(self, rows: Sequence[dict[str, Any]], bar: Any = None) -> tuple[np.ndarray, np.ndarray]:
        hits = np.array([[1.0 + sum(str(r["text"]).lower().count(w) for w in self.keywords.get(name, []))
                          for name in self.task.label_names] for r in rows]).reshape(len(rows), -1)
        return hits / hits.sum(axis=1, keepdims=True), np.zeros(len(rows))

    def label(self, rows: Sequence[dict[str, Any]], store: LabelStore, desc: str = "teacher",
              **options: Any) -> StoredLabels:
        names, key = self.task.label_names, (self.identity, self.prompt_fingerprint)
        for window in windows(rows):
            todo = unlabelled_rows(store, key, window)
            if todo:
                self.calls += len(todo)
                probs, seconds = self.score(todo)
                store.put_batch(*key, names, [make_record(r["id"], r["text"], p, names, s)
                                              for r, p, s in zip(todo, probs, seconds)])
        return StoredLabels(store, *key, rows, names)

    def with_prompt(self, prompt: Any, shots: list[dict[str, Any]], selector: Any = None) -> KeywordTeacher:
        return self  # its labels do not depend on a prompt


@pytest.fixture
def keyword_kind():
    kind = register_teacher_kind(TeacherKind("keywords", KeywordTeacher, options=KeywordOptions))
    yield kind
    unregister_teacher_kind("keywords")


KEYWORDS = {topic: [topic] for topic in TOPICS}


def keyword_section(**extra: Any) -> dict[str, Any]:
    return {"kind": "keywords", "model": "keyword-rules", "options": {"keywords": KEYWORDS}, **extra}


def test_a_registered_kind_labels_through_the_label_stage(keyword_kind, tiny_models, tmp_path):
    recipe = load_recipe(make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                                     teacher_section=keyword_section()))
    assert recipe.teacher.kind == "keywords"
    summary = label(recipe)
    identity = f"keywords|{hashlib.sha256(json.dumps(KEYWORDS, sort_keys=True).encode()).hexdigest()[:12]}"
    assert summary["teacher"] == identity and summary["prompt"]["fingerprint"] == "no-prompt"
    # The teacher check ran on it first (its seeds are labelled too) and found it sound.
    assert json.loads((tmp_path / "run" / "teacher_check.json").read_text())["verdict"] == "ok"
    with sqlite3.connect(tmp_path / "run" / "labels.sqlite") as conn:
        stored = conn.execute("SELECT COUNT(*) FROM labels WHERE teacher = ? AND prompt = 'no-prompt'",
                              (identity,)).fetchone()[0]
    assert stored == 30 + 20 + 10  # pool, test and the seeds the check judged it on
    data = load_data(recipe)
    rows, probs, _ = teacher_records(recipe, data, "test")
    assert [TOPICS[i] for i in probs.argmax(axis=1)] == [r["label"] for r in rows]
    # Labelling again finds every text stored: the kind's teacher is asked nothing.
    again = make_teacher(recipe.teacher, recipe.task, recipe.prompt, [])
    assert isinstance(again, Teacher)
    label(recipe, teacher=again)
    assert again.calls == 0


def test_a_kind_is_checked_with_its_options_at_recipe_load(keyword_kind, tiny_models, tmp_path):
    def load(section: dict[str, Any]) -> Any:
        return load_recipe(make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                                       teacher_section=section))

    with pytest.raises(TailorkdError, match=r"teacher.*options\.keywords: Field required.*'keywords'"):
        load({"kind": "keywords", "model": "keyword-rules", "options": {"words": {}}})
    with pytest.raises(TailorkdError, match=r"teacher.*options: teacher kind 'local' takes no options"):
        load({"model": "some-model", "options": {"keywords": KEYWORDS}})
    with pytest.raises(TailorkdError, match=r"teacher.*'keywords' takes no server"):
        load(keyword_section(server={"base_url": "http://127.0.0.1:1/v1"}))
    with pytest.raises(TailorkdError, match=r"teacher.*reasons: teacher kind 'keywords' does not support it"):
        load(keyword_section(reasons={"sample": 4}))
    # A member of an ensemble names its kind the same way.
    recipe = load({"model": str(tiny_models["llama"]), "ensemble": {"members": [keyword_section()]}})
    assert recipe.teacher.kind == "local" and recipe.teacher.ensemble.members[0].kind == "keywords"


def test_unknown_kinds_are_one_line_errors_naming_the_known_ones(keyword_kind, tiny_models, tmp_path):
    assert "keywords" in teacher_kinds() and "keywords" not in teacher_kinds("seed_classifier")
    with pytest.raises(TailorkdError, match=r"^teacher.kind: unknown teacher kind 'rules' \(known: keywords, "
                                            r"llama_cpp, local, served\)$"):
        get_teacher_kind("rules")
    path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"],
                       teacher_section=keyword_section(kind="rules"))
    with pytest.raises(TailorkdError, match=r"teacher.kind.*unknown teacher kind 'rules' \(known: auto, keywords, "
                                            r"llama_cpp, local, served\)"):
        load_recipe(path)
    with pytest.raises(TailorkdError, match=r"seed_classifier.method.*'svm' \(known: logistic_regression, setfit\)"):
        load_recipe(path, ["teacher.kind=keywords", "teacher.ensemble={seed_classifier: {method: svm}}"])
    with pytest.raises(ValueError, match="already registered"):
        register_teacher_kind(TeacherKind("keywords", KeywordTeacher))


def test_a_kind_registered_by_another_test_is_gone(tiny_models, tmp_path):
    assert "keywords" not in teacher_kinds()
    with pytest.raises(TailorkdError, match="unknown teacher kind 'keywords'"):
        load_recipe(make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"], teacher_section=keyword_section()))


def test_recipes_that_name_no_kind_keep_their_dump_and_fingerprints(tmp_path, tiny_models):
    """``kind`` (auto resolved: local, or served with a server) and empty ``options`` stay out of the dump that
    stage fingerprints hash, so run folders and label stores made before teacher kinds stay current."""
    path = make_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"])
    plain, named = load_recipe(path), load_recipe(path, ["teacher.kind=local"])
    assert plain.teacher.kind == "local" and "kind" not in plain.teacher.model_dump()
    assert "options" not in plain.teacher.model_dump()
    assert named.content_hash("teacher") == plain.content_hash("teacher")
    served = load_recipe(path, ["teacher.server={base_url: 'http://127.0.0.1:1/v1'}"])
    assert served.teacher.kind == "served" and "kind" not in served.teacher.model_dump()
