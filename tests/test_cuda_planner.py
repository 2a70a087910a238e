"""The CUDA planner without a GPU: which kernels a recorded command list becomes on CUDA.

The planner (cpp/cuda/planner.cpp) is plain C++ built into every extension, CUDA or not. Its
inputs are a command list and the device's capabilities (E.cuda_plan's caps; the defaults are
an H100's), so the lists here are recorded on the CPU device and planned for CUDA. Each fusion
of the table (E.cuda_fusions()) is checked on a small hand-built list where it applies and where
one of its preconditions fails; then the whole decode step of SmolLM2 and of the Llama-3-8B
shape. On a GPU, tests/test_cuda.py checks that the device's own listing equals this planner's.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from llmetal import _engine as E

F32, F16, Q4_0, Q4_1, Q8_0, Q4_K = 0, 1, 2, 3, 8, 12


@pytest.fixture(scope="module")
def cpu():
    return E.cpu_device(1)


class Lists:
    """Activations and weights on the CPU device; record() gives a plan of the stages called."""

    def __init__(self, dev, d=256, ff=512, hq=4, hkv=2, hd=64, n_ctx=64, T=1):
        self.dev, self.T = dev, T
        p = self.pool = E.BufferPool(dev)
        for name, width in (("x", d), ("o", d), ("xn", d), ("q", hq * hd), ("k", hkv * hd),
                            ("v", hkv * hd), ("attn", hq * hd), ("g", ff), ("u", ff), ("h", ff),
                            ("y1", d), ("y2", d), ("y3", d)):
            p.declare(name, F32, [T, width])
        p.declare("kc", F16, [n_ctx, hkv * hd])
        p.declare("vc", F16, [n_ctx, hkv * hd])
        p.declare("nw", F32, [d])
        p.reserve()
        self.t = {n: p.get(n) for n in p.names()}
        self.hq, self.hkv, self.hd, self.d = hq, hkv, hd, d
        self.enc = E.Encoder(dev, eager=False)

    def weight(self, ktype, rows, cols):
        qk, bb = E.type_block(ktype)
        buf = self.dev.alloc(rows * cols // qk * bb, "w")
        return E.Tensor(buf, 0, ktype, [rows, cols])

    def record(self, fn):
        self.dev.set_step(0, self.T)
        self.enc.begin_record(self.T)
        fn(self.enc, self.t)
        self.enc.commit()
        return self.enc.end_record()


def kernels(plan, **caps):
    return [(l["kernel"], l["first"], l["count"], l["fusion"]) for l in E.cuda_plan(plan, caps)["launches"]]


def names(plan, **caps):
    return [l["kernel"] for l in E.cuda_plan(plan, caps)["launches"]]


def test_fusion_table():
    """Every fusion has a name, what it matches, its kernel and why; names are unique."""
    fs = E.cuda_fusions()
    assert len({f["name"] for f in fs}) == len(fs) == 8
    for f in fs:
        assert f["matches"] and f["why"] and f["kernel"].startswith("kernel_"), f


def test_add_rmsnorm_q8(cpu):
    L = Lists(cpu)
    W = L.weight(Q4_0, L.d, L.d)

    def step(e, t):
        e.add(t["x"], t["o"], t["x"])
        e.rmsnorm(t["x"], t["nw"], t["xn"], 1e-5)
        e.matmul(W, t["xn"], t["y1"])
    assert kernels(L.record(step)) == [("kernel_add_rmsnorm_q", 0, 2, "add_rmsnorm_q8"),
                                       ("kernel_mmvq<Q4_0>", 2, 1, "q8_reuse")]

    # the norm reads a row that is not 16-byte aligned: no fused kernel, the matmul quantizes
    x4 = L.t["x"].view(4, [1, L.d - 4])
    n4 = L.t["xn"].view(0, [1, L.d - 4])
    W4 = L.weight(F32, L.d, L.d - 4)

    def unaligned(e, t):
        e.add(x4, x4, x4)
        e.rmsnorm(x4, L.t["nw"].view(4, [L.d - 4]), n4, 1e-5)
        e.matmul(W4, n4, t["y1"])
    assert names(L.record(unaligned)) == ["kernel_add", "kernel_rmsnorm", "kernel_matmul<F32>"]


def test_rmsnorm_q8_not_for_a_float_matmul(cpu):
    """One row: the fused norm kernel, quantizing only when a quantized mat-vec reads it."""
    L = Lists(cpu)
    Wq, Wf = L.weight(Q8_0, L.d, L.d), L.weight(F16, L.d, L.d)
    p = L.record(lambda e, t: (e.rmsnorm(t["x"], t["nw"], t["xn"], 1e-5), e.matmul(Wq, t["xn"], t["y1"])))
    assert kernels(p) == [("kernel_add_rmsnorm_q", 0, 1, "rmsnorm_q8"), ("kernel_mmvq<Q8_0>", 1, 1, "q8_reuse")]
    p = L.record(lambda e, t: (e.rmsnorm(t["x"], t["nw"], t["xn"], 1e-5), e.matmul(Wf, t["xn"], t["y1"])))
    assert kernels(p) == [("kernel_add_rmsnorm_q", 0, 1, ""), ("kernel_mv_f16", 1, 1, "")]


def test_swiglu_q8(cpu):
    L = Lists(cpu)
    Wq, Wf = L.weight(Q4_K, L.d, 512), L.weight(F16, L.d, 512)
    p = L.record(lambda e, t: (e.swiglu(t["g"], t["u"], t["h"]), e.matmul(Wq, t["h"], t["y1"])))
    assert kernels(p) == [("kernel_swiglu_q", 0, 1, "swiglu_q8"), ("kernel_mmvq<Q4_K>", 1, 1, "q8_reuse")]
    l0 = E.cuda_plan(p)["launches"][0]
    assert l0["qb"] == 256 and l0["qcmd"] == 1   # Q4_K reads 256-value blocks
    # the matmul reads another tensor: split, and the matmul quantizes its own input
    p = L.record(lambda e, t: (e.swiglu(t["g"], t["u"], t["h"]), e.matmul(Wq, t["g"], t["y1"])))
    assert names(p) == ["kernel_swiglu", "kernel_quantize_q8", "kernel_mmvq<Q4_K>"]
    p = L.record(lambda e, t: (e.swiglu(t["g"], t["u"], t["h"]), e.matmul(Wf, t["h"], t["y1"])))
    assert names(p) == ["kernel_swiglu", "kernel_mv_f16"]


def test_mmvq_group(cpu):
    L = Lists(cpu)
    W1, W2, W3 = (L.weight(Q4_1, L.d, L.d) for _ in range(3))
    W8 = L.weight(Q8_0, L.d, L.d)
    p = L.record(lambda e, t: [e.matmul(w, t["xn"], t[y]) for w, y in ((W1, "y1"), (W2, "y2"), (W3, "y3"))])
    assert kernels(p) == [("kernel_quantize_q8", 0, 1, ""), ("kernel_mmvq_group<Q4_1>", 0, 3, "mmvq_group")]
    # another weight type: two launches reading one quantization
    p = L.record(lambda e, t: [e.matmul(w, t["xn"], t[y]) for w, y in ((W1, "y1"), (W8, "y2"))])
    assert kernels(p) == [("kernel_quantize_q8", 0, 1, ""), ("kernel_mmvq<Q4_1>", 0, 1, ""),
                          ("kernel_mmvq<Q8_0>", 1, 1, "q8_reuse")]
    # the second output is the first one: split (each sees the other's writes), then the third
    # would be alone
    p = L.record(lambda e, t: [e.matmul(w, t["xn"], t[y]) for w, y in ((W1, "y1"), (W2, "y1"), (W3, "y3"))])
    assert kernels(p) == [("kernel_quantize_q8", 0, 1, ""), ("kernel_mmvq<Q4_1>", 0, 1, ""),
                          ("kernel_mmvq_group<Q4_1>", 1, 2, "mmvq_group")]
    # an output overwrites the input: the next matmul must quantize again
    p = L.record(lambda e, t: [e.matmul(W1, t["xn"], t["xn"]), e.matmul(W2, t["xn"], t["y2"])])
    assert names(p) == ["kernel_quantize_q8", "kernel_mmvq<Q4_1>", "kernel_quantize_q8", "kernel_mmvq<Q4_1>"]


def test_mmvq_group_with_bias_adds(cpu):
    """qwen2's Q/K/V: each matmul followed by its bias add, in place. One kernel_mmvq_group
    covers the six commands (the adds as its epilogue); an add that is not a bias row of the
    matmul's own output (another destination, a full-size operand) ends the group."""
    L = Lists(cpu)
    W = [L.weight(Q4_1, L.d, L.d) for _ in range(3)]
    B = E.Tensor(cpu.alloc(L.d * 4, "bias"), 0, F32, [L.d])

    def qkv_bias(e, t):
        for w, y in zip(W, ("y1", "y2", "y3")):
            e.matmul(w, t["xn"], t[y])
            e.add(t[y], B, t[y])
    p = L.record(qkv_bias)
    assert kernels(p) == [("kernel_quantize_q8", 0, 1, ""), ("kernel_mmvq_group<Q4_1>", 0, 6, "mmvq_group")]
    # the first add writes elsewhere: not the matmul's epilogue (and, a stage between, the next
    # matmul quantizes its input again)
    p = L.record(lambda e, t: [e.matmul(W[0], t["xn"], t["y1"]), e.add(t["y1"], B, t["o"]),
                               e.matmul(W[1], t["xn"], t["y2"]), e.add(t["y2"], B, t["y2"])])
    assert kernels(p) == [("kernel_quantize_q8", 0, 1, ""), ("kernel_mmvq<Q4_1>", 0, 1, ""), ("kernel_add", 1, 1, ""),
                          ("kernel_quantize_q8", 2, 1, ""), ("kernel_mmvq<Q4_1>", 2, 1, ""), ("kernel_add", 3, 1, "")]
    # a bias only on the last matmul is still covered; an add of a whole tensor is not a bias
    p = L.record(lambda e, t: [e.matmul(W[0], t["xn"], t["y1"]), e.matmul(W[1], t["xn"], t["y2"]),
                               e.add(t["y2"], B, t["y2"])])
    assert kernels(p) == [("kernel_quantize_q8", 0, 1, ""), ("kernel_mmvq_group<Q4_1>", 0, 3, "mmvq_group")]
    L2 = Lists(cpu, T=2)
    W2 = [L2.weight(Q4_1, L2.d, L2.d) for _ in range(2)]
    Bf = E.Tensor(cpu.alloc(2 * L2.d * 4, "b"), 0, F32, [2, L2.d])
    p = L2.record(lambda e, t: [e.matmul(W2[0], t["xn"], t["y1"]), e.add(t["y1"], Bf, t["y1"]),
                                e.matmul(W2[1], t["xn"], t["y2"])])
    assert kernels(p) == [("kernel_quantize_q8", 0, 1, ""), ("kernel_mmvq<Q4_1>", 0, 1, ""), ("kernel_add", 1, 1, ""),
                          ("kernel_quantize_q8", 2, 1, ""), ("kernel_mmvq<Q4_1>", 2, 1, "")]


