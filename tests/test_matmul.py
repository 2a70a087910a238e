"""CPU matmul and embed for every weight type, at every SIMD level this CPU has, against numpy.

Weights are made with gguf.quants.quantize from random floats where gguf can quantize the
type (F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1); for the 256-value formats it cannot (Q2_K
Q3_K Q4_K Q5_K Q6_K IQ4_XS), they are random bytes (every byte pattern is a valid block) with
sane fp16 scales. The reference is float64 numpy over gguf.quants.dequantize.

Tolerances (NMSE = sum((a - b)^2) / sum(b^2)):
  float weights (F32, F16, BF16): 1e-6 -- f32 accumulation of exact products.
  quantized weights: 1e-3 -- the kernels quantize the activations to 8 bits (one scale per
  32 values, or per 256 for K-quants, as llama.cpp does), which alone gives about 2e-5..1e-4.
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from llmetal import _engine as E

FLOAT_TYPES = [T.F32, T.F16, T.BF16]
Q32_TYPES = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
K_TYPES = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS]
ALL_TYPES = FLOAT_TYPES + Q32_TYPES + K_TYPES
TOL = {t: 1e-6 for t in FLOAT_TYPES} | {t: 1e-3 for t in Q32_TYPES + K_TYPES}


def simd_levels():
    """Every level this CPU can run: scalar, plus avx2 / avx512 / neon as supported."""
    best = E.best_simd()
    return {"avx512": ["scalar", "avx2", "avx512"], "avx2": ["scalar", "avx2"],
            "neon": ["scalar", "neon"]}.get(best, ["scalar"])


@pytest.fixture(params=simd_levels())
def simd(request):
    E.force_simd(request.param)
    yield request.param
    E.force_simd("best")


@pytest.fixture(scope="module")
def dev():
    return E.cpu_device(n_threads=2)


def make_weights(rng, t, n, k):
    """Weight matrix [n, k] in GGUF block format as uint8 [n, row_bytes]."""
    if t not in K_TYPES:
        w = quants.quantize(rng.standard_normal((n, k)).astype(np.float32), t)
        return np.ascontiguousarray(w).view(np.uint8).reshape(n, -1)
    block, block_bytes = E.type_block(int(t))
    raw = rng.integers(0, 256, (n, k // block, block_bytes), dtype=np.uint8)
    def f16s(lo, hi, n=1):   # n random float16 scales per block, as bytes
        return rng.uniform(lo, hi, raw.shape[:2] + (n,)).astype(np.float16).view(np.uint8)
    if t == T.Q6_K:  # {ql[128] qh[64] i8 scales[16] f16 d}
        raw[:, :, 192:208] = rng.integers(-64, 64, raw[:, :, 192:208].shape).astype(np.int8).view(np.uint8)
        raw[:, :, 208:210] = f16s(0.001, 0.01)
    elif t == T.Q2_K:  # {scales[16] qs[64] f16 d f16 dmin}
        raw[:, :, 80:84] = f16s(0.001, 0.01, 2)
    elif t == T.Q3_K:  # {hmask[32] qs[64] scales[12] f16 d}
        raw[:, :, 108:110] = f16s(0.001, 0.01)
    elif t == T.IQ4_XS:  # {f16 d; u16 scales_h; scales_l[4]; qs[128]}: values up to 32 * 127 d
        raw[:, :, 0:2] = f16s(0.0001, 0.001)
    else:  # Q4_K / Q5_K: {f16 d; f16 dmin; scales[12]; ...}
        raw[:, :, 0:4] = rng.uniform(0.001, 0.01, raw.shape[:2] + (2,)).astype(np.float16).view(np.uint8)
    return raw.reshape(n, -1)


def nmse(a, b):
    return float(((a - b) ** 2).sum() / (b ** 2).sum())


def shapes_for(t):
    """(M, K, N): M = 1 (decode), 3 (a partial 4-token tile), 17 (4 tiles + 1, or on x86 the
    unpacked-tile kernels: one token tile and a part, or two and a part), 40; K with odd
    block counts; N odd (rows left over after the groups of 4 or 8)."""
    block = E.type_block(int(t))[0]
    if block == 1:
        ks = [64, 100, 515]          # 515: not a multiple of the vector width
    elif block == 32:
        ks = [32, 96, 480, 512]      # 1, 3, 15 (8 + 7), 16 blocks (groups of 8 in wide kernels)
    else:
        ks = [256, 768]              # 1, 3 super-blocks
    return [(m, k, 35) for m in (1, 3, 17, 40) for k in ks]


@pytest.mark.parametrize("wtype", ALL_TYPES, ids=lambda t: t.name)
def test_matmul(dev, simd, wtype):
    rng = np.random.default_rng(1234 + int(wtype))
    for M, K, N in shapes_for(wtype):
        wq = make_weights(rng, wtype, N, K)
        ref_w = quants.dequantize(wq, wtype).astype(np.float64).reshape(N, K)
        x = rng.standard_normal((M, K)).astype(np.float32)
        pool = E.BufferPool(dev)
        pool.declare("W", int(wtype), [N, K]); pool.declare("x", 0, [M, K]); pool.declare("y", 0, [M, N])
        pool.reserve()
        W, X, Y = pool.get("W"), pool.get("x"), pool.get("y")
        W.upload(wq); X.upload(x)
        Y.upload(np.full((M, N), np.nan, np.float32))  # poison: unwritten outputs fail
        E.Encoder(dev, eager=True).matmul(W, X, Y)
        y = Y.to_numpy()
        ref = x.astype(np.float64) @ ref_w.T
        assert np.isfinite(y).all(), f"{wtype.name} {simd} M={M} K={K}: unwritten or non-finite outputs"
        err = nmse(y, ref)
        assert err <= TOL[wtype], f"{wtype.name} {simd} M={M} K={K} N={N}: NMSE {err:.2e} > {TOL[wtype]:.0e}"


@pytest.mark.parametrize("M", [5, 21])
def test_levels_differ_only_by_rounding(dev, M):
    """Each SIMD level computes the same integer dots as the scalar kernels: on the same
    quantized activations they agree to float rounding (much tighter than vs numpy).
    M = 5: the row-dot kernels; M = 21: batches on unpacked tiles (x86), 16 + 5 or 8 + 8 + 5
    tokens, 16 of the 19 rows in groups and 3 left to the row-dot kernels."""
    rng = np.random.default_rng(7)
    N = 19
    for wtype in ALL_TYPES:
        K = 512 if wtype in K_TYPES else 160
        wq = make_weights(rng, wtype, N, K)
        x = rng.standard_normal((M, K)).astype(np.float32)
        pool = E.BufferPool(dev)
        pool.declare("W", int(wtype), [N, K]); pool.declare("x", 0, [M, K]); pool.declare("y", 0, [M, N])
        pool.reserve()
        W, X, Y = pool.get("W"), pool.get("x"), pool.get("y")
        W.upload(wq); X.upload(x)
        outs = {}
        try:
            for level in simd_levels():
                E.force_simd(level)
                Y.upload(np.full((M, N), np.nan, np.float32))
                E.Encoder(dev, eager=True).matmul(W, X, Y)
                outs[level] = Y.to_numpy()
        finally:
            E.force_simd("best")
        for level, y in outs.items():
            err = nmse(y, outs["scalar"].astype(np.float64))
            assert err <= 1e-10, f"{wtype.name}: {level} vs scalar NMSE {err:.2e}"


@pytest.mark.parametrize("wtype", ALL_TYPES, ids=lambda t: t.name)
def test_batch_invariance(dev, simd, wtype):
    """A token's outputs are the same bits whatever batch it is in (Model.step's batches of
    several sequences rely on it): 40 tokens at once, then 1, 3, 8 and 20 at a time. On
    AVX-512 VNNI the groups of 16 rows take a different route for a few tokens than for many
    (cpp/cpu/gemm_x86.h: up to 8 or 32 tokens, slabs above); N = 37 leaves 5 rows to the row
    kernels."""
    rng = np.random.default_rng(55 + int(wtype))
    M, N = 40, 37
    K = 512 if wtype in K_TYPES else 224
    wq = make_weights(rng, wtype, N, K)
    x = rng.standard_normal((M, K)).astype(np.float32)

    def run(xs):
        pool = E.BufferPool(dev)
        pool.declare("W", int(wtype), [N, K]); pool.declare("x", 0, list(xs.shape))
        pool.declare("y", 0, [xs.shape[0], N])
        pool.reserve()
        pool.get("W").upload(wq); pool.get("x").upload(xs)
        pool.get("y").upload(np.full((xs.shape[0], N), np.nan, np.float32))
        E.Encoder(dev, eager=True).matmul(pool.get("W"), pool.get("x"), pool.get("y"))
        return pool.get("y").to_numpy()

    whole = run(x)
    assert np.isfinite(whole).all()
    for step in (1, 3, 8, 20):
        parts = np.vstack([run(x[i:i + step]) for i in range(0, M, step)])
        assert np.array_equal(parts, whole), f"{wtype.name} {simd}: batches of {step} differ from the batch of {M}"


@pytest.mark.parametrize("wtype", ALL_TYPES, ids=lambda t: t.name)
def test_embed(dev, wtype):
    rng = np.random.default_rng(99 + int(wtype))
    block = E.type_block(int(wtype))[0]
    vocab, dim = 23, max(block, 64) * 3
    wq = make_weights(rng, wtype, vocab, dim)
    ref_w = quants.dequantize(wq, wtype).astype(np.float32).reshape(vocab, dim)
    ids = np.array([0, 22, 5, 5, 17], np.int32)
    pool = E.BufferPool(dev)
    pool.declare("W", int(wtype), [vocab, dim]); pool.declare("ids", 26, [len(ids)])
    pool.declare("out", 0, [len(ids), dim])
    pool.reserve()
    W, I, O = pool.get("W"), pool.get("ids"), pool.get("out")
    W.upload(wq); I.upload(ids)
    O.upload(np.full((len(ids), dim), np.nan, np.float32))
    E.Encoder(dev, eager=True).embed(W, I, O, 1.0)
    out = O.to_numpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref_w[ids], rtol=1e-6, atol=1e-7)


def test_force_simd_restored():
    """The fixture above restores the best level; a level this CPU lacks is refused."""
    assert E.simd_level() == E.best_simd()
    with pytest.raises(Exception):
        E.force_simd("neon" if E.best_simd() != "neon" else "avx2")


@pytest.mark.parametrize("level", simd_levels())
def test_matmul_mapped_q8_0(tmp_path, level):
    """Q8_0 weights in a mapped (read-only) file: at the AVX-512 VNNI level the CPU device
    repacks them into 16-row groups at first use (N a multiple of 16) and keeps the copy.
    Checked against numpy and against the same weights uploaded (never repacked), on two
    files at once (two copies must not be confused), over two calls (the kept copy)."""
    rng = np.random.default_rng(4321)
    dev = E.cpu_device(n_threads=2)
    E.force_simd(level)
    try:
        for N in (48, 40):             # 40: not a multiple of 16, the GGUF layout is used
            for K in (32, 480, 512):
                ws = [make_weights(rng, T.Q8_0, N, K) for _ in range(2)]
                paths = []
                for i, wq in enumerate(ws):
                    p = tmp_path / f"w{N}_{K}_{i}.bin"
                    p.write_bytes(b"\0" * 96 + wq.tobytes())   # weights at an offset, as in a GGUF
                    paths.append(p)
                mapped = [E.Tensor(dev.map_file(str(p)), 96, int(T.Q8_0), [N, K]) for p in paths]
                for M in (1, 3, 17):
                    pool = E.BufferPool(dev)
                    pool.declare("W", int(T.Q8_0), [N, K]); pool.declare("x", 0, [M, K])
                    pool.declare("y", 0, [M, N])
                    pool.reserve()
                    W, X, Y = pool.get("W"), pool.get("x"), pool.get("y")
                    for i, wq in enumerate(ws):
                        W.upload(wq)
                        for call in range(2):
                            x = rng.standard_normal((M, K)).astype(np.float32)
                            X.upload(x)
                            Y.upload(np.full((M, N), np.nan, np.float32))
                            E.Encoder(dev, eager=True).matmul(W, X, Y)
                            y_up = Y.to_numpy()
                            Y.upload(np.full((M, N), np.nan, np.float32))
                            E.Encoder(dev, eager=True).matmul(mapped[i], X, Y)
                            y_map = Y.to_numpy()
                            ref = x.astype(np.float64) @ quants.dequantize(wq, T.Q8_0).astype(np.float64).T
                            what = f"{level} N={N} K={K} M={M} file {i} call {call}"
                            assert np.isfinite(y_map).all(), f"{what}: unwritten outputs"
                            assert nmse(y_map, ref) <= TOL[T.Q8_0], f"{what}: NMSE vs numpy {nmse(y_map, ref):.2e}"
                            err = nmse(y_map, y_up.astype(np.float64))
                            assert err <= 1e-10, f"{what}: mapped vs uploaded NMSE {err:.2e}"
    finally:
        E.force_simd("best")
