"""The engine's core objects: BufferPool, Tensor, Encoder (eager, batched, record/replay),
and the shape checks every stage makes before anything runs.

Stage numerics are in test_stages.py; here the question is whether the machinery around
the stages does what DESIGN.md promises: everything reserved up front and nothing
allocated afterwards, views that address the right bytes, one commit per stage in eager
mode and one per batch otherwise, and a recorded plan that replays to the same results at
any position.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from llmetal import _engine as E
from llmetal import reference as R

F32, F16, Q8_0, I32 = 0, 1, 8, 26


@pytest.fixture(scope="module")
def dev():
    return E.cpu_device(2)


def pool_of(dev, **specs):
    """A reserved pool: name=(type, shape) for each tensor."""
    p = E.BufferPool(dev)
    for name, (t, shape) in specs.items():
        p.declare(name, t, list(shape))
    p.reserve()
    return p


# ---- BufferPool ---------------------------------------------------------------------------
def test_pool_declare_reserve_get(dev):
    p = E.BufferPool(dev)
    a = p.declare("a", F32, [3, 5])
    b = p.declare("b", F16, [7])
    c = p.declare("c", Q8_0, [2, 64])
    assert a.shape == (3, 5) and b.shape == (7,) and c.shape == (2, 64)
    assert p.names() == ["a", "b", "c"]
    n0 = dev.n_allocs
    p.reserve()
    assert dev.n_allocs == n0 + 1, "reserve() must make exactly one allocation (one arena)"
    assert p.n_arenas == 1
    ta, tb, tc = p.get("a"), p.get("b"), p.get("c")
    assert ta.nbytes == 60 and tb.nbytes == 14 and tc.nbytes == 2 * 2 * 34   # 2 rows of 2 blocks of 34 bytes
    # every tensor 256-byte aligned, inside the arena, and not overlapping the next
    spans = sorted((t.offset, t.offset + t.nbytes) for t in (ta, tb, tc))
    for (s0, e0), (s1, _) in zip(spans, spans[1:]):
        assert e0 <= s1
    assert all(s % 256 == 0 for s, _ in spans)
    assert spans[-1][1] <= p.bytes == ta.buffer.bytes
    assert ta.buffer.address == tb.buffer.address == tc.buffer.address
    # reserve() again is a no-op
    p.reserve()
    assert dev.n_allocs == n0 + 1


def test_pool_errors(dev):
    p = E.BufferPool(dev)
    p.declare("x", F32, [4])
    with pytest.raises(ValueError, match="'x' declared twice"):
        p.declare("x", F32, [4])
    with pytest.raises(ValueError, match="non-positive dimension"):
        p.declare("z", F32, [4, 0])
    with pytest.raises(ValueError, match=r"reserve\(\) before get\('x'\)"):
        p.get("x")
    p.reserve()
    with pytest.raises(ValueError, match="no tensor named 'nope'"):
        p.get("nope")
    with pytest.raises(ValueError, match="cannot declare 'y' after reserve"):
        p.declare("y", F32, [4])
    with pytest.raises(ValueError, match="not a multiple of the Q8_0 block size"):
        E.BufferPool(dev).declare("q", Q8_0, [2, 33])


def _decoder_layer_pool(dev, T, n_ctx=64, H=4, KV=2, hd=16, D=64, F=96):
    """Tensors of one small decoder layer: enough to run every stage."""
    return pool_of(
        dev, ids=(I32, [T]), emb=(F32, [50, D]), x=(F32, [T, D]), h=(F32, [T, D]), nw=(F32, [D]),
        wq=(F32, [H * hd, D]), wk=(F16, [KV * hd, D]), wv=(F32, [KV * hd, D]), wo=(F32, [D, H * hd]),
        q=(F32, [T, H * hd]), k=(F32, [T, KV * hd]), v=(F32, [T, KV * hd]), att=(F32, [T, H * hd]),
        kc=(F16, [n_ctx, KV * hd]), vc=(F16, [n_ctx, KV * hd]), o=(F32, [T, D]),
        wg=(F32, [F, D]), wu=(F32, [F, D]), g=(F32, [T, F]), u=(F32, [T, F]), a=(F32, [T, F]),
        wd=(F32, [D, F]), out=(F32, [T, D]), logits=(F32, [T, 50]))


def _fill(p, rng):
    for name in p.names():
        t = p.get(name)
        if t.type == I32:
            t.upload(rng.integers(0, 50, t.shape).astype(np.int32))
        elif t.type == F16:
            t.upload((rng.standard_normal(t.shape) * 0.3).astype(np.float16))
        else:
            t.upload((rng.standard_normal(t.shape) * 0.3).astype(np.float32))


def _layer(enc, p, H=4, KV=2, hd=16):
    """One llama-style layer plus logits, as the forward pass calls the stages."""
    g = p.get
    enc.embed(g("emb"), g("ids"), g("x"), 1.0)
    enc.rmsnorm(g("x"), g("nw"), g("h"), 1e-5)
    enc.matmul(g("wq"), g("h"), g("q"))
    enc.matmul(g("wk"), g("h"), g("k"))
    enc.matmul(g("wv"), g("h"), g("v"))
    enc.rope(g("q"), H, hd, E.ROPE_NORM, 10000.0)
    enc.rope(g("k"), KV, hd, E.ROPE_NORM, 10000.0)
    enc.kv_store(g("k"), g("kc"))
    enc.kv_store(g("v"), g("vc"))
    enc.attention(g("q"), g("kc"), g("vc"), g("att"), H, KV, 0.25)
    enc.matmul(g("wo"), g("att"), g("o"))
    enc.add(g("o"), g("x"), g("x"))
    enc.rmsnorm(g("x"), g("nw"), g("h"), 1e-5)
    enc.matmul(g("wg"), g("h"), g("g"))
    enc.matmul(g("wu"), g("h"), g("u"))
    enc.swiglu(g("g"), g("u"), g("a"))
    enc.matmul(g("wd"), g("a"), g("out"))
    enc.add(g("out"), g("nw"), g("out"))     # one row broadcast over the rows, in place
    enc.geglu(g("g"), g("u"), g("a"))
    enc.logits(g("emb"), g("out"), g("logits"))


N_LAYER_STAGES = 20


class _Tensors:
    """The pool's tensors fetched once (pool.get returns a new Tensor object each time, whose
    shape vector is a heap allocation; the forward pass keeps its tensors, as here)."""

    def __init__(self, pool):
        self.t = {n: pool.get(n) for n in pool.names()}

    def get(self, name):
        return self.t[name]


def test_no_allocation_after_reserve(dev):
    """After reserve and one warm-up pass (per-thread scratch sized to the largest shape),
    many stage calls -- eager, batched, and plan replays -- allocate nothing: neither
    device buffers (device.n_allocs) nor heap memory in engine code (E.alloc_count)."""
    rng = np.random.default_rng(1)
    pool = _decoder_layer_pool(dev, T=1)
    _fill(pool, rng)
    p = _Tensors(pool)
    enc = E.Encoder(dev, eager=True)
    dev.set_step(40, 1)
    enc.begin_record(1)
    _layer(enc, p)
    plan = enc.end_record()                              # (takes the encoder's command list)
    enc.replay(plan, 40)                                 # first replay may build plan state
    _layer(enc, p)                                       # warm-up: scratch, command list
    bat = E.Encoder(dev, eager=False)
    dev.set_step(40, 1)
    _layer(bat, p)
    bat.commit()                                         # warm the batched command list
    n_dev, n_bytes, n_heap = dev.n_allocs, dev.bytes_allocated, E.alloc_count()
    for pos in range(20):
        dev.set_step(pos, 1)
        _layer(enc, p)
        _layer(bat, p)
        bat.commit()
        enc.replay(plan, pos + 20)
    assert dev.n_allocs == n_dev, "device buffers were allocated after reserve()"
    assert dev.bytes_allocated == n_bytes
    assert E.alloc_count() == n_heap, f"{E.alloc_count() - n_heap} heap allocations in engine code"
    del p, pool   # tensors before the device (see test_tensor_outlives_its_device)


# ---- Tensor -------------------------------------------------------------------------------
def test_tensor_views_rows_and_upload(dev):
    p = pool_of(dev, m=(F32, [6, 4]), h=(F16, [3, 8]), q=(Q8_0, [2, 32]))
    m = p.get("m")
    data = np.arange(24, dtype=np.float32).reshape(6, 4)
    m.upload(data)
    assert np.array_equal(m.to_numpy(), data)
    # rows [2, 5) address the same bytes
    r = m.rows(2, 5)
    assert r.shape == (3, 4) and r.offset == m.offset + 2 * 16
    assert np.array_equal(r.to_numpy(), data[2:5])
    r.upload(-data[2:5])
    assert np.array_equal(m.to_numpy()[2:5], -data[2:5]) and np.array_equal(m.to_numpy()[:2], data[:2])
    # a view with another shape and offset, and a reinterpreting view
    v = m.view(16, [2, 8])
    assert np.array_equal(v.to_numpy(), m.to_numpy()[1:5].reshape(2, 8))
    b = m.view(0, [2, 4], I32)
    assert np.array_equal(b.to_numpy(), m.to_numpy()[:2].view(np.int32))
    # download_into an existing array
    out = np.empty((6, 4), np.float32)
    m.download_into(out)
    assert np.array_equal(out, m.to_numpy())
    # dtypes out of to_numpy: F16 as float16, block formats as raw bytes [rows, row_bytes]
    assert p.get("h").to_numpy().dtype == np.float16
    assert p.get("q").to_numpy().shape == (2, 34) and p.get("q").to_numpy().dtype == np.uint8
    # a Tensor constructed over a plain device buffer
    buf = dev.alloc(64, "scratch")
    t = E.Tensor(buf, 32, F32, [2, 4])
    t.upload(np.ones((2, 4), np.float32))
    assert np.array_equal(t.to_numpy(), np.ones((2, 4), np.float32))


def test_tensor_errors(dev):
    p = pool_of(dev, m=(F32, [6, 4]))
    m = p.get("m")
    with pytest.raises(ValueError, match="array has 20 bytes, tensor .* has 96"):
        m.upload(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="array has 192 bytes"):
        m.upload(np.zeros((6, 4), np.float64))
    with pytest.raises(ValueError, match="row slice out of range"):
        m.rows(4, 7)
    with pytest.raises(ValueError, match="row slice out of range"):
        m.rows(3, 2)
    with pytest.raises(ValueError, match="view outside its buffer"):
        m.view(p.bytes - 8, [4])
    with pytest.raises(ValueError, match="unsupported type id 99"):
        E.Tensor(m.buffer, 0, 99, [4])
    with pytest.raises(ValueError, match="Tensor outside its buffer"):
        E.Tensor(dev.alloc(16, "tiny"), 8, F32, [4])
    with pytest.raises(ValueError, match="C-contiguous"):
        m.download_into(np.empty((4, 6), np.float32).T)


# ---- Encoder: eager vs batched -------------------------------------------------------------
def test_eager_and_batched_commits_agree(dev):
    rng = np.random.default_rng(2)
    T = 3
    pe, pb = _decoder_layer_pool(dev, T), _decoder_layer_pool(dev, T)
    _fill(pe, rng)
    for name in pe.names():                       # the same inputs in both pools
        pb.get(name).upload(pe.get(name).to_numpy())
    dev.set_step(7, T)

    eager = E.Encoder(dev, eager=True)
    _layer(eager, pe)
    assert eager.n_commits == N_LAYER_STAGES and eager.n_pending == 0

    bat = E.Encoder(dev, eager=False)
    before = pb.get("logits").to_numpy()
    _layer(bat, pb)
    assert bat.n_commits == 0 and bat.n_pending == N_LAYER_STAGES
    assert np.array_equal(pb.get("logits").to_numpy(), before), "batched stages ran before commit()"
    bat.commit()
    bat.wait()
    assert bat.n_commits == 1 and bat.n_pending == 0
    for name in ("x", "q", "kc", "att", "out", "logits"):
        assert np.array_equal(pe.get(name).to_numpy(), pb.get(name).to_numpy()), name


def test_batched_layer_matches_reference(dev):
    """The whole small layer through the encoder equals the same steps in llmetal.reference
    (a check that the stages compose: bindings in the right order, in-place stages safe)."""
    rng = np.random.default_rng(3)
    T, pos0, H, KV, hd = 4, 9, 4, 2, 16
    p = _decoder_layer_pool(dev, T)
    _fill(p, rng)
    a = {n: p.get(n).to_numpy() for n in p.names()}
    dev.set_step(pos0, T)
    enc = E.Encoder(dev, eager=False)
    _layer(enc, p)
    enc.commit()

    x = R.embed(a["emb"], None, a["ids"])
    h = R.rmsnorm(x, a["nw"], 1e-5)
    q = R.rope(R.matmul(a["wq"], h), H, hd, 0, 10000.0, 1.0, pos0)
    k = R.rope(R.matmul(a["wk"], h), KV, hd, 0, 10000.0, 1.0, pos0)
    v = R.matmul(a["wv"], h)
    kc = R.kv_store(a["kc"], k, pos0)
    vc = R.kv_store(a["vc"], v, pos0)
    att = R.attention(q, kc, vc, H, KV, pos0, 0.25)
    x = R.add(R.matmul(a["wo"], att), x)
    h = R.rmsnorm(x, a["nw"], 1e-5)
    gg, uu = R.matmul(a["wg"], h), R.matmul(a["wu"], h)
    out = R.add(R.matmul(a["wd"], R.swiglu(gg, uu)), a["nw"])
    logits = R.logits(a["emb"], out)
    assert R.nmse(p.get("att").to_numpy(), att) < 1e-8
    assert R.nmse(p.get("a").to_numpy(), R.geglu(gg, uu)) < 1e-8
    assert R.nmse(p.get("logits").to_numpy(), logits) < 1e-8


# ---- Encoder: record and replay ----------------------------------------------------------
def test_record_replay_matches_eager(dev):
    """A plan recorded once replays at any position with the same results as running the
    stages eagerly at that position: positions come from the step buffer, not the plan."""
    rng = np.random.default_rng(4)
    T = 2
    pr, pe = _decoder_layer_pool(dev, T), _decoder_layer_pool(dev, T)
    _fill(pr, rng)
    init = {n: pr.get(n).to_numpy() for n in pr.names()}
    for n, v in init.items():
        pe.get(n).upload(v)

    enc = E.Encoder(dev, eager=True)
    logits_before = pr.get("logits").to_numpy()
    dev.set_step(0, T)
    enc.begin_record(T)
    assert enc.recording
    commits = enc.n_commits
    _layer(enc, pr)
    plan = enc.end_record()
    assert not enc.recording
    assert plan.n_tokens == T and plan.n_commands == N_LAYER_STAGES
    assert plan.stages[:4] == ["embed", "rmsnorm", "matmul", "matmul"] and plan.stages[-1] == "logits"
    assert enc.n_commits == commits, "recording must not commit"
    assert np.array_equal(pr.get("logits").to_numpy(), logits_before), "recording must not run stages"

    eager = E.Encoder(dev, eager=True)
    for pos0 in (0, 5, 31, 62):
        for n in ("ids", "emb", "x", "kc", "vc"):      # fresh inputs for each step
            v = init[n] if n != "ids" else rng.integers(0, 50, T).astype(np.int32)
            pr.get(n).upload(v)
            pe.get(n).upload(v)
        commits = enc.n_commits
        enc.replay(plan, pos0)
        assert enc.n_commits == commits + 1, "a replay is one commit"
        dev.set_step(pos0, T)
        _layer(eager, pe)
        for name in ("q", "kc", "vc", "att", "x", "logits"):
            assert np.array_equal(pr.get(name).to_numpy(), pe.get(name).to_numpy()), (name, pos0)
        # the K/V rows went to the replayed position
        kc = pr.get("kc").to_numpy()
        assert not np.array_equal(kc[pos0:pos0 + T], init["kc"][pos0:pos0 + T]), pos0


def test_replay_token(dev):
    """Decode step: replay_token writes the id, sets the position, runs the plan."""
    rng = np.random.default_rng(5)
    p = _decoder_layer_pool(dev, 1)
    _fill(p, rng)
    enc = E.Encoder(dev, eager=True)
    enc.begin_record(1)
    _layer(enc, p)
    plan = enc.end_record()
    enc.replay_token(plan, p.get("ids"), 17, 12)
    assert p.get("ids").to_numpy().tolist() == [17]
    x_emb = R.embed(p.get("emb").to_numpy(), None, [17])
    # K row 12 of the cache holds this token's rope'd K
    h = R.rmsnorm(x_emb, p.get("nw").to_numpy(), 1e-5)
    k = R.rope(R.matmul(p.get("wk").to_numpy(), h), 2, 16, 0, 10000.0, 1.0, 12)
    assert R.nmse(p.get("kc").to_numpy()[12], k[0]) < 1e-6
    p2 = _decoder_layer_pool(dev, 2)
    enc.begin_record(2)
    _layer(enc, p2)
    plan2 = enc.end_record()
    with pytest.raises(ValueError, match="replay_token needs a plan recorded for one token"):
        enc.replay_token(plan2, p2.get("ids"), 1, 0)


def test_end_record_without_begin(dev):
    with pytest.raises(ValueError, match=r"end_record\(\) without begin_record\(\)"):
        E.Encoder(dev, eager=True).end_record()


# ---- shape checks: every stage rejects bad shapes before running ---------------------------
@pytest.fixture(scope="module")
def sp(dev):
    """Tensors of deliberately mismatched shapes."""
    return pool_of(
        dev, W=(F32, [8, 16]), W3=(F32, [2, 8, 16]), Wi=(I32, [8, 16]), ids=(I32, [3]),
        ids2=(I32, [3, 1]), x=(F32, [3, 16]), x15=(F32, [3, 15]), xh=(F16, [3, 16]), y=(F32, [3, 8]),
        y9=(F32, [3, 9]), y4=(F32, [4, 8]), w=(F32, [16]), w8=(F32, [8]), q=(F32, [3, 64]),
        q3=(F32, [3, 4, 16]), ff=(F32, [4]), kc=(F16, [32, 32]), vc=(F16, [32, 32]), kc24=(F16, [32, 24]),
        kcf=(F32, [32, 32]), vc16=(F16, [16, 32]), o=(F32, [3, 64]), o2=(F32, [2, 64]))


def _bad_calls(t):
    """(stage, call, message regex): each call must fail with a ValueError naming the stage."""
    return [
        ("embed", lambda e: e.embed(t("W3"), t("ids"), t("x")), "weight must be 2-D"),
        ("embed", lambda e: e.embed(t("Wi"), t("ids"), t("x")), "I32 is not a weight format"),
        ("embed", lambda e: e.embed(t("W"), t("ids2"), t("x")), r"ids must be I32 \[T\]"),
        ("embed", lambda e: e.embed(t("W"), t("x"), t("x")), r"ids must be I32 \[T\]"),
        ("embed", lambda e: e.embed(t("W"), t("ids"), t("y4")), r"out must be \[T, dim\]"),
        ("rmsnorm", lambda e: e.rmsnorm(t("x"), t("w8"), t("x"), 1e-5), "weight length must equal"),
        ("rmsnorm", lambda e: e.rmsnorm(t("xh"), t("w"), t("x"), 1e-5), "x must be F32"),
        ("rmsnorm", lambda e: e.rmsnorm(t("x"), t("w"), t("y"), 1e-5), "out must have the shape of x"),
        ("matmul", lambda e: e.matmul(t("W"), t("x15"), t("y")), "x row length 15 != weight row length 16"),
        ("matmul", lambda e: e.matmul(t("W"), t("x"), t("y9")), r"y must be \[3, 8\]"),
        ("matmul", lambda e: e.matmul(t("W"), t("x"), t("y4")), r"y must be \[3, 8\]"),
        ("matmul", lambda e: e.matmul(t("Wi"), t("x"), t("y")), "I32 is not a weight format"),
        ("matmul", lambda e: e.matmul(t("W3"), t("x"), t("y")), "weight must be 2-D"),
        ("logits", lambda e: e.logits(t("W"), t("x15"), t("y")), "x row length"),
        ("rope", lambda e: e.rope(t("x15"), 2, 4, 0, 1e4), "not divisible by n_heads"),
        ("rope", lambda e: e.rope(t("q"), 4, 18, 0, 1e4), "n_rot must be even and in 1..head_dim 16"),
        ("rope", lambda e: e.rope(t("q"), 4, 7, 0, 1e4), "n_rot must be even"),
        ("rope", lambda e: e.rope(t("q"), 4, 16, 1, 1e4), r"mode must be 0 \(norm\) or 2 \(neox\)"),
        ("rope", lambda e: e.rope(t("q"), 4, 16, 0, 1e4, 1.0, t("ff")), "freq factors shorter"),
        ("rope", lambda e: e.rope(t("q3"), 2, 16, 0, 1e4), "4 heads in its middle dimension"),
        ("rope", lambda e: e.rope(t("xh"), 1, 16, 0, 1e4), "x must be F32"),
        ("kv_store", lambda e: e.kv_store(t("x"), t("kc")), "src row length != cache row length"),
        ("kv_store", lambda e: e.kv_store(t("q"), t("kcf")), "cache must be F16"),
        ("attention", lambda e: e.attention(t("q"), t("kc"), t("vc"), t("o"), 4, 3, 0.25),
         "must be a multiple of n_kv_heads"),
        ("attention", lambda e: e.attention(t("q"), t("kc24"), t("kc24"), t("o"), 4, 2, 0.25),
         "do not match n_kv_heads"),
        ("attention", lambda e: e.attention(t("q"), t("kc"), t("vc16"), t("o"), 4, 2, 0.25),
         "K/V caches must both be"),
        ("attention", lambda e: e.attention(t("q"), t("kcf"), t("vc"), t("o"), 4, 2, 0.25),
         "K/V caches must be F16"),
        ("attention", lambda e: e.attention(t("q"), t("kc"), t("vc"), t("o2"), 4, 2, 0.25),
         "out must have the shape of q"),
        ("attention", lambda e: e.attention(t("q"), t("kc"), t("vc"), t("o"), 4, 2, 0.25, -1),
         "window must be >= 0"),
        ("add", lambda e: e.add(t("x"), t("w8"), t("x")), "b must have the shape of a or be one row"),
        ("add", lambda e: e.add(t("x"), t("x"), t("y")), "out must have the shape of a"),
        ("add", lambda e: e.add(t("x"), t("x15"), t("x")), "b must have the shape of a or be one row"),
        ("add", lambda e: e.add(t("xh"), t("x"), t("x")), "a must be F32"),
        ("swiglu", lambda e: e.swiglu(t("x"), t("y"), t("x")), "gate, up and out must have one shape"),
        ("geglu", lambda e: e.geglu(t("x"), t("x"), t("y")), "gate, up and out must have one shape"),
    ]


@pytest.mark.parametrize("i", range(len(_bad_calls(None))))
@pytest.mark.parametrize("eager", [True, False])
def test_stage_shape_errors(dev, sp, i, eager):
    stage, call, msg = _bad_calls(sp.get)[i]
    enc = E.Encoder(dev, eager=eager)
    with pytest.raises(ValueError, match=msg) as ei:
        call(enc)
    assert str(ei.value).startswith(stage + ":"), f"error does not name the stage: {ei.value}"
    assert enc.n_pending == 0 and enc.n_commits == 0, "a rejected stage must not be queued or run"


def test_rope_and_attention_accept_3d_heads(dev):
    """[T, n_heads, head_dim] means the same as [T, n_heads * head_dim]."""
    rng = np.random.default_rng(6)
    T, H, KV, hd, pos0 = 3, 4, 2, 16, 5
    p = pool_of(dev, q2=(F32, [T, H * hd]), kc=(F16, [16, KV * hd]), vc=(F16, [16, KV * hd]),
                o2=(F32, [T, H * hd]), o3=(F32, [T, H, hd]))
    q = rng.standard_normal((T, H * hd)).astype(np.float32)
    p.get("q2").upload(q)
    p.get("kc").upload(rng.standard_normal((16, KV * hd)).astype(np.float16))
    p.get("vc").upload(rng.standard_normal((16, KV * hd)).astype(np.float16))
    q3 = p.get("q2").view(0, [T, H, hd])
    enc = E.Encoder(dev, eager=True)
    dev.set_step(pos0, T)
    enc.rope(q3, H, hd, E.ROPE_NEOX, 10000.0)
    assert R.nmse(p.get("q2").to_numpy(), R.rope(q, H, hd, 2, 10000.0, 1.0, pos0)) < 1e-10
    enc.attention(p.get("q2"), p.get("kc"), p.get("vc"), p.get("o2"), H, KV, 0.25)
    enc.attention(q3, p.get("kc"), p.get("vc"), p.get("o3"), H, KV, 0.25)
    assert np.array_equal(p.get("o2").to_numpy(), p.get("o3").to_numpy().reshape(T, H * hd))


def test_encoder_recovers_after_a_failed_stage(dev):
    """A stage that fails while running (a token id outside the vocabulary can only be
    seen then) raises, and the encoder stays usable: the failed batch is dropped."""
    p = pool_of(dev, W=(F32, [10, 8]), ids=(I32, [2]), o=(F32, [2, 8]), a=(F32, [2, 8]))
    p.get("ids").upload(np.array([3, 10], np.int32))
    p.get("a").upload(np.ones((2, 8), np.float32))
    enc = E.Encoder(dev, eager=True)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        enc.embed(p.get("W"), p.get("ids"), p.get("o"))
    enc.add(p.get("a"), p.get("a"), p.get("a"))
    assert np.all(p.get("a").to_numpy() == 2.0)


def _child_prints_ok(code):
    """Run `code` in a fresh interpreter (a failure there may abort it) and expect it to print ok."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-500:]


