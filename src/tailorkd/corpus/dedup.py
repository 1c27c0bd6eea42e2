"""Duplicates: exact (a hash of the normalised text) and near (MinHash LSH over word shingles: rensa signatures,
a datasketch LSH index).

The per-text work (normalising, hashing, the MinHash signature) is stateless and runs in the workers;
``Deduplicator`` holds the two indexes and sees the texts in input order in the driver, so the first
occurrence is kept whatever the engine or the number of workers. The indexes are the only state that grows
with the corpus: 16 bytes a text for the exact one, ``b`` band keys a text for the LSH (``sizes``).
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

import numpy as np

from tailorkd.files import atomic_write, fsync_dir
from tailorkd.recipe.corpus import DedupConfig

#: The seed of the MinHash permutations: one for every worker, so that their signatures compare.
MINHASH_SEED = 1
#: datasketch's LSH only bands the values and checks that every signature it holds names one scheme; the
#: signatures are rensa's, labelled with datasketch's 32-bit affine scheme, the same kind of hash.
LSH_SCHEME = "affine32"
_NON_WORD = re.compile(r"[\W_]+")
#: The files of a saved index state (``Deduplicator.save``): exact keys and refs; kept refs and signatures.
EXACT = "exact.npz"
SIGNATURES = "signatures.bin"


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

    def __init__(self, config: DedupConfig, state_dir: Path | None = None):
        self.config = config
        self.exact: dict[int, int] = {}
        self.lsh = None
        self.lsh_keys = 0
        self.state_dir = state_dir
        self._signatures = None  # the kept texts' (ref, signature) records, appended as they are indexed
        self._record = np.dtype([("ref", "<i8"), ("signature", "<u4", (config.num_perm,))])
        if config.near:
            from datasketch import LeanMinHash, MinHashLSH

            self._lean = LeanMinHash
            self.lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
            if state_dir is not None:
                state_dir.mkdir(parents=True, exist_ok=True)
                self._signatures = open(self._pending(SIGNATURES), "wb")

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
            if self._signatures is not None:
                self._signatures.write(np.array([(ref, signature)], dtype=self._record).tobytes())
        return None

    # -- state kept between runs (a corpus that grows by new input files) --------------------------------------
    def _pending(self, name: str) -> Path:
        assert self.state_dir is not None
        return self.state_dir / f".{name}.pending"

    def restore(self) -> None:
        """Index again what ``save`` left in ``state_dir``: the kept texts' exact keys and signatures (the LSH
        is rebuilt from them: its bands are not stored, the signatures take 4 bytes a permutation)."""
        assert self.state_dir is not None
        exact = np.load(self.state_dir / EXACT)
        self.exact = dict(zip(exact["keys"].tolist(), exact["refs"].tolist()))
        if self.lsh is None:
            return
        assert self._signatures is not None
        records = np.memmap(self.state_dir / SIGNATURES, dtype=self._record, mode="r")
        for start in range(0, len(records), 10_000):
            part = np.array(records[start : start + 10_000])
            for ref, signature in zip(part["ref"].tolist(), part["signature"]):
                self.lsh.insert(ref, self._lean(seed=MINHASH_SEED, hashvalues=signature, scheme=LSH_SCHEME),
                                check_duplication=False)
            self._signatures.write(part.tobytes())
        self.lsh_keys = len(records)

    def save(self) -> None:
        """Write the indexes to ``state_dir`` (each file atomically) so a later run can ``restore`` them."""
        assert self.state_dir is not None
        keys = np.fromiter(self.exact.keys(), dtype=np.uint64, count=len(self.exact))
        refs = np.fromiter(self.exact.values(), dtype=np.int64, count=len(self.exact))
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, keys=keys, refs=refs)

        atomic_write(self.state_dir / EXACT, write)
        if self._signatures is not None:
            self._signatures.flush()
            os.fsync(self._signatures.fileno())
            self._signatures.close()
            self._signatures = None
            os.replace(self._pending(SIGNATURES), self.state_dir / SIGNATURES)
            fsync_dir(self.state_dir)
        else:
            (self.state_dir / SIGNATURES).unlink(missing_ok=True)

    def discard(self) -> None:
        """Drop what this run wrote towards its state."""
        if self._signatures is not None:
            self._signatures.close()
            self._signatures = None
            self._pending(SIGNATURES).unlink(missing_ok=True)

    def sizes(self) -> dict[str, int]:
        """How large the indexes have grown: texts in each, and the LSH's bands (hash tables)."""
        return {"exact_keys": len(self.exact), "lsh_texts": self.lsh_keys,
                "lsh_bands": int(self.lsh.b) if self.lsh is not None else 0}
