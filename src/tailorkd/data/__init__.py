"""The data layer: sources -> records -> three deterministic splits (seed, pool, test) on disk.

``prepare_data`` is the entry point of a run; ``load_prepared`` reads its output back. See
:mod:`tailorkd.data.config` for the recipe's ``data:`` section, :mod:`tailorkd.data.readers` for the file
formats and the record fields, :mod:`tailorkd.data.sources` for the named data sets and
:mod:`tailorkd.data.splits` for how the splits are drawn.
"""

from tailorkd.data.config import (
    BBCNewsSource,
    ColumnMap,
    CrisisLexLabels,
    CrisisLexT26Source,
    DataConfig,
    FileSource,
    FinancialPhraseBankSource,
    LabelMap,
    Source,
    SplitConfig,
)
from tailorkd.data.readers import RECORD_FIELDS, ReadResult, read_file
from tailorkd.data.sources import read_source, resolve_source_path
from tailorkd.data.splits import (
    POOL_FIELDS,
    PreparedData,
    drop_duplicate_texts,
    load_prepared,
    load_records,
    make_splits,
    prepare_data,
)

__all__ = [
    "BBCNewsSource",
    "ColumnMap",
    "CrisisLexLabels",
    "CrisisLexT26Source",
    "DataConfig",
    "FileSource",
    "FinancialPhraseBankSource",
    "LabelMap",
    "POOL_FIELDS",
    "PreparedData",
    "RECORD_FIELDS",
    "ReadResult",
    "Source",
    "SplitConfig",
    "drop_duplicate_texts",
    "load_prepared",
    "load_records",
    "make_splits",
    "prepare_data",
    "read_file",
    "read_source",
    "resolve_source_path",
]