def test_host_empty_is_filled_by_download_and_outlives_its_device():
    """device.host_empty(n) gives a writeable float32 [n] array that download_into fills with
    the tensor's values; it keeps its device alive and frees cleanly after it. Run in a child
    process, since a failure aborts the interpreter."""
    code = (
        "import numpy as np\n"
        "from llmetal import _engine as E\n"
        "d = E.cpu_device(1); p = E.BufferPool(d); p.declare('x', 0, [1000]); p.reserve()\n"
        "v = np.random.default_rng(3).standard_normal(1000).astype(np.float32)\n"
        "t = p.get('x'); t.upload(v)\n"
        "a = d.host_empty(1000)\n"
        "try:\n    d.host_empty(-1)\n    raise SystemExit('no error for a negative size')\n"
        "except ValueError as e:\n    assert 'negative size' in str(e)\n"
        "assert a.dtype == np.float32 and a.shape == (1000,) and a.flags['C_CONTIGUOUS'] and a.flags['WRITEABLE']\n"
        "t.download_into(a)\n"
        "assert np.array_equal(a, v)\n"
        "del p, d, t\n"
        "import gc; gc.collect()\n"
        "a[:] = 1; assert a.sum() == 1000\n"
        "del a; gc.collect()\n"
        "print('ok')\n")
    _child_prints_ok(code)


