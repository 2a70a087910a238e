"""GGUFFile and ModelConfig on valid files: the real models and small synthetic ones.

The real SmolLM2 file is cross-checked against gguf's own reader (an independent parser):
every metadata value and every tensor's type, dims, offset, size and bytes must agree.
"""
import math

import numpy as np
import pytest

from llmetal.config import ModelConfig
from llmetal.gguf_file import GGUFError, GGUFFile

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def smol(smollm2_path):
    return GGUFFile(smollm2_path)


@pytest.fixture(scope="module")
def gemma(gemma3_path):
    return GGUFFile(gemma3_path)


def test_smollm2_matches_gguf_reader(smol, smollm2_path):
    import gguf
    r = gguf.GGUFReader(smollm2_path)
    fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert set(fields) == set(smol.metadata)
    for k, f in fields.items():
        ref = f.contents()
        got = smol.metadata[k]
        if isinstance(ref, float):
            assert got == pytest.approx(ref, rel=1e-7), k
        else:
            assert got == ref, k
        assert smol.value_types[k][0] == f.types[0], k
    assert len(r.tensors) == len(smol.tensors) == 272
    for t in r.tensors:
        ti = smol.tensors[t.name]
        assert ti.ggml_type == int(t.tensor_type), t.name
        assert ti.ggml_dims == tuple(int(x) for x in t.shape), t.name
        assert ti.offset == t.data_offset and ti.nbytes == t.n_bytes, t.name
        assert ti.n_elements == t.n_elements, t.name
    # bytes of a few tensors, through the memory map
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "output_norm.weight"):
        ref = next(t for t in r.tensors if t.name == name)
        assert np.array_equal(smol.tensor_bytes(name), ref.data.view(np.uint8).reshape(-1))


def test_smollm2_header_and_views(smol):
    assert smol.version == 3 and smol.alignment == 32
    assert smol.arch == "llama"
    assert smol.data_offset == 1785664 and smol.data_offset % smol.alignment == 0
    assert smol.file_size == smol.path.stat().st_size
    emb = smol.tensors["token_embd.weight"]
    assert emb.shape == (49152, 576) and emb.type_name == "Q8_0"
    # block format: uint8 [rows, row_bytes] = 576/32 blocks of 34 bytes per row
    a = smol.tensor_array("token_embd.weight")
    assert a.dtype == np.uint8 and a.shape == (49152, 18 * 34)
    assert isinstance(a, np.memmap) and not a.flags.writeable   # a view of the file, read-only
    w = smol.tensor_array("blk.0.attn_norm.weight")
    assert w.dtype == np.float32 and w.shape == (576,)
    assert np.isfinite(w).all() and np.abs(w).max() > 0
    q = smol.tensor_array("blk.0.attn_q.weight")             # Q4_1: 20 bytes / 32 values
    assert q.shape == (576, 18 * 20)
    assert len(smol.metadata["tokenizer.ggml.tokens"]) == 49152
    assert len(smol.metadata["tokenizer.ggml.merges"]) == 48900
    assert smol.metadata["tokenizer.ggml.tokens"][1] == "<|im_start|>"
    with pytest.raises(GGUFError, match="no.such.tensor"):
        smol.tensor_bytes("no.such.tensor")


def test_smollm2_config(smol):
    c = ModelConfig.from_gguf(smol)
    assert (c.arch, c.n_layer, c.n_embd, c.n_ff) == ("llama", 30, 576, 1536)
    assert (c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, c.n_rot) == (9, 3, 64, 64, 64)
    assert c.rope_type == "norm" and c.rope_freq_base == 100000.0 and c.rope_freq_scale == 1.0
    assert c.rms_eps == pytest.approx(1e-5) and c.n_ctx_train == 8192 and c.n_vocab == 49152
    assert c.tied_output and c.sliding_window == 0 and c.layer_is_swa == [False] * 30
    assert c.attn_scale == pytest.approx(1 / 8) and c.embed_scale == 1.0
    assert not (c.has_qk_norm or c.has_post_norms or c.has_rope_freqs)
    assert c.attn_softcap == 0.0 and c.final_softcap == 0.0


