"""A corpus of malformed GGUF files, generated here, each of which must raise one GGUFError
whose message names the file, the field or tensor at fault, and the defect.

Three sources:
- small synthetic files written byte by byte (conftest.RawGGUF), one defect each;
- tiny but valid models (gguf.GGUFWriter) with one architecture-level defect each;
- the real SmolLM2 file: its header region (never the 98 MB of data) truncated at many points
  -- the field each cut lands in is located with gguf's own reader -- or with one field edited.
Each case runs under a timeout; a sample also goes through the CLI (exit 2, one error line).
"""
from __future__ import annotations

import math
import struct

import pytest

from llmetal.config import ModelConfig
from llmetal.gguf_file import GGUFError, GGUFFile

pytestmark = pytest.mark.timeout(60)


def load(path):
    gf = GGUFFile(path)
    if gf.arch is not None:
        ModelConfig.from_gguf(gf)
    return gf


def expect_error(path, *needles):
    """GGUFFile (and ModelConfig) on path raise GGUFError naming the file and each needle."""
    with pytest.raises(GGUFError) as ei:
        gf = GGUFFile(path)
        ModelConfig.from_gguf(gf)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: "), msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------- synthetic defects

def _kv_raw(c, key, vtype, payload: bytes) -> bytes:
    """One metadata pair with an arbitrary (possibly invalid) payload."""
    return c.enc_str(key) + struct.pack("<I", vtype) + payload


SYNTH = []


def synth(case_id, *needles):
    def deco(fn):
        SYNTH.append(pytest.param(fn, needles, id=case_id))
        return fn
    return deco


@synth("bad_magic", "header magic", "not a GGUF file")
def _(c):
    return b"GGML" + c.small_raw().to_bytes()[4:]


@synth("too_short", "header", "too short")
def _(c):
    return c.small_raw().to_bytes()[:20]


@synth("version_1", "header version", "version 1 is not supported")
def _(c):
    g = c.small_raw(); g.version = 1
    return g.to_bytes()


@synth("version_99", "header version", "version 99")
def _(c):
    g = c.small_raw(); g.version = 99
    return g.to_bytes()


@synth("big_endian", "header version", "big-endian")
def _(c):
    g = c.small_raw(); g.version = 0x03000000
    return g.to_bytes()


@synth("header_only", "header metadata count", "cannot fit")
def _(c):
    return c.small_raw().to_bytes()[:24]


@synth("kv_count_huge", "header metadata count", str(2**64 - 1))
def _(c):
    g = c.small_raw(); g.n_kv = 2**64 - 1
    return g.to_bytes()


@synth("tensor_count_huge", "header tensor count", str(2**40))
def _(c):
    g = c.small_raw(); g.n_tensors = 2**40
    return g.to_bytes()


@synth("key_empty", "metadata key #4", "key is empty")
def _(c):
    return c.small_raw().kv("", c.T_U32, 1).to_bytes()


@synth("key_duplicate", "'test.count'", "duplicate key")
def _(c):
    return c.small_raw().kv("test.count", c.T_U32, 8).to_bytes()


@synth("key_length_past_eof", "metadata key #4", "runs past the end")
def _(c):
    g = c.small_raw()
    g.kvs.append(struct.pack("<Q", 10**6) + b"abc")
    return g.to_bytes()


@synth("key_not_utf8", "metadata key #4", "UTF-8")
def _(c):
    return c.small_raw().kv(b"\xff\xfekey", c.T_U32, 1).to_bytes()


@synth("value_type_unknown", "'test.bad'", "unknown value type 13")
def _(c):
    g = c.small_raw()
    g.kvs.append(_kv_raw(c, "test.bad", 13, b"\0" * 8))
    return g.to_bytes()


@synth("array_of_arrays", "'test.nested'", "arrays of arrays")
def _(c):
    g = c.small_raw()
    g.kvs.append(_kv_raw(c, "test.nested", c.T_ARR, struct.pack("<IQ", c.T_ARR, 0)))
    return g.to_bytes()


@synth("array_elem_type_unknown", "'test.arr'", "unknown value type 77")
def _(c):
    g = c.small_raw()
    g.kvs.append(_kv_raw(c, "test.arr", c.T_ARR, struct.pack("<IQ", 77, 1)))
    return g.to_bytes()


