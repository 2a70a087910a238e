"""Reading a GGUF file: a bounds-checked walk of its header, then the tensor data memory-mapped.

A GGUF file is laid out as (all little-endian):

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv x  metadata pair:  key (u64 length + UTF-8 bytes) | value type u32 | value
    n_tensors x tensor info: name (string) | n_dims u32 | n_dims x dim u64 | ggml type u32 | offset u64
    padding up to the alignment (`general.alignment`, default 32)
    tensor data: each tensor at data_offset + its offset

The `gguf` package has a reader, but on crafted files it raises raw numpy errors and accepts
zero dims and misaligned offsets. So the sections are walked here by hand, checking every
length and count against the bytes that are actually left in the file *before* reading or
allocating anything, with Python's unbounded ints for element and byte counts. Any defect
raises one `GGUFError` whose message names the file, the field or tensor, and what is wrong.
Only the constants (value types, quant types and their block sizes) come from `gguf`.

The tensor data is never read into memory: `tensor_bytes()` / `tensor_array()` return views
of one read-only `numpy.memmap` of the whole file.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, Keys, LlamaFileType

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)        # version 1 used 32-bit counts and lengths; nothing ships it now
DEFAULT_ALIGNMENT = 32             # GGUF's default when general.alignment is absent
MAX_ALIGNMENT = 1 << 16            # a sanity bound: real files use 32 (sometimes 64)
MAX_DIMS = 4                       # GGML_MAX_DIMS
MAX_NAME_BYTES = 63                # GGML_MAX_NAME is 64 bytes including the terminating NUL
MAX_ELEMENTS = (1 << 63) - 1       # ggml counts elements in int64
MAX_ARRAY_LEN = 1 << 24            # metadata arrays: vocabularies and merge lists are < 2**20;
                                   # the bound keeps a crafted file from costing gigabytes

# Smallest possible encodings, used to reject counts that cannot fit in the bytes left.
_MIN_KV_BYTES = 8 + 1 + 4 + 1      # key length, a 1-byte key, value type, a 1-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, 1-byte name, n_dims, 1 dim, type, offset

# Scalar value types: struct format (little-endian) and size in bytes.
_SCALAR = {
    GGUFValueType.UINT8: ("<B", 1), GGUFValueType.INT8: ("<b", 1),
    GGUFValueType.UINT16: ("<H", 2), GGUFValueType.INT16: ("<h", 2),
    GGUFValueType.UINT32: ("<I", 4), GGUFValueType.INT32: ("<i", 4),
    GGUFValueType.UINT64: ("<Q", 8), GGUFValueType.INT64: ("<q", 8),
    GGUFValueType.FLOAT32: ("<f", 4), GGUFValueType.FLOAT64: ("<d", 8),
    GGUFValueType.BOOL: ("<B", 1),
}
# numpy dtypes for arrays of numbers (read in one go rather than element by element)
_NP_DTYPE = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2", GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
    GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT32: "<f4", GGUFValueType.FLOAT64: "<f8",
    GGUFValueType.BOOL: "<u1",
}
# numpy dtypes of the plain (non-block) ggml tensor types, for typed views of tensor data.
# BF16 has no numpy dtype: its raw 16-bit patterns are given as uint16.
_PLAIN_TENSOR_DTYPE = {
    GGMLQuantizationType.F32: "<f4", GGMLQuantizationType.F16: "<f2",
    GGMLQuantizationType.BF16: "<u2", GGMLQuantizationType.F64: "<f8",
    GGMLQuantizationType.I8: "<i1", GGMLQuantizationType.I16: "<i2",
    GGMLQuantizationType.I32: "<i4", GGMLQuantizationType.I64: "<i8",
}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GGUFError(Exception):
    """A GGUF file that cannot be used; the message names the file, the field and the defect."""


def quoted(s: str, limit: int = 80) -> str:
    """A name from the file, quoted for a one-line message: control characters escaped,
    long names cut (a crafted key can hold newlines or megabytes)."""
    cut = s[:limit]
    safe = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in cut)
    return f"'{safe}'" + ("..." if len(s) > limit else "")


def file_type_name(ft) -> str | None:
    """`general.file_type` as llama.cpp names it ('Q4_K_M' for 15), None when absent."""
    if not isinstance(ft, int) or isinstance(ft, bool):
        return None
    try:
        return LlamaFileType(ft).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"unknown ({ft})"


def ggml_type_name(type_id: int) -> str:
    """'Q4_K' for 12, or 'type 99' for an id this gguf version does not know."""
    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"type {type_id}"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file and what it holds.

    shape is in numpy order (slowest dimension first), i.e. the GGUF/ggml dims reversed:
    a ggml matrix with ne = [n_in, n_out] is shape (n_out, n_in) here, one row per output.
    offset is the absolute byte offset in the file (data section start + the tensor's offset).
    """
    name: str
    ggml_type: int
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    n_elements: int

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.ggml_type)

    @property
    def ggml_dims(self) -> tuple[int, ...]:
        """The dims as GGUF stores them (ne[0] first: the contiguous row length)."""
        return tuple(reversed(self.shape))

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[GGMLQuantizationType(self.ggml_type)][0]

    @property
    def row_bytes(self) -> int:
        """Bytes of one row (shape[-1] elements) in the tensor's storage format."""
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(self.ggml_type)]
        return self.shape[-1] // block * type_size


