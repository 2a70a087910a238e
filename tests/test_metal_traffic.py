"""Memory traffic of the Metal kernels, counted by the emulator: metal-emu's counting mode
(cpp/metal_emu/runtime.h) adds up the bytes every load and store of a kernel moves, per
dispatch, in device, threadgroup and constant memory (every access, no cache model).

No Metal speed can be measured here; a decode step on a Mac is bound by the bytes it moves,
so these bounds are the speed tests of the Metal kernels:

  * each decode mat-vec (one token) at K = 4096 moves at most 1.3x its weight bytes in device
    memory, reads and writes together: the weights once, the activations once per threadgroup
    of MV_ROWS rows (4096 floats / 32 rows = 512 bytes a row). Q4_0, Q8_0 and Q4_K are held to
    1.3x by issue 25; every type with its own lane unit (quants.h) is held to the same bound,
    the float types to 1.1x; Q2_K, Q3_K and IQ4_XS (the generic 8-element path) are only checked
    for their numbers. Counting runs the counted build of the kernels, so the results are checked
    against float64 too;
  * a decode step of SmolLM2 cut to 2 layers: one record per dispatch, in the order model.plan()
    lists the kernels, each with its stage; the matmuls at most 1.3x their weights and the whole step at most 1.3x
    the bytes of the model's weights.
Counting is off again after each test (the rest of the suite runs the plain build).
"""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from llmetal import _engine as E

if not E.build_info().get("metal_emu_counting"):
    pytest.skip("this build has no counted build of the Metal kernels (metal-emu counting mode)",
                allow_module_level=True)

import test_matmul as TM  # noqa: E402

BOUND = {t: 1.3 for t in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K)}
BOUND |= {t: 1.1 for t in TM.FLOAT_TYPES}


@pytest.fixture
def counting():
    E.metal_emu_counting(True)
    E.metal_emu_traffic()   # nothing left over from before
    yield
    E.metal_emu_counting(False)
    E.metal_emu_traffic()


@pytest.fixture(scope="module")
def dev():
    return E.metal_emu_device("reverse")


@pytest.mark.parametrize("wtype", TM.ALL_TYPES, ids=lambda t: t.name)
def test_decode_matvec_moves_its_weights_once(dev, counting, wtype):
    K, N = 4096, 96   # 3 threadgroups of 32 rows
    rng = np.random.default_rng(2500 + int(wtype))
    wq = TM.make_weights(rng, wtype, N, K)
    x = rng.standard_normal((1, K)).astype(np.float32)
    pool = E.BufferPool(dev)
    pool.declare("W", int(wtype), [N, K]); pool.declare("x", 0, [1, K]); pool.declare("y", 0, [1, N])
    pool.reserve()
    W, X, Y = pool.get("W"), pool.get("x"), pool.get("y")
    W.upload(wq); X.upload(x)
    Y.upload(np.full((1, N), np.nan, np.float32))
    E.Encoder(dev, eager=True).matmul(W, X, Y)
    (rec,) = E.metal_emu_traffic()
    y = Y.to_numpy()
    ref = x.astype(np.float64) @ quants.dequantize(wq, wtype).astype(np.float64).reshape(N, K).T
    assert np.isfinite(y).all() and TM.nmse(y, ref) <= 1e-10, f"{wtype.name}: NMSE {TM.nmse(y, ref):.2e}"
    assert rec["kernel"] == f"kernel_matmul_{wtype.name.lower()}" and rec["stage"] == "matmul", rec
    moved = rec["device_read"] + rec["device_written"]
    assert moved >= wq.nbytes + x.nbytes + 4 * N, f"{wtype.name}: fewer bytes than the weights: {rec}"
    ratio = moved / wq.nbytes
    if wtype in BOUND:
        assert ratio <= BOUND[wtype], (f"{wtype.name} mat-vec at K={K}: {ratio:.3f}x its weight bytes "
                                       f"(bound {BOUND[wtype]}x): {rec}")


@pytest.fixture(scope="module")
def smollm2_cut(tmp_path_factory):
    from test_metal_emu import _cut_smollm2
    return _cut_smollm2(tmp_path_factory)


def test_decode_step_records(smollm2_cut, counting):
    import gguf

    import llmetal
    m = llmetal.load(str(smollm2_cut), device="metal-emu:forward", n_ctx=256, n_batch=16, n_out=1)
    m.prefill([1, 504, 3458, 282, 4649, 314, 253, 1345])
    m.decode_step(28, 8)                     # records the plan
    E.metal_emu_traffic()
    c0 = E.metal_counters(m.device)
    logits = m.decode_step(378, 9)
    c1 = E.metal_counters(m.device)
    recs = E.metal_emu_traffic()
    assert np.isfinite(logits).all()
    assert len(recs) == c1["dispatches"] - c0["dispatches"] > 0
    assert [r["kernel"] for r in recs] == [k[0] for k in m.plan().kernels]   # what model.plan() shows
    assert all(r["stage"] for r in recs)
    # every weight tensor is read by exactly one matmul/logits dispatch of the step
    r = gguf.GGUFReader(str(smollm2_cut))
    wbytes = {t.name: int(t.n_bytes) for t in r.tensors}
    mats = [x for x in recs if x["stage"] in ("matmul", "logits")]
    mat_weights = sum(b for n, b in wbytes.items() if n.endswith(".weight") and "norm" not in n
                      and n != "token_embd.weight") + (wbytes["token_embd.weight"] if "output.weight" not in wbytes
                                                       else 0)
    mat_moved = sum(x["device_read"] + x["device_written"] for x in mats)
    assert mat_weights <= mat_moved <= 1.3 * mat_weights, (mat_moved, mat_weights)
    total = sum(x["device_read"] + x["device_written"] for x in recs)
    assert total <= 1.3 * sum(wbytes.values()), (total, sum(wbytes.values()))