@synth("numeric_array_too_long", "'test.arr'", "runs past the end")
def _(c):
    g = c.small_raw()
    g.kvs.append(_kv_raw(c, "test.arr", c.T_ARR, struct.pack("<IQ", c.T_U32, 2**22)))
    return g.to_bytes()


@synth("string_array_count_huge", "'test.arr'", "cannot fit")
def _(c):
    g = c.small_raw()
    g.kvs.append(_kv_raw(c, "test.arr", c.T_ARR, struct.pack("<IQ", c.T_STR, 2**20)))
    return g.to_bytes()


@synth("array_beyond_sane_bound", "'test.arr'", "sane bound")
def _(c):
    g = c.small_raw()
    g.kvs.append(_kv_raw(c, "test.arr", c.T_ARR, struct.pack("<IQ", c.T_U8, 2**61)))
    return g.to_bytes()


@synth("string_array_elem_past_eof", "'test.arr'[1]", "runs past the end")
def _(c):
    g = c.small_raw()
    payload = struct.pack("<IQ", c.T_STR, 2) + c.enc_str("ok") + struct.pack("<Q", 2**50)
    g.kvs.append(_kv_raw(c, "test.arr", c.T_ARR, payload))
    return g.to_bytes()


@synth("string_array_elem_not_utf8", "'test.arr'[2]", "UTF-8")
def _(c):
    return c.small_raw().kv("test.arr", c.T_ARR, (c.T_STR, ["a", "b", b"\xc3\x28"])).to_bytes()


@synth("string_length_huge", "'test.s'", "runs past the end")
def _(c):
    g = c.small_raw()
    g.kvs.append(_kv_raw(c, "test.s", c.T_STR, struct.pack("<Q", 2**63)))
    return g.to_bytes()


@synth("string_not_utf8", "'test.s'", "UTF-8")
def _(c):
    return c.small_raw().kv("test.s", c.T_STR, b"ab\xc3\x28").to_bytes()


@synth("scalar_past_eof", "'test.last'", "needs 8 bytes")
def _(c):
    g = c.small_raw()
    g.tensors = []                                 # the file ends inside the last value
    g.kvs.append(_kv_raw(c, "test.last", c.T_U64, b"\1\2\3"))
    return g.header_bytes()


@synth("bool_value_2", "'test.flag'", "bool value must be 0 or 1")
def _(c):
    return c.small_raw().kv("test.flag", c.T_BOOL, 2).to_bytes()


@synth("bool_array_value_5", "'test.flags'[2]", "bool value must be 0 or 1")
def _(c):
    return c.small_raw().kv("test.flags", c.T_ARR, (c.T_BOOL, [0, 1, 5])).to_bytes()


@synth("alignment_not_power_of_two", "'general.alignment'", "48 is not a power of two")
def _(c):
    g = c.small_raw(); g.alignment = 48
    return g.kv("general.alignment", c.T_U32, 48).to_bytes()


@synth("alignment_zero", "'general.alignment'", "0 is not a power of two")
def _(c):
    return c.small_raw().kv("general.alignment", c.T_U32, 0).to_bytes()


@synth("alignment_huge", "'general.alignment'", "sane bound")
def _(c):
    return c.small_raw().kv("general.alignment", c.T_U32, 1 << 24).to_bytes()


@synth("alignment_wrong_type", "'general.alignment'", "must be a UINT32")
def _(c):
    return c.small_raw().kv("general.alignment", c.T_U64, 32).to_bytes()


@synth("architecture_not_string", "'general.architecture'", "must be a string")
def _(c):
    return c.small_raw().kv("general.architecture", c.T_U32, 5).to_bytes()


@synth("tensor_name_empty", "tensor info #3", "tensor name is empty")
def _(c):
    return c.small_raw().tensor("", [4]).to_bytes()


@synth("tensor_name_duplicate", "'a.weight'", "duplicate tensor name")
def _(c):
    return c.small_raw().tensor("a.weight", [4]).to_bytes()


@synth("tensor_name_64_bytes", "tensor info #3", "64 bytes")
def _(c):
    return c.small_raw().tensor("x" * 64, [4]).to_bytes()


@synth("tensor_name_not_utf8", "tensor info #3 name", "UTF-8")
def _(c):
    return c.small_raw().tensor(b"bad\xff", [4]).to_bytes()