class _Cursor:
    """Sequential little-endian reads from a buffer, each checked against the bytes left.

    `what` names the field being read; it goes into the error message together with the
    file name, the offset and how many bytes were needed."""

    def __init__(self, buf, size: int, where: str):
        self.buf = buf
        self.size = size
        self.pos = 0
        self.where = where          # the file, as named in messages

    def fail(self, what: str, problem: str):
        raise GGUFError(f"{self.where}: {what}: {problem}")

    def need(self, n: int, what: str):
        """Fail unless n more bytes are available at the current position."""
        if n > self.size - self.pos:
            self.fail(what, f"needs {n} bytes at offset {self.pos} but the file ends at "
                            f"{self.size} (truncated or corrupt)")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def raw_string(self, what: str) -> bytes:
        """A GGUF string: u64 byte length, then the bytes (no terminator)."""
        n = self.u64(f"{what} length")
        if n > self.size - self.pos:
            self.fail(what, f"string length {n} at offset {self.pos - 8} runs past the end "
                            f"of the file ({self.size - self.pos} bytes left)")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def string(self, what: str) -> str:
        b = self.raw_string(what)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(what, f"string is not valid UTF-8 ({e.reason} at byte {e.start})")


class GGUFFile:
    """A validated GGUF file with its tensor data memory-mapped (read-only, never copied).

    Attributes:
      path         the file (Path)
      version      GGUF version (2 or 3)
      alignment    data alignment in bytes (general.alignment or 32)
      data_offset  absolute offset of the tensor data section
      file_size    bytes in the file
      metadata     dict key -> value: int / float / bool / str, arrays as Python lists
      value_types  dict key -> (GGUFValueType, element GGUFValueType for arrays else None)
      tensors      dict name -> TensorInfo, in file order
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        where = str(self.path)
        try:
            self.file_size = self.path.stat().st_size
        except OSError as e:
            raise GGUFError(f"{where}: cannot open: {e.strerror or e}") from None
        if self.path.is_dir():
            raise GGUFError(f"{where}: is a directory, not a GGUF file")
        if self.file_size < 24:
            raise GGUFError(f"{where}: header: file is {self.file_size} bytes, too short for a "
                            "GGUF header (24 bytes)")
        self.metadata: dict[str, object] = {}
        self.value_types: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            with open(self.path, "rb") as f, \
                    mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                self._parse(_Cursor(mm, self.file_size, where))
        except OSError as e:
            raise GGUFError(f"{where}: cannot read: {e.strerror or e}") from None
        # One read-only map of the whole file; tensor views are slices of it.
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.file_size,))

    # ------------------------------------------------------------------ parsing

    def _parse(self, c: _Cursor):
        # --- header
        magic = bytes(c.buf[0:4])
        if magic != GGUF_MAGIC:
            c.fail("header magic", f"expected b'GGUF', found {magic!r} (not a GGUF file)")
        c.pos = 4
        version = c.u32("header version")
        if version not in SUPPORTED_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if swapped in SUPPORTED_VERSIONS:
                c.fail("header version", f"big-endian GGUF (version {swapped}) is not supported")
            c.fail("header version", f"version {version} is not supported (only 2 and 3)")
        self.version = version
        n_tensors = c.u64("header tensor count")
        n_kv = c.u64("header metadata count")
        # Each entry takes at least a few bytes, so counts larger than the file can hold are
        # rejected here, before any loop or allocation sized by them.
        left = c.size - c.pos
        if n_kv * _MIN_KV_BYTES > left:
            c.fail("header metadata count", f"{n_kv} key/value pairs cannot fit in the "
                                            f"{left} bytes after the header")
        if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > left:
            c.fail("header tensor count", f"{n_tensors} tensor infos (and {n_kv} key/value pairs) "
                                          f"cannot fit in the {left} bytes after the header")

        # --- metadata key/value pairs
        for i in range(n_kv):
            self._parse_kv(c, i)

        # --- alignment (needed before tensor offsets can be checked)
        self.alignment = DEFAULT_ALIGNMENT
        key = Keys.General.ALIGNMENT
        if key in self.metadata:
            vtype, _ = self.value_types[key]
            a = self.metadata[key]
            if vtype != GGUFValueType.UINT32:
                c.fail(f"metadata {quoted(key)}", f"must be a UINT32, found {vtype.name}")
            if a == 0 or a & (a - 1):
                c.fail(f"metadata {quoted(key)}", f"alignment {a} is not a power of two")
            if a > MAX_ALIGNMENT:
                c.fail(f"metadata {quoted(key)}", f"alignment {a} is larger than the sane bound "
                                            f"{MAX_ALIGNMENT}")
            self.alignment = a
        key = Keys.General.ARCHITECTURE
        if key in self.metadata and not isinstance(self.metadata[key], str):
            c.fail(f"metadata {quoted(key)}", f"must be a string, found "
                                        f"{self.value_types[key][0].name}")

        # --- tensor infos
        infos = []  # (name, type, numpy shape, relative offset, nbytes, n_elements)
        seen = set()
        for i in range(n_tensors):
            infos.append(self._parse_tensor_info(c, i, seen))

        # --- data section: starts at the next multiple of the alignment
        a = self.alignment
        self.data_offset = (c.pos + a - 1) // a * a
        if n_tensors and self.data_offset > c.size:
            c.fail("tensor data", f"the data section would start at offset {self.data_offset}, "
                                  f"past the end of the file ({c.size} bytes)")
        for name, ttype, shape, rel, nbytes, n_el in infos:
            start = self.data_offset + rel
            end = start + nbytes
            if end > c.size:
                c.fail(f"tensor {quoted(name)}", f"data [{start}, {end}) runs past the end of the file "
                                           f"({c.size} bytes)")
            self.tensors[name] = TensorInfo(name, ttype, shape, start, nbytes, n_el)
        # No two tensors may share bytes: sort by start and compare neighbours.
        by_start = sorted(self.tensors.values(), key=lambda t: (t.offset, t.offset + t.nbytes))
        for prev, cur in zip(by_start, by_start[1:]):
            if cur.offset < prev.offset + prev.nbytes:
                c.fail(f"tensor {quoted(cur.name)}",
                       f"data [{cur.offset}, {cur.offset + cur.nbytes}) overlaps tensor "
                       f"{quoted(prev.name)} [{prev.offset}, {prev.offset + prev.nbytes})")

    def _value_type(self, c: _Cursor, what: str, allow_array: bool) -> GGUFValueType:
        t = c.u32(f"{what} type")
        try:
            vt = GGUFValueType(t)
        except ValueError:
            c.fail(what, f"unknown value type {t}")
        if vt == GGUFValueType.ARRAY and not allow_array:
            c.fail(what, "arrays of arrays are not supported")
        return vt

    def _parse_kv(self, c: _Cursor, i: int):
        at = c.pos
        key = c.string(f"metadata key #{i}")
        if not key:
            c.fail(f"metadata key #{i} (offset {at})", "key is empty")
        if key in self.metadata:
            c.fail(f"metadata key #{i} {quoted(key)}", "duplicate key")
        what = f"metadata {quoted(key)}"
        vt = self._value_type(c, what, allow_array=True)
        if vt == GGUFValueType.ARRAY:
            et = self._value_type(c, f"{what} array element", allow_array=False)
            n = c.u64(f"{what} array length")
            value = self._read_array(c, what, et, n)
            self.value_types[key] = (vt, et)
        else:
            value = self._read_scalar(c, what, vt)
            self.value_types[key] = (vt, None)
        self.metadata[key] = value

    def _read_scalar(self, c: _Cursor, what: str, vt: GGUFValueType):
        if vt == GGUFValueType.STRING:
            return c.string(what)
        fmt, size = _SCALAR[vt]
        c.need(size, f"{what} value")
        (v,) = struct.unpack_from(fmt, c.buf, c.pos)
        c.pos += size
        if vt == GGUFValueType.BOOL:
            if v > 1:
                c.fail(what, f"bool value must be 0 or 1, found {v}")
            return bool(v)
        return v

    def _read_array(self, c: _Cursor, what: str, et: GGUFValueType, n: int) -> list:
        left = c.size - c.pos
        if n > MAX_ARRAY_LEN:
            c.fail(what, f"array of {n} elements is larger than the sane bound {MAX_ARRAY_LEN}")
        if et == GGUFValueType.STRING:
            # Every string takes at least its 8-byte length: bound n before looping.
            if n * 8 > left:
                c.fail(what, f"array of {n} strings cannot fit in the {left} bytes left")
            return self._read_string_array(c, what, n)
        _, size = _SCALAR[et]
        if n * size > left:
            c.fail(what, f"array of {n} {et.name} values ({n * size} bytes) runs past the end "
                         f"of the file ({left} bytes left)")
        raw = c.buf[c.pos:c.pos + n * size]     # a bytes copy of just this array
        c.pos += n * size
        arr = np.frombuffer(raw, dtype=_NP_DTYPE[et], count=n)
        if et == GGUFValueType.BOOL:
            if n and int(arr.max()) > 1:
                bad = int(np.argmax(arr > 1))
                c.fail(f"{what}[{bad}]", f"bool value must be 0 or 1, found {int(arr[bad])}")
            return arr.astype(bool).tolist()
        return arr.tolist()

    @staticmethod
    def _read_string_array(c: _Cursor, what: str, n: int) -> list[str]:
        # The hot loop of parsing (gemma3 has 262144 token strings): locals only, one
        # bounds check per string.
        buf, size, pos = c.buf, c.size, c.pos
        unpack = _U64.unpack_from
        out = []
        append = out.append
        for j in range(n):
            if pos + 8 > size:
                c.pos = pos
                c.fail(f"{what}[{j}] length", f"needs 8 bytes at offset {pos} but the file ends "
                                              f"at {size} (truncated or corrupt)")
            (m,) = unpack(buf, pos)
            pos += 8
            if m > size - pos:
                c.fail(f"{what}[{j}]", f"string length {m} at offset {pos - 8} runs past the end "
                                       f"of the file ({size - pos} bytes left)")
            b = buf[pos:pos + m]
            pos += m
            try:
                append(b.decode("utf-8"))
            except UnicodeDecodeError as e:
                c.fail(f"{what}[{j}]", f"string is not valid UTF-8 ({e.reason} at byte {e.start})")
        c.pos = pos
        return out

    def _parse_tensor_info(self, c: _Cursor, i: int, seen: set):
        at = c.pos
        raw = c.raw_string(f"tensor info #{i} name")
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            c.fail(f"tensor info #{i} name (offset {at})", f"name {raw[:80]!r} is not valid UTF-8")
        if not name:
            c.fail(f"tensor info #{i} (offset {at})", "tensor name is empty")
        if len(raw) > MAX_NAME_BYTES:
            c.fail(f"tensor info #{i} {quoted(name)}", f"name is {len(raw)} bytes, longer than the "
                                                      f"{MAX_NAME_BYTES}-byte limit of ggml")
        if name in seen:
            c.fail(f"tensor {quoted(name)}", "duplicate tensor name")
        seen.add(name)
        what = f"tensor {quoted(name)}"
        n_dims = c.u32(f"{what} n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            c.fail(what, f"n_dims is {n_dims}, must be 1 to {MAX_DIMS}")
        dims = []
        for d in range(n_dims):
            v = c.u64(f"{what} dim {d}")
            if v == 0:
                c.fail(what, f"dim {d} is 0 (every dimension must be > 0)")
            dims.append(v)
        t = c.u32(f"{what} ggml type")
        try:
            qt = GGMLQuantizationType(t)
            block, type_size = GGML_QUANT_SIZES[qt]
        except (ValueError, KeyError):
            c.fail(what, f"unknown ggml type {t}")
        rel = c.u64(f"{what} offset")
        n_el = 1
        for v in dims:
            n_el *= v                      # Python int: cannot overflow, checked below
        if n_el > MAX_ELEMENTS:
            c.fail(what, f"dims {dims} give {n_el} elements, more than ggml's int64 limit")
        if dims[0] % block:
            c.fail(what, f"row length {dims[0]} is not a multiple of the {qt.name} block size {block}")
        nbytes = n_el // block * type_size   # checked against the file once data_offset is known
        if rel % self.alignment:
            c.fail(what, f"data offset {rel} is not a multiple of the alignment {self.alignment}")
        return name, t, tuple(reversed(dims)), rel, nbytes, n_el

    # ------------------------------------------------------------------ access

    @property
    def arch(self) -> str | None:
        """general.architecture ('llama', 'gemma3', ...), None when the file has none."""
        return self.metadata.get(Keys.General.ARCHITECTURE)

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    def tensor_info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: tensor {quoted(name)}: not in the file") from None

    def tensor_bytes(self, name: str) -> np.memmap:
        """The tensor's raw bytes: a read-only uint8 view into the file map (no copy)."""
        t = self.tensor_info(name)
        return self._data[t.offset:t.offset + t.nbytes]

    def tensor_array(self, name: str) -> np.ndarray:
        """A read-only view of a tensor in numpy shape, without copying.

        Plain types (F32, F16, BF16 as uint16 bit patterns, F64, I8..I64) come as typed views
        of shape `TensorInfo.shape`; block formats (Q4_0, Q8_0, Q4_K, ...) as uint8
        [rows, row_bytes], one row per `shape[-1]` elements."""
        t = self.tensor_info(name)
        raw = self.tensor_bytes(name)
        dtype = _PLAIN_TENSOR_DTYPE.get(t.ggml_type)
        if dtype is not None:
            return raw.view(dtype).reshape(t.shape)
        return raw.reshape(t.n_elements // t.shape[-1], t.row_bytes)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors.values())

    @property
    def tensor_data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def close(self):
        """Drop this object's file map (views already handed out keep it alive)."""
        self._data = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"GGUFFile({str(self.path)!r}, version={self.version}, arch={self.arch!r}, "
                f"{len(self.metadata)} keys, {len(self.tensors)} tensors)")
