"""The ``corpus:`` section: a raw news dump (or a daily feed) made into a clean, filtered, deduplicated pool.

With it, ``tailorkd run`` starts with the corpus stage (``tailorkd corpus RECIPE``), and the prepare stage
takes the pool from the corpus shards (seeds and test still come from the labelled ``data.sources``).
See :class:`CorpusConfig` for an example and :mod:`tailorkd.corpus` for what each step does.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tailorkd.data.config import known_encoding
from tailorkd.recipe.base import Section

#: Input formats, and the file suffixes they are inferred from.
CORPUS_FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet")
CORPUS_SUFFIXES: dict[str, str] = {
    ".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".ndjson": "jsonl", ".ndjson.gz": "jsonl", ".json.gz": "jsonl",
    ".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet",
}

#: Boilerplate lines of news pages and feeds: a line matching one of these (case-insensitive) is removed.
DEFAULT_BOILERPLATE: tuple[str, ...] = (
    r"^\s*(read more|click here|continue reading|subscribe|sign up|advertisement|share this)\b.{0,80}$",
    r"^\s*(copyright|\(c\)|©).{0,120}$",
    r"^.{0,80}\ball rights reserved\b.{0,40}$",
    r"^\s*(follow us|related (articles|stories)|most read)\b.{0,80}$",
)


def _check_regexes(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression {pattern!r}: {exc}") from None
    return patterns


class CorpusColumns(Section):
    """Which column (CSV, Parquet) or key (JSONL) holds each field; ``None``: the files have no such field."""

    text: str = Field(default="text", min_length=1)
    id: str | None = None
    title: str | None = None
    date: str | None = None
    topic: str | None = None
    source: str | None = None
    language: str | None = Field(default=None, description="A language given by the feed: recorded beside the "
                                 "identified one (language_given), never trusted over it.")


class CorpusInput(Section):
    """Shards of the raw corpus: a file, a folder (every file of a known suffix in it, recursively) or a glob;
    relative to the recipe's folder; ``~`` and ``$VARIABLES`` are expanded."""

    path: str = Field(min_length=1)
    format: Literal["jsonl", "csv", "parquet"] | None = Field(
        default=None, description="Default: from each file's suffix (.jsonl[.gz], .ndjson, .csv[.gz], .parquet).")
    columns: CorpusColumns = CorpusColumns()
    source: str | None = Field(default=None, description="Source name when there is no source column; default: "
                               "the file's name without suffixes.")
    encoding: str = "utf-8"
    separator: str = Field(default=",", min_length=1, max_length=1, description="CSV only.")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        return known_encoding(v)


class CleaningConfig(Section):
    """Each cleaning step, in the order applied; each can be turned off, and each is counted in the funnel."""

    unicode: bool = Field(default=True, description="Repair mojibake and odd Unicode (ftfy), NFC.")
    html: bool = Field(default=True, description="Remove HTML tags, script/style blocks and comments; decode "
                       "entities (&amp; &#39; ...).")
    boilerplate: list[str] = Field(default_factory=lambda: list(DEFAULT_BOILERPLATE),
                                   description="Regular expressions: a line matching one is removed. [] turns it off.")
    control_characters: bool = Field(default=True, description="Remove control and invisible format characters "
                                      "(zero-width spaces, direction marks); tabs become spaces.")
    urls: bool = Field(default=False, description="Remove URLs (http(s)://..., www....).")
    punctuation: bool = Field(default=True, description="The paper's special characters and punctuation noise: "
                              "runs of repeated punctuation collapsed (!!! -> !, ..... -> ...), decorative runs "
                              "(=====, *****) and stray symbols (emoji, dingbats, private-use) removed.")
    whitespace: bool = Field(default=True, description="Spaces collapsed, lines stripped, blank-line runs "
                             "collapsed to one paragraph break.")

    @field_validator("boilerplate")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        return _check_regexes(v)


class LengthFilter(Section):
    """Stage 1: texts shorter or longer than these (after cleaning) are dropped. ``None``: no bound."""

    min_chars: int | None = Field(default=20, ge=0)
    max_chars: int | None = Field(default=100_000, ge=1)
    min_words: int | None = Field(default=None, ge=0)
    max_words: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> LengthFilter:
        for unit in ("chars", "words"):
            low, high = getattr(self, f"min_{unit}"), getattr(self, f"max_{unit}")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{unit}={low} is above max_{unit}={high}")
        return self


