"""The Metal device, verified through the CPU emulation of Metal (the `metal-emu` device).

`metal-emu` runs the Metal device's own dispatch plan (cpp/metal/dispatch.cpp: kernel names,
buffer indices, grids, threadgroup sizes and memory, barriers) with the unmodified
metal/*.metal kernels compiled as C++ (cpp/metal_emu/prepass.py + metal_shim.h), one fiber
per Metal thread, so barriers and SIMD-group operations rendezvous as on a GPU. Every test runs
under two schedules: "forward" and "reverse" (threads, threadgroups, and the dispatches between
two barriers in reverse order), and threadgroup memory starts as NaN: a missing barrier or an
unwritten element shows up as a wrong or non-finite result.

What this cannot check (needs a Mac: .github/workflows/macos.yml): that the Metal compiler
accepts the sources, address-space errors, fast-math numerics, and speed.

Contents:
  * every stage test of tests/test_stages.py (same inputs, poisoning, guard rows, tolerances)
    on metal-emu, except rope, whose tolerance is 1e-7 here: Metal has no double, the angle is
    float (as in ggml's kernels), off by ~1e-4 rad at position 1000;
  * mat-vec and tiled (simdgroup matrices) matmul for every weight type against gguf's
    dequantization; embed for every weight type;
  * the plan: hazards found by the planner (barriers), one command buffer per token,
    no allocation per token; a whole cut SmolLM2 run against the CPU device;
  * the emulator's self-tests: a missing barrier reads NaN, divergent simd_sum and a barrier
    not reached by every thread are reported with file:line, shuffles and 8x8 matrices; its
    pool of OS threads (1 and 3) runs every threadgroup once and names the first failing
    group in the schedule's order.
The whole SmolLM2 and Gemma-3 on metal-emu: tests/test_metal_emu_models.py.
"""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from llmetal import _engine as E

if "metal-emu" not in E.build_info()["devices"]:
    pytest.skip("this build has no metal-emu device (configure with -DLLMETAL_METAL_EMU=ON)",
                allow_module_level=True)

import test_stages as S  # noqa: E402  (the stage tests, re-run here on metal-emu)
from test_stages import (  # noqa: E402,F401  (collected by pytest in this module)
    test_add, test_argmax, test_argmax_rejects_bad_shapes, test_attention, test_attention_large_biased_keys,
    test_attention_probs,
    test_attention_probs_rejects_bad_shapes_and_positions,
    test_attention_probs_weight_v_as_attention_does, test_embed, test_embed_rejects_ids_outside_vocab, test_glu,
    test_kv_store, test_kv_store_rejects_positions_past_context, test_logits, test_matmul,
    test_rmsnorm, test_rmsnorm_per_head, test_rope)

# LLMETAL_METAL=real (the macOS workflow, on Apple hardware): the same tests on the real Metal
# device instead of the emulator (the emulator's self-tests still run on the emulator).
# Builds with the Linux Metal shim (-DLLMETAL_METAL_SHIM=ON, as .ci/run does): a third
# "schedule", "metal", runs the same tests through cpp/metal/device.mm itself on the shim
# (tests/metal_shim: the Metal API over this emulator; see tests/test_metal_shim.py).
REAL = os.environ.get("LLMETAL_METAL") == "real"
SHIM = not REAL and bool(E.build_info().get("metal_shim"))
SCHEDULES = ["gpu"] if REAL else ["forward", "reverse"] + (["metal"] if SHIM else [])
_DEVICES = {}


def emu_device(schedule):
    if schedule not in _DEVICES:
        real = REAL or schedule == "metal"
        _DEVICES[schedule] = E.metal_device() if real else E.metal_emu_device(schedule)
    return _DEVICES[schedule]


def device_name(schedule):
    return "metal" if REAL or schedule == "metal" else f"metal-emu:{schedule}"


