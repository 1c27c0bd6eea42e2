"""Duplicates: exact (a hash of the normalised text) and near (MinHash LSH over word shingles: rensa signatures,
a datasketch LSH index).

The per-text work (normalising, hashing, the MinHash signature) is stateless and runs in the workers;
``Deduplicator`` holds the two indexes and sees the texts in input order in the driver, so the first
occurrence is kept whatever the engine or the number of workers. The indexes are the only state that grows
with the corpus: 16 bytes a text for the exact one, ``b`` band keys a text for the LSH (``sizes``).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

from tailorkd.recipe.corpus import DedupConfig

#: The seed of the MinHash permutations: one for every worker, so that their signatures compare.
MINHASH_SEED = 1
#: datasketch's LSH only bands the values and checks that every signature it holds names one scheme; the
#: signatures are rensa's, labelled with datasketch's 32-bit affine scheme, the same kind of hash.
LSH_SCHEME = "affine32"
_NON_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """The text as duplicates are compared: NFKC, casefolded, punctuation and symbols removed, words joined
    by single spaces (so "Fire, near Sydney!" and "fire near  sydney" are the same text)."""
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def exact_key(normalised: str) -> bytes:
    """16 bytes identifying a normalised text."""
    return hashlib.blake2b(normalised.encode("utf-8"), digest_size=16).digest()


def shingles(normalised: str, size: int) -> set[bytes]:
    """The word ``size``-grams of a normalised text (a shorter text is one shingle)."""
    words = normalised.split()
    if len(words) <= size:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i:i + size]).encode("utf-8") for i in range(len(words) - size + 1)}


class Signer:
    """MinHash signatures of normalised texts (rensa's ``RMinHash``: the shingles hashed and permuted in Rust,
    about 4x faster here than datasketch's SHA-1 per shingle in Python). The driver's LSH index (datasketch)
    only bands the signature's values, so any MinHash of the same ``num_perm`` serves it."""

    def __init__(self, config: DedupConfig):
        from rensa import RMinHash

        self.config = config
        self._minhash = RMinHash

    def __call__(self, normalised: str) -> np.ndarray:
        m = self._minhash(self.config.num_perm, MINHASH_SEED)
        m.update(list(shingles(normalised, self.config.shingle_size)))
        return np.asarray(m.digest(), dtype=np.uint32)


class Deduplicator:
    """The exact-hash set and the LSH index of the texts kept so far, fed in input order.

    Texts are named by an integer the caller chooses (``ref``: the build packs the input file's number and
    the row), and the exact index keys on the first 8 bytes of the 16-byte text hash as an int: a dict of
    two small ints costs about half what a bytes key and an id string did (measured: the driver's peak grew
    218 MiB from 50k to 1M articles with string ids). Two different texts share 8 hash bytes with
    probability n^2 / 2^65, 3e-8 for a million texts."""

    def __init__(self, config: DedupConfig):
        self.config = config
        self.exact: dict[int, int] = {}
        self.lsh = None
        self.lsh_keys = 0
        if config.near:
            from datasketch import LeanMinHash, MinHashLSH

            self._lean = LeanMinHash
            self.lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)

    def check(self, ref: int, key: bytes | None, signature: np.ndarray | None) -> tuple[str, int] | None:
        """("exact" | "near", ref of the kept text) when the text repeats one seen before, else None (and the
        text is indexed as a kept one)."""
        short = int.from_bytes(key[:8], "little") if self.config.exact and key is not None else None
        if short is not None:
            first = self.exact.get(short)
            if first is not None:
                return "exact", first
        lean = None
        if self.lsh is not None and signature is not None:
            lean = self._lean(seed=MINHASH_SEED, hashvalues=signature, scheme=LSH_SCHEME)
            candidates = self.lsh.query(lean)
            if candidates:
                return "near", min(candidates)  # the earliest kept text of the bucket (refs grow in input order)
        if short is not None:
            self.exact[short] = ref
        if lean is not None:
            self.lsh.insert(ref, lean, check_duplication=False)
            self.lsh_keys += 1
        return None

    def sizes(self) -> dict[str, int]:
        """How large the indexes have grown: texts in each, and the LSH's bands (hash tables)."""
        return {"exact_keys": len(self.exact), "lsh_texts": self.lsh_keys,
                "lsh_bands": int(self.lsh.b) if self.lsh is not None else 0}
