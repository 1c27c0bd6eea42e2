"""The stages of a run by name, and the one rule for what a stage needs before it runs.

Each stage module registers one ``Stage`` on import (``register_stage``, as adapter methods and teacher kinds
register themselves): its name, the stages it requires, whether a recipe asks for it, whether its output in
the run folder is current (by the stamp ``RunDir`` wrote for it), and the function that runs it.

The rule, the same for every stage: a stage run alone (``tailorkd label RECIPE``, or called from code) first
runs each stage it requires, recursively and in order, that the recipe asks for and that is not current;
what is current is skipped. ``tailorkd run`` applies it to every stage in order (``stage_order``), so a
finished run costs nothing but the evaluation. ``force`` redoes the stage it is given to, never the ones it
requires.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from tailorkd import distributed
from tailorkd.errors import TailorkdError
from tailorkd.run_dir import RunDir, register_stage_files, unregister_stage_files

if TYPE_CHECKING:
    from tailorkd.recipe import Recipe

log = logging.getLogger(__name__)


def _always(recipe: Recipe) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One stage of a run.

    ``run(recipe, force)`` does the stage (skipping what is current unless ``force``) and returns its result;
    ``requires``: the stages whose output it reads; ``wanted(recipe)``: whether the recipe asks for it (an
    unwanted requirement is passed over); ``is_current(recipe)``: whether its output in the run folder was
    made for this recipe (default: its stamp file carries the recipe's fingerprint; without one the stage
    always runs, as the evaluation does); ``command``: how a user runs it alone, and ``doc`` what it makes
    (both named in the log when another stage runs it first).

    A stage that tailorkd does not ship names what ``RunDir`` needs to stamp it: ``inputs``, the recipe
    sections its fingerprint covers ({section: fields left out}, as ``run_dir.STAGE_INPUTS``), and
    ``stamp_file``, its stamp's path in the run folder; the built-in stages' are listed in ``run_dir``.
    """

    name: str
    run: Callable[[Recipe, bool], Any]
    requires: tuple[str, ...] = ()
    wanted: Callable[[Recipe], bool] = _always
    is_current: Callable[[Recipe], bool] | None = None
    command: str = ""
    inputs: Mapping[str, frozenset[str]] | None = None
    stamp_file: str | None = None
    doc: str = field(default="", compare=False)

    def current(self, recipe: Recipe) -> bool:
        if self.is_current is not None:
            return self.is_current(recipe)
        run = RunDir(recipe)
        return run.has_stamp_file(self.name) and run.stamp(self.name) is not None


_STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Make ``stage`` known by its name; a name registers once, and what it requires must be known already
    (so the registration order is an order in which the stages can run)."""
    if stage.name in _STAGES:
        raise ValueError(f"stage {stage.name!r} is already registered")
    unknown = [name for name in stage.requires if name not in _STAGES]
    if unknown:
        raise ValueError(f"stage {stage.name!r} requires unregistered stages {unknown}")
    register_stage_files(stage.name, stage.inputs, stage.stamp_file)
    _STAGES[stage.name] = stage
    return stage


def unregister_stage(name: str) -> None:
    """Forget stage ``name`` (a plug-in's or a test's); a stage another one requires stays."""
    needed_by = [s.name for s in _STAGES.values() if name in s.requires]
    if needed_by:
        raise ValueError(f"stage {name!r} is required by {needed_by}")
    stage = _STAGES.pop(name, None)
    if stage is not None:
        unregister_stage_files(name, stage.inputs, stage.stamp_file)


def get_stage(name: str) -> Stage:
    try:
        return _STAGES[name]
    except KeyError:
        raise TailorkdError(f"unknown stage {name!r} (known: {', '.join(_STAGES)})") from None


def stage_order() -> list[Stage]:
    """Every registered stage, each after the stages it requires (registration order guarantees it)."""
    return list(_STAGES.values())


def is_current(recipe: Recipe, name: str) -> bool:
    """Whether stage ``name``'s output is current for ``recipe``, as the main process sees it (processes that
    read the run folder a moment apart could otherwise disagree and take different paths)."""
    return distributed.from_main(_is_current_on_main(recipe, name))


@distributed.on_main
def _is_current_on_main(recipe: Recipe, name: str) -> bool:
    return get_stage(name).current(recipe)


def run_requirements(recipe: Recipe, name: str) -> None:
    """Run every stage that stage ``name`` requires (and theirs, first) which the recipe asks for and which is
    not current."""
    for required in _requirements(name):
        stage = get_stage(required)
        if stage.wanted(recipe) and not is_current(recipe, required):
            log.info("%s needs %s first (%s): running it, as `%s` would", name, required, stage.doc or "not current",
                     stage.command or f"tailorkd {required} RECIPE")
            stage.run(recipe, False)


def _requirements(name: str) -> list[str]:
    """The stages ``name`` requires, directly or not, in the order they run."""
    needed: set[str] = set()
    todo = list(get_stage(name).requires)
    while todo:
        current = todo.pop()
        if current not in needed:
            needed.add(current)
            todo.extend(get_stage(current).requires)
    return [stage.name for stage in stage_order() if stage.name in needed]