class LanguageFilter(Section):
    """Stage 1: the language of each text (py3langid, its model ships in the package), with its confidence.

    ``keep``: only these ISO 639-1 codes (``None``: any); ``drop``: never these. A text identified with a
    confidence below ``min_confidence`` counts as ``und`` (undetermined): list ``und`` in keep to keep it.
    On 4,450 real crisis tweets (CrisisLexT26, es/en/it) py3langid agreed with langdetect on 85% of all
    texts and on 98% of those with a confidence of 0.5 or more (72% of them): hence the default.
    """

    identify: bool = Field(default=True, description="False: no identification; every text is 'und'.")
    identifier: Literal["py3langid", "cld2"] = Field(
        default="py3langid",
        description="py3langid: every text. cld2: Google's compiled CLD2 (pycld2) first on texts of 300 characters "
                    "or more, py3langid on shorter ones and where CLD2 is not sure (not reliable, under 70% of "
                    "the text in its language, or a code py3langid does not know); CLD2's confidence is the "
                    "share of the text in that language. On the 5,000 cleaned scale-corpus articles: 8x faster "
                    "(93 against 750 us an article; py3langid on 5.5% of them), the same agreement with the "
                    "injected language (99.94%); the whole stage at 50k 1.55x per CPU-second, agreement on the "
                    "kept texts 0.9996 against 1.0 (benchmarks/README.md).")
    keep: list[str] | None = None
    drop: list[str] = Field(default_factory=list)
    min_confidence: float = Field(default=0.5, ge=0, le=1)
    max_chars: int | None = Field(
        default=1000, ge=20,
        description="Identify on the text's first max_chars characters (null: all of it). py3langid walks every "
                    "byte in Python; on the 5,000-article scale corpus the first 1,000 characters matched the "
                    "injected language as often as the whole text (99.9%) in 63% of the time.")

    @field_validator("keep", "drop")
    @classmethod
    def _codes(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            for code in v:
                if not re.fullmatch(r"[a-z]{2,3}", code):
                    raise ValueError(f"{code!r} is not a language code such as en, es, und")
        return v


class SourceFilter(Section):
    """Stage 1: sources (the source column, else the input's source name) allowed / denied."""

    allow: list[str] | None = Field(default=None, description="Only these sources (None: any).")
    deny: list[str] = Field(default_factory=list)


class TopicRule(Section):
    """A topic of the corpus. A text's topic is its topic column's value, else the first topic whose keywords
    or patterns it matches. Stage 1 keeps a text when its topic is listed and, if that topic has keywords
    or patterns, the text matches one of them (keywords: whole words, case-insensitive; patterns: regular
    expressions, case-insensitive). ``description``: what the topic is about, for the relevance stage."""

    name: str = Field(min_length=1)
    description: str | None = None
    keywords: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)

    @field_validator("patterns")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        return _check_regexes(v)


class DedupConfig(Section):
    """Exact duplicates (a hash of the normalised text: casefolded, punctuation and spacing removed) and near
    duplicates (MinHash LSH over word shingles: rensa signatures, a datasketch index). The first occurrence is
    kept; every dropped text is listed in duplicates.parquet with the kept text it repeats."""

    exact: bool = True
    near: bool = True
    num_perm: int = Field(default=128, ge=16, le=1024, description="MinHash permutations.")
    shingle_size: int = Field(default=3, ge=1, le=12, description="Words per shingle.")
    threshold: float = Field(default=0.7, gt=0, lt=1, description="Estimated Jaccard similarity of the shingle "
                             "sets at which a text is a near duplicate of an earlier one.")