@synth("n_dims_zero", "'z'", "n_dims is 0")
def _(c):
    return c.small_raw().tensor("z", [], data=b"\0" * 4).to_bytes()


@synth("n_dims_five", "'z'", "n_dims is 5")
def _(c):
    return c.small_raw().tensor("z", [1, 1, 1, 1, 1]).to_bytes()


@synth("dim_zero", "'z'", "dim 1 is 0")
def _(c):
    return c.small_raw().tensor("z", [4, 0], data=b"").to_bytes()


@synth("element_count_overflow", "'z'", "int64 limit")
def _(c):
    return c.small_raw().tensor("z", [2**40, 2**40], data=b"\0" * 4).to_bytes()


@synth("byte_count_exceeds_file", "'z'", "runs past the end of the file")
def _(c):
    return c.small_raw().tensor("z", [2**20, 2**20], data=b"\0" * 4).to_bytes()


@synth("ggml_type_unknown", "'z'", "unknown ggml type 99")
def _(c):
    return c.small_raw().tensor("z", [4], ggml_type=99, data=b"\0" * 16).to_bytes()


@synth("ggml_type_removed_q4_2", "'z'", "unknown ggml type 4")
def _(c):
    return c.small_raw().tensor("z", [32], ggml_type=4, data=b"\0" * 20).to_bytes()


@synth("row_not_block_multiple", "'z'", "row length 33 is not a multiple of the Q8_0 block size 32")
def _(c):
    return c.small_raw().tensor("z", [33, 2], ggml_type=8, data=b"\0" * 68).to_bytes()


@synth("offset_misaligned", "'z'", "not a multiple of the alignment 32")
def _(c):
    return c.small_raw().tensor("z", [4], offset=200).to_bytes()


@synth("offset_past_eof", "'z'", "past the end of the file")
def _(c):
    return c.small_raw().tensor("z", [4], offset=2**40).to_bytes()


@synth("data_past_eof", "'c.weight'", "runs past the end of the file")
def _(c):
    return c.small_raw().to_bytes()[:-4]


@synth("tensors_overlap", "'z'", "'a.weight'", "overlaps")
def _(c):
    return c.small_raw().tensor("z", [4], offset=0).to_bytes()


@synth("data_section_missing", "tensor data", "past the end of the file")
def _(c):
    g = c.small_raw()
    while len(g.header_bytes()) % 32 == 0:        # the cut must leave padding missing
        g.kv(f"pad{len(g.kvs)}", c.T_U8, 0)
    return g.header_bytes()


@synth("tensor_info_truncated", "'b.weight' dim 1", "needs 8 bytes")
def _(c):
    h = c.small_raw().header_bytes()
    cut = h.index(b"b.weight") + len(b"b.weight") + 4 + 8 + 3   # inside b's 2nd dim
    return h[:cut]


