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
    """The exact-hash set and the LSH index of the texts kept so far, fed in input order."""

    def __init__(self, config: DedupConfig):
        self.config = config
        self.exact: dict[bytes, str] = {}
        self.lsh = None
        self.lsh_keys = 0
        if config.near:
            from datasketch import LeanMinHash, MinHashLSH

            self._lean = LeanMinHash
            self.lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)

    def check(self, text_id: str, key: bytes | None, signature: np.ndarray | None) -> tuple[str, str] | None:
        """("exact" | "near", id of the kept text) when the text repeats one seen before, else None (and the
        text is indexed as a kept one)."""
        if self.config.exact and key is not None:
            first = self.exact.get(key)
            if first is not None:
                return "exact", first
        lean = None
        if self.lsh is not None and signature is not None:
            lean = self._lean(seed=MINHASH_SEED, hashvalues=signature, scheme=LSH_SCHEME)
            candidates = self.lsh.query(lean)
            if candidates:
                return "near", min(candidates)[1]  # the earliest kept text of the bucket
        if self.config.exact and key is not None:
            self.exact[key] = text_id
        if lean is not None:
            self.lsh.insert((self.lsh_keys, text_id), lean, check_duplication=False)
            self.lsh_keys += 1
        return None

    def sizes(self) -> dict[str, int]:
        """How large the indexes have grown: texts in each, and the LSH's bands (hash tables)."""
        return {"exact_keys": len(self.exact), "lsh_texts": self.lsh_keys,
                "lsh_bands": int(self.lsh.b) if self.lsh is not None else 0}
