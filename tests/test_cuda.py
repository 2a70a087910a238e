"""The CUDA device against the CPU device: every stage on random inputs, graph replay, and
end to end on real SmolLM2 weights cut to 4 layers.

All tests here are marked `cuda` and skip (saying why) where the build has no CUDA device
or no GPU answers; bench/cuda_check.sh runs them on a GPU machine. The CPU device is the
reference: it is itself checked against float64 numpy in tests/test_stages.py.

Error measure: NMSE = sum((a - b)^2) / sum(b^2) against the CPU result.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from llmetal import _engine as E
from test_stages import probs_inputs, visible_keys  # the stage tests' inputs and mask

pytestmark = pytest.mark.cuda

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, I32, BF16 = 0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 26, 30
Q2_K, Q3_K, IQ4_XS = 10, 11, 23
QUANTS = [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS]
ALL_W = [F32, F16, BF16] + QUANTS
BLOCK256 = (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS)   # rows a multiple of 256 values
# where each block format keeps its float16 scales: (byte offset, is-a-min) per block
F16_FIELDS = {Q4_0: [0], Q4_1: [0, 2], Q5_0: [0], Q5_1: [0, 2], Q8_0: [0], Q4_K: [0, 2],
              Q5_K: [0, 2], Q6_K: [208], Q2_K: [80, 82], Q3_K: [108], IQ4_XS: [0]}


def _cuda_or_skip():
    if "cuda" not in E.build_info()["devices"]:
        pytest.skip("this build has no CUDA device (built without nvcc)")
    try:
        return E.cuda_device(0)
    except ValueError as e:
        pytest.skip(f"no usable GPU: {e}")


@pytest.fixture(scope="module")
def devs():
    """(cpu, cuda); the CPU runs its scalar kernels, the exact float32 reference."""
    cuda = _cuda_or_skip()
    E.force_simd("scalar")
    yield E.cpu_device(2), cuda
    E.force_simd("best")


@pytest.fixture
def rng():
    seed = int(os.environ.get("LLMETAL_SEED") or np.random.SeedSequence().entropy % 2**31)
    print(f"LLMETAL_SEED={seed}")
    return np.random.default_rng(seed)


def nmse(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a - b) ** 2).sum() / max((b ** 2).sum(), 1e-300))


def random_weight(rng, t, rows, cols, scale=(0.002, 0.02)):
    """Raw bytes of a [rows, cols] weight of type t with finite, moderate values (block scales
    drawn from `scale`)."""
    if t == F32:
        return rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint8)
    if t == F16:
        return rng.standard_normal((rows, cols)).astype(np.float16).view(np.uint8)
    if t == BF16:
        return (rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    qk, bb = E.type_block(t)
    nb = cols // qk
    a = rng.integers(0, 256, (rows, nb, bb), dtype=np.uint8)
    for off in F16_FIELDS[t]:
        a[:, :, off:off + 2] = (rng.uniform(*scale, (rows, nb)).astype(np.float16)
                                .view(np.uint8).reshape(rows, nb, 2))
    return a.reshape(rows, nb * bb)


class Pair:
    """The same tensors on the CPU and the CUDA device; run a stage on both, compare."""

    def __init__(self, devs, inputs: dict, outputs: dict):
        self.sides, self.devs = [], devs
        for d in devs:
            pool = E.BufferPool(d)
            for n, (t, shape, _) in inputs.items():
                pool.declare(n, t, list(shape))
            for n, (t, shape) in outputs.items():
                pool.declare(n, t, list(shape))
            pool.reserve()
            for n, (_, _, arr) in inputs.items():
                pool.get(n).upload(np.ascontiguousarray(arr))
            for n, (t, shape) in outputs.items():   # poison: unwritten outputs stay NaN
                pool.get(n).upload(np.full(shape, np.nan, np.float16 if t == F16 else np.float32))
            self.sides.append(pool)

    def run(self, fn, pos0=0, n_tokens=1):
        for pool, dev in zip(self.sides, self.devs):
            dev.set_step(pos0, n_tokens)
            enc = E.Encoder(dev, eager=True)
            fn(enc, pool.get)
            enc.wait()

    def get(self, name):
        return [p.get(name).to_numpy() for p in self.sides]


def assert_close(stage, cpu, gpu, tol):
    assert np.all(np.isfinite(gpu.astype(np.float32))), f"{stage}: cuda output has non-finite values (unwritten?)"
    e = nmse(gpu, cpu)
    assert e <= tol, f"{stage}: NMSE {e:.3g} vs cpu > {tol:g}"


# ---- stages ----------------------------------------------------------------------------------
def dequantized(devs, t, W, rows, cols):
    """The exact float rows of a weight, through the CPU device's embed (tested exact)."""
    cpu = devs[0]
    pool = E.BufferPool(cpu)
    pool.declare("W", t, [rows, cols]); pool.declare("ids", I32, [rows]); pool.declare("out", F32, [rows, cols])
    pool.reserve()
    pool.get("W").upload(W); pool.get("ids").upload(np.arange(rows, dtype=np.int32))
    cpu.set_step(0, rows)
    enc = E.Encoder(cpu, eager=True)
    enc.embed(pool.get("W"), pool.get("ids"), pool.get("out"), 1.0)
    enc.wait()
    return pool.get("out").to_numpy().astype(np.float64)