@pytest.mark.parametrize("make, needles", SYNTH)
def test_synthetic_defect(make, needles, craft, tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(make(craft))
    expect_error(path, *needles)


def test_synthetic_base_is_valid(craft, tmp_path):
    """The cases above differ from a file that loads: their errors are due to the defect."""
    gf = GGUFFile(craft.small_raw().write(tmp_path / "ok.gguf"))
    assert list(gf.tensors) == ["a.weight", "b.weight", "c.weight"]
    assert len(SYNTH) >= 40


def test_missing_file_and_directory(tmp_path):
    expect_error(tmp_path / "nope.gguf", "cannot open")
    with pytest.raises(GGUFError, match="directory"):
        GGUFFile(tmp_path)


# ---------------------------------------------------------------------- architecture defects

from gguf import GGUFValueType as V  # noqa: E402

ARCH = [
    pytest.param(dict(arch="mamba"), ("'general.architecture'", "unknown architecture 'mamba'"),
                 id="unknown_architecture"),
    pytest.param(dict(drop_kv=["llama.block_count"]), ("'llama.block_count'", "missing"),
                 id="block_count_missing"),
    pytest.param(dict(kv_overrides={"llama.block_count": (V.STRING, "2")}),
                 ("'llama.block_count'", "must be an integer"), id="block_count_string"),
    pytest.param(dict(kv_overrides={"llama.block_count": (V.UINT32, 10**6)}),
                 ("'llama.block_count'", "out of range"), id="block_count_huge"),
    pytest.param(dict(kv_overrides={"llama.attention.head_count": (V.UINT32, 0)}),
                 ("'llama.attention.head_count'", "out of range"), id="head_count_zero"),
    pytest.param(dict(kv_overrides={"llama.attention.head_count_kv": (V.UINT32, 3)}),
                 ("'llama.attention.head_count_kv'", "does not divide"), id="head_count_kv_not_divisor"),
    pytest.param(dict(kv_overrides={"llama.attention.head_count": (V.ARRAY, [4, 2], V.UINT32)}),
                 ("'llama.attention.head_count'", "differ between layers"), id="head_count_per_layer"),
    pytest.param(dict(kv_overrides={"llama.attention.layer_norm_rms_epsilon": (V.FLOAT32, math.nan)}),
                 ("'llama.attention.layer_norm_rms_epsilon'", "finite"), id="rms_eps_nan"),
    pytest.param(dict(kv_overrides={"llama.rope.freq_base": (V.FLOAT32, -1.0)}),
                 ("'llama.rope.freq_base'", "> 0"), id="rope_base_negative"),
    pytest.param(dict(kv_overrides={"llama.rope.scaling.type": (V.STRING, "yarn")}),
                 ("'llama.rope.scaling.type'", "'yarn' is not supported"), id="rope_scaling_yarn"),
    pytest.param(dict(kv_overrides={"llama.rope.dimension_count": (V.UINT32, 8)}),
                 ("'llama.rope.dimension_count'", "must equal the head dim 16"), id="llama_n_rot"),
    pytest.param(dict(drop_tensors=["blk.1.ffn_up.weight"]), ("'blk.1.ffn_up.weight'", "missing"),
                 id="tensor_missing"),
    pytest.param(dict(shape_overrides={"blk.0.attn_k.weight": (48, 64)}),
                 ("'blk.0.attn_k.weight'", "(48, 64)", "(32, 64)"), id="tensor_shape_wrong"),
    pytest.param(dict(shape_overrides={"token_embd.weight": (50, 64)}),
                 ("'token_embd.weight'", "(50, 64)", "(40, 64)"), id="vocab_mismatch"),
    pytest.param(dict(arch="gemma3", drop_tensors=["blk.1.attn_q_norm.weight"]),
                 ("'blk.1.attn_q_norm.weight'", "missing"), id="gemma3_q_norm_missing"),
    pytest.param(dict(arch="gemma3", shape_overrides={"blk.0.post_ffw_norm.weight": (32,)}),
                 ("'blk.0.post_ffw_norm.weight'", "(32,)", "(64,)"), id="gemma3_post_norm_shape"),
    pytest.param(dict(arch="gemma3", kv_overrides={
        "gemma3.attention.sliding_window_pattern": (V.ARRAY, [True], V.BOOL)}),
        ("'gemma3.attention.sliding_window_pattern'", "1 entries for 2 layers"), id="swa_pattern_length"),
]


@pytest.mark.parametrize("kw, needles", ARCH)
def test_architecture_defect(kw, needles, tiny_model):
    expect_error(tiny_model(**kw), *needles)


def test_architecture_missing(craft, tmp_path):
    gf = GGUFFile(craft.small_raw().write(tmp_path / "noarch.gguf"))
    with pytest.raises(GGUFError, match="'general.architecture': missing"):
        ModelConfig.from_gguf(gf)


# ---------------------------------------------------------------------- the real file

@pytest.fixture(scope="module")
def real(smollm2_path):
    """The real file's layout from gguf's own reader, and its first bytes (header + 1 MiB)."""
    import gguf
    r = gguf.GGUFReader(smollm2_path)
    kvs = []   # (index, key, start, key_end, end)
    for i, (k, f) in enumerate(kv for kv in r.fields.items() if not kv[0].startswith("GGUF.")):
        size = sum(p.nbytes for p in f.parts)
        kvs.append((i, k, f.offset, f.offset + 8 + len(k.encode()), f.offset + size))
    infos = []  # (index, name, start, name_end, end, data_start, data_end)
    for j, t in enumerate(r.tensors):
        size = sum(p.nbytes for p in t.field.parts)
        infos.append((j, t.name, t.field.offset, t.field.offset + 8 + len(t.name.encode()),
                      t.field.offset + size, t.data_offset, t.data_offset + t.n_bytes))
    data_offset = r.data_offset
    with open(smollm2_path, "rb") as f:
        head = f.read(data_offset + (1 << 20))
    n_kv, n_t = len(kvs), len(infos)
    return dict(kvs=kvs, infos=infos, data_offset=data_offset, head=head, n_kv=n_kv, n_t=n_t,
                counts_fit=24 + n_kv * 14 + n_t * 33)


def _expected_for_cut(real, p):
    """The field a file cut to p bytes must be blamed for (from gguf's reader layout)."""
    if p < 24:
        return "too short"
    if p - 24 < real["n_kv"] * 14:
        return "header metadata count"
    if p < real["counts_fit"]:
        return "header tensor count"
    for i, k, start, key_end, end in real["kvs"]:
        if start <= p < end:
            return f"metadata key #{i}" if p < key_end else f"metadata '{k}'"
    for j, name, start, name_end, end, _, _ in real["infos"]:
        if start <= p < end:
            return f"tensor info #{j}" if p < name_end else f"tensor '{name}'"
    if p < real["data_offset"]:
        return "tensor data"
    for j, name, *_, d_end in real["infos"]:
        if d_end > p:
            return f"tensor '{name}'"
    raise AssertionError("cut past the last tensor")


def _cut_points(real):
    pts = {0, 3, 4, 8, 16, 23, 24, 30, 100, 500, real["counts_fit"] - 1}
    # (cuts before counts_fit all fail the header's count check: a few of those suffice)
    for i, k, start, key_end, end in real["kvs"]:
        if start >= real["counts_fit"]:
            pts.update({start + 4, (key_end + end) // 2})
    toks = next(kv for kv in real["kvs"] if kv[1] == "tokenizer.ggml.tokens")
    pts.update(range(toks[2], toks[4], (toks[4] - toks[2]) // 9))
    for j, name, start, name_end, end, *_ in real["infos"][:4] + real["infos"][-3:]:
        pts.update({start + 2, name_end + 1, end - 4})
    d = real["data_offset"]
    pts.update({real["infos"][-1][4], d - 1, d, d + 1000, d + (1 << 20) - 10})
    return sorted(pts)


N_CUTS = 80   # parametrization bound on the number of cut points


def test_real_file_cut_points(real):
    pts = _cut_points(real)
    assert 60 <= len(pts) <= N_CUTS
    blamed = {_expected_for_cut(real, p).split("'")[0].split("#")[0] for p in pts}
    assert blamed >= {"too short", "header metadata count", "header tensor count", "metadata key ",
                      "metadata ", "tensor info ", "tensor "}


@pytest.mark.parametrize("k", range(N_CUTS))
def test_real_file_truncated(k, real, tmp_path):
    pts = _cut_points(real)
    if k >= len(pts):
        return                          # fewer points than the bound (checked above)
    p = pts[k]
    path = tmp_path / f"cut{p}.gguf"
    path.write_bytes(real["head"][:p])
    expect_error(path, _expected_for_cut(real, p))


def _field(real, key):
    return next(kv for kv in real["kvs"] if kv[1] == key)


def _info(real, name):
    return next(t for t in real["infos"] if t[1] == name)


def _edit(real, pos, new: bytes, length=None):
    b = bytearray(real["head"][:real["data_offset"] + 4096])
    b[pos:pos + len(new)] = new
    return bytes(b)


def _edit_version(real):
    return _edit(real, 4, struct.pack("<I", 7))


def _edit_token_count(real):
    i, k, start, key_end, end = _field(real, "tokenizer.ggml.tokens")
    return _edit(real, key_end + 8, struct.pack("<Q", 2**23))     # after value type + elem type


def _edit_fifth_token_length(real):
    i, k, start, key_end, end = _field(real, "tokenizer.ggml.tokens")
    pos = key_end + 16
    for _ in range(4):                                            # skip four strings
        (n,) = struct.unpack_from("<Q", real["head"], pos)
        pos += 8 + n
    return _edit(real, pos, struct.pack("<Q", 2**40))


def _edit_value_type(real):
    i, k, start, key_end, end = _field(real, "llama.block_count")
    return _edit(real, key_end, struct.pack("<I", 13))


def _edit_duplicate_key(real):
    i, k, start, key_end, end = _field(real, "general.type")
    return _edit(real, key_end - len(b"general.type"), b"general.name")


def _edit_tensor_type(real):
    j, name, start, name_end, end, *_ = _info(real, "blk.0.attn_q.weight")
    return _edit(real, end - 12, struct.pack("<I", 99))


def _edit_tensor_dim(real):
    j, name, start, name_end, end, *_ = _info(real, "blk.3.ffn_up.weight")
    return _edit(real, name_end + 4, struct.pack("<Q", 0))


def _edit_tensor_offset(real):
    j, name, start, name_end, end, *_ = _info(real, "blk.5.attn_k.weight")
    (off,) = struct.unpack_from("<Q", real["head"], end - 8)
    return _edit(real, end - 8, struct.pack("<Q", off + 1))


def _edit_duplicate_tensor(real):
    j, name, start, name_end, end, *_ = _info(real, "blk.1.attn_q.weight")
    return _edit(real, start + 8, b"blk.0.attn_q.weight")


def _edit_n_dims(real):
    j, name, start, name_end, end, *_ = _info(real, "output_norm.weight")
    return _edit(real, name_end, struct.pack("<I", 9))


REAL_EDITS = [
    pytest.param(_edit_version, ("header version", "version 7"), id="version"),
    pytest.param(_edit_token_count, ("'tokenizer.ggml.tokens'", "cannot fit"), id="token_count"),
    pytest.param(_edit_fifth_token_length, ("'tokenizer.ggml.tokens'[4]", "runs past"), id="token_length"),
    pytest.param(_edit_value_type, ("'llama.block_count'", "unknown value type 13"), id="value_type"),
    pytest.param(_edit_duplicate_key, ("'general.name'", "duplicate key"), id="duplicate_key"),
    pytest.param(_edit_tensor_type, ("'blk.0.attn_q.weight'", "unknown ggml type 99"), id="tensor_type"),
    pytest.param(_edit_tensor_dim, ("'blk.3.ffn_up.weight'", "dim 0 is 0"), id="tensor_dim_zero"),
    pytest.param(_edit_tensor_offset, ("'blk.5.attn_k.weight'", "alignment 32"), id="tensor_offset"),
    pytest.param(_edit_duplicate_tensor, ("'blk.0.attn_q.weight'", "duplicate tensor name"),
                 id="duplicate_tensor"),
    pytest.param(_edit_n_dims, ("'output_norm.weight'", "n_dims is 9"), id="n_dims"),
]


@pytest.mark.parametrize("edit, needles", REAL_EDITS)
def test_real_file_edited(edit, needles, real, tmp_path):
    path = tmp_path / "edited.gguf"
    path.write_bytes(edit(real))
    expect_error(path, *needles)


def test_real_header_alone_blames_first_tensor(real, tmp_path):
    """Unedited header bytes without the data: the first tensor's data is missing."""
    path = tmp_path / "head.gguf"
    path.write_bytes(real["head"][:real["data_offset"] + 4096])
    expect_error(path, "'token_embd.weight'", "runs past the end of the file")


# ---------------------------------------------------------------------- through the CLI

CLI_SAMPLE = ["bad_magic", "key_duplicate", "string_array_count_huge", "ggml_type_unknown",
              "tensors_overlap"]


@pytest.mark.parametrize("case_id", CLI_SAMPLE)
def test_cli_reports_one_line(case_id, craft, run_cli, tmp_path):
    make, needles = next((p.values for p in SYNTH if p.id == case_id))
    path = tmp_path / f"{case_id}.gguf"
    path.write_bytes(make(craft))
    r = run_cli("inspect", path, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmetal: error: "), r.stderr
    assert str(path) in lines[0] and all(n in lines[0] for n in needles)
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_cli_real_edit_and_debug(real, run_cli, tmp_path):
    path = tmp_path / "edited.gguf"
    path.write_bytes(_edit_tensor_type(real))
    r = run_cli("inspect", "--json", path, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "llmetal: error:" in r.stderr and "'blk.0.attn_q.weight'" in r.stderr
    # --debug shows the traceback instead
    r = run_cli("--debug", "inspect", path, timeout=60)
    assert r.returncode != 0 and "Traceback" in r.stderr and "GGUFError" in r.stderr