def test_gemma3_file_and_config(gemma):
    assert gemma.arch == "gemma3" and len(gemma.tensors) == 236
    toks = gemma.metadata["tokenizer.ggml.tokens"]
    assert len(toks) == 262144 and toks[2] == "<bos>" and toks[106] == "<end_of_turn>"
    assert len(gemma.metadata["tokenizer.ggml.scores"]) == 262144
    c = ModelConfig.from_gguf(gemma)
    assert (c.arch, c.n_layer, c.n_embd, c.n_ff) == ("gemma3", 18, 640, 2048)
    assert (c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v) == (4, 1, 256, 256)
    assert c.n_rot == 256 and c.rope_type == "neox"
    assert c.rope_freq_base == 1e6 and c.rope_freq_base_swa == 10000.0
    assert c.sliding_window == 512
    # pattern 6: every sixth layer (5, 11, 17) is global
    assert [il for il, s in enumerate(c.layer_is_swa) if not s] == [5, 11, 17]
    assert c.rope_freq_base_for(0) == 10000.0 and c.rope_freq_base_for(5) == 1e6
    assert c.window_for(0) == 512 and c.window_for(5) == 0
    assert c.attn_scale == pytest.approx(1 / 16)
    assert c.embed_scale == pytest.approx(math.sqrt(640))
    assert c.has_qk_norm and c.has_post_norms and c.tied_output
    assert c.n_vocab == 262144 and c.n_ctx_train == 32768
    # the Q/K norm tensors have the head dim
    assert gemma.tensor_array("blk.0.attn_q_norm.weight").shape == (256,)


# ---------------------------------------------------------------------- synthetic files

def test_tiny_values_round_trip(tiny_model):
    import gguf
    p = tiny_model(seed=3)
    gf = GGUFFile(p)
    # the writer drew the same values: regenerate and compare views with them
    rng = np.random.default_rng(3)
    names_shapes = [(n, t.shape) for n, t in gf.tensors.items()]
    for name, shape in names_shapes:
        arr = rng.standard_normal(shape).astype(np.float32)
        got = gf.tensor_array(name)
        if name == "blk.0.attn_q.weight":
            assert gf.tensors[name].type_name == "Q8_0"
            deq = gguf.quants.dequantize(np.asarray(got), gguf.GGMLQuantizationType.Q8_0)
            assert np.abs(deq - arr).max() < 0.05
        else:
            assert got.dtype == np.float32 and np.array_equal(got, arr), name


def test_plain_dtypes_views(tmp_path, craft):
    g = craft.RawGGUF()
    f16 = np.array([[1.5, -2.0], [0.25, 8.0]], dtype=np.float16)
    bf16_bits = np.array([0x3F80, 0xC000, 0x4040], dtype=np.uint16)  # 1.0, -2.0, 3.0
    i32 = np.array([7, -9, 11], dtype=np.int32)
    g.tensor("h", [2, 2], ggml_type=1, data=f16.tobytes())
    g.tensor("b", [3], ggml_type=30, data=bf16_bits.tobytes())
    g.tensor("i", [3], ggml_type=26, data=i32.tobytes())
    gf = GGUFFile(g.write(tmp_path / "d.gguf"))
    assert gf.tensor_array("h").dtype == np.float16 and np.array_equal(gf.tensor_array("h"), f16)
    b = gf.tensor_array("b")
    assert b.dtype == np.uint16
    as_f32 = (b.astype(np.uint32) << 16).view(np.float32)
    assert as_f32.tolist() == [1.0, -2.0, 3.0]
    assert gf.tensor_array("i").tolist() == [7, -9, 11]


def test_metadata_value_types(tmp_path, craft):
    g = craft.RawGGUF()
    T = craft
    g.kv("u8", T.T_U8, 200).kv("i8", T.T_I8, -5).kv("u16", T.T_U16, 60000).kv("i16", T.T_I16, -300)
    g.kv("u64", T.T_U64, 2**63 + 5).kv("i64", T.T_I64, -2**40).kv("f64", T.T_F64, 0.1)
    g.kv("b", T.T_BOOL, 1).kv("s", T.T_STR, "héllo").kv("empty", T.T_ARR, (T.T_I32, []))
    g.kv("bools", T.T_ARR, (T.T_BOOL, [1, 0, 1])).kv("i64s", T.T_ARR, (T.T_I64, [-1, 2**62]))
    gf = GGUFFile(g.write(tmp_path / "m.gguf"))
    md = gf.metadata
    assert (md["u8"], md["i8"], md["u16"], md["i16"]) == (200, -5, 60000, -300)
    assert md["u64"] == 2**63 + 5 and md["i64"] == -2**40 and md["f64"] == 0.1
    assert md["b"] is True and md["s"] == "héllo" and md["empty"] == []
    assert md["bools"] == [True, False, True] and md["i64s"] == [-1, 2**62]
    assert gf.tensors == {} and gf.n_params == 0