def _rope_kv(L, t, e, v="v"):
    e.rope(t["q"], L.hq, L.hd, E.ROPE_NORM, 10000.0)
    e.rope(t["k"], L.hkv, L.hd, E.ROPE_NORM, 10000.0)
    e.kv_store(t["k"], t["kc"])
    e.kv_store(t[v], t["vc"])


def test_rope_kv_store(cpu):
    L = Lists(cpu, T=2)   # two tokens: the attention is not fused with the rope
    p = L.record(lambda e, t: _rope_kv(L, t, e))
    assert kernels(p) == [("kernel_rope_kv_store", 0, 4, "rope_kv_store")]
    # v is k (rotated by the rope before it is stored): the stages run split
    p = L.record(lambda e, t: _rope_kv(L, t, e, v="k"))
    assert names(p) == ["kernel_rope", "kernel_rope", "kernel_kv_store", "kernel_kv_store"]


def test_rope_kv_attention(cpu):
    L = Lists(cpu)
    Wo = L.weight(Q8_0, L.d, L.hq * L.hd)

    def step(e, t):
        _rope_kv(L, t, e)
        e.attention(t["q"], t["kc"], t["vc"], t["attn"], L.hq, L.hkv, 0.125)
        e.matmul(Wo, t["attn"], t["y1"])
    p = L.record(step)
    assert kernels(p) == [("kernel_attention_decode", 0, 5, "rope_kv_attention"),
                          ("kernel_mmvq<Q8_0>", 5, 1, "q8_reuse")]
    att = E.cuda_plan(p)["launches"][0]
    assert att["qb"] == 32 and att["S"] == 1 and att["grid"] == (1, L.hkv, 1)   # 64 keys: one 128-key split
    # a K-quant o projection reads 256-value blocks: the attention does not quantize for it
    Wk = L.weight(Q4_K, L.d, L.hq * L.hd)
    p = L.record(lambda e, t: (_rope_kv(L, t, e), e.attention(t["q"], t["kc"], t["vc"], t["attn"], L.hq, L.hkv, 0.125),
                               e.matmul(Wk, t["attn"], t["y1"])))
    assert names(p) == ["kernel_attention_decode", "kernel_quantize_q8", "kernel_mmvq<Q4_K>"]


