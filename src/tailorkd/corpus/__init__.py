"""The corpus stage's machinery: a raw news dump (JSONL, JSONL.gz, Parquet, CSV shards) read as a stream of
bounded batches, cleaned, filtered in two stages, deduplicated and written as Parquet pool shards with each
text's provenance, on local processes or a Ray cluster.

    read.py       the input files and their rows, batch by batch, with file and line; rejects
    clean.py      the cleaning steps (ftfy, HTML, boilerplate, control characters, URLs, punctuation, spaces)
    dedup.py      normalised-text hashes, MinHash signatures (rensa), the exact and LSH indexes (datasketch)
    steps.py      BatchSteps: the stateless per-batch work (cleaning, language, stage-1 rules, signatures,
                  embeddings) that any engine runs
    relevance.py  stage 2: the references (seeds, topic descriptions) and the threshold chosen on the seeds
    engines.py    local processes or Ray Data, both yielding processed batches in input order
    build.py      build_corpus: the driver (dedup, relevance threshold, shards, funnel, stamp)
    pool.py       reading a finished corpus back (iter_pool) and the prepare stage's pool from it
"""

from tailorkd.corpus.build import FUNNEL_STEPS, POOL_SCHEMA, build_corpus, read_stamp
from tailorkd.corpus.pool import iter_pool, write_pool_from_corpus

__all__ = ["FUNNEL_STEPS", "POOL_SCHEMA", "build_corpus", "iter_pool", "read_stamp", "write_pool_from_corpus"]