def test_alignment_key_respected(tmp_path, craft):
    g = craft.RawGGUF(alignment=64)
    g.kv("general.alignment", craft.T_U32, 64)
    g.tensor("x", [3])                # 12 bytes
    g.tensor("y", [5])                # next tensor at offset 64
    gf = GGUFFile(g.write(tmp_path / "a.gguf"))
    assert gf.alignment == 64 and gf.data_offset % 64 == 0
    assert gf.tensors["y"].offset - gf.tensors["x"].offset == 64
    assert gf.tensor_array("y").tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_gemma3_swa_pattern_keys(tiny_model):
    from gguf import GGUFValueType as V
    # an integer period: layers with il % 3 < 2 are local
    p = tiny_model("p.gguf", arch="gemma3", n_layer=7,
                   kv_overrides={"gemma3.attention.sliding_window_pattern": (V.UINT32, 3),
                                 "gemma3.rope.freq_base_swa": (V.FLOAT32, 5000.0)})
    c = ModelConfig.from_gguf(GGUFFile(p))
    assert c.layer_is_swa == [True, True, False, True, True, False, True]
    assert c.rope_freq_base_swa == 5000.0
    # an explicit per-layer bool array
    flags = [False, True, True, False]
    p = tiny_model("q.gguf", arch="gemma3", n_layer=4,
                   kv_overrides={"gemma3.attention.sliding_window_pattern": (V.ARRAY, flags, V.BOOL)})
    assert ModelConfig.from_gguf(GGUFFile(p)).layer_is_swa == flags
    # no sliding window at all
    p = tiny_model("r.gguf", arch="gemma3", n_layer=3,
                   kv_overrides={"gemma3.attention.sliding_window": (V.UINT32, 0)})
    c = ModelConfig.from_gguf(GGUFFile(p))
    assert c.layer_is_swa == [False] * 3 and c.sliding_window == 0


def test_gemma3_27b_attention_scale(tiny_model):
    # 62 layers is the 27B model, whose query scale uses n_embd / n_head, not head_dim
    p = tiny_model(arch="gemma3", n_layer=62, n_embd=32, n_head=2, n_head_kv=1, n_ff=32,
                   head_dim=32, quant=False)
    c = ModelConfig.from_gguf(GGUFFile(p))
    assert c.head_dim == 32 and c.attn_scale == pytest.approx(1 / 4)
    p = tiny_model("b.gguf", arch="gemma3", n_layer=5, n_embd=32, n_head=2, n_head_kv=1,
                   n_ff=32, head_dim=32, quant=False)
    assert ModelConfig.from_gguf(GGUFFile(p)).attn_scale == pytest.approx(1 / math.sqrt(32))


def test_llama_rope_scaling_and_per_layer_arrays(tiny_model):
    from gguf import GGUFValueType as V
    p = tiny_model(kv_overrides={
        "llama.rope.scaling.type": (V.STRING, "linear"),
        "llama.rope.scaling.factor": (V.FLOAT32, 4.0),
        "llama.attention.head_count": (V.ARRAY, [4, 4], V.UINT32)})
    c = ModelConfig.from_gguf(GGUFFile(p))
    assert c.rope_freq_scale == 0.25 and c.rope_scaling_type == "linear" and c.n_head == 4
    p = tiny_model("n.gguf", kv_overrides={"llama.rope.scaling.type": (V.STRING, "none"),
                                           "llama.rope.scaling.factor": (V.FLOAT32, 4.0)})
    assert ModelConfig.from_gguf(GGUFFile(p)).rope_freq_scale == 1.0


def test_untied_output_and_rope_freqs(tmp_path, tiny_model):
    p = tiny_model(tied=False, shape_overrides={"rope_freqs.weight": (8,)})
    c = ModelConfig.from_gguf(GGUFFile(p))
    assert not c.tied_output and c.has_rope_freqs
    assert c.expected_tensors()["output.weight"] == (40, 64)