@pytest.fixture(params=SCHEDULES)
def device(request, monkeypatch):
    """The metal-emu device under each schedule (replaces test_stages' cpu/cuda fixture)."""
    monkeypatch.setitem(S.TOL, "rope", 1e-7)   # float angles: see the module docstring
    return emu_device(request.param)


@pytest.fixture
def simd():
    """SIMD levels only concern the CPU device: one run."""
    return "n/a"


# ---- every weight type: mat-vec and tiled matmul, embed -------------------------------------
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import quants  # noqa: E402

import test_matmul as TM  # noqa: E402


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("wtype", TM.ALL_TYPES, ids=lambda t: t.name)
def test_matmul_all_types(schedule, wtype):
    """M = 1, 3 (mat-vec kernel_matmul_<t>), 17, 40 (tiled kernel_matmul_mm_<t>, with a partial
    tile); K with odd block counts; N = 35 (a partial tile of 32 and of 64 rows). Longer rows for the
    mat-vec, M = 1 and 8: K = 1280 (block types), 1030 and 1100 (float types: K % 4 != 0, and
    K % 8 != 0), so that 8 tokens' activations take 3 chunks of threadgroup memory."""
    dev = emu_device(schedule)
    rng = np.random.default_rng(4321 + int(wtype))
    block = E.type_block(int(wtype))[0]
    ks = {1: [64, 100], 32: [32, 96], 256: [256, 768]}[block]
    long_ks = {1: [1030, 1100], 32: [1280], 256: [1280]}[block]
    shapes = [(M, K) for M in (1, 3, 17, 40) for K in ks] + [(M, K) for M in (1, 8) for K in long_ks]
    for M, K in shapes:
        N = 35
        wq = TM.make_weights(rng, wtype, N, K)
        ref_w = quants.dequantize(wq, wtype).astype(np.float64).reshape(N, K)
        x = rng.standard_normal((M, K)).astype(np.float32)
        pool = E.BufferPool(dev)
        pool.declare("W", int(wtype), [N, K]); pool.declare("x", 0, [M, K]); pool.declare("y", 0, [M + 1, N])
        pool.reserve()
        W, X, Y = pool.get("W"), pool.get("x"), pool.get("y")
        W.upload(wq); X.upload(x)
        Y.upload(np.full((M + 1, N), np.nan, np.float32))
        E.Encoder(dev, eager=True).matmul(W, X, Y.rows(0, M))
        y = Y.to_numpy()
        assert np.isnan(y[M]).all(), f"{wtype.name} M={M} K={K}: wrote past the output"
        y = y[:M]
        assert np.isfinite(y).all(), f"{wtype.name} {schedule} M={M} K={K}: unwritten or non-finite outputs"
        ref = x.astype(np.float64) @ ref_w.T
        err = TM.nmse(y, ref)
        # no activation quantization here: float32 dot products of exact weights, except in the
        # tiled kernel (M > 8), whose weight tile is half precision for the block types: each
        # weight rounded to 11 bits, NMSE ~ 2^-22 / 3 ~ 8e-8 (F16 exact, F32 and BF16 stay float)
        tol = 1e-6 if M > 8 and wtype not in (T.F32, T.BF16, T.F16) else 1e-10
        assert err <= tol, f"{wtype.name} {schedule} M={M} K={K} N={N}: NMSE {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("wtype", TM.ALL_TYPES, ids=lambda t: t.name)
def test_embed_all_types(wtype):
    dev = emu_device("reverse")
    rng = np.random.default_rng(99 + int(wtype))
    block = E.type_block(int(wtype))[0]
    V, D = 40, max(block, 64)
    wq = TM.make_weights(rng, wtype, V, D)
    ref_w = quants.dequantize(wq, wtype).reshape(V, D)
    ids = np.array([0, V - 1, 7, 7, 23], np.int32)
    pool = E.BufferPool(dev)
    pool.declare("W", int(wtype), [V, D]); pool.declare("ids", 26, [5]); pool.declare("out", 0, [5, D])
    pool.reserve()
    pool.get("W").upload(wq); pool.get("ids").upload(ids)
    E.Encoder(dev, eager=True).embed(pool.get("W"), pool.get("ids"), pool.get("out"), 1.0)
    got, want = pool.get("out").to_numpy(), ref_w[ids].astype(np.float32)
    if REAL:
        # Apple compiles with fast math: q*d + m may become one fma (one rounding, not two)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))
    else:
        np.testing.assert_array_equal(got, want)   # the emulator: -ffp-contract=off, as the reference


