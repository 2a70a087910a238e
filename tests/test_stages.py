"""Every engine stage against llmetal.reference (numpy, float64) on fresh random inputs.

Each test draws its inputs from a generator seeded with LLMETAL_SEED (a fresh random seed
per run unless that variable is set) mixed with the test's id; the seed is printed in
every assertion message, so `LLMETAL_SEED=<seed> pytest ...` reproduces a failure.

Outputs are poisoned before every run (NaN, or a sentinel for in-place stages), and each
output is followed by a guard row that must come back untouched, so elements a kernel
forgets to write, and writes past the end, both fail.

Error measure: NMSE = sum((a - b)^2) / sum(b^2), b the float64 reference. Tolerances:

    stage        NMSE tol   why
    embed        exact      a row copy (times a float32 scale): no arithmetic to differ
    kv_store     exact      float32 -> float16 round-to-nearest-even, bit for bit
    add          1e-12      one float32 rounding per element: NMSE <= 2^-48 ~ 4e-15
    swiglu/      1e-11      exp/tanh in float32: a few ulps
      geglu
    rmsnorm      1e-11      float32 rows scaled by a float32 factor
    rope         1e-9       float32 sin/cos of angles up to ~1e3 rad (an angle computed in
                            float32, as ggml does, is off by ~1e-4 rad at pos 1000)
    matmul F32   1e-10      float32 dot products of up to ~1000 terms
    matmul F16   1e-6       leaves room for activations rounded to f16 (llama.cpp does)
    attention    1e-7       float32 scores and softmax
    attention    1e-6       the CUDA device's tensor-core kernel for prompts (16+ tokens, head
     (cuda, prompt)         size 64 / 128): q and the probabilities rounded to f16 (~1.3e-7 seen)
    attention_   1e-9       float32 scores (a few ulps of |s|, up to ~50 with softcap) and exp
     probs                  (a few ulps; CUDA's __expf and Metal's fast exp more): ~2e-12 seen
                            on the CPU and metal-emu
    argmax       exact      comparisons only: the ids of numpy's argmax (-1 for a row holding a
                            NaN or an infinity)

Matmul/embed for block-quantized weights are tested in tests/test_matmul.py.
"""
from __future__ import annotations

import os
import secrets
import zlib

import numpy as np
import pytest

from llmetal import _engine as E
from llmetal import reference as R

F32, F16, I32, BF16 = 0, 1, 26, 30

TOL = {
    "embed": 0.0,
    "kv_store": 0.0,
    "add": 1e-12,
    "swiglu": 1e-11, "geglu": 1e-11,
    "rmsnorm": 1e-11,
    "rope": 1e-9,
    "matmul_f32": 1e-10,
    "matmul_f16": 1e-6,
    "attention": 1e-7,
    "attention_tc": 1e-6,
    "attention_probs": 1e-9,
}

BASE_SEED = int(os.environ.get("LLMETAL_SEED") or secrets.randbits(31))


def rng_for(request) -> tuple[np.random.Generator, int]:
    """A generator for this test: the run's base seed mixed with the test id."""
    seed = (BASE_SEED ^ zlib.crc32(request.node.nodeid.encode())) & 0x7FFFFFFF
    return np.random.default_rng(seed), seed


def where(seed) -> str:
    return f"(LLMETAL_SEED={BASE_SEED}, test seed {seed})"


# ---- devices ----------------------------------------------------------------------------
def _device_params():
    params = ["cpu"]
    if "cuda" in E.build_info()["devices"]:
        params.append(pytest.param("cuda", marks=pytest.mark.cuda))
    return params


_DEVICES = {}


@pytest.fixture(params=_device_params())
def device(request):
    """The device under test; one per kind for the whole session (thread pools are costly).

    The CPU device gets 3 threads so that work splits unevenly over them."""
    kind = request.param
    if kind not in _DEVICES:
        if kind == "cpu":
            _DEVICES[kind] = E.cpu_device(3)
        else:
            try:   # a CUDA build on a machine without a GPU (CI) skips, saying why
                _DEVICES[kind] = E.cuda_device(0)
            except ValueError as e:
                _DEVICES[kind] = e
    if isinstance(_DEVICES[kind], Exception):
        pytest.skip(f"no usable {kind} device: {_DEVICES[kind]}")
    return _DEVICES[kind]