def test_tensor_outlives_its_device():
    """A tensor kept after its device and pool are dropped stays valid (it keeps the memory
    alive) and frees cleanly. Run in a child process, since a failure aborts the interpreter."""
    code = (
        "import numpy as np\n"
        "from llmetal import _engine as E\n"
        "d = E.cpu_device(1); p = E.BufferPool(d); p.declare('x', 0, [4]); p.reserve()\n"
        "t = p.get('x'); t.upload(np.arange(4, dtype=np.float32))\n"
        "del p, d\n"
        "import gc; gc.collect()\n"
        "assert t.to_numpy().tolist() == [0, 1, 2, 3]\n"
        "del t\n"
        "print('ok')\n")
    _child_prints_ok(code)


# ---- the CPU pool's fallback to the calling thread ---------------------------------------------
def _pool_run(pool_fallback, w, x, g):
    """rmsnorm(x, g) then a Q8_0 matmul by w, 40 times, on a 2-thread CPU device."""
    N, (M, K) = w.shape[0], x.shape
    dev = E.cpu_device(n_threads=2, pool_fallback=pool_fallback)
    p = E.BufferPool(dev)
    p.declare("W", Q8_0, [N, K]); p.declare("x", F32, [M, K]); p.declare("g", F32, [K])
    p.declare("xn", F32, [M, K]); p.declare("y", F32, [M, N]); p.reserve()
    p.get("W").upload(w); p.get("x").upload(x); p.get("g").upload(g)
    p.get("xn").upload(np.full((M, K), np.nan, np.float32)); p.get("y").upload(np.full((M, N), np.nan, np.float32))
    dev.set_step(0, M)
    enc = E.Encoder(dev, eager=False)
    for _ in range(40):   # more jobs than the fallback's window of 16
        enc.rmsnorm(p.get("x"), p.get("g"), p.get("xn"), 1e-6)
        enc.matmul(p.get("W"), p.get("xn"), p.get("y"))
    enc.commit(); enc.wait()
    return {"xn": p.get("xn").to_numpy(), "y": p.get("y").to_numpy()}