# ---- the plan ---------------------------------------------------------------------------------
def test_planner_puts_barriers_on_hazards():
    """Dispatches that only read what earlier ones read run without a barrier; one that reads
    what an earlier one wrote gets one (counted by the device)."""
    dev = emu_device("reverse")
    pool = E.BufferPool(dev)
    for n in ("a", "b", "c", "d", "e"):
        pool.declare(n, 0, [4, 64])
    pool.reserve()
    a, b, c, d, e = (pool.get(n) for n in "abcde")
    rng = np.random.default_rng(0)
    va, vb = rng.standard_normal((4, 64)).astype(np.float32), rng.standard_normal((4, 64)).astype(np.float32)
    a.upload(va); b.upload(vb)
    enc = E.Encoder(dev, eager=False)
    c0 = E.metal_counters(dev)
    enc.add(a, b, c)      # c = a + b
    enc.add(b, a, d)      # d = b + a   (independent: no barrier)
    enc.add(c, d, e)      # e = c + d   (reads c and d: barrier)
    enc.add(e, e, c)      # c = 2e      (reads e, overwrites c: barrier)
    enc.commit()
    c1 = E.metal_counters(dev)
    assert c1["command_buffers"] - c0["command_buffers"] == 1
    assert c1["dispatches"] - c0["dispatches"] == 4
    assert c1["barriers"] - c0["barriers"] == 2
    # the reverse schedule ran the first two adds backwards: still right, because they are independent
    np.testing.assert_allclose(c.to_numpy(), 2 * ((va + vb) + (vb + va)), rtol=1e-6)


def _cut_smollm2(tmp_path_factory, layers=2):
    import subprocess
    import sys
    from pathlib import Path

    from llmetal import models
    src = models.resolve("smollm2")
    out = tmp_path_factory.mktemp("cut") / f"smollm2-{layers}l.gguf"
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, str(root / "scripts/cut_gguf.py"), str(src), str(out), "--layers", str(layers)],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def smollm2_cut(tmp_path_factory):
    return _cut_smollm2(tmp_path_factory)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_whole_model_matches_cpu(smollm2_cut, schedule):
    """SmolLM2 cut to 2 layers: a 12-token prompt in one batch (the tiled matmul), then 16
    greedy tokens through the recorded one-token plan (mat-vec; attention in one split, as
    fewer than 256 keys are cached: test_decode_across_a_split_boundary goes past that).
    The CPU device picks the tokens; metal-emu is fed the same ones. At every step: logits NMSE
    <= 1e-3, and the same argmax, except at a near-tie of the CPU's logits (top two within 0.1:
    the CPU quantizes activations to 8 bits, the Metal kernels do not, so a near-tie may break
    either way; then metal-emu's pick must be one of the CPU's tied tokens). One command buffer
    per token; no allocation per token after the first."""
    import llmetal
    from llmetal import reference as R
    prompt = [1, 504, 3458, 282, 4649, 314, 253, 1345, 28, 378, 314, 2]   # a fixed id sequence
    N = 16

    cpu = llmetal.load(str(smollm2_cut), device="cpu", n_ctx=600, n_batch=16, n_out=1)
    cl = [cpu.prefill(prompt).copy()]
    toks = []
    for i in range(N):
        toks.append(int(np.argmax(cl[-1])))
        cl.append(cpu.decode_step(toks[-1], len(prompt) + i).copy())

    m = llmetal.load(str(smollm2_cut), device=device_name(schedule), n_ctx=600, n_batch=16, n_out=1)
    ml = [m.prefill(prompt).copy()]
    counts = []
    for i in range(N):
        c0, a0 = E.metal_counters(m.device)["command_buffers"], E.alloc_count()
        ml.append(m.decode_step(toks[i], len(prompt) + i).copy())
        counts.append((E.metal_counters(m.device)["command_buffers"] - c0, E.alloc_count() - a0))

    ties = 0
    for i, (a, b) in enumerate(zip(ml, cl)):
        e = R.nmse(a, b)
        assert e <= 1e-3, f"step {i}: logits NMSE {e:.2e}"
        top = np.sort(b)[::-1]
        if np.argmax(a) != np.argmax(b):
            ties += 1
            assert top[0] - top[1] < 0.1 and b[np.argmax(a)] >= top[0] - 0.1, \
                f"step {i}: metal-emu picks {np.argmax(a)}, cpu {np.argmax(b)} (cpu margin {top[0] - top[1]:.3f})"
    assert ties <= 2, f"{ties} near-ties broke differently"
    assert all(cb == 1 for cb, _ in counts), f"command buffers per token: {counts}"
    assert all(al == 0 for _, al in counts[1:]), f"allocations per token: {counts}"