# ---- a small harness: pool, upload, poisoned outputs with guard rows --------------------
class Rig:
    """A buffer pool holding the inputs and outputs of one stage call.

    `inputs`: name -> numpy array (uploaded as F32/F16/I32 by dtype, or (type, array) for
    raw bytes); `outputs`: name -> (type, shape). Each output gets one extra guard row; all
    of it is poisoned (NaN; POISON_I32 for an I32 output) before the run, and `out(name)`
    checks that the guard row is still poisoned and that every real element was written.
    """

    def __init__(self, dev, inputs: dict, outputs: dict):
        self.dev, self.pool = dev, E.BufferPool(dev)
        self.shapes = {}
        arrays = {}
        for name, a in inputs.items():
            if isinstance(a, tuple):   # (type, Raw bytes) of a weight
                t, a = a
                shape = a.shape_logical
            else:
                t, shape = _type_of(a), list(a.shape)
            self.pool.declare(name, t, shape)
            arrays[name] = np.ascontiguousarray(a)
        for name, (t, shape) in outputs.items():
            shape = list(shape)
            self.shapes[name] = shape
            self.pool.declare(name + "#full", t, [shape[0] + 1] + shape[1:])
        self.pool.reserve()
        for name, a in arrays.items():
            self.pool.get(name).upload(a)
        for name in outputs:
            full = self.pool.get(name + "#full")
            full.upload(np.full(full.shape, POISON_I32 if full.type == I32 else np.nan, _np_dtype(full.type)))

    def __getitem__(self, name):
        if name in self.shapes:
            return self.pool.get(name + "#full").rows(0, self.shapes[name][0])
        return self.pool.get(name)

    def out(self, name, seed, stage):
        full = self.pool.get(name + "#full").to_numpy()
        n = self.shapes[name][0]
        if full.dtype == np.int32:
            assert np.all(full[n:] == POISON_I32), f"{stage}: wrote past the end of its output {where(seed)}"
            unwritten = full[:n] == POISON_I32
            assert not unwritten.any(), (f"{stage}: {int(unwritten.sum())} of {unwritten.size} outputs not "
                                         f"written, first at {np.argwhere(unwritten)[0].tolist()} {where(seed)}")
            return full[:n]
        assert np.all(np.isnan(full[n:].astype(np.float32))), \
            f"{stage}: wrote past the end of its output {where(seed)}"
        got = full[:n]
        bad = ~np.isfinite(got.astype(np.float32))
        assert not bad.any(), (f"{stage}: {int(bad.sum())} of {got.size} outputs not finite "
                               f"(unwritten?), first at {np.argwhere(bad)[0].tolist()} {where(seed)}")
        return got


POISON_I32 = -0x5EEDBAD   # an I32 output's poison: no stage writes this value


class Raw(np.ndarray):
    """uint8 bytes of a block- or float-format weight, with its logical [rows, n] shape."""


def raw_weight(t: int, W: np.ndarray):
    """(type, bytes) for a float32 weight stored as F32, F16 or BF16."""
    if t == F32:
        b = W.astype(np.float32).view(np.uint8)
    elif t == F16:
        b = W.astype(np.float16).view(np.uint8)
    elif t == BF16:   # round to nearest even on the top 16 bits
        u = W.astype(np.float32).view(np.uint32).astype(np.uint64)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        b = u.view(np.uint8)
    else:
        raise ValueError(t)
    r = b.view(Raw)
    r.shape_logical = list(W.shape)
    return t, r


def _type_of(a):
    return {np.dtype(np.float32): F32, np.dtype(np.float16): F16, np.dtype(np.int32): I32}[a.dtype]


def _np_dtype(t):
    return {F32: np.float32, F16: np.float16, I32: np.int32}[t]


def encoder(dev, pos0=0, n_tokens=1):
    dev.set_step(pos0, n_tokens)
    return E.Encoder(dev, eager=True)


def check(stage, got, ref, seed, what="", tol=None):
    tol = TOL[stage] if tol is None else tol
    e = R.nmse(got, ref)
    assert e <= tol, f"{stage} {what}: NMSE {e:.3g} > {tol:g} {where(seed)}"
    return e


# ---- embed ------------------------------------------------------------------------------
@pytest.mark.parametrize("wtype", [F32, F16, BF16])
@pytest.mark.parametrize("n_vocab,dim,T,scale", [(50, 64, 1, 1.0), (101, 77, 9, 1.0),
                                                   (300, 640, 33, float(np.sqrt(640)))])
def test_embed(device, request, wtype, n_vocab, dim, T, scale):
    rng, seed = rng_for(request)
    W = rng.standard_normal((n_vocab, dim)).astype(np.float32)
    ids = rng.integers(0, n_vocab, T).astype(np.int32)
    ids[0] = n_vocab - 1          # the last row of the table
    if T > 2:
        ids[1] = 0
        ids[2] = ids[0]           # a repeated id
    rig = Rig(device, {"W": raw_weight(wtype, W), "ids": ids}, {"out": (F32, (T, dim))})
    encoder(device, 0, T).embed(rig["W"], rig["ids"], rig["out"], scale)
    got = rig.out("out", seed, "embed")
    t, raw = raw_weight(wtype, W)
    Wd = R.dequantize(raw.view(np.ndarray), t, W.shape)
    # one float32 product per element: compare with the float32-rounded reference exactly
    ref = R.embed(Wd, None, ids, scale).astype(np.float32)
    check("embed", got, ref, seed, f"type {wtype} [{n_vocab},{dim}] T={T}")


def test_embed_rejects_ids_outside_vocab(device):
    W = np.zeros((10, 32), np.float32)
    rig = Rig(device, {"W": W, "ids": np.array([3, 10], np.int32)}, {"out": (F32, (2, 32))})
    with pytest.raises(ValueError, match="outside the vocabulary"):
        encoder(device, 0, 2).embed(rig["W"], rig["ids"], rig["out"])


# ---- rmsnorm ----------------------------------------------------------------------------
@pytest.mark.parametrize("rows,dim,eps,mag", [(1, 64, 1e-5, 1.0), (7, 576, 1e-6, 1.0),
                                              (5, 17, 1e-5, 1e3), (12, 333, 1e-6, 1e-3),
                                              (40, 256, 1e-6, 1.0)])
def test_rmsnorm(device, request, rows, dim, eps, mag):
    rng, seed = rng_for(request)
    x = (rng.standard_normal((rows, dim)) * mag).astype(np.float32)
    w = (1 + 0.5 * rng.standard_normal(dim)).astype(np.float32)
    rig = Rig(device, {"x": x, "w": w}, {"out": (F32, (rows, dim))})
    encoder(device).rmsnorm(rig["x"], rig["w"], rig["out"], eps)
    got = rig.out("out", seed, "rmsnorm")
    check("rmsnorm", got, R.rmsnorm(x, w, eps), seed, f"[{rows},{dim}] eps={eps} |x|~{mag}")