def test_attention_q8_and_its_limits(cpu):
    L = Lists(cpu)
    Wo = L.weight(Q8_0, L.d, L.hq * L.hd)
    att = lambda e, t: e.attention(t["q"], t["kc"], t["vc"], t["attn"], L.hq, L.hkv, 0.125)
    p = L.record(lambda e, t: (att(e, t), e.matmul(Wo, t["attn"], t["y1"])))
    assert kernels(p) == [("kernel_attention_decode", 0, 1, "attention_q8"), ("kernel_mmvq<Q8_0>", 1, 1, "q8_reuse")]
    # head size 32: not the decode kernel's; kernel_attention and the merge of its splits
    L32 = Lists(cpu, hq=8, hkv=4, hd=32)
    p = L32.record(lambda e, t: e.attention(t["q"], t["kc"], t["vc"], t["attn"], 8, 4, 0.18))
    assert names(p) == ["kernel_attention", "kernel_attention_combine"]


def test_decode_attention_splits_capped_at_long_contexts(cpu):
    # one token of an 8B-shaped attention (32 query heads, 8 K/V heads, head size 128): 32-key
    # splits up to n_sm * AD_BLOCKS_SM (2) blocks, then the same grid with longer splits
    for n_ctx, n_sm, S, chunk in ((1024, 132, 32, 32), (16512, 132, 33, 65), (16512, 66, 16, 65), (2112, 132, 33, 32)):
        L = Lists(cpu, hq=32, hkv=8, hd=128, n_ctx=n_ctx)
        p = L.record(lambda e, t: e.attention(t["q"], t["kc"], t["vc"], t["attn"], 32, 8, 0.088))
        att = E.cuda_plan(p, {"n_sm": n_sm})["launches"][0]
        assert att["kernel"] == "kernel_attention_decode"
        assert (att["S"], att["grid"]) == (S, (S, 8, 1)), (n_ctx, n_sm, att)
        assert att["chunk"] == chunk, (n_ctx, att)
        # the K / V stages in dynamic shared memory: 3 passes of 32 keys, K rows padded by 64 bytes
        assert att["smem"] == 3 * 32 * ((128 * 2 + 64) + 128 * 2), att
    # no cap: the splits of the whole context (at most 256)
    att = E.cuda_plan(p, {"ad_blocks_sm": 0})["launches"][0]
    assert (att["S"], att["chunk"]) == (66, 32)   # (the last context above: 2112 keys)
    L = Lists(cpu, hq=32, hkv=8, hd=128, n_ctx=16512)
    p = L.record(lambda e, t: e.attention(t["q"], t["kc"], t["vc"], t["attn"], 32, 8, 0.088))
    assert E.cuda_plan(p, {"ad_blocks_sm": 0})["launches"][0]["S"] == 256
    # the persistent kernel runs the same capped grid: one unit a (split, K/V head) block
    r = E.cuda_plan(p, {"persist": True})
    att, ins = r["launches"][0], r["persist"]["ins"][0]
    assert att["kernel"] == "kernel_persistent/kernel_attention_decode"
    assert (att["S"], ins["units"]) == (33, 33 * 8)


