"""Stage 0, corpus (when the recipe has a ``corpus:`` section): a raw dump made into the clean pool.

Reads the recipe's ``corpus.inputs`` (JSONL, JSONL.gz, Parquet, CSV; files, folders, globs) as a stream and
writes ``<output_dir>/corpus/``: the pool shards with each text's provenance, ``duplicates.parquet``,
``rejects.jsonl``, ``funnel.json`` and the stamp ``corpus.json`` (written last). The relevance stage compares
texts with the expert seeds: the labelled seed split the prepare stage draws from ``data.sources`` (drawn
here the same way, so the two agree). Skipped when the stamp records the same fingerprint (the section, the
input files, the seed texts). The prepare stage then takes its pool from the shards
(``tailorkd.corpus.pool_from_corpus``); seeds and test stay the labelled data's. Under a launcher the main
process builds the corpus and the others then find it done.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tailorkd import distributed
from tailorkd.run_dir import RunDir
from tailorkd.stages.registry import Stage, register_stage

if TYPE_CHECKING:
    from tailorkd.recipe import Recipe

log = logging.getLogger(__name__)


def corpus(recipe: Recipe, force: bool = False) -> dict[str, Any]:
    """Build the recipe's corpus (skipped when up to date, unless ``force``); returns its funnel."""
    with distributed.main_first() as main:
        return _corpus(recipe, force and main)


def _corpus(recipe: Recipe, force: bool) -> dict[str, Any]:
    from tailorkd.corpus import build_corpus
    from tailorkd.errors import TailorkdError

    if recipe.corpus is None:
        raise TailorkdError("corpus: the recipe has no corpus section (add one: see tailorkd.recipe.corpus)")
    run = RunDir(recipe)
    run.root.mkdir(parents=True, exist_ok=True)
    run.write_text(run.recipe_file, recipe.to_yaml())
    return build_corpus(recipe.corpus, run.corpus_dir, base_dir=recipe.base_dir, seeds=seed_texts(recipe),
                        force=force)


def uses_seeds(recipe: Recipe) -> bool:
    relevance = recipe.corpus.relevance if recipe.corpus is not None else None
    return relevance is not None and (relevance.against != "topics" or relevance.threshold == "auto")


def seed_texts(recipe: Recipe) -> list[str] | None:
    """The expert seeds' texts ("<title>. <text>" when titled) when the corpus's relevance stage uses them:
    the seed split of ``data.sources`` as prepare draws it (the corpus never changes which rows are seeds)."""
    if not uses_seeds(recipe):
        return None
    from tailorkd.data import drop_duplicate_texts, load_records, make_splits

    labels = recipe.task.label_names
    records, _, _ = load_records(recipe.data, labels, recipe.base_dir)
    if recipe.data.splits.dedupe:
        records, _, _ = drop_duplicate_texts(records)
    seeds, _, _ = make_splits(records, recipe.data.splits.model_copy(update={"pool_size": None}), labels, recipe.seed)
    return seed_split_texts(seeds)


def seed_split_texts(seeds) -> list[str]:
    """The seed split's texts as the relevance stage embeds them ("<title>. <text>" when titled)."""
    return [f"{row['title']}. {row['text']}" if isinstance(row["title"], str) and row["title"] else str(row["text"])
            for row in seeds.to_dict("records")]


def corpus_fingerprint(recipe: Recipe, seeds: list[str] | None = None) -> str | None:
    """The fingerprint a corpus built now would record (None without a corpus section): what the prepare
    stage compares with the one its pool was taken from. ``seeds``: the seed texts when already known (the
    prepared seed split), else drawn from the sources."""
    if recipe.corpus is None:
        return None
    from pathlib import Path

    from tailorkd.corpus.build import corpus_fingerprint as fingerprint
    from tailorkd.corpus.read import corpus_files

    files = corpus_files(recipe.corpus.inputs, Path(recipe.base_dir))
    if uses_seeds(recipe) and seeds is None:
        seeds = seed_texts(recipe)
    return fingerprint(recipe.corpus, files, Path(recipe.base_dir), seeds if uses_seeds(recipe) else None)


def corpus_is_current(recipe: Recipe) -> bool:
    """Whether ``corpus/`` holds a finished corpus (every shard its stamp lists) of the recipe's corpus section,
    input files and seeds."""
    from tailorkd.corpus.build import CORPUS_VERSION

    run = RunDir(recipe)
    stamp = run.stamp("corpus", fingerprint=corpus_fingerprint(recipe), version=CORPUS_VERSION)
    return stamp is not None and all(shard.is_file() for shard in run.corpus_shards) and run.funnel.is_file()


def print_funnel(funnel: dict[str, Any], console: Any = None) -> None:
    """The funnel as tables in the terminal: overall with per topic, then per language."""
    from rich.console import Console
    from rich.table import Table

    from tailorkd.corpus.build import funnel_rows

    console = console or Console()
    for breakdown in ("topic", "language"):
        header, rows = funnel_rows(funnel, breakdown)
        if breakdown == "topic" and len(header) <= 2 and "(none)" in funnel["per_topic"]:
            header, rows = funnel_rows(funnel)
        table = Table(title=f"corpus funnel (texts after each step, by {breakdown})")
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    relevance = funnel.get("relevance")
    if relevance:
        console.print(f"relevance threshold {relevance['threshold']:.3f} ({relevance['chosen_by']})")
    console.print(f"kept {funnel['kept']:,} of {funnel['overall']['read']:,} "
                  f"({100 * (funnel['kept_share'] or 0):.1f}%) in {len(funnel['shards'])} shard(s); "
                  f"{funnel['seconds']['total']:.1f}s, {funnel['rows_per_second'] or 0:,.0f} texts/s "
                  f"({funnel['engine']}, {funnel['workers']} workers)")


register_stage(Stage("corpus", lambda recipe, force: corpus(recipe, force),
                     wanted=lambda recipe: recipe.corpus is not None, is_current=corpus_is_current,
                     command="tailorkd corpus RECIPE", doc="raw dump -> corpus/pool-*.parquet, funnel"))