def test_rmsnorm_per_head(device, request):
    """Q/K norm: rows = tokens * heads, one weight of head_dim shared by every head."""
    rng, seed = rng_for(request)
    T, H, hd = 6, 5, 64
    x = rng.standard_normal((T, H, hd)).astype(np.float32)
    w = rng.standard_normal(hd).astype(np.float32)
    rig = Rig(device, {"x": x.reshape(T * H, hd), "w": w}, {"out": (F32, (T * H, hd))})
    encoder(device).rmsnorm(rig["x"], rig["w"], rig["out"], 1e-6)
    got = rig.out("out", seed, "rmsnorm").reshape(T, H, hd)
    ref = R.rmsnorm(x, w, 1e-6)
    check("rmsnorm", got, ref, seed, "per head")


# ---- matmul / logits (F32, F16; quant types in test_matmul.py) ------------------------------
def _simd_levels():
    best = E.best_simd()
    order = {"scalar": ["scalar"], "avx2": ["scalar", "avx2"], "avx512": ["scalar", "avx2", "avx512"],
             "neon": ["scalar", "neon"]}
    return order.get(best, ["scalar", best])


@pytest.fixture(params=_simd_levels())
def simd(request, device):
    """Each SIMD level this CPU has (the level only matters to the CPU device)."""
    E.force_simd(request.param)
    yield request.param
    E.force_simd("best")


@pytest.mark.parametrize("wtype", [F32, F16])
@pytest.mark.parametrize("M,K,N", [(1, 64, 32), (7, 96, 33), (3, 17, 5), (16, 576, 100),
                                   (1, 1024, 7), (33, 160, 64)])
def test_matmul(device, simd, request, wtype, M, K, N):
    rng, seed = rng_for(request)
    W = rng.standard_normal((N, K)).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    rig = Rig(device, {"W": raw_weight(wtype, W), "x": x}, {"y": (F32, (M, N))})
    encoder(device).matmul(rig["W"], rig["x"], rig["y"])
    got = rig.out("y", seed, "matmul")
    t, raw = raw_weight(wtype, W)
    ref = R.matmul(raw.view(np.ndarray), x, wtype=t, shape=W.shape)
    check("matmul_f32" if wtype == F32 else "matmul_f16", got, ref, seed,
          f"type {wtype} M={M} K={K} N={N} simd={simd}")


@pytest.mark.parametrize("wtype", [F32, F16])
def test_logits(device, request, wtype):
    """The output projection: a wide weight (many rows), one and several tokens."""
    rng, seed = rng_for(request)
    V, D = 1000, 64
    W = rng.standard_normal((V, D)).astype(np.float32)
    for T in (1, 5):
        x = rng.standard_normal((T, D)).astype(np.float32)
        rig = Rig(device, {"W": raw_weight(wtype, W), "x": x}, {"y": (F32, (T, V))})
        encoder(device).logits(rig["W"], rig["x"], rig["y"])
        got = rig.out("y", seed, "logits")
        t, raw = raw_weight(wtype, W)
        ref = R.logits(raw.view(np.ndarray), x, wtype=t, shape=W.shape)
        check("matmul_f32" if wtype == F32 else "matmul_f16", got, ref, seed, f"logits T={T}")


# ---- rope -------------------------------------------------------------------------------
ROPE_CASES = [
    # n_heads, head_dim, n_rot, mode, base, freq_scale, factors?, T, pos0
    (4, 64, 64, R.ROPE_NORM, 10000.0, 1.0, False, 1, 0),        # llama, first token
    (9, 64, 64, R.ROPE_NORM, 100000.0, 1.0, False, 7, 13),      # SmolLM2-like
    (3, 64, 32, R.ROPE_NORM, 10000.0, 1.0, False, 5, 990),      # partial rotary, long ctx
    (4, 256, 256, R.ROPE_NEOX, 1000000.0, 1.0, False, 3, 1000),  # gemma3 global layers
    (4, 256, 256, R.ROPE_NEOX, 10000.0, 1.0, False, 17, 0),      # gemma3 local layers
    (5, 80, 80, R.ROPE_NEOX, 10000.0, 1.0, False, 4, 500),       # head dim 80
    (5, 80, 40, R.ROPE_NEOX, 10000.0, 0.25, False, 6, 777),      # partial + linear scaling
    (8, 128, 128, R.ROPE_NORM, 500000.0, 1.0, True, 9, 300),     # llama-3 freq factors
    (2, 64, 48, R.ROPE_NORM, 10000.0, 0.5, True, 2, 64),         # factors + scaling + partial
    # long runs: each thread's tables after the first are its previous ones rotated by a step
    (1, 256, 256, R.ROPE_NEOX, 1000000.0, 1.0, False, 300, 3700),
    (2, 128, 128, R.ROPE_NORM, 500000.0, 1.0, True, 257, 0),
]