@pytest.mark.parametrize("wtype", ALL_W)
@pytest.mark.parametrize("M", [1, 3, 8, 9, 20, 70])
def test_matmul_every_type(devs, rng, wtype, M):
    """Up to 8 tokens (decode) the quantized kernels quantize the activations to 8 bits
    exactly as the CPU does and dot in integers: the CPU's numbers up to float summation
    order. Above 8 (prefill) weight tiles are dequantized to fp16 for the tensor cores and the
    activations rounded to fp16: checked against float64 on the exact weights (fp16 rounding,
    NMSE ~1e-7), and loosely against the CPU, whose 8-bit activations are the coarser side."""
    K = 512 if wtype in BLOCK256 else 320
    N = 67 if M < 70 else 200   # 70 tokens x 200 rows: two token tiles, two row tiles
    if M == 70 and wtype in BLOCK256:
        K = 2048                 # several K steps and a row longer than one decode window
    W = random_weight(rng, wtype, N, K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    p = Pair(devs, {"W": (wtype, (N, K), W), "x": (F32, (M, K), x)}, {"y": (F32, (M, N))})
    p.run(lambda e, g: e.matmul(g("W"), g("x"), g("y")))
    cpu, gpu = p.get("y")
    tensor_cores = M > 8 and wtype not in (F32, BF16)
    if not tensor_cores:
        assert_close(f"matmul type {wtype} M={M}", cpu, gpu, 1e-10)
        return
    ref = x.astype(np.float64) @ dequantized(devs, wtype, W, N, K).T
    assert_close(f"matmul (tensor cores) type {wtype} M={M} vs float64", ref, gpu, 1e-6)
    assert_close(f"matmul (tensor cores) type {wtype} M={M} vs cpu", cpu, gpu, 1e-3)


@pytest.mark.parametrize("wtype,M", [(t, 33) for t in QUANTS] + [(Q4_0, 9), (Q4_0, 64), (Q6_K, 16), (Q8_0, 64)])
def test_matmul_few_tokens_split_k(devs, rng, wtype, M):
    """9-64 tokens (several sequences decoding at once): kernel_gemm_q streams the quantized
    rows, 128 rows a block (32 a warp), K split over blocks (1100 rows at K = 4096: 9 row
    tiles, 16 splits of one window), kernel_splitk_sum adding the splits in order; a last row
    tile of 76 rows (a warp with none). Against float64 on the exact weights, every row tile's
    edge column checked, and bit-identical when run again."""
    N, K = 1100, 4096
    W = random_weight(rng, wtype, N, K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    p = Pair(devs[1:], {"W": (wtype, (N, K), W), "x": (F32, (M, K), x)}, {"y": (F32, (M, N))})
    p.run(lambda e, g: e.matmul(g("W"), g("x"), g("y")))
    (gpu,) = p.get("y")
    ref = x.astype(np.float64) @ dequantized(devs, wtype, W, N, K).T
    assert_close(f"few-token matmul type {wtype} M={M} vs float64", ref, gpu, 1e-6)
    for c in (0, 31, 32, 1023, 1024, N - 1):
        e = nmse(gpu[:, c], ref[:, c])
        assert e <= 1e-5, f"column {c}: NMSE {e:.3g}"
    p.run(lambda e, g: e.matmul(g("W"), g("x"), g("y")))
    (again,) = p.get("y")
    assert np.array_equal(gpu, again), "split-K sums differ between two runs"


@pytest.mark.parametrize("wtype", [Q4_0, Q6_K])
def test_matmul_prefill_row_chunks(devs, rng, wtype):
    """Prefill dequantizes the weights to fp16 in chunks of at most 32M values (8192 rows at
    K = 4096) and runs one GEMM per chunk into its columns of y: 8328 rows are a full chunk
    and a second one of 136 rows (a partial 128-row tile); 130 tokens are a full token tile
    and a partial one. Against float64 on the exact weights, every output written (NaN
    poison)."""
    N, K, M = 8192 + 136, 4096, 130
    W = random_weight(rng, wtype, N, K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    p = Pair(devs[1:], {"W": (wtype, (N, K), W), "x": (F32, (M, K), x)}, {"y": (F32, (M, N))})
    p.run(lambda e, g: e.matmul(g("W"), g("x"), g("y")))
    (gpu,) = p.get("y")
    ref = x.astype(np.float64) @ dequantized(devs, wtype, W, N, K).T
    assert_close(f"prefill matmul type {wtype} {M}x{N}x{K} vs float64", ref, gpu, 1e-6)
    for c in (0, 8191, 8192, N - 1):   # each chunk's first and last columns, not just the norm
        e = nmse(gpu[:, c], ref[:, c])
        assert e <= 1e-5, f"column {c}: NMSE {e:.3g}"


@pytest.mark.parametrize("wtype", [Q8_0, Q4_0, Q4_1, Q5_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS, F16])
@pytest.mark.parametrize("N", [37, 4100])
def test_matmul_decode_wide_rows(devs, rng, wtype, N):
    """Rows several windows long, 16-byte aligned (the streamed fast path) and not (K=576,
    SmolLM2's width: 8- or 4-byte copies; K=4064: rows only 2-byte aligned for Q4_0 / Q5_0 /
    Q8_0, copied synchronously), 1 and 5 tokens; 37 rows (fewer rows than warps) and 4100
    (more rows than an H100 keeps resident warps: a warp walks two rows, one window sequence).
    K=14336 (the FFN down projection's width): rows of several windows, which kernel_mmvq shares
    out to groups of 2 or 4 warps (37 rows: 4; 4100 rows: 2, three rows a group)."""
    for K in ([4096, 14336] if wtype in BLOCK256 else [4096, 576, 4064, 14336]):
        for M in ((1, 5) if N < 100 else (1,)):
            W = random_weight(rng, wtype, N, K)
            x = rng.standard_normal((M, K)).astype(np.float32)
            p = Pair(devs, {"W": (wtype, (N, K), W), "x": (F32, (M, K), x)}, {"y": (F32, (M, N))})
            p.run(lambda e, g: e.matmul(g("W"), g("x"), g("y")))
            assert_close(f"matmul type {wtype} K={K} M={M}", *p.get("y"), 1e-10)


@pytest.mark.parametrize("wtype", [F32, F16])
@pytest.mark.parametrize("K", [17, 75])
def test_matmul_odd_rows(devs, rng, wtype, K):
    W = random_weight(rng, wtype, 9, K)
    x = rng.standard_normal((4, K)).astype(np.float32)
    p = Pair(devs, {"W": (wtype, (9, K), W), "x": (F32, (4, K), x)}, {"y": (F32, (4, 9))})
    p.run(lambda e, g: e.logits(g("W"), g("x"), g("y")))
    assert_close("matmul odd K", *p.get("y"), 1e-10)


@pytest.mark.parametrize("wtype", ALL_W)
def test_embed_every_type_exact(devs, rng, wtype):
    V, D, T = 40, 512, 6
    W = random_weight(rng, wtype, V, D)
    ids = rng.integers(0, V, T).astype(np.int32)
    p = Pair(devs, {"W": (wtype, (V, D), W), "ids": (I32, (T,), ids)}, {"out": (F32, (T, D))})
    p.run(lambda e, g: e.embed(g("W"), g("ids"), g("out"), 1.5))
    cpu, gpu = p.get("out")
    assert np.array_equal(cpu, gpu), f"embed type {wtype}: {(cpu != gpu).sum()} elements differ from cpu"


def test_embed_rejects_bad_id(devs):
    dev = devs[1]
    pool = E.BufferPool(dev)
    pool.declare("W", F32, [10, 32]); pool.declare("ids", I32, [2]); pool.declare("out", F32, [2, 32])
    pool.reserve()
    pool.get("ids").upload(np.array([3, 10], np.int32))
    dev.set_step(0, 2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        E.Encoder(dev, eager=True).embed(pool.get("W"), pool.get("ids"), pool.get("out"))


def test_download_into_pinned_and_pageable(devs, rng):
    """download_into gives the same values into host_empty's page-locked array (one DMA), into
    a slice of it, and into a plain numpy array (through the staging buffer), also for a tensor
    larger than one staging round (4 MB)."""
    dev = devs[1]
    pool = E.BufferPool(dev)
    pool.declare("a", F32, [49152])
    pool.declare("b", F32, [1_300_000])
    pool.reserve()
    va = rng.standard_normal(49152).astype(np.float32)
    vb = rng.standard_normal(1_300_000).astype(np.float32)
    pool.get("a").upload(va)
    pool.get("b").upload(vb)
    pinned = dev.host_empty(60000)
    pool.get("a").download_into(pinned[1000:1000 + 49152])
    assert np.array_equal(pinned[1000:1000 + 49152], va)
    plain = np.empty(49152, np.float32)
    pool.get("a").download_into(plain)
    assert np.array_equal(plain, va)
    big = np.empty(1_300_000, np.float32)
    pool.get("b").download_into(big)
    assert np.array_equal(big, vb)
    assert np.array_equal(pool.get("b").to_numpy(), vb)


def test_small_stages(devs, rng):
    T, D, FF = 5, 200, 96
    x = rng.standard_normal((T, D)).astype(np.float32) * 3
    y = rng.standard_normal((T, D)).astype(np.float32)
    w = rng.standard_normal(D).astype(np.float32)
    g = rng.standard_normal((T, FF)).astype(np.float32) * 2
    u = rng.standard_normal((T, FF)).astype(np.float32)
    ins = {"x": (F32, (T, D), x), "y": (F32, (T, D), y), "w": (F32, (D,), w), "g": (F32, (T, FF), g),
           "u": (F32, (T, FF), u)}
    outs = {n: (F32, (T, D)) for n in ("norm", "add", "addb")}
    outs.update({n: (F32, (T, FF)) for n in ("swiglu", "geglu")})
    p = Pair(devs, ins, outs)

    def f(e, gt):
        e.rmsnorm(gt("x"), gt("w"), gt("norm"), 1e-5)
        e.add(gt("x"), gt("y"), gt("add")); e.add(gt("x"), gt("w"), gt("addb"))
        e.swiglu(gt("g"), gt("u"), gt("swiglu")); e.geglu(gt("g"), gt("u"), gt("geglu"))
    p.run(f)
    for n, tol in [("norm", 1e-11), ("add", 0), ("addb", 0), ("swiglu", 1e-11), ("geglu", 1e-11)]:
        assert_close(n, *p.get(n), tol)


@pytest.mark.parametrize("H,hd,n_rot,mode,ff,T,pos0", [(9, 64, 64, 0, False, 3, 17), (4, 256, 256, 2, False, 2, 1000),
                                                       (5, 80, 40, 2, True, 4, 500), (8, 128, 128, 0, True, 1, 8000)])
def test_rope(devs, rng, H, hd, n_rot, mode, ff, T, pos0):
    x = rng.standard_normal((T, H * hd)).astype(np.float32)
    fac = rng.uniform(1, 8, n_rot // 2).astype(np.float32)
    p = Pair(devs, {"x": (F32, (T, H * hd), x), "f": (F32, (n_rot // 2,), fac)}, {})
    p.run(lambda e, g: e.rope(g("x"), H, n_rot, mode, 10000.0, 0.5, g("f") if ff else None), pos0, T)
    assert_close("rope", *p.get("x"), 1e-12)


def test_kv_store_exact(devs, rng):
    n_ctx, kvd, T, pos0 = 50, 192, 7, 30
    src = (rng.standard_normal((T, kvd)) * 10).astype(np.float32)
    p = Pair(devs, {"src": (F32, (T, kvd), src)}, {"cache": (F16, (n_ctx, kvd))})
    p.run(lambda e, g: e.kv_store(g("src"), g("cache")), pos0, T)
    cpu, gpu = p.get("cache")
    assert np.array_equal(cpu.view(np.uint16), gpu.view(np.uint16)), "kv_store differs from cpu"
    with pytest.raises(ValueError, match="exceed the context"):
        p.run(lambda e, g: e.kv_store(g("src"), g("cache")), n_ctx - 3, T)


@pytest.mark.parametrize("H,KV,hd,T,pos0,window,softcap", [
    (9, 3, 64, 1, 0, 0, 0.0), (9, 3, 64, 1, 700, 0, 0.0), (32, 8, 128, 1, 3000, 0, 0.0),
    (4, 1, 256, 3, 1000, 0, 0.0), (6, 2, 80, 33, 0, 0, 0.0), (12, 4, 64, 16, 990, 0, 0.0),
    (4, 1, 256, 5, 600, 128, 0.0), (2, 2, 64, 6, 10, 1, 0.0), (8, 4, 64, 4, 200, 0, 30.0),
    (3, 3, 80, 2, 513, 512, 50.0),
    # decode merges of few splits (<= 8: all partials loaded at once) and of 8 / 9 at the edge
    (32, 8, 128, 1, 100, 0, 0.0), (9, 3, 64, 1, 230, 0, 0.0), (9, 3, 64, 1, 256, 0, 0.0),
    # the same edge with head size 128 (32-key splits) and head size 64 (128-key splits of about
    # 120 keys here: several passes a split, the last one partial), and more splits than that
    (8, 2, 128, 1, 230, 0, 0.0), (8, 2, 128, 1, 256, 0, 0.0), (9, 3, 64, 1, 900, 0, 0.0),
    (9, 3, 64, 1, 1000, 0, 0.0), (9, 3, 64, 1, 1500, 0, 0.0),
    # decode blocks of G x 4 warps: G = 8 (1024 threads) at both head sizes, a window, one key
    (32, 4, 128, 1, 300, 0, 0.0), (16, 2, 64, 1, 40, 0, 0.0), (8, 2, 64, 1, 700, 100, 0.0),
    (8, 8, 64, 1, 0, 0, 0.0),
    # long contexts of 8 K/V heads: the splits capped at n_sm * AD_BLOCKS_SM blocks, each split
    # longer than the planned chunk (both head sizes, with and without a window)
    (32, 8, 128, 1, 5000, 0, 0.0), (32, 8, 128, 1, 2200, 0, 0.0), (32, 8, 128, 1, 6000, 3000, 0.0),
    (64, 8, 64, 1, 20000, 0, 0.0),
    # prompts on the tensor cores (16+ tokens, head size 64 or 128): several query and key
    # tiles, a partial last tile, GQA, a window shorter than the prompt, softcap
    (32, 8, 128, 130, 0, 0, 0.0), (9, 3, 64, 100, 37, 0, 0.0), (8, 4, 64, 70, 200, 0, 30.0),
    (4, 2, 128, 80, 300, 50, 0.0), (6, 6, 64, 16, 5, 7, 0.0)])
def test_attention(devs, rng, H, KV, hd, T, pos0, window, softcap):
    """Against the CPU device. Decode and odd head sizes run the float kernel (NMSE <= 1e-9);
    prompts of 16+ tokens with head size 64 / 128 run the tensor-core kernel, whose fp16 q and
    probabilities put it ~1e-6 away (bound 1e-5). NaN rows mark keys no query may see."""
    n_ctx = pos0 + T + 300   # room past the end: decode splits cover the whole context
    q = (rng.standard_normal((T, H * hd)) * (16 if softcap else 2)).astype(np.float32)
    K = rng.standard_normal((n_ctx, KV * hd)).astype(np.float16)
    V = rng.standard_normal((n_ctx, KV * hd)).astype(np.float16)
    K[pos0 + T:] = V[pos0 + T:] = np.nan    # rows no query may read
    if window > 0 and pos0 - window + 1 > 0:
        K[:pos0 - window + 1] = V[:pos0 - window + 1] = np.nan
    p = Pair(devs, {"q": (F32, q.shape, q), "K": (F16, K.shape, K), "V": (F16, V.shape, V)},
             {"out": (F32, (T, H * hd))})
    p.run(lambda e, g: e.attention(g("q"), g("K"), g("V"), g("out"), H, KV, 1 / np.sqrt(hd), window, softcap),
          pos0, T)
    tensor_cores = T >= 16 and hd in (64, 128)
    assert_close("attention" + (" (tensor cores)" if tensor_cores else ""), *p.get("out"),
                 1e-5 if tensor_cores else 1e-9)


@pytest.mark.parametrize("H,KV,hd,T,pos0,window,softcap", [
    (9, 3, 64, 1, 0, 0, 0.0), (9, 3, 64, 1, 700, 0, 0.0), (32, 8, 128, 3, 300, 0, 0.0),
    (4, 1, 256, 5, 600, 128, 0.0), (6, 2, 80, 33, 0, 0, 0.0), (2, 2, 64, 6, 10, 1, 0.0),
    (8, 4, 64, 4, 200, 0, 30.0), (3, 3, 80, 2, 513, 512, 50.0)])
def test_attention_probs(devs, rng, H, KV, hd, T, pos0, window, softcap):
    """kernel_attention_probs against the CPU device (float arithmetic on both; __expf vs exp:
    NMSE <= 1e-9); rows sum to 1 and the keys a query does not read are exactly 0. NaN rows
    mark keys no query may see."""
    n_keys = pos0 + T
    q, K = probs_inputs(rng, H, KV, hd, T, pos0, window, softcap, spare=40)
    p = Pair(devs, {"q": (F32, q.shape, q), "K": (F16, K.shape, K)}, {"out": (F32, (H, T, n_keys))})
    p.run(lambda e, g: e.attention_probs(g("q"), g("K"), g("out"), H, KV, 1 / np.sqrt(hd), window, softcap), pos0, T)
    cpu, gpu = p.get("out")
    assert_close("attention_probs", cpu, gpu, 1e-9)
    vis = visible_keys(T, pos0, window, n_keys)
    assert np.all(gpu[:, ~vis] == 0.0), "attention_probs: a key the query does not read is not 0"
    assert np.abs(gpu.astype(np.float64).sum(-1) - 1).max() <= 1e-5


# ---- graph replay ------------------------------------------------------------------------------
# Both tests below run one token's command list three ways: on the CPU, on the CUDA device as
# a recorded plan (captured as one CUDA graph, fused patterns on), and on the CUDA device eager
# (every stage committed alone, so every stage runs split). The graph must reproduce the eager
# run to the last bit (bound 1e-12): fusion and replay reorder no arithmetic. Against the CPU
# the bound is looser, because the GPU is not bit-identical to the CPU in two places that
# later stages amplify: softmax's exp (the fast __expf) and float sums in another order
# (mat-vec rows, attention). A last-bit difference is harmless until a value sits on a
# rounding edge -- an 8-bit quantization step (the next mat-vec's input) or an f16 cache
# entry -- and rounds the other way; every later stage then carries that step. Seen on an
# H100 (round 8): NMSE 3.2e-8 and 4.7e-5 (fused layer, 2 seeds of 4) and 1.2e-6 (graph replay,
# a K/V entry) on code that matches its own split run exactly. A wrong position, head, split
# or fusion is off by NMSE 1e-2 and more.

def _three_ways(devs, declare, upload, issue, steps, outputs):
    """Run `issue(enc, g)` once per (pos, tok, prep) of `steps` on the CPU (plan), on CUDA (plan:
    graph + fusion) and on CUDA eager (split); return, for each, the stack of `outputs(g, pos)`
    rows and the device's allocation count after each replay (plans only)."""
    runs = []
    for dev, eager in [(devs[0], False), (devs[1], False), (devs[1], True)]:
        pool = E.BufferPool(dev)
        declare(pool)
        pool.reserve()
        upload(pool.get)
        g = pool.get
        rows, allocs = [], []
        if eager:
            for pos, tok, prep in steps:
                prep(g)
                dev.set_step(pos, 1)
                g("ids").upload(np.array([tok], np.int32))
                enc = E.Encoder(dev, eager=True)
                issue(enc, g)
                enc.wait()
                rows.append(outputs(g, pos))
        else:
            enc = E.Encoder(dev, eager=False)
            enc.begin_record(1)
            issue(enc, g)
            plan = enc.end_record()
            for pos, tok, prep in steps:
                prep(g)
                enc.replay_token(plan, g("ids"), int(tok), pos)
                allocs.append(dev.n_allocs)
                rows.append(outputs(g, pos))
        runs.append((np.stack(rows), allocs))
    return runs


def test_graph_replay_matches_eager_cpu(devs, rng):
    """A one-token plan (embed .. attention .. logits) captured once as a CUDA graph and
    replayed at successive positions gives the eager (split-stage) CUDA run's results exactly
    and the CPU's within rounding-edge effects (see above), and allocates nothing after its
    first replay."""
    V, D, H, KV, hd, n_ctx = 300, 256, 4, 2, 64, 600
    Wemb = random_weight(rng, Q8_0, V, D)
    Wq = random_weight(rng, Q4_K, H * hd, D)
    Wk = random_weight(rng, Q6_K, KV * hd, D)
    norm = rng.uniform(0.5, 1.5, D).astype(np.float32)
    toks = rng.integers(0, V, 40)

    def declare(pool):
        for n, t, s in [("E", Q8_0, (V, D)), ("Wq", Q4_K, (H * hd, D)), ("Wk", Q6_K, (KV * hd, D)),
                        ("norm", F32, (D,)), ("ids", I32, (1,)), ("x", F32, (1, D)), ("h", F32, (1, D)),
                        ("q", F32, (1, H * hd)), ("k", F32, (1, KV * hd)), ("att", F32, (1, H * hd)),
                        ("Kc", F16, (n_ctx, KV * hd)), ("Vc", F16, (n_ctx, KV * hd)), ("lg", F32, (1, V))]:
            pool.declare(n, t, list(s))

    def upload(g):
        for n, a in [("E", Wemb), ("Wq", Wq), ("Wk", Wk), ("norm", norm)]:
            g(n).upload(a)

    def issue(enc, g):
        enc.embed(g("E"), g("ids"), g("x"))
        enc.rmsnorm(g("x"), g("norm"), g("h"), 1e-5)
        enc.matmul(g("Wq"), g("h"), g("q"))
        enc.matmul(g("Wk"), g("h"), g("k"))
        enc.rope(g("q"), H, hd, 0, 10000.0)
        enc.rope(g("k"), KV, hd, 0, 10000.0)
        enc.kv_store(g("k"), g("Kc"))
        enc.kv_store(g("k"), g("Vc"))
        enc.attention(g("q"), g("Kc"), g("Vc"), g("att"), H, KV, 0.125)
        enc.logits(g("E"), g("h"), g("lg"))

    steps = [(pos, int(tok), lambda g: None) for pos, tok in enumerate(toks)]
    out = lambda g, pos: np.concatenate([g("att").to_numpy()[0], g("lg").to_numpy()[0]])
    (cpu, _), (graph, allocs), (eager, _) = _three_ways(devs, declare, upload, issue, steps, out)
    assert allocs[-1] == allocs[0], "cuda: allocations during replay"
    assert_close("graph replay vs eager (cuda)", eager, graph, 1e-12)
    assert_close("graph replay vs cpu", cpu, graph, 1e-4)


def test_token_and_step_replays_mix(devs, rng):
    """A one-token plan's graph takes the token id and position as its first kernel's arguments
    when replayed with replay_token, and reads what upload / set_step wrote when replayed with
    replay (that kernel then writes nothing). Both ways, in any order on the same plan, give
    the same bits, and an id outside the vocabulary still raises."""
    V, D, H, hd, n_ctx = 200, 128, 2, 64, 64
    Wemb = random_weight(rng, Q8_0, V, D)
    Wq = random_weight(rng, Q4_0, H * hd, D)
    toks = [int(t) for t in rng.integers(0, V, 12)]
    dev = devs[1]
    pool = E.BufferPool(dev)
    for n, t, s in [("E", Q8_0, (V, D)), ("Wq", Q4_0, (H * hd, D)), ("ids", I32, (1,)), ("x", F32, (1, D)),
                    ("q", F32, (1, H * hd)), ("Kc", F16, (n_ctx, H * hd)), ("Vc", F16, (n_ctx, H * hd)),
                    ("att", F32, (1, H * hd)), ("lg", F32, (1, V))]:
        pool.declare(n, t, list(s))
    pool.reserve()
    g = pool.get
    g("E").upload(Wemb)
    g("Wq").upload(Wq)
    enc = E.Encoder(dev, eager=False)
    enc.begin_record(1)
    enc.embed(g("E"), g("ids"), g("x"))
    enc.matmul(g("Wq"), g("x"), g("q"))
    enc.rope(g("q"), H, hd, 0, 10000.0)
    enc.kv_store(g("q"), g("Kc"))
    enc.kv_store(g("q"), g("Vc"))
    enc.attention(g("q"), g("Kc"), g("Vc"), g("att"), H, H, 0.125)
    enc.logits(g("E"), g("x"), g("lg"))
    plan = enc.end_record()
    runs = []
    for mode in ["token", "mixed", "step"]:
        rows = []
        for pos, tok in enumerate(toks):
            if mode == "token" or (mode == "mixed" and pos % 2 == 0):
                enc.replay_token(plan, g("ids"), tok, pos)
            else:
                g("ids").upload(np.array([tok], np.int32))
                enc.replay(plan, pos)
            rows.append(np.concatenate([g("att").to_numpy()[0], g("lg").to_numpy()[0]]))
        runs.append(np.stack(rows))
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])
    with pytest.raises(Exception, match="vocabulary"):
        enc.replay_token(plan, g("ids"), V + 5, 0)
        enc.wait()


@pytest.mark.parametrize("D", [768, 4352])   # the norm kernel: one float4 a thread / several (rows > 4096)
def test_fused_decode_stages_match_cpu(devs, rng, D):
    """The command shapes the CUDA device fuses (add + rmsnorm + 8-bit quantization for the
    next matmul, rmsnorm + quantization, one quantization shared by two matmuls of the same
    input, swiglu + quantization, rope q + rope k + both kv_stores + decode attention (splits
    merged in the kernel) + the quantization of its output for the o projection), replayed as
    a graph at several positions (one split of keys, then several), give exactly what the same
    stages give run split (eager) on the GPU, and the CPU's results within rounding-edge
    effects (see above). The residual adds after the o and down projections are followed by
    norms whose 8-bit copies go to a Q4_K pair (blocks of 256) and to Q4_0 (blocks of 32), as in
    a model's layer."""
    FF, H, KV, hd, n_ctx = 1024, 8, 2, 64, 200
    W = {"Wq": (Q8_0, H * hd, D), "Wk": (Q4_0, KV * hd, D), "Wv": (Q4_0, KV * hd, D), "Wo": (Q4_0, D, H * hd),
         "Wg": (Q4_K, FF, D), "Wu": (Q4_K, FF, D), "Wd": (Q8_0, D, FF), "Wz": (Q4_0, 256, D)}
    arrays = {n: random_weight(rng, t, r, c) for n, (t, r, c) in W.items()}
    norm = rng.uniform(0.5, 1.5, D).astype(np.float32)
    x0 = rng.standard_normal((1, D)).astype(np.float32)
    o0 = rng.standard_normal((1, D)).astype(np.float32)
    # the cache rows the replays skip over (attention reads every row up to the position)
    kv0 = [rng.standard_normal((n_ctx, KV * hd)).astype(np.float16) for _ in range(2)]

    def declare(pool):
        for n, (t, r, c) in W.items():
            pool.declare(n, t, [r, c])
        for n, t, s in [("norm", F32, (D,)), ("ids", I32, (1,)), ("x", F32, (1, D)), ("o", F32, (1, D)),
                        ("h", F32, (1, D)), ("q", F32, (1, H * hd)), ("k", F32, (1, KV * hd)),
                        ("v", F32, (1, KV * hd)), ("att", F32, (1, H * hd)), ("ao", F32, (1, D)),
                        ("g", F32, (1, FF)), ("u", F32, (1, FF)), ("s", F32, (1, FF)),
                        ("h2", F32, (1, D)), ("h3", F32, (1, D)), ("z", F32, (1, 256)), ("z2", F32, (1, 256)),
                        ("Kc", F16, (n_ctx, KV * hd)), ("Vc", F16, (n_ctx, KV * hd))]:
            pool.declare(n, t, list(s))

    def upload(g):
        for n, a in list(arrays.items()) + [("norm", norm), ("Kc", kv0[0]), ("Vc", kv0[1])]:
            g(n).upload(a)

    def issue(enc, g):
        enc.add(g("x"), g("o"), g("x"))
        enc.rmsnorm(g("x"), g("norm"), g("h"), 1e-5)
        enc.matmul(g("Wq"), g("h"), g("q"))
        enc.matmul(g("Wk"), g("h"), g("k"))
        enc.matmul(g("Wv"), g("h"), g("v"))
        enc.rope(g("q"), H, hd, 2, 500000.0)
        enc.rope(g("k"), KV, hd, 2, 500000.0)
        enc.kv_store(g("k"), g("Kc"))
        enc.kv_store(g("v"), g("Vc"))
        enc.attention(g("q"), g("Kc"), g("Vc"), g("att"), H, KV, 1 / np.sqrt(hd), 0, 0.0)
        enc.matmul(g("Wo"), g("att"), g("ao"))
        enc.add(g("x"), g("ao"), g("x"))
        enc.rmsnorm(g("x"), g("norm"), g("h"), 1e-5)
        enc.matmul(g("Wg"), g("h"), g("g"))
        enc.matmul(g("Wu"), g("h"), g("u"))
        enc.swiglu(g("g"), g("u"), g("s"))
        enc.matmul(g("Wd"), g("s"), g("o"))
        enc.add(g("x"), g("o"), g("x"))
        enc.rmsnorm(g("x"), g("norm"), g("h2"), 1e-5)
        enc.matmul(g("Wz"), g("h2"), g("z"))
        enc.rmsnorm(g("x"), g("norm"), g("h3"), 1e-5)
        enc.matmul(g("Wz"), g("h3"), g("z2"))

    def prep(step):
        def f(g):
            g("x").upload(x0 * (step + 1))
            g("o").upload(o0)
        return f

    positions = [0, 1, 7, 40, 150]
    steps = [(pos, 0, prep(i)) for i, pos in enumerate(positions)]

    def out(g, pos):
        return np.concatenate([g(n).to_numpy()[0] for n in ("x", "h", "h2", "h3", "q", "k", "v", "att", "ao", "s", "o", "z", "z2")] +
                              [g("Kc").to_numpy()[pos].astype(np.float32), g("Vc").to_numpy()[pos].astype(np.float32)])
    (cpu, _), (fused, _), (split, _) = _three_ways(devs, declare, upload, issue, steps, out)
    assert_close("fused stages vs split stages (cuda)", split, fused, 1e-12)
    assert_close("fused stages vs cpu", cpu, fused, 1e-3)


# ---- grouped mat-vecs: one launch for Q/K/V and for gate/up ------------------------------------
# LLMETAL_CUDA_FUSE is read once, when the process makes its CUDA device, so the fused and the
# split runs are two child processes replaying the same plan on the same weights.
_GROUP_CHILD = r"""
import sys, numpy as np
from llmetal import _engine as E
z = np.load(sys.argv[1])
D, FF, KV = (int(v) for v in z["dims"])
dev = E.cuda_device(0)
pool = E.BufferPool(dev)
W = [("Wq", int(z["tq"]), D), ("Wk", int(z["tq"]), KV), ("Wv", int(z["tq"]), KV),
     ("Wg", int(z["tg"]), FF), ("Wu", int(z["tg"]), FF),
     ("Wa", int(z["tq"]), KV), ("Wb", int(z["tg"]), KV)]
for n, t, r in W:
    pool.declare(n, t, [r, D])
for n, c in [("x", D), ("q", D), ("k", KV), ("v", KV), ("g", FF), ("u", FF), ("a", KV), ("b", KV), ("ids", 1)]:
    pool.declare(n, 26 if n == "ids" else 0, [1, c])
pool.reserve()
g = pool.get
for n, _, _ in W:
    g(n).upload(z[n])
enc = E.Encoder(dev, eager=False)
enc.begin_record(1)
enc.matmul(g("Wq"), g("x"), g("q")); enc.matmul(g("Wk"), g("x"), g("k")); enc.matmul(g("Wv"), g("x"), g("v"))
enc.matmul(g("Wg"), g("x"), g("g")); enc.matmul(g("Wu"), g("x"), g("u"))
enc.matmul(g("Wa"), g("x"), g("a")); enc.matmul(g("Wb"), g("x"), g("b"))   # types differ: split
plan = enc.end_record()
rows = []
for step in range(3):
    g("x").upload(z["x"] * (step + 1))
    enc.replay_token(plan, g("ids"), 0, step)
    rows.append(np.concatenate([g(n).to_numpy()[0] for n in "qkvguab"]))
np.save(sys.argv[2], np.stack(rows))
"""


@pytest.mark.parametrize("D", [512, 4352])
@pytest.mark.parametrize("tq,tg", [(Q4_0, Q4_0), (Q8_0, Q4_1), (Q4_K, Q6_K), (Q5_0, Q5_K)])
def test_grouped_matvec_matches_split(devs, rng, tmp_path, tq, tg, D):
    """Q/K/V (three weights, one input) and gate/up (two) run as one kernel_mmvq_group each
    when fused; the results equal LLMETAL_CUDA_FUSE=0's split kernel_mmvq runs bit for bit (the
    same integer dots, the same sums per row). Shapes: K/V rows not a multiple of the warp
    count, and gate/up with more rows than resident warps (several rows per warp). At K = 4352
    a row is 2-3 windows, where the plan can give the few K/V rows 2 warps a row and q's 1 (on
    an H100, with 4 resident mat-vec blocks an SM): each weight must keep, in the group, the
    warps a row it has alone (a row's sum depends on them)."""
    fused, split = _group_runs(_GROUP_CHILD, rng, tmp_path, tq, tg, D, 4100, 200)
    assert (split ** 2).sum() > 0, "split run gave zeros"
    e = nmse(fused, split)
    print(f"grouped vs split: NMSE {e:.3e}, max |diff| {np.abs(fused - split).max():.3e}")
    assert np.array_equal(fused, split), f"grouped mat-vec differs from split: NMSE {e:.3e}"


def _group_runs(child, rng, tmp_path, tq, tg, D, FF, KV, biases=False):
    """Random weights (Q/K/V of type tq, gate/up of tg, two more K/V-sized ones of each) and an
    input through `child` twice: fused (LLMETAL_CUDA_FUSE=1) and split. Returns both outputs."""
    import subprocess
    import sys
    arrs = {n: random_weight(rng, t, r, D) for n, t, r in
            [("Wq", tq, D), ("Wk", tq, KV), ("Wv", tq, KV), ("Wg", tg, FF), ("Wu", tg, FF), ("Wa", tq, KV), ("Wb", tg, KV)]}
    if biases:   # as large as Qwen2.5's K biases
        for n, c in (("bq", D), ("bk", KV), ("bv", KV)):
            arrs[n] = (rng.standard_normal(c) * 40).astype(np.float32)
    src = tmp_path / "in.npz"
    np.savez(src, dims=np.array([D, FF, KV]), tq=tq, tg=tg, x=rng.standard_normal((1, D)).astype(np.float32), **arrs)
    outs = []
    for fuse in ("1", "0"):
        dst = tmp_path / f"out{fuse}.npy"
        env = dict(os.environ, LLMETAL_CUDA_FUSE=fuse)
        r = subprocess.run([sys.executable, "-c", child, str(src), str(dst)], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"fuse={fuse}: {r.stderr[-2000:]}"
        outs.append(np.load(dst))
    return outs


# qwen2's Q/K/V: each matmul followed by the add of its bias row, which kernel_mmvq_group does
# as it stores each row (the fused run's plan covers matmul, add, matmul, add, ... in one launch).
_BIAS_CHILD = _GROUP_CHILD.replace(
    'enc.matmul(g("Wq"), g("x"), g("q")); enc.matmul(g("Wk"), g("x"), g("k")); enc.matmul(g("Wv"), g("x"), g("v"))',
    'for w, y in (("Wq", "q"), ("Wk", "k"), ("Wv", "v")): enc.matmul(g(w), g("x"), g(y)); enc.add(g(y), g("b" + y), g(y))'
).replace(
    'pool.reserve()',
    'for n, c in [("bq", D), ("bk", KV), ("bv", KV)]:\n    pool.declare(n, 0, [c])\npool.reserve()'
).replace(
    'for n, _, _ in W:\n    g(n).upload(z[n])',
    'for n in [w[0] for w in W] + ["bq", "bk", "bv"]:\n    g(n).upload(z[n])'
)
assert _BIAS_CHILD.count('"bq"') == 2 and 'enc.add(' in _BIAS_CHILD, "the bias edits must all apply"


@pytest.mark.parametrize("tq,tg", [(Q4_0, Q4_0), (Q5_0, Q8_0)])   # d 896 (Qwen2.5-0.5B): no K-quants
def test_grouped_matvec_with_bias_matches_split(devs, rng, tmp_path, tq, tg):
    """Q/K/V with qwen2's bias adds after each matmul: fused, one kernel_mmvq_group adds each
    row's bias as it stores the row; split (LLMETAL_CUDA_FUSE=0), kernel_mmvq then kernel_add.
    Bit for bit the same (the same float addition)."""
    D, KV = 896, 128
    fused, split = _group_runs(_BIAS_CHILD, rng, tmp_path, tq, tg, D, 4100, KV, biases=True)
    # the biases reached the outputs: q, k, v differ from the no-bias product by about the bias
    assert np.abs(split[:, :D + 2 * KV]).max() > 20, "biases missing from the split run"
    e = nmse(fused, split)
    print(f"grouped+bias vs split: NMSE {e:.3e}, max |diff| {np.abs(fused - split).max():.3e}")
    assert np.array_equal(fused, split), f"grouped mat-vec with biases differs from split: NMSE {e:.3e}"


# The same weights as a chain: q = Wq x, then every other matmul reads q (quantized by its own
# kernel, then grouped mat-vecs): each launch depends on the one before it.
_PDL_CHILD = _GROUP_CHILD.replace(
    'enc.matmul(g("Wk"), g("x"), g("k")); enc.matmul(g("Wv"), g("x"), g("v"))',
    'enc.matmul(g("Wk"), g("q"), g("k")); enc.matmul(g("Wv"), g("q"), g("v"))').replace(
    'enc.matmul(g("Wg"), g("x"), g("g")); enc.matmul(g("Wu"), g("x"), g("u"))',
    'enc.matmul(g("Wg"), g("q"), g("g")); enc.matmul(g("Wu"), g("q"), g("u"))').replace(
    'enc.matmul(g("Wa"), g("x"), g("a")); enc.matmul(g("Wb"), g("x"), g("b"))',
    'enc.matmul(g("Wa"), g("q"), g("a")); enc.matmul(g("Wb"), g("q"), g("b"))')
assert _PDL_CHILD.count('g("q"), g(') == 6, "the chain's edits must all apply"



def test_pdl_off_is_bit_identical(devs, rng, tmp_path):
    """Programmatic dependent launch only changes when a kernel's blocks start (they wait in
    pdl_wait for the previous kernel's results), never what they compute: a fused graph replay
    gives the same bits with LLMETAL_CUDA_PDL=0. A kernel that read its input before waiting
    would give stale values here, different from run to run."""
    import subprocess
    import sys
    D, FF, KV = 512, 4100, 200
    arrs = {n: random_weight(rng, t, r, D) for n, t, r in
            [("Wq", Q4_0, D), ("Wk", Q4_0, KV), ("Wv", Q4_0, KV), ("Wg", Q4_K, FF), ("Wu", Q4_K, FF),
             ("Wa", Q4_0, KV), ("Wb", Q4_K, KV)]}
    src = tmp_path / "in.npz"
    np.savez(src, dims=np.array([D, FF, KV]), tq=Q4_0, tg=Q4_K, x=rng.standard_normal((1, D)).astype(np.float32), **arrs)
    outs = []
    for pdl in ("1", "0", "1"):
        dst = tmp_path / f"out{len(outs)}.npy"
        env = dict(os.environ, LLMETAL_CUDA_PDL=pdl)
        r = subprocess.run([sys.executable, "-c", _PDL_CHILD, str(src), str(dst)], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"pdl={pdl}: {r.stderr[-2000:]}"
        outs.append(np.load(dst))
    assert (outs[1] ** 2).sum() > 0, "run gave zeros"
    assert np.array_equal(outs[0], outs[1]), "PDL on and off differ"
    assert np.array_equal(outs[0], outs[2]), "two runs with PDL on differ"


# ---- end to end on real weights ----------------------------------------------------------------
def _cut_model():
    p = os.environ.get("LLMETAL_CUT_GGUF")
    if p and Path(p).exists():
        return p
    pytest.skip("no cut model: set LLMETAL_CUT_GGUF (bench/cuda_check.sh writes it with scripts/cut_gguf.py)")


def _greedy(device, path, prompt, n):
    """Logits of the prompt (one batched prefill) and of n-1 greedy decode steps through the
    recorded plan (a CUDA graph on cuda); returns (ids, logits [len(prompt) + n - 1, vocab])."""
    import llmetal
    m = llmetal.load(path, device=device, n_ctx=128, n_batch=16, n_out=16)
    rows = [m.logits(prompt)]
    ids = [int(np.argmax(rows[0][-1]))]
    for i in range(n - 1):
        row = m.decode_step(ids[-1], len(prompt) + i).copy()
        rows.append(row[None])
        ids.append(int(np.argmax(row)))
    return ids, np.concatenate(rows)


def test_end_to_end_cut_smollm2(devs):
    path = _cut_model()
    prompt = [1, 9690, 28, 253, 1345, 314, 1078, 30, 2, 504, 3]   # fixed ids: no tokenizer needed
    (ids_c, lg_c), (ids_g, lg_g) = (_greedy(d, path, prompt, 24) for d in ("cpu", "cuda"))
    # the prompt's logits (prefill, 11 tokens: tensor cores) and every decode step
    e = nmse(lg_g, lg_c)
    print(f"end to end: NMSE {e:.3g}, ids {ids_g}")
    assert ids_c == ids_g, f"greedy ids differ: cpu {ids_c} cuda {ids_g}"
    assert e <= 1e-3, f"logits NMSE {e:.3g} > 1e-3"


def test_describe_is_the_planners_list(devs):
    """What model.plan() shows on cuda is the executor's input: the device's describe() of the
    decode step equals the plain-C++ planner's list for the device's capabilities, and the
    same step recorded on the CPU device plans to the same kernels (the planner reads offsets,
    not addresses). tests/test_cuda_planner.py checks those lists without a GPU."""
    import llmetal
    path = _cut_model()
    plans = {}
    for dev in ("cuda", "cpu"):
        m = llmetal.load(path, device=dev, n_ctx=128, n_batch=16, n_out=16)
        m.enc.begin_record(1)
        m.forward([0], 0, "last")
        plans[dev] = (m, m.enc.end_record())
    m, plan = plans["cuda"]
    caps = m.device.cuda_caps
    print("caps:", {k: v for k, v in caps.items() if k not in ("mv_resident", "mvg_resident")},
          "mv_resident", {t: caps["mv_resident"][t] for t in QUANTS},
          "mvg_resident", {t: caps["mvg_resident"][t] for t in QUANTS})
    got = [tuple(k) for k in m.device.describe(plan)]
    want = [(l["kernel"], l["first"], l["count"], l["fusion"]) for l in E.cuda_plan(plan, caps)["launches"]]
    assert got == want
    from_cpu = [(l["kernel"], l["first"], l["count"], l["fusion"])
                for l in E.cuda_plan(plans["cpu"][1], caps)["launches"]]
    assert from_cpu == want
    assert any(k[3] == "rope_kv_attention" for k in got)


# ---- the persistent decode kernel (LLMETAL_CUDA_PERSISTENT=1, cpp/cuda/persist.cuh) ------------
# The switch is read when a process makes its CUDA device, so each setting runs in a child: the
# child loads a model, prefills a prompt, then decodes greedily through the recorded plan and
# saves every decode step's logits (and says whether the plan ran as kernel_persistent).
_PERSIST_CHILD = r'''
import sys, numpy as np, llmetal
path, dst, n, n_prompt = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
m = llmetal.load(path, device="cuda", n_ctx=256, n_batch=16, n_out=16)
prompt = [1, 9690, 28, 253, 1345, 314, 1078, 30, 2, 504, 3][:n_prompt]
prompt = [t % m.cfg.n_vocab for t in prompt]
ids, rows = [int(np.argmax(m.logits(prompt)[-1]))], []
for i in range(n):
    row = m.decode_step(ids[-1], len(prompt) + i).copy()
    rows.append(row)
    ids.append(int(np.argmax(row)))
names = [k[0] for k in m.plan().kernels]
np.savez(dst, logits=np.array(rows), ids=np.array(ids),
         persistent=np.array(all(k.startswith("kernel_persistent/") for k in names)))
'''


def _persist_runs(tmp_path, path, settings, n=40, n_prompt=11):
    """Decode n steps of `path` in a child per setting (env overrides) after a prompt of
    n_prompt tokens; returns their npz."""
    import subprocess
    import sys
    outs = []
    for i, env_set in enumerate(settings):
        dst = tmp_path / f"persist{i}.npz"
        env = dict(os.environ, **env_set)
        r = subprocess.run([sys.executable, "-c", _PERSIST_CHILD, str(path), str(dst), str(n), str(n_prompt)], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{env_set}: {r.stderr[-3000:]}"
        outs.append(dict(np.load(dst)))
    return outs


GRAPH = {"LLMETAL_CUDA_PERSISTENT": "0"}
PERSIST = {"LLMETAL_CUDA_PERSISTENT": "1"}


def test_persistent_matches_graph_cut_smollm2(devs, tmp_path):
    """The cut real SmolLM2 (Q4_1, its norms 160 threads: the same arithmetic in the same order
    in both paths): every decode step's logits bit-identical to the graph path's, the same
    greedy ids; and under the stress setting too (LLMETAL_CUDA_PERSISTENT_STRESS: 3 gives 5
    blocks taking every instruction's units in reverse order, 42 gives 44 blocks: other warps on
    other SMs for every row, many units a block, the counters exercised)."""
    path = _cut_model()
    g, p, s1, s2 = _persist_runs(tmp_path, path, [GRAPH, PERSIST, {**PERSIST, "LLMETAL_CUDA_PERSISTENT_STRESS": "3"},
                                                 {**PERSIST, "LLMETAL_CUDA_PERSISTENT_STRESS": "42"}])
    assert not g["persistent"] and p["persistent"] and s1["persistent"] and s2["persistent"]
    assert (g["logits"] ** 2).sum() > 0
    for name, o in (("persistent", p), ("stress 3", s1), ("stress 42", s2)):
        assert np.array_equal(o["logits"], g["logits"]), f"{name}: NMSE {nmse(o['logits'], g['logits']):.3g}"
        assert np.array_equal(o["ids"], g["ids"]), name


def _random_llama(path, rng, d, nh, nkv, ff, vocab, layers, wtype, out_type=Q8_0):
    """A llama GGUF of random weights (valid block scales, see random_weight): a shape only."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    w = gguf.GGUFWriter(str(path), "llama")
    for f, v in (("add_block_count", layers), ("add_context_length", 4096), ("add_embedding_length", d),
                 ("add_feed_forward_length", ff), ("add_head_count", nh), ("add_head_count_kv", nkv),
                 ("add_rope_freq_base", 10000.0), ("add_rope_dimension_count", d // nh),
                 ("add_layer_norm_rms_eps", 1e-5), ("add_vocab_size", vocab)):
        getattr(w, f)(v)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"<t{i}>" for i in range(vocab)])
    w.add_token_types([1] * vocab)

    def add(name, t, rows, cols):   # K-quant scales times 6-bit sub-block scales (up to 63): smaller
        a = random_weight(rng, t, rows, cols, (0.0002, 0.002) if t in BLOCK256 else (0.002, 0.02))
        w.add_tensor(name, a, raw_dtype=Q(t))

    add("token_embd.weight", out_type, vocab, d)
    w.add_tensor("output_norm.weight", rng.uniform(0.5, 1.5, d).astype(np.float32))
    add("output.weight", out_type, vocab, d)
    hd = d // nh
    for i in range(layers):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", rng.uniform(0.5, 1.5, d).astype(np.float32))
        w.add_tensor(b + "ffn_norm.weight", rng.uniform(0.5, 1.5, d).astype(np.float32))
        for name, rows, cols in (("attn_q", d, d), ("attn_k", nkv * hd, d), ("attn_v", nkv * hd, d),
                                 ("attn_output", d, d), ("ffn_gate", ff, d), ("ffn_up", ff, d),
                                 ("ffn_down", d, ff)):
            add(b + name + ".weight", wtype, rows, cols)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("wtype,out", [(Q4_0, Q8_0), (Q4_K, Q6_K), (Q8_0, Q8_0)], ids=["Q4_0", "Q4_K", "Q8_0"])
def test_persistent_matches_graph_random_shape(devs, rng, tmp_path, wtype, out):
    """Random weights of a 3072-wide shape (head size 128, 4 query heads a K/V head, mat-vecs
    with S > 1): its norms' 768-thread blocks run on 512 threads in the persistent kernel, the
    sum of squares added in another order, so the bound is NMSE <= 1e-6 per step (random
    weights: greedy ids are not compared)."""
    path = _random_llama(tmp_path / "r.gguf", rng, d=3072, nh=24, nkv=6, ff=8192, vocab=1024, layers=2,
                         wtype=wtype, out_type=out)
    # a one-token prompt: every step on the mat-vecs (random weights' activations overflow the
    # prefill GEMM's fp16 copy of its input)
    g, p = _persist_runs(tmp_path, path, [GRAPH, PERSIST], n=24, n_prompt=1)
    assert p["persistent"] and not g["persistent"]
    e = max(nmse(a, b) for a, b in zip(p["logits"], g["logits"]))
    print(f"persistent vs graph: worst step NMSE {e:.3g}, bit-identical: {np.array_equal(p['logits'], g['logits'])}")
    assert e <= 1e-6