# ---- attention splits follow the position -------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("T,pos0,window,n_splits", [
    (1, 0, 0, 1),        # the first token: one key
    (1, 255, 0, 1),      # 256 keys: still one split
    (1, 256, 0, 2),      # 257 keys: two
    (1, 1500, 0, 6),     # 1501 keys: six, not n_ctx / 256 = 8
    (1, 2047, 0, 8),     # the last position: the whole context
    (1, 1500, 300, 2),   # a window of 300 keys: two splits wherever the query is
    (5, 10, 0, 1),       # a batch early in a long context: one split
    (5, 700, 0, 3),      # a batch reading up to 705 keys: three splits of 256
    (9, 2000, 0, 4),     # a batch reads at most four splits (of 512 keys here)
])
def test_attention_splits_follow_the_position(schedule, request, T, pos0, window, n_splits):
    """In a context of 2048 keys, the attention gets as many 256-key splits as its longest
    query reads (its position + 1, at most the window; at most 4 for a batch), counted through
    the emulator's threadgroups (S x heads x T, plus heads x T for the combine when S > 1)
    and its dispatches; the output matches the float64 reference (keys no query may read are
    NaN, as in test_stages)."""
    dev = emu_device(schedule)
    rng, seed = S.rng_for(request)
    H, KV, hd, n_ctx = 9, 3, 64, 2048
    q = (rng.standard_normal((T, H * hd)) * 2.0).astype(np.float32)
    K = rng.standard_normal((n_ctx, KV * hd)).astype(np.float16)
    V = rng.standard_normal((n_ctx, KV * hd)).astype(np.float16)
    K[pos0 + T:] = V[pos0 + T:] = np.nan
    if window > 0 and pos0 - window + 1 > 0:
        K[:pos0 - window + 1] = V[:pos0 - window + 1] = np.nan
    scale = 1.0 / np.sqrt(hd)
    rig = S.Rig(dev, {"q": q, "K": K, "V": V}, {"out": (S.F32, (T, H * hd))})
    enc = S.encoder(dev, pos0, T)
    c0 = E.metal_counters(dev)
    enc.attention(rig["q"], rig["K"], rig["V"], rig["out"], H, KV, scale, window, 0.0)
    got = rig.out("out", seed, "attention")   # waits: the shim runs command buffers when waited for
    c1 = E.metal_counters(dev)
    assert c1["dispatches"] - c0["dispatches"] == (2 if n_splits > 1 else 1)
    assert c1["emu_threadgroups"] - c0["emu_threadgroups"] == n_splits * H * T + (H * T if n_splits > 1 else 0)
    ref = S.R.attention(q, K, V, H, KV, pos0, scale, window, 0.0)
    S.check("attention", got, ref, seed, f"T={T} pos0={pos0} window={window} {schedule}")


_BOUNDARY_REF = {}


