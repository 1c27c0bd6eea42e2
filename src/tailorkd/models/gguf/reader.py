"""Reading the metadata and tensors of a GGUF file."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any


class GGUFFile:
    """The metadata and tensors of a GGUF file (version 2 or 3, little-endian).

    gguf's GGUFReader turns every element of every array into a numpy view, which takes 18 s for
    Gemma's 262k-token vocabulary on a small CPU; reading the file with `struct` takes a fraction of
    a second. Dequantizing is left to `gguf.quants.dequantize`.
    """

    _SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    _STRING, _ARRAY = 8, 9

    def __init__(self, path: str | Path):
        import numpy as np

        self.path = Path(path)
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._view = memoryview(self._data)
        self._pos = 0
        magic = bytes(self._view[:4])
        (version,) = struct.unpack_from("<I", self._view, 4)
        if magic != b"GGUF" or version not in (2, 3):
            raise RuntimeError(f"{self.path} is not a little-endian GGUF v2/v3 file")
        tensor_count, kv_count = struct.unpack_from("<QQ", self._view, 8)
        self._pos = 24
        self.metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = self._string()
            (kind,) = self._unpack("<I")
            self.metadata[key] = self._value(kind)
        infos = []
        for _ in range(tensor_count):
            name = self._string()
            (n_dims,) = self._unpack("<I")
            dims = self._unpack(f"<{n_dims}Q")
            kind, offset = self._unpack("<IQ")
            infos.append((name, dims, kind, offset))
        alignment = int(self.metadata.get("general.alignment", 32))
        start = -(-self._pos // alignment) * alignment
        # name -> (shape as numpy/torch see it, ggml type, absolute offset)
        self.tensors = {name: (tuple(reversed(dims)), kind, start + offset) for name, dims, kind, offset in infos}

    def _unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from(fmt, self._view, self._pos)
        self._pos += struct.calcsize(fmt)
        return values

    def _string(self) -> str:
        (length,) = self._unpack("<Q")
        text = str(self._view[self._pos : self._pos + length], "utf-8", errors="replace")
        self._pos += length
        return text

    def _value(self, kind: int) -> Any:
        if kind == self._STRING:
            return self._string()
        if kind == self._ARRAY:
            item_kind, count = self._unpack("<IQ")
            if item_kind in self._SCALARS:
                fmt = self._SCALARS[item_kind]
                values = list(self._unpack(f"<{count}{fmt[1]}"))
                return values
            return [self._value(item_kind) for _ in range(count)]
        if kind in self._SCALARS:
            return self._unpack(self._SCALARS[kind])[0]
        raise RuntimeError(f"{self.path}: unknown GGUF value type {kind}")

    def dequantized(self, name: str):
        """Tensor `name` as a float32 numpy array (a copy, not a view of the file)."""
        import numpy as np
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import dequantize

        shape, kind, offset = self.tensors[name]
        qtype = GGMLQuantizationType(kind)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        row_bytes = shape[-1] // block_size * type_size
        rows = int(np.prod(shape[:-1], dtype=np.int64))
        raw = np.frombuffer(self._view, dtype=np.uint8, count=rows * row_bytes, offset=offset)
        values = dequantize(raw.reshape(rows, row_bytes), qtype)
        return np.array(values, dtype=np.float32, copy=True).reshape(shape)