def test_attention_probs_is_one_launch(cpu):
    """The inspection stage: one kernel_attention_probs block per (head, token), never fused
    into the attention next to it."""
    L = Lists(cpu, T=3)
    pool = E.BufferPool(cpu)
    pool.declare("probs", F32, [L.hq, 3, 3])
    pool.reserve()
    probs = pool.get("probs")
    p = L.record(lambda e, t: (e.attention(t["q"], t["kc"], t["vc"], t["attn"], L.hq, L.hkv, 0.125),
                               e.attention_probs(t["q"], t["kc"], probs, L.hq, L.hkv, 0.125)))
    launches = E.cuda_plan(p, {})["launches"]
    assert [(l["kernel"], l["first"], l["count"], l["fusion"]) for l in launches][-1] == \
        ("kernel_attention_probs", 1, 1, "")
    assert tuple(launches[-1]["grid"]) == (L.hq, 3, 1)


@pytest.mark.parametrize("R,V", [(1, 49152), (32, 128256), (3, 1003)])
def test_argmax_is_one_launch(cpu, R, V):
    """Greedy sampling: one kernel_argmax block of 1024 threads per logits row, after the
    logits' own launch, fused with nothing."""
    L = Lists(cpu)
    pool = E.BufferPool(cpu)
    pool.declare("logits", F32, [R, V])
    pool.declare("ids", E.I32, [R])
    pool.reserve()
    p = L.record(lambda e, t: e.argmax(pool.get("logits"), pool.get("ids")))
    launches = E.cuda_plan(p, {})["launches"]
    assert [(l["kernel"], l["first"], l["count"], l["fusion"]) for l in launches] == [("kernel_argmax", 0, 1, "")]
    assert tuple(launches[0]["grid"]) == (R, 1, 1) and launches[0]["block"] == 1024