@pytest.fixture(scope="module")
def smollm2_cut1(tmp_path_factory):
    return _cut_smollm2(tmp_path_factory, layers=1)


@pytest.mark.parametrize("schedule", [s for s in SCHEDULES if s != "forward"])
def test_decode_across_a_split_boundary(smollm2_cut1, schedule):
    """The recorded one-token plan keeps its dispatches for one count of attention splits and
    is planned again when a step reads more (or fewer) 256-key chunks: SmolLM2 cut to 1 layer,
    a 250-token prompt, then tokens at positions 250..257 (the split count goes from 1 to 2 at
    256) and a jump back to position 100 (1 again). Every step's logits match the float64
    model (NMSE <= 1e-6, as tests/test_metal_emu_models.py); the plan is planned 3 times
    (positions 250, 256 and 100). On device.mm (shim) each token's command buffer was encoded
    by the call before, except the first and the one after the jump, whose encoded-ahead
    command buffer (for position 258) is dropped unused. (The 250-token prefill costs ~17 s
    in the emulator: the forward schedule is left to the stage test above.)"""
    import llmetal
    from llmetal import reference as R
    rng = np.random.default_rng(7)
    prompt = [1] + rng.integers(2, 49152, 249).tolist()
    toks = rng.integers(2, 49152, 9).tolist()
    positions = list(range(250, 258)) + [100]
    m = llmetal.load(str(smollm2_cut1), device=device_name(schedule), n_ctx=600, n_batch=256, n_out=1)
    m.prefill(prompt)
    p0 = E.metal_plan_counters(m.device)
    got, counts = [], []
    for t, pos in zip(toks, positions):
        c0 = E.metal_counters(m.device)
        got.append(m.decode_step(t, pos).copy())
        c1 = E.metal_counters(m.device)
        counts.append((c1["dispatches"] - c0["dispatches"], c1["barriers"] - c0["barriers"]))
    p1 = E.metal_plan_counters(m.device)
    # Per token: embed, 17 dispatches a layer (18 with the combine of a split attention), the
    # final norm and the logits; a barrier wherever a dispatch reads what one since the last
    # barrier wrote: 12 a layer (Q/K/V share one, so do the two ropes, the K and V stores, and
    # gate/up), 13 with the combine, and one each before the final norm and the logits.
    want = [(21, 15) if pos >= 256 else (20, 14) for pos in positions]
    assert counts == want, f"(dispatches, barriers) per token: {counts}"
    if not _BOUNDARY_REF:
        ref = R.forward(m.gguf, m.cfg, prompt + toks[:8])[250:]
        _BOUNDARY_REF["ref"] = np.concatenate([ref, R.forward(m.gguf, m.cfg, prompt[:100] + toks[8:])[-1:]])
    for i, (a, b) in enumerate(zip(got, _BOUNDARY_REF["ref"])):
        e = R.nmse(a, b)
        assert e <= 1e-6, f"{schedule}: the token at position {positions[i]}: NMSE vs the float64 model {e:.2e}"
    assert p1["replans"] - p0["replans"] == 3, (p0, p1)
    ahead = schedule == "metal"
    assert p1["ahead_used"] - p0["ahead_used"] == (len(positions) - 2 if ahead else 0), (p0, p1)
    assert p1["ahead_dropped"] - p0["ahead_dropped"] == (1 if ahead else 0), (p0, p1)