def test_pool_fallback_path_gives_the_same_bits():
    """pool_fallback="always" runs every job's shares on the calling thread (the path the pool
    takes while another process holds a core); "never" never does. Same shares, same
    arithmetic: rmsnorm and a Q8_0 matmul give identical bits, every output written (NaN
    poison), and close to numpy."""
    from gguf import GGMLQuantizationType as Q, quants
    seed = int(np.random.default_rng().integers(1 << 30))
    rng = np.random.default_rng(seed)
    w = quants.quantize(rng.standard_normal((96, 512)).astype(np.float32), Q.Q8_0)
    x = rng.standard_normal((5, 512)).astype(np.float32)
    g = rng.standard_normal(512).astype(np.float32)
    outs = {mode: _pool_run(mode, w, x, g) for mode in ("always", "never")}
    for name in ("xn", "y"):
        a, b = outs["always"][name], outs["never"][name]
        assert np.all(np.isfinite(a)), f"{name}: unwritten outputs on the fallback path (seed {seed})"
        assert np.array_equal(a, b), f"{name}: the fallback path differs from the threaded one (seed {seed})"
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    xn = x64 / np.sqrt((x64 ** 2).mean(axis=1, keepdims=True) + 1e-6) * g64
    ref = xn @ quants.dequantize(w, Q.Q8_0).astype(np.float64).T
    y = outs["always"]["y"]
    assert ((y - ref) ** 2).sum() / (ref ** 2).sum() < 1e-3, "fallback matmul far from numpy"


def test_pool_fallback_rejects_unknown_modes():
    with pytest.raises(ValueError, match="pool_fallback must be 'auto', 'never' or 'always', not '0'"):
        E.cpu_device(n_threads=2, pool_fallback="0")