def test_smollm2_step_with_ids(smollm2_path):
    """A step of 8 sequences with ids: the launches of the step with logits, then kernel_argmax."""
    import llmetal
    m = llmetal.load(str(smollm2_path), device="cpu", n_ctx=64, n_seq=8)
    with_logits = E.cuda_plan(m.step_plan(8, 8).plan)["launches"]
    with_ids = E.cuda_plan(m.step_plan(8, 8, ids=True).plan)["launches"]
    strip = lambda ls: [(l["kernel"], l["first"], l["count"], l["fusion"]) for l in ls]   # noqa: E731
    assert strip(with_ids[:-1]) == strip(with_logits)
    assert strip(with_ids[-1:]) == [("kernel_argmax", m.step_plan(8, 8).n_commands, 1, "")]
    assert tuple(with_ids[-1]["grid"]) == (8, 1, 1)


def test_fusion_off_and_prompt_lists(cpu):
    L = Lists(cpu)
    W = L.weight(Q4_0, L.d, L.d)
    step = lambda e, t: (e.add(t["x"], t["o"], t["x"]), e.rmsnorm(t["x"], t["nw"], t["xn"], 1e-5),
                         e.matmul(W, t["xn"], t["y1"]))
    p = L.record(step)
    assert names(p, fuse=False) == ["kernel_add", "kernel_rmsnorm", "kernel_quantize_q8", "kernel_mmvq<Q4_0>"]
    assert E.cuda_plan(p)["pdl"] and not E.cuda_plan(p, {"pdl": False})["pdl"]
    assert not E.cuda_plan(p, {"cc_major": 8})["pdl"]
    # a prompt of 96 tokens: the GEMM on the tensor cores, and no PDL
    P = Lists(cpu, T=96)
    p = P.record(lambda e, t: e.matmul(W, t["xn"], t["y1"]))
    r = E.cuda_plan(p)
    assert [l["kernel"] for l in r["launches"]] == ["kernel_f32_to_f16", "kernel_dequant_f16<Q4_0>", "kernel_gemm_f16"]
    assert not r["pdl"] and r["hscratch_bytes"] > 0


@pytest.mark.parametrize("T,K,N", [(9, 256, 256), (16, 4096, 4096), (33, 4096, 1024), (64, 14336, 4096),
                                   (64, 4096, 14336)])