# ---- the emulator itself ------------------------------------------------------------------------
def _run(name, arrays, args, tg, schedule, grid=(1, 1, 1)):
    E.metal_emu_run_kernel(name, arrays, args, list(grid), list(tg), 0, schedule)


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_emu_barrier_and_poison(schedule):
    """With its barrier the neighbour exchange is exact; without it, some thread reads its
    neighbour's slot before it is written and gets the NaN poison (forward: every thread but
    the last; reverse: the last thread, reading slot 0)."""
    x = np.arange(1, 65, dtype=np.float32)
    out = np.zeros(64, np.float32)
    _run("selftest_neighbour", [x, out], struct.pack("ii", 64, 0), (64, 1, 1), schedule)
    np.testing.assert_array_equal(out, np.roll(x, -1))
    out[:] = 0
    _run("selftest_neighbour", [x, out], struct.pack("ii", 64, 1), (64, 1, 1), schedule)
    assert np.isnan(out).sum() == (63 if schedule == "forward" else 1)


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_emu_reports_divergent_simd_sum(schedule):
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(64, np.float32)
    _run("selftest_simd_sum", [x, out], struct.pack("ii", 64, 0), (64, 1, 1), schedule)
    np.testing.assert_array_equal(out, np.repeat([x[:32].sum(), x[32:].sum()], 32))
    with pytest.raises(ValueError, match=r"divergent SIMD-group operation.*simd_sum at tests/metal_emu/selftest.metal:\d+"
                                         r".*threads 16-31: returned"):
        _run("selftest_simd_sum", [x, out], struct.pack("ii", 64, 1), (64, 1, 1), schedule)


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_emu_reports_barrier_not_reached(schedule):
    out = np.zeros(64, np.float32)
    _run("selftest_early_return", [out], struct.pack("ii", 64, 0), (64, 1, 1), schedule)
    assert (out == 1).all()
    with pytest.raises(ValueError, match=r"threadgroup_barrier not reached by every thread.*"
                                         r"threads 0-31: threadgroup_barrier at tests/metal_emu/selftest.metal:\d+; "
                                         r"threads 32-63: returned"):
        _run("selftest_early_return", [out], struct.pack("ii", 64, 1), (64, 1, 1), schedule)


def test_emu_shuffles_and_matrices():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(32).astype(np.float32)
    out = np.zeros(160, np.float32)
    _run("selftest_shuffles", [x, out], b"\0" * 8, (32, 1, 1), "forward")
    lanes = np.arange(32)
    np.testing.assert_array_equal(out[:32], x[lanes ^ 1])
    np.testing.assert_array_equal(out[32:64], np.where(lanes + 3 < 32, x[np.minimum(lanes + 3, 31)], x))
    np.testing.assert_array_equal(out[64:96], np.full(32, x[5]))
    np.testing.assert_array_equal(out[96:128], np.full(32, x.max()))
    np.testing.assert_array_equal(out[128:160], np.full(32, x.min()))
    A = rng.standard_normal((8, 8)).astype(np.float32)
    B = rng.standard_normal((8, 8)).astype(np.float32)
    C = np.zeros((8, 8), np.float32)
    _run("selftest_mma", [A, B, C], b"\0" * 8, (32, 1, 1), "reverse")
    np.testing.assert_allclose(C, A.astype(np.float64) @ B, rtol=1e-5, atol=1e-5)


COUNTING = not REAL and bool(E.build_info().get("metal_emu_counting"))


@pytest.mark.skipif(not COUNTING, reason="no counted build of the kernels (the compiler has no access hooks)")
def test_emu_counts_memory_traffic():
    """Counting mode (runtime.h): the neighbour exchange, 4 threadgroups of 64 threads, each
    thread moving one float in and out of device and threadgroup memory: exactly 4 bytes per
    thread each way, and the kargs reads as constant; an 8x8 product through simdgroup
    matrices loads 2 x 256 bytes and stores 256 bytes, once per SIMD group (not per lane).
    Off, nothing is recorded, and the results are the same either way."""
    x = np.arange(1, 65, dtype=np.float32)
    outs = []
    try:
        for on in (True, False):
            E.metal_emu_counting(on)
            out = np.zeros(64, np.float32)
            _run("selftest_neighbour", [x, out], struct.pack("ii", 64, 0), (64, 1, 1), "reverse", grid=(4, 1, 1))
            outs.append(out)
            A = np.arange(64, dtype=np.float32).reshape(8, 8)
            C = np.zeros((8, 8), np.float32)
            _run("selftest_mma", [A, A, C], b"\0" * 8, (32, 1, 1), "forward")
            np.testing.assert_allclose(C, A.astype(np.float64) @ A, rtol=1e-6)
            recs = E.metal_emu_traffic()
            if not on:
                assert recs == []
                continue
            nb, mma = recs
            assert nb["kernel"] == "selftest_neighbour" and nb["grid"] == (4, 1, 1) and nb["tg"] == (64, 1, 1)
            assert (nb["device_read"], nb["device_written"]) == (4 * 256, 4 * 256), nb
            assert (nb["threadgroup_read"], nb["threadgroup_written"]) == (4 * 256, 4 * 256), nb
            assert 0 < nb["constant_read"] <= 4 * 256 * 8, nb   # at most both ints per thread
            assert (mma["device_read"], mma["device_written"], mma["threadgroup_read"]) == (512, 256, 0), mma
    finally:
        E.metal_emu_counting(False)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_emu_unknown_kernel_and_schedule():
    with pytest.raises(ValueError, match="no kernel named kernel_nope"):
        _run("kernel_nope", [], b"", (1, 1, 1), "forward")
    with pytest.raises(ValueError, match="schedule must be"):
        E.metal_emu_device("sideways")