class RelevanceConfig(Section):
    """Stage 2: relevance to the task, the cosine similarity of each text's sentence embedding (``encoder``,
    the packaged MiniLM by default) to the references: the expert seeds (the recipe's labelled seed split),
    the topics' descriptions, or both. A text's score is its highest similarity to a reference (with topics:
    its own topic's description when it has one). ``threshold``: a number, or ``auto``: the
    ``seed_quantile`` quantile of the seeds' own scores (each seed against the other references), so that
    about that share of the expert seeds would themselves be dropped. The chosen threshold and the seeds'
    scores are reported in funnel.json."""

    against: Literal["seeds", "topics", "both"] = "seeds"
    threshold: float | Literal["auto"] = "auto"
    seed_quantile: float = Field(default=0.05, ge=0, le=0.5)
    encoder: str = "minilm-l6"
    batch_size: int = Field(default=64, ge=1)
    max_length: int = Field(default=256, ge=8)

    @field_validator("threshold")
    @classmethod
    def _cosine(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not -1 <= v <= 1:
            raise ValueError(f"a cosine similarity is in [-1, 1], got {v}")
        return v


class CorpusConfig(Section):
    """A raw corpus read as a stream, cleaned, filtered in two stages, deduplicated, written as Parquet shards.

    Example::

        corpus:
          inputs:
            - path: dumps/news-*.jsonl.gz          # a file, a folder or a glob (relative to the recipe)
              columns: {text: body, id: url, title: headline, date: published, topic: topic, source: outlet}
          cleaning: {urls: true}                    # the other steps are on by default
          length: {min_words: 30, max_chars: 20000}
          language: {keep: [en, es, fr, de]}
          sources: {deny: [spam-wire]}
          topics:
            - name: Bushfires_Australia
              description: Bushfires and wildfires in Australia, evacuations, smoke, fire danger.
              keywords: [bushfire, wildfire, fire, blaze]
            - name: Shipping_Port_Issues
              description: Congestion, closures and strikes at shipping ports; container delays.
              patterns: ['\\bports?\\b', 'container ship']
          dedup: {shingle_size: 5, threshold: 0.7}
          relevance: {against: both, threshold: auto, seed_quantile: 0.05}
          engine: local                             # or ray (pip install 'tailorkd[ray]'), ray_address: auto
          workers: 4

    Output (``<output_dir>/corpus/``): ``pool-NNNNN.parquet`` shards, ``duplicates.parquet``,
    ``rejects.jsonl``, ``funnel.json`` and ``corpus.json`` (the stamp, written last).
    """

    inputs: list[CorpusInput] = Field(min_length=1)
    batch_size: int = Field(default=1000, ge=1, description="Rows read and processed at a time; memory is "
                            "bounded by it, not by the corpus.")
    shard_rows: int = Field(default=50_000, ge=1, description="Rows per pool shard.")
    cleaning: CleaningConfig = CleaningConfig()
    length: LengthFilter = LengthFilter()
    language: LanguageFilter = LanguageFilter()
    sources: SourceFilter = SourceFilter()
    topics: list[TopicRule] = Field(default_factory=list)
    dedup: DedupConfig = DedupConfig()
    relevance: RelevanceConfig | None = Field(default=None, description="None: no relevance stage.")
    pool: Literal["replace", "add"] = Field(
        default="replace", description="replace: the prepare stage's pool is the corpus; add: the corpus is "
        "added to the unlabelled rows of data.sources.")
    engine: Literal["local", "ray"] = "local"
    workers: int | None = Field(default=None, ge=1, description="Processes (local) or actors (ray) running the "
                                "per-batch steps; default: min(CPUs, 4) locally, the cluster's CPUs on ray. "
                                "The output does not depend on it.")
    ray_address: str | None = Field(default=None, description="ray: the cluster to join (e.g. auto, "
                                    "ray://host:10001); None: a running local Ray, else a new local one.")

    @model_validator(mode="after")
    def _topics_unique_and_relevance_references(self) -> CorpusConfig:
        names = [t.name for t in self.topics]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"topics: the topic name(s) {repeated} are listed twice")
        if self.relevance is not None and self.relevance.against in ("topics", "both"):
            if not any(t.description for t in self.topics):
                raise ValueError(f"relevance.against={self.relevance.against!r} needs a description on at least "
                                 "one of the topics")
        return self


#: Settings that change how the corpus stage runs, not what it writes (left out of its fingerprint).
CORPUS_EXECUTION_FIELDS = frozenset({"engine", "workers", "ray_address", "batch_size"})