def test_few_token_gemm_on_quantized_rows(cpu, T, K, N):
    """9 to 64 tokens (several sequences decoding, a short prompt chunk): kernel_gemm_q streams
    the quantized rows, 128 rows a block (32 a warp), K split over blocks while the row tiles
    give fewer than three blocks an SM, then the splits summed in order; one split writes y
    itself. 65 tokens take the prompt path."""
    L = Lists(cpu, d=K, T=T)
    P = E.BufferPool(cpu)
    P.declare("y", F32, [T, N])
    P.reserve()
    W = L.weight(Q4_0, N, K)
    r = E.cuda_plan(L.record(lambda e, t: e.matmul(W, t["xn"], P.get("y"))))
    ks = [l["kernel"] for l in r["launches"]]
    g = r["launches"][1]
    tiles, nw = -(-N // 128), K // 256                    # row tiles, 256-value windows of a row
    assert g["kernel"] == "kernel_gemm_q<Q4_0>" and g["grid"][0] == tiles and g["block"] == 128
    S, nwp = g["grid"][1], g["nks"]
    assert S == g["S"] and S * nwp >= nw > (S - 1) * nwp                # every window, no empty split
    assert S == 1 or tiles * (S - 1) < 3 * 132                            # no more splits than needed
    assert ks == ["kernel_f32_to_f16", "kernel_gemm_q<Q4_0>"] + (["kernel_splitk_sum"] if S > 1 else [])
    assert r["hscratch_bytes"] >= T * K * 2 + (S * T * N * 4 if S > 1 else 0)
    L65 = Lists(cpu, d=K, T=65)
    P65 = E.BufferPool(cpu)
    P65.declare("y", F32, [65, N])
    P65.reserve()
    r = E.cuda_plan(L65.record(lambda e, t: e.matmul(W, t["xn"], P65.get("y"))))
    assert [l["kernel"] for l in r["launches"]][1] == "kernel_dequant_f16<Q4_0>"


def test_few_token_gemms_share_the_fp16_input(cpu):
    """Q, K, V of 16 tokens read one input: its fp16 copy is made once, before Q's GEMM. A
    matmul whose output overwrites its input ends the sharing, and so does any other stage."""
    L = Lists(cpu, d=4096, T=16)
    Wq, Wk, Wv = L.weight(Q4_0, 4096, 4096), L.weight(Q4_0, 1024, 4096), L.weight(Q4_0, 1024, 4096)
    P = E.BufferPool(cpu)
    for n, w in (("q", 4096), ("k", 1024), ("v", 1024)):
        P.declare(n, F32, [16, w])
    P.reserve()
    y = P.get
    ks = names(L.record(lambda e, t: [e.matmul(w, t["xn"], y(o)) for w, o in ((Wq, "q"), (Wk, "k"), (Wv, "v"))]))
    assert ks.count("kernel_f32_to_f16") == 1 and ks[0] == "kernel_f32_to_f16" and ks.count("kernel_gemm_q<Q4_0>") == 3
    # an add between the matmuls: K converts again
    ks = names(L.record(lambda e, t: [e.matmul(Wq, t["xn"], y("q")), e.add(y("q"), y("q"), y("q")),
                                      e.matmul(Wk, t["xn"], y("k"))]))
    assert ks.count("kernel_f32_to_f16") == 2
    # Q's output is its input (xn overwritten): K converts again
    Ws = L.weight(Q4_0, 4096, 4096)
    ks = names(L.record(lambda e, t: [e.matmul(Ws, t["xn"], t["xn"]), e.matmul(Wk, t["xn"], y("k"))]))
    assert ks.count("kernel_f32_to_f16") == 2
    # another input: converted
    ks = names(L.record(lambda e, t: [e.matmul(Wq, t["xn"], y("q")), e.matmul(Wk, y("q"), y("k"))]))
    assert ks.count("kernel_f32_to_f16") == 2


def _decode_step(model):
    model.enc.begin_record(1)
    model.forward([0], 0, "last")
    return model.enc.end_record()


PER_LAYER = ["kernel_mmvq_group<{w}>",        # Q/K/V
             "kernel_attention_decode",         # rope q/k, K/V stores, attention, o's 8-bit input
             "kernel_mmvq<{w}>",                # o
             "kernel_add_rmsnorm_q",            # residual, ffn_norm, gate/up's 8-bit input
             "kernel_mmvq_group<{w}>",          # gate/up
             "kernel_swiglu_q",                 # swiglu, down's 8-bit input
             "kernel_mmvq<{w}>",                # down
             "kernel_add_rmsnorm_q"]            # residual, next attn_norm (or output_norm)


def _check_decode(plan, n_layer, wtype, emb, out):
    r = E.cuda_plan(plan)
    ks = [l["kernel"] for l in r["launches"]]
    assert len(ks) == 2 + 8 * n_layer + 1
    assert ks[:2] == [f"kernel_embed<{emb}>", "kernel_add_rmsnorm_q"]
    per = [k.format(w=wtype) for k in PER_LAYER]
    for il in range(n_layer):
        assert ks[2 + 8 * il: 10 + 8 * il] == per, f"layer {il}"
    assert ks[-1] == f"kernel_mmvq<{out}>"
    assert r["pdl"]
    # every command is covered exactly once, in order
    covered = []
    for l in r["launches"]:
        if l["kernel"] != "kernel_quantize_q8":
            covered += range(l["first"], l["first"] + l["count"])
    assert covered == list(range(plan.n_commands))
    assert Counter(l["fusion"] for l in r["launches"])["rope_kv_attention"] == n_layer
    return r


def test_smollm2_decode_step(smollm2_path):
    """SmolLM2-135M Q4_1 (30 layers): 8 launches a layer, 243 for the step (513 stages). The
    GPU machine's 4-layer cut (LLMETAL_TEST_SMOLLM2): 35."""
    import llmetal
    m = llmetal.load(str(smollm2_path), device="cpu", n_ctx=512)
    plan = _decode_step(m)
    n_layer = m.cfg.n_layer
    assert n_layer in (30, 4)   # the whole model or the cut
    r = _check_decode(plan, n_layer, "Q4_1", "Q8_0", "Q8_0")
    assert len(r["launches"]) == 2 + 8 * n_layer + 1
    # model.plan()'s per-device listing of a CPU device: one kernel a stage
    assert len(m.device.describe(plan)) == plan.n_commands


def _write_sparse_8b(path, n_ctx_train=8192):
    """A GGUF of Llama-3-8B's config (32 layers, 4096 wide, 32/8 heads, ff 14336, vocab 128256,
    Q4_0 weights, Q8_0 embeddings and output) whose tensor data is never written: the file is
    extended to its full size with a hole (sparse, ~nothing on disk; the CPU device maps it
    read-only and no page is touched). A recorded plan is only planned here, never run, so the
    weights' values do not matter -- only their shapes, types and offsets, which are the real
    file's."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    n_layer, d, nh, nkv, ff, vocab = 32, 4096, 32, 8, 14336, 128256
    hd = d // nh
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(n_layer)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_freq_base(500000.0)
    w.add_rope_dimension_count(hd)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"<t{i}>" for i in range(vocab)])
    w.add_token_types([1] * vocab)
    sizes = []

    def info(name, shape, qt):
        qk, bb = gguf.GGML_QUANT_SIZES[qt]
        n = int(np.prod(shape)) // qk * bb
        if qt == Q.F32:
            w.add_tensor_info(name, shape, np.dtype(np.float32), n)
        else:   # a quantized tensor's shape is given in bytes a row
            w.add_tensor_info(name, (*shape[:-1], shape[-1] // qk * bb), np.dtype(np.uint8), n, raw_dtype=qt)
        sizes.append(n)
    info("token_embd.weight", (vocab, d), Q.Q8_0)
    info("output_norm.weight", (d,), Q.F32)
    info("output.weight", (vocab, d), Q.Q8_0)
    for i in range(n_layer):
        b = f"blk.{i}."
        info(b + "attn_norm.weight", (d,), Q.F32)
        info(b + "ffn_norm.weight", (d,), Q.F32)
        for name, rows, cols in (("attn_q", d, d), ("attn_k", nkv * hd, d), ("attn_v", nkv * hd, d),
                                 ("attn_output", d, d), ("ffn_gate", ff, d), ("ffn_up", ff, d),
                                 ("ffn_down", d, ff)):
            info(b + name + ".weight", (rows, cols), Q.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    # tensor data starts at the header's end rounded up to the alignment (32), each tensor
    # at the next multiple of 32
    a = 32
    size = -(-path.stat().st_size // a) * a + sum(-(-n // a) * a for n in sizes)
    with open(path, "r+b") as f:
        f.truncate(size)
    return path


def test_llama3_8b_shape_decode_step(tmp_path):
    """The Llama-3-8B shape from its config alone (no weights, see _write_sparse_8b): 8
    launches a layer, 259 for the step."""
    import llmetal
    path = _write_sparse_8b(tmp_path / "llama3-8b-shape.gguf")
    m = llmetal.load(str(path), device="cpu", n_ctx=256)
    plan = _decode_step(m)
    r = _check_decode(plan, 32, "Q4_0", "Q8_0", "Q8_0")
    assert len(r["launches"]) == 259
    # head size 128: 32-key splits over the 256 positions; 4 query heads a K/V head, 4 warps each
    att = [l for l in r["launches"] if l["kernel"] == "kernel_attention_decode"][0]
    assert att["S"] == 8 and att["grid"] == (8, 8, 1) and att["block"] == 4 * 4 * 32


@pytest.mark.parametrize("wtype", [10, 11, 23], ids=["Q2_K", "Q3_K", "IQ4_XS"])
def test_low_bit_types_take_the_quantized_mat_vec(cpu, wtype):
    """Q2_K, Q3_K and IQ4_XS decode through kernel_mmvq on 256-value activation blocks, as the
    other K-quants do (not through a float fallback)."""
    L = Lists(cpu)
    W = L.weight(wtype, L.d, 512)
    p = L.record(lambda e, t: (e.swiglu(t["g"], t["u"], t["h"]), e.matmul(W, t["h"], t["y1"])))
    name = E.TYPE_NAMES[wtype]
    assert kernels(p) == [("kernel_swiglu_q", 0, 1, "swiglu_q8"), (f"kernel_mmvq<{name}>", 1, 1, "q8_reuse")]
    assert E.cuda_plan(p)["launches"][0]["qb"] == 256


# ---- the persistent decode kernel's program (planner.h Persist, cpp/cuda/persist.cuh) ----------

def _check_persist(plan, caps=None):
    """The persistent program of a one-token decode list: one instruction a launch, each
    waiting for the one before it; a mat-vec's warps re-planned for units of 16 warps on all but
    one of the resident blocks, every weight keeping its launch's S (so its rows are summed as
    the launch sums them); the other kernels keep their grid and threads."""
    caps = {"persist": True, **(caps or {})}
    r = E.cuda_plan(plan, caps)
    P, L = r["persist"], r["launches"]
    blocks = caps.get("pk_blocks", 132)
    assert P["blocks"] == blocks and P["why"] == ""
    assert len(P["ins"]) == len(L)
    for i, (ins, l) in enumerate(zip(P["ins"], L)):
        assert ins["dep"] == i - 1
        assert l["kernel"].startswith("kernel_persistent/")
        grid = l["grid"][0] * l["grid"][1] * l["grid"][2]
        if "mmvq" in l["kernel"]:
            nw = [w for w in ins["g_nwarps"] if w]
            assert sum(nw) <= (blocks - 1) * 16
            assert ins["units"] == -(-sum(nw) // 16) and ins["nt"] == 512
            assert all(w % l["S"] == 0 for w in nw[:1])   # the first weight has the largest S
        elif "add_rmsnorm" in l["kernel"]:
            assert ins["units"] == grid and ins["nt"] == min(l["block"], 512)
        else:
            assert ins["units"] == grid and ins["nt"] == l["block"] <= 512
    # without the switch the same list runs as launches, and names them so
    r0 = E.cuda_plan(plan)
    assert r0["persist"]["blocks"] == 0
    assert [l["kernel"] for l in r0["launches"]] == [l["kernel"][len("kernel_persistent/"):] for l in L]
    return r


def test_persistent_program_smollm2(smollm2_path):
    import llmetal
    m = llmetal.load(str(smollm2_path), device="cpu", n_ctx=512)
    plan = _decode_step(m)
    r = _check_persist(plan)
    # SmolLM2's Q/K/V (960 rows of one window, S = 1): one row a warp, 60 units
    qkv = r["persist"]["ins"][2]
    assert qkv["g_nwarps"] == (576, 192, 192) and qkv["units"] == 60
    # fewer blocks (the stress test's setting): more rows a warp, never more units than blocks - 1
    r3 = _check_persist(plan, {"pk_blocks": 3})
    assert all(i["units"] <= 2 for i, l in zip(r3["persist"]["ins"], r3["launches"]) if "mmvq" in l["kernel"])


def test_persistent_program_8b_shape(tmp_path):
    import llmetal
    path = _write_sparse_8b(tmp_path / "llama3-8b-shape.gguf")
    m = llmetal.load(str(path), device="cpu", n_ctx=256)
    r = _check_persist(_decode_step(m))
    ins, L = r["persist"]["ins"], r["launches"]
    # the 1024-thread norm runs on 512 threads; the attention's 16 warps fit a block
    assert L[1]["block"] == 1024 and ins[1]["nt"] == 512
    att = [i for i, l in zip(ins, L) if l["kernel"].endswith("kernel_attention_decode")][0]
    assert att["nt"] == 512 and att["units"] == 64


def test_persistent_program_refusals(cpu):
    """Lists the persistent kernel does not take run as launches, and the plan says why: a
    prompt's list, a list without PDL (before sm_90), a kernel with no persistent body (F16
    weights' kernel_mv_f16). A lone quantized matmul is taken."""
    L = Lists(cpu)
    W = L.weight(Q4_0, L.d, L.d)
    p = L.record(lambda e, t: e.matmul(W, t["xn"], t["y1"]))
    r = _check_persist(p)   # its own quantization, then the mat-vec
    assert [l["kernel"] for l in r["launches"]] == ["kernel_persistent/kernel_quantize_q8",
                                                     "kernel_persistent/kernel_mmvq<Q4_0>"]
    r = E.cuda_plan(p, {"persist": True, "cc_major": 8})
    assert r["persist"]["blocks"] == 0 and "decode" in r["persist"]["why"]
    assert not r["launches"][0]["kernel"].startswith("kernel_persistent/")
    Wf = L.weight(F16, L.d, L.d)
    r = E.cuda_plan(L.record(lambda e, t: e.matmul(Wf, t["xn"], t["y1"])), {"persist": True})
    assert r["persist"]["blocks"] == 0 and "kernel_mv_f16" in r["persist"]["why"]
    L8 = Lists(cpu, T=16)
    W8 = L8.weight(Q4_0, L8.d, L8.d)
    r = E.cuda_plan(L8.record(lambda e, t: e.matmul(W8, t["xn"], t["y1"])), {"persist": True})
    assert r["persist"]["blocks"] == 0