@pytest.mark.parametrize("H,hd,n_rot,mode,base,fscale,with_ff,T,pos0", ROPE_CASES)
def test_rope(device, request, H, hd, n_rot, mode, base, fscale, with_ff, T, pos0):
    rng, seed = rng_for(request)
    x = rng.standard_normal((T, H * hd)).astype(np.float32)
    ff = rng.uniform(1.0, 8.0, n_rot // 2).astype(np.float32) if with_ff else None
    sentinel = np.float32(12345.0)
    inputs = {"x": np.vstack([x, np.full((1, H * hd), sentinel, np.float32)])}
    if with_ff:
        inputs["ff"] = ff
    rig = Rig(device, inputs, {})
    xt = rig["x"].rows(0, T)
    encoder(device, pos0, T).rope(xt, H, n_rot, mode, base, fscale, rig["ff"] if with_ff else None)
    full = rig["x"].to_numpy()
    what = f"H={H} hd={hd} n_rot={n_rot} mode={mode} base={base} scale={fscale} ff={with_ff} T={T} pos0={pos0}"
    assert np.all(full[T] == sentinel), f"rope wrote past its tensor {where(seed)}"
    got = full[:T]
    # dims beyond n_rot pass through untouched, bit for bit
    assert np.array_equal(got.reshape(T, H, hd)[..., n_rot:], x.reshape(T, H, hd)[..., n_rot:]), \
        f"rope changed the dims beyond n_rot: {what} {where(seed)}"
    ref = R.rope(x, H, n_rot, mode, base, fscale, pos0, ff)
    check("rope", got, ref, seed, what)


def test_rope_reference_properties(request):
    """The reference itself, by properties that hold whatever the implementation:
    position 0 is the identity, rotation keeps each pair's length, and q.k after rope
    depends only on the distance between the two positions (the point of rope)."""
    rng, seed = rng_for(request)
    H, hd = 2, 64
    for mode in (R.ROPE_NORM, R.ROPE_NEOX):
        x = rng.standard_normal((1, H * hd))
        assert np.allclose(R.rope(x, H, hd, mode, 10000.0, 1.0, 0), x), where(seed)
        y = R.rope(x, H, hd, mode, 10000.0, 1.0, 37)
        assert np.isclose(np.linalg.norm(y), np.linalg.norm(x)), where(seed)
        q, k = rng.standard_normal((1, hd)), rng.standard_normal((1, hd))
        d1 = R.rope(q, 1, hd, mode, 10000.0, 1.0, 100) @ R.rope(k, 1, hd, mode, 10000.0, 1.0, 90).T
        d2 = R.rope(q, 1, hd, mode, 10000.0, 1.0, 510) @ R.rope(k, 1, hd, mode, 10000.0, 1.0, 500).T
        assert np.isclose(d1, d2), where(seed)
    # the pairs themselves: "norm" rotates (0, 1), "neox" rotates (0, hd/2), by pos * 1
    e0 = np.zeros((1, hd)); e0[0, 0] = 1
    n = R.rope(e0, 1, hd, R.ROPE_NORM, 10000.0, 1.0, 1)
    assert np.isclose(n[0, 0], np.cos(1)) and np.isclose(n[0, 1], np.sin(1))
    n = R.rope(e0, 1, hd, R.ROPE_NEOX, 10000.0, 1.0, 1)
    assert np.isclose(n[0, 0], np.cos(1)) and np.isclose(n[0, hd // 2], np.sin(1))


# ---- kv_store ---------------------------------------------------------------------------
def _wide_range_f32(rng, shape):
    """Values over the whole float16 range and beyond: subnormals, exact ties, overflow."""
    e = rng.uniform(-27, 17, shape)
    x = np.sign(rng.standard_normal(shape)) * np.exp2(e)
    x = x.astype(np.float32)
    flat = x.reshape(-1)
    # exact ties between two halves (round to even), the largest half, and beyond it
    specials = np.array([1 + 2 ** -11, 1 + 3 * 2 ** -11, 65504, 65519.99, 65520, 1e6,
                         2 ** -24, 2 ** -25, 3 * 2 ** -25, 2 ** -26, 0.0, -0.0], np.float32)
    flat[: specials.size] = specials
    return x


@pytest.mark.parametrize("n_ctx,kv_dim,T,pos0", [(8, 64, 1, 0), (40, 192, 7, 11),
                                                 (1100, 256, 3, 1000), (64, 80, 64, 0)])
def test_kv_store(device, simd, request, n_ctx, kv_dim, T, pos0):
    rng, seed = rng_for(request)
    src = _wide_range_f32(rng, (T, kv_dim))
    cache0 = np.full((n_ctx, kv_dim), np.nan, np.float16)   # rows not written stay NaN
    rig = Rig(device, {"src": src, "cache": cache0}, {})
    encoder(device, pos0, T).kv_store(rig["src"], rig["cache"])
    got = rig["cache"].to_numpy()
    ref = R.kv_store(cache0, src, pos0)
    what = f"n_ctx={n_ctx} kv_dim={kv_dim} T={T} pos0={pos0} simd={simd}"
    outside = np.ones(n_ctx, bool)
    outside[pos0:pos0 + T] = False
    assert np.all(np.isnan(got[outside])), f"kv_store wrote outside rows {pos0}..{pos0 + T}: {what} {where(seed)}"
    g, r = got[pos0:pos0 + T].view(np.uint16), ref[pos0:pos0 + T].view(np.uint16)
    bad = np.argwhere(g != r)
    assert bad.size == 0, (f"kv_store: {len(bad)} values differ from float16 rounding, e.g. "
                           f"{src[tuple(bad[0])]!r} -> {g[tuple(bad[0])]:#06x}, want {r[tuple(bad[0])]:#06x}: "
                           f"{what} {where(seed)}")


def test_kv_store_rejects_positions_past_context(device):
    rig = Rig(device, {"src": np.zeros((3, 16), np.float32), "cache": np.zeros((8, 16), np.float16)}, {})
    with pytest.raises(ValueError, match="exceed the context"):
        encoder(device, 6, 3).kv_store(rig["src"], rig["cache"])


# ---- attention --------------------------------------------------------------------------
ATTN_CASES = [
    # n_heads, n_kv_heads, head_dim, T, pos0, window, softcap
    (4, 4, 64, 1, 0, 0, 0.0),          # first token: attends to itself only
    (9, 3, 64, 1, 40, 0, 0.0),         # SmolLM2-like GQA 3, decode
    (8, 2, 64, 7, 100, 0, 0.0),        # GQA 4, small batch
    (4, 1, 256, 3, 1000, 0, 0.0),      # MQA, gemma3 head dim, long context
    (6, 2, 80, 33, 0, 0, 0.0),         # prefill, head dim 80
    (12, 4, 64, 16, 990, 0, 0.0),      # prefill continuing a long context
    (4, 1, 256, 5, 600, 128, 0.0),     # sliding window, window < context
    (4, 2, 64, 9, 3, 4, 0.0),          # window shorter than the batch
    (2, 2, 64, 6, 10, 1, 0.0),         # window 1: each query sees only its own row
    (8, 4, 64, 4, 200, 0, 30.0),       # logit softcap (gemma2-style)
    (3, 3, 80, 2, 513, 512, 50.0),     # window + softcap
    (32, 8, 128, 70, 30, 0, 0.0),      # prompt, llama3-8b heads: two query tiles on GPUs
]


@pytest.mark.parametrize("H,KV,hd,T,pos0,window,softcap", ATTN_CASES)
def test_attention(device, simd, request, H, KV, hd, T, pos0, window, softcap):
    rng, seed = rng_for(request)
    n_ctx = pos0 + T + 5
    kv_dim = KV * hd
    # scores with a spread of a few units, so the softmax is neither flat nor one-hot
    q = (rng.standard_normal((T, H * hd)) * 2.0).astype(np.float32)
    K = rng.standard_normal((n_ctx, kv_dim)).astype(np.float16)
    V = rng.standard_normal((n_ctx, kv_dim)).astype(np.float16)
    # rows no query may see are NaN: reading one makes the output NaN
    K[pos0 + T:] = V[pos0 + T:] = np.nan
    if window > 0 and pos0 - window + 1 > 0:
        K[:pos0 - window + 1] = V[:pos0 - window + 1] = np.nan
    scale = 1.0 / np.sqrt(hd)
    if softcap:
        q *= 8   # large scores, so the cap matters
    rig = Rig(device, {"q": q, "K": K, "V": V}, {"out": (F32, (T, H * hd))})
    encoder(device, pos0, T).attention(rig["q"], rig["K"], rig["V"], rig["out"], H, KV, scale,
                                       window, softcap)
    got = rig.out("out", seed, "attention")
    ref = R.attention(q, K, V, H, KV, pos0, scale, window, softcap)
    tc = device.name == "cuda" and T >= 16 and hd in (64, 128)
    check("attention", got, ref, seed,
          f"H={H} KV={KV} hd={hd} T={T} pos0={pos0} window={window} softcap={softcap} simd={simd}",
          TOL["attention_tc"] if tc else None)


@pytest.mark.parametrize("T", [1, 24])
def test_attention_large_biased_keys(device, simd, request, T):
    """Keys shaped like Qwen2.5's (its first layer): a K bias of 60-150 in the slowest-turning
    rotary pairs, which rope barely turns, so every key shares it; a few units elsewhere; a
    variation of 0.5 between tokens. Queries share the bias's sign there, so the scores sit at
    50-160 with a spread of ~10 in each row: exp(score) overflows float32 unless the row's max
    is subtracted first, and scores accumulated in f16 (step 0.125 at 128) are off by whole
    percent of a probability. The reference reads the same f16 cache, so what is measured is
    the stage's arithmetic (the cache's rounding of these keys is ~4e-5 by itself)."""
    rng, seed = rng_for(request)
    H, KV, hd, pos0 = 4, 2, 64, 40
    n_ctx = pos0 + T
    slow = np.r_[hd // 2 - 4:hd // 2, hd - 4:hd]        # neox pairs (i, i + hd/2), i = 28..31
    sign = rng.choice([-1.0, 1.0], (KV, hd))
    kb = rng.standard_normal((KV, hd)) * 3.0
    kb[:, slow] = sign[:, slow] * rng.uniform(60, 150, (KV, slow.size))
    k = (kb + 0.5 * rng.standard_normal((n_ctx, KV, hd))).reshape(n_ctx, KV * hd)
    qb = rng.standard_normal((H, hd)) * 2.0
    qb[:, slow] = sign[np.arange(H) // (H // KV)][:, slow] * rng.uniform(0.5, 1.5, (H, slow.size))
    q = (qb + 0.5 * rng.standard_normal((T, H, hd))).reshape(T, H * hd)
    K = R.rope(k, KV, hd, R.ROPE_NEOX, 1e6, 1.0, 0).astype(np.float16)
    q = R.rope(q, H, hd, R.ROPE_NEOX, 1e6, 1.0, pos0).astype(np.float32)
    V = rng.standard_normal((n_ctx, KV * hd)).astype(np.float16)
    scale = 1.0 / np.sqrt(hd)
    Kg = K.astype(np.float64).reshape(n_ctx, KV, hd)[:, np.arange(H) // (H // KV)]   # each query head's keys
    s = np.einsum("thd,jhd->thj", q.reshape(T, H, hd), Kg) * scale
    assert s.max() > 89, "the inputs must make exp(score) overflow float32"
    rig = Rig(device, {"q": q, "K": K, "V": V}, {"out": (F32, (T, H * hd))})
    encoder(device, pos0, T).attention(rig["q"], rig["K"], rig["V"], rig["out"], H, KV, scale, 0, 0.0)
    got = rig.out("out", seed, "attention")
    ref = R.attention(q, K, V, H, KV, pos0, scale)
    tc = device.name == "cuda" and T >= 16
    check("attention", got, ref, seed, f"Qwen-like keys T={T} simd={simd}", TOL["attention_tc"] if tc else None)


def test_attention_reference_properties(request):
    """The reference by hand-checkable cases: a zero query averages the visible V rows
    uniformly (so causality and the window are visible in the result); GQA picks KV head
    h // group; the softcap bounds the scores."""
    rng, seed = rng_for(request)
    H, KV, hd, n_ctx = 4, 2, 8, 12
    K = rng.standard_normal((n_ctx, KV * hd))
    V = rng.standard_normal((n_ctx, KV * hd))
    q = np.zeros((3, H * hd))
    out = R.attention(q, K, V, H, KV, 5, 1.0).reshape(3, H, hd)
    for t in range(3):
        for h in range(H):
            g = h // 2
            want = V[: 5 + t + 1, g * hd:(g + 1) * hd].mean(axis=0)
            assert np.allclose(out[t, h], want), where(seed)
    out = R.attention(q, K, V, H, KV, 5, 1.0, window=3).reshape(3, H, hd)
    assert np.allclose(out[0, 3], V[3:6, hd:].mean(axis=0)), where(seed)
    # a huge score without cap picks one row; with a cap of 1 the weights stay mixed.
    # Row 0 is made 10x longer than the other visible rows so that, by Cauchy-Schwarz, its
    # score beats theirs for every seed (a random K[j] can otherwise outscore K[0]).
    K[0, :hd] *= 10 * np.linalg.norm(K[1:4, :hd], axis=1).max() / np.linalg.norm(K[0, :hd])
    qq = np.zeros((1, H * hd)); qq[0, :hd] = 1e3 * K[0, :hd]
    o1 = R.attention(qq, K, V, H, KV, 3, 1.0).reshape(H, hd)
    assert np.allclose(o1[0], V[0, :hd]), where(seed)
    o2 = R.attention(qq, K, V, H, KV, 3, 1.0, softcap=1.0).reshape(H, hd)
    assert not np.allclose(o2[0], V[0, :hd]), where(seed)


# ---- attention probabilities ----------------------------------------------------------------
PROBS_CASES = [
    # n_heads, n_kv_heads, head_dim, T, pos0, window, softcap
    (4, 4, 64, 1, 0, 0, 0.0),          # first token: one key, probability 1
    (9, 3, 64, 1, 40, 0, 0.0),         # SmolLM2-like GQA 3, decode
    (8, 2, 64, 7, 100, 0, 0.0),        # GQA 4, a batch continuing a context
    (4, 1, 256, 3, 300, 0, 0.0),       # MQA, gemma3 head dim
    (6, 2, 80, 33, 0, 0, 0.0),         # a prompt, head dim 80
    (4, 1, 256, 5, 200, 128, 0.0),     # sliding window (gemma3 local layers), window < context
    (4, 2, 64, 9, 3, 4, 0.0),          # window shorter than the batch
    (2, 2, 64, 6, 10, 1, 0.0),         # window 1: each query sees only its own row
    (8, 4, 64, 4, 200, 0, 30.0),       # logit softcap
    (3, 3, 80, 2, 513, 512, 50.0),     # window + softcap
    (66, 1, 16, 3, 5, 0, 0.0),         # 66 query heads a KV head: the CPU's scalar path
]


def probs_inputs(rng, H, KV, hd, T, pos0, window, softcap, spare=5):
    """q [T, H*hd] (scores a few units apart; 8x larger with a softcap, so the cap matters) and
    a K cache of pos0 + T + spare rows whose rows no query may read are NaN."""
    q = (rng.standard_normal((T, H * hd)) * (16.0 if softcap else 2.0)).astype(np.float32)
    K = rng.standard_normal((pos0 + T + spare, KV * hd)).astype(np.float16)
    K[pos0 + T:] = np.nan
    if window > 0 and pos0 - window + 1 > 0:
        K[:pos0 - window + 1] = np.nan
    return q, K


def visible_keys(T, pos0, window, n_keys):
    """[T, n_keys] bool: the keys each query of the batch attends to."""
    j = np.arange(n_keys)[None, :]
    p = pos0 + np.arange(T)[:, None]
    m = j <= p
    if window > 0:
        m &= j > p - window
    return m


@pytest.mark.parametrize("H,KV,hd,T,pos0,window,softcap", PROBS_CASES)
def test_attention_probs(device, simd, request, H, KV, hd, T, pos0, window, softcap):
    """out [H, T, pos0 + T] against the reference; every row sums to 1, every key the query
    does not attend to (later positions, outside the window) is exactly 0. NaN rows of K mark
    the keys no query may read."""
    rng, seed = rng_for(request)
    n_keys = pos0 + T
    q, K = probs_inputs(rng, H, KV, hd, T, pos0, window, softcap)
    scale = 1.0 / np.sqrt(hd)
    rig = Rig(device, {"q": q, "K": K}, {"out": (F32, (H, T, n_keys))})
    encoder(device, pos0, T).attention_probs(rig["q"], rig["K"], rig["out"], H, KV, scale, window, softcap)
    what = f"H={H} KV={KV} hd={hd} T={T} pos0={pos0} window={window} softcap={softcap} simd={simd}"
    got = rig.out("out", seed, "attention_probs")
    ref = R.attention_probs(q, K, H, KV, pos0, scale, window, softcap, n_keys)
    check("attention_probs", got, ref, seed, what)
    vis = np.broadcast_to(visible_keys(T, pos0, window, n_keys), got.shape)
    assert np.all(got[~vis] == 0.0), f"attention_probs {what}: a key the query does not read is not 0 {where(seed)}"
    assert np.all(got[vis] >= 0.0), f"attention_probs {what}: negative probability {where(seed)}"
    sums = got.astype(np.float64).sum(axis=-1)
    assert np.abs(sums - 1).max() <= 1e-5, \
        f"attention_probs {what}: rows sum to {sums.min()}..{sums.max()} {where(seed)}"


def test_attention_probs_weight_v_as_attention_does(device, request):
    """The probabilities are the ones the attention stage uses: probs @ V equals attention's
    output on the same q, K, V (up to the float32 order of the sums)."""
    rng, seed = rng_for(request)
    H, KV, hd, T, pos0, window = 8, 2, 64, 5, 37, 20
    n_ctx = pos0 + T + 3
    q = (rng.standard_normal((T, H * hd)) * 2.0).astype(np.float32)
    K = rng.standard_normal((n_ctx, KV * hd)).astype(np.float16)
    V = rng.standard_normal((n_ctx, KV * hd)).astype(np.float16)
    rig = Rig(device, {"q": q, "K": K, "V": V}, {"out": (F32, (T, H * hd)), "p": (F32, (H, T, pos0 + T))})
    enc = encoder(device, pos0, T)
    enc.attention(rig["q"], rig["K"], rig["V"], rig["out"], H, KV, 0.125, window)
    enc.attention_probs(rig["q"], rig["K"], rig["p"], H, KV, 0.125, window)
    out, P = rig.out("out", seed, "attention"), rig.out("p", seed, "attention_probs").astype(np.float64)
    Vg = V[:pos0 + T].astype(np.float64).reshape(pos0 + T, KV, hd)[:, np.arange(H) // (H // KV), :]
    mixed = np.einsum("htj,jhd->thd", P, Vg).reshape(T, H * hd)
    check("attention_probs", out, mixed, seed, "probs @ V vs attention")


def test_attention_probs_reference_by_hand():
    """A zero query spreads its probability evenly over the keys it reads; GQA, the window
    and n_keys beyond the batch's last key (zeros) as documented."""
    H, KV, hd, pos0, T = 4, 2, 8, 3, 2
    K = np.arange(10 * KV * hd, dtype=np.float64).reshape(10, KV * hd)
    P = R.attention_probs(np.zeros((T, H * hd)), K, H, KV, pos0, 1.0)
    assert P.shape == (H, T, pos0 + T)
    assert np.allclose(P[:, 0, :4], 0.25) and np.all(P[:, 0, 4:] == 0) and np.allclose(P[:, 1], 0.2)
    P = R.attention_probs(np.zeros((T, H * hd)), K, H, KV, pos0, 1.0, window=2, n_keys=7)
    assert P.shape == (H, T, 7)
    assert np.allclose(P[:, 0, 2:4], 0.5) and np.allclose(P[:, 1, 3:5], 0.5) and P.sum() == pytest.approx(H * T)
    with pytest.raises(ValueError, match="n_keys"):
        R.attention_probs(np.zeros((T, H * hd)), K, H, KV, pos0, 1.0, n_keys=4)


def test_attention_probs_rejects_bad_shapes_and_positions(device):
    H, KV, hd, T = 4, 2, 16, 3
    rig = Rig(device, {"q": np.zeros((T, H * hd), np.float32), "K": np.zeros((10, KV * hd), np.float16),
                       "K32": np.zeros((10, KV * hd), np.float32)},
              {"o5": (F32, (H, T, 5)), "o6": (F32, (H, T, 6)), "flat": (F32, (T, H, 5)),
               "o11": (F32, (H, T, 11))})
    enc = encoder(device, 2, T)
    with pytest.raises(ValueError, match=r"out must be \[n_heads, T, n_keys\]"):
        enc.attention_probs(rig["q"], rig["K"], rig["flat"], H, KV, 0.25)
    with pytest.raises(ValueError, match="K cache must be F16"):
        enc.attention_probs(rig["q"], rig["K32"], rig["o5"], H, KV, 0.25)
    with pytest.raises(ValueError, match="n_keys 11 must be pos0"):
        enc.attention_probs(rig["q"], rig["K"], rig["o11"], H, KV, 0.25)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        enc.attention_probs(rig["q"], rig["K"], rig["o5"], H, 3, 0.25)
    # checked when it runs: n_keys must be pos0 + T (pos0 = 2 here), positions in the context
    with pytest.raises(ValueError, match="n_keys must be pos0 \\+ n_tokens"):
        enc.attention_probs(rig["q"], rig["K"], rig["o6"], H, KV, 0.25)
    with pytest.raises(ValueError, match="exceed the context"):
        encoder(device, 8, T).attention_probs(rig["q"], rig["K"], rig["o5"], H, KV, 0.25)
    encoder(device, 2, T).attention_probs(rig["q"], rig["K"], rig["o5"], H, KV, 0.25)   # fits


# ---- elementwise --------------------------------------------------------------------------
@pytest.mark.parametrize("rows,cols,broadcast", [(1, 64, False), (7, 33, False), (7, 33, True),
                                                 (16, 576, True), (3, 1, False)])
def test_add(device, request, rows, cols, broadcast):
    rng, seed = rng_for(request)
    a = rng.standard_normal((rows, cols)).astype(np.float32)
    b = rng.standard_normal((1, cols) if broadcast else (rows, cols)).astype(np.float32)
    rig = Rig(device, {"a": a, "b": b.reshape(-1) if broadcast else b}, {"out": (F32, (rows, cols))})
    encoder(device).add(rig["a"], rig["b"], rig["out"])
    got = rig.out("out", seed, "add")
    ref = R.add(a, b.reshape(-1) if broadcast else b)
    check("add", got, ref, seed, f"[{rows},{cols}] broadcast={broadcast}")


@pytest.mark.parametrize("op", ["swiglu", "geglu"])
@pytest.mark.parametrize("T,n_ff", [(1, 64), (5, 1536), (13, 99)])
def test_glu(device, simd, request, op, T, n_ff):
    rng, seed = rng_for(request)
    g = (rng.standard_normal((T, n_ff)) * 3).astype(np.float32)
    # saturated ends of the activations, and both sides of the sigmoid's switch at 0 (the
    # first 8 values are one vector of the x86 kernels)
    g.reshape(-1)[:min(8, g.size)] = [-40.0, 40.0, -90.0, 0.0, -1e-3, 1e-3, -7.5, 200.0][:min(8, g.size)]
    u = rng.standard_normal((T, n_ff)).astype(np.float32)
    rig = Rig(device, {"g": g, "u": u}, {"out": (F32, (T, n_ff))})
    getattr(encoder(device), op)(rig["g"], rig["u"], rig["out"])
    got = rig.out("out", seed, op)
    check(op, got, getattr(R, op)(g, u), seed, f"[{T},{n_ff}] simd={simd}")
    # a token's bits do not depend on the batch it is in (Model.step): each row on its own
    for t in range(T):
        one = Rig(device, {"g": g[t:t + 1], "u": u[t:t + 1]}, {"out": (F32, (1, n_ff))})
        getattr(encoder(device), op)(one["g"], one["u"], one["out"])
        assert np.array_equal(one.out("out", seed, op), got[t:t + 1]), f"{op} row {t} alone differs {where(seed)}"


# ---- argmax (greedy sampling) -------------------------------------------------------------
ARGMAX_PATTERNS = ["plain", "ties", "first", "zeros", "nan", "+inf", "-inf"]


def argmax_rows(rng, n_rows, V, pattern):
    """Logits-like rows [n_rows, V] with one hard case planted in each: "ties", several equal
    maxima (random places, two neighbours, the last element: the first must win, wherever the
    vectors, threads or SIMD lanes that see them split the row); "first", the maximum at index
    0 and again later; "zeros", -0.0 and +0.0 as the maximum, the first of either sign wins;
    "nan", "+inf", "-inf", one such value (every other row, so finite rows run beside them) at
    the start, the middle or the end (-> -1). Returns the rows and the ids expected, worked out
    by hand (the reference must agree)."""
    x = (rng.standard_normal((n_rows, V)) * 4).astype(np.float32)
    want = np.argmax(x, axis=1).astype(np.int32)
    for r in range(n_rows):
        row = x[r]
        if pattern == "ties" and V > 1:
            q = int(rng.integers(0, V - 1))
            p = sorted(set(rng.integers(0, V, 4).tolist()) | {V - 1, q, q + 1})
            row[p] = row.max() + 1.0
            want[r] = p[0]
        elif pattern == "first":
            row[0] = row.max() + 1.0
            row[int(rng.integers(0, V))] = row[0]
            want[r] = 0
        elif pattern == "zeros" and V > 1:
            row[:] = -np.abs(row) - 1.0
            a, b = sorted(rng.choice(V, 2, replace=False).tolist())
            row[a], row[b] = (-0.0, 0.0) if r % 2 else (0.0, -0.0)
            want[r] = a
        elif pattern in ("nan", "+inf", "-inf") and r % 2 == 0:
            row[(0, V // 2, V - 1)[(r // 2) % 3]] = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}[pattern]
            want[r] = -1
    return x, want


@pytest.mark.parametrize("n_rows,V", [(1, 1), (1, 7), (3, 33), (1, 1000), (2, 65539), (5, 49157),
                                      (64, 1003), (1, 128256)])
def test_argmax(device, simd, request, n_rows, V):
    """The ids of each row's first maximum, as numpy's argmax; V not a multiple of any vector or
    threadgroup width; one long row (the CPU cuts it into parts for its threads); 64 rows."""
    rng, seed = rng_for(request)
    for pattern in ARGMAX_PATTERNS:
        x, want = argmax_rows(rng, n_rows, V, pattern)
        ref = R.argmax(x)
        assert np.array_equal(ref, want), f"the reference's argmax, {pattern}: {ref} != {want}"
        rig = Rig(device, {"x": x}, {"ids": (I32, (n_rows,))})
        encoder(device).argmax(rig["x"], rig["ids"])
        got = rig.out("ids", seed, "argmax")
        bad = np.flatnonzero(got != ref)
        assert not bad.size, (f"argmax [{n_rows},{V}] {pattern} simd={simd}: row {bad[0]} gave {got[bad[0]]}, "
                              f"expected {ref[bad[0]]} {where(seed)}")


def test_argmax_rejects_bad_shapes(device):
    rig = Rig(device, {"x": np.zeros((3, 8), np.float32), "x1": np.zeros(8, np.float32),
                       "f": np.zeros(3, np.float32), "ids2": np.zeros(2, np.int32)}, {"ids": (I32, (3,))})
    enc = encoder(device)
    for x, ids, msg in ((rig["x"], rig["f"], "ids must be I32"), (rig["x"], rig["ids2"], r"ids must be I32 \[3\]"),
                        (rig["x1"], rig["ids"], r"x must be \[R, n\]"), (rig["ids"], rig["ids"], "x must be F32")):
        with pytest.raises(ValueError, match=msg):
            enc.argmax(x, ids)