# The pool of OS threads (runtime.h): threadgroups of a large dispatch are shared out, each
# whole on one thread. Run in a subprocess per pool size, since the size is read once.
_POOL_SCRIPT = r"""
import struct, sys, numpy as np
from llmetal import _engine as E
# 1. a synchronization error in many threadgroups: the first in the schedule's order is named,
#    however the groups were shared out
for sched, first in (("forward", "(0,0,0)"), ("reverse", "(15,0,0)")):
    out = np.zeros(64, np.float32)
    E.metal_emu_run_kernel("selftest_early_return", [out], struct.pack("ii", 64, 0), [16, 1, 1], [64, 1, 1], 0, sched)
    assert (out == 1).all()
    try:
        E.metal_emu_run_kernel("selftest_early_return", [out], struct.pack("ii", 64, 1), [16, 1, 1], [64, 1, 1], 0, sched)
        raise SystemExit("no error reported")
    except ValueError as e:
        assert "not reached by every thread of threadgroup " + first in str(e), str(e)
# 2. a mat-vec of 64 threadgroups (MV_ROWS = 32 rows each): every group runs once, and the result is exact
dev = E.metal_emu_device(sys.argv[1])
rng = np.random.default_rng(1)
N, K = 2048, 256
w, x = rng.standard_normal((N, K)).astype(np.float32), rng.standard_normal((1, K)).astype(np.float32)
pool = E.BufferPool(dev)
pool.declare("W", 0, [N, K]); pool.declare("x", 0, [1, K]); pool.declare("y", 0, [1, N]); pool.reserve()
pool.get("W").upload(w); pool.get("x").upload(x)
g0 = E.metal_counters(dev)["emu_threadgroups"]
E.Encoder(dev, eager=True).matmul(pool.get("W"), pool.get("x"), pool.get("y"))
assert E.metal_counters(dev)["emu_threadgroups"] - g0 == N // 32
y, ref = pool.get("y").to_numpy(), x.astype(np.float64) @ w.T.astype(np.float64)
assert ((y - ref) ** 2).sum() / (ref ** 2).sum() < 1e-12
print("ok")
"""


@pytest.mark.skipif(REAL, reason="the emulator's thread pool")
@pytest.mark.parametrize("threads", ["1", "3"])
@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_emu_thread_pool(threads, schedule):
    import subprocess
    import sys
    env = dict(os.environ, LLMETAL_EMU_THREADS=threads)
    r = subprocess.run([sys.executable, "-c", _POOL_SCRIPT, schedule], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_emu_thread_pool_size_checked():
    import subprocess
    import sys
    env = dict(os.environ, LLMETAL_EMU_THREADS="zero")
    r = subprocess.run([sys.executable, "-c", _POOL_SCRIPT, "forward"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "LLMETAL_EMU_THREADS must be a number from 1 to 256, not 'zero'" in r.stderr
