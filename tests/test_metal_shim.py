"""cpp/metal/device.mm run on Linux, against the Metal shim (tests/metal_shim: the Metal and
Foundation subset device.mm calls, implemented over the CPU emulator of Metal, with Metal's
documented limits and encoder rules enforced). Builds with -DLLMETAL_METAL_SHIM=ON only (.ci/run).

  * the same numbers as metal-emu: a cut SmolLM2, prefill and decode, bit for bit equal to
    metal-emu:reverse (the shim runs a concurrent encoder's dispatches in reverse between
    barriers, each under the emulator's reverse schedule);
  * every object released: live objects back to what they were after the device was made once a
    model is dropped (pipelines included: all are made with the device), no autorelease without a pool, no pool left open;
  * the defects of issue 24, each in a fresh process where the device's setup is the point
    (the device is one per process): no default device (CoreGraphics not linked) falls back to
    MTLCopyAllDevices(); no device at all, a GPU below Apple7, and SIMD groups of 16 are refused
    with a message; a failure with the encoder open (a pipeline allowing fewer threads) is a Python
    error, not an abort, and leaks nothing; wait() reports a failed command buffer that was not
    the last;
  * the host side's order, from the shim's event log (E.metal_shim_events(): pipelines made, and
    each command buffer's encode, commit, completion or drop; the shim completes a command
    buffer only when it is waited for, as a GPU finishes later than commit returns): every
    pipeline of the planner's kernel table is made when the device is, before any command buffer
    is encoded; while decoding, the next token's command buffer is encoded before the current
    one completes.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from llmetal import _engine as E

if not E.build_info().get("metal_shim"):
    pytest.skip("this build has no Linux Metal shim (configure with -DLLMETAL_METAL_SHIM=ON, as .ci/run does)",
                allow_module_level=True)

from test_metal_emu import _cut_smollm2  # noqa: E402


@pytest.fixture(scope="module")
def smollm2_cut(tmp_path_factory):
    return _cut_smollm2(tmp_path_factory)


def _run(script: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], env=dict(os.environ, **env), capture_output=True,
                          text=True, timeout=300)


def _live(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k.startswith("live.")}


def test_same_numbers_as_metal_emu_and_nothing_leaks(smollm2_cut):
    import llmetal
    prompt = [1, 504, 3458, 282, 4649, 314, 253, 1345, 28, 378, 314, 2]
    toks = [28, 378, 314, 2, 504, 3458]
    out = {}
    E.metal_device()
    base = _live(E.metal_shim_stats())
    for dev in ("metal-emu:reverse", "metal"):
        m = llmetal.load(str(smollm2_cut), device=dev, n_ctx=128, n_batch=16, n_out=1)
        logits = [m.prefill(prompt).copy()]
        for i, t in enumerate(toks):
            logits.append(m.decode_step(t, len(prompt) + i).copy())
        out[dev] = np.array(logits)
        del m
    np.testing.assert_array_equal(out["metal"], out["metal-emu:reverse"])
    s = E.metal_shim_stats()
    assert _live(s) == base, f"objects left after the model was dropped: {_live(s)} (after the device: {base})"
    assert s["autoreleased_without_pool"] == 0 and s["open_pools"] == 0, s


def test_wait_reports_an_earlier_failed_command_buffer():
    """Eager mode commits every stage: the first of two command buffers fails, the second does
    not; wait() must still report it."""
    dev = E.metal_device()
    pool = E.BufferPool(dev)
    for n in "abc":
        pool.declare(n, 0, [2, 64])
    pool.reserve()
    a, b, c = (pool.get(n) for n in "abc")
    a.upload(np.ones((2, 64), np.float32)); b.upload(np.ones((2, 64), np.float32))
    enc = E.Encoder(dev, eager=True)
    E.metal_shim_fail_command_buffer(1)
    enc.add(a, b, c)
    enc.add(a, a, b)
    with pytest.raises(Exception, match=r"command buffer 1 of 2 since the last wait failed: injected GPU fault"):
        enc.wait()
    enc.add(a, a, c)   # the device goes on
    np.testing.assert_array_equal(c.to_numpy(), np.full((2, 64), 2, np.float32))


_DEVICE = r"""
from llmetal import _engine as E
try:
    E.metal_device()
    print("device made")
except Exception as e:
    print("error:", e)
"""


def test_no_default_device_falls_back_to_the_device_list():
    r = _run(_DEVICE, LLMETAL_METAL_SHIM_DEVICES="list-only")
    assert r.returncode == 0 and r.stdout.strip() == "device made", r.stdout + r.stderr[-2000:]


def test_no_device_at_all_says_why():
    r = _run(_DEVICE, LLMETAL_METAL_SHIM_DEVICES="none")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "error: metal: no Metal device: MTLCreateSystemDefaultDevice() returned none and " \
           "MTLCopyAllDevices() lists none" in r.stdout, r.stdout


def test_gpu_below_apple7_is_refused():
    r = _run(_DEVICE, LLMETAL_METAL_SHIM_FAMILY="6")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "is not an Apple7-family GPU (Apple A14 / M1 or newer)" in r.stdout, r.stdout


_STAGE = r"""
import numpy as np
from llmetal import _engine as E
dev = E.metal_device()
base = {k: v for k, v in E.metal_shim_stats().items() if k.startswith("live.")}
pool = E.BufferPool(dev)
for n in "abc":
    pool.declare(n, 0, [2, 64])
pool.reserve()
a, b, c = (pool.get(n) for n in "abc")
try:
    E.Encoder(dev, eager=True).add(a, b, c)
    print("ran")
except Exception as e:
    print("error:", e)
del a, b, c, pool
s = E.metal_shim_stats()
live = {k: v for k, v in s.items() if k.startswith("live.")}
print("leaked:", {k: live.get(k, 0) - base.get(k, 0) for k in set(live) | set(base) if live.get(k, 0) != base.get(k, 0)},
      "open pools:", s["open_pools"])
"""


_DEVICE_LEAKS = _DEVICE + r"""
s = E.metal_shim_stats()
print("live:", {k: v for k, v in s.items() if k.startswith("live.")}, "open pools:", s["open_pools"])
"""


def test_simd_width_other_than_32_is_refused():
    """Checked on every pipeline, all made with the device: its creation fails, naming the
    first kernel of the table, and what it had made is released."""
    r = _run(_DEVICE_LEAKS, LLMETAL_METAL_SHIM_SIMD_WIDTH="16")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "error: metal: kernel_rmsnorm_f32 runs in SIMD groups of 16 threads" in r.stdout, r.stdout
    assert "live: {} open pools: 0" in r.stdout, r.stdout


def test_failure_with_the_encoder_open_is_an_error_and_leaks_nothing():
    """A pipeline that allows fewer threads per threadgroup than the plan uses: checked before
    the encoder opens. Before the fix, the exception left the encoder open and the autorelease
    pool undrained (Metal aborts: "Command encoder released without endEncoding")."""
    r = _run(_STAGE, LLMETAL_METAL_SHIM_MAX_THREADS="32")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "error: metal: kernel_add_f32 allows 32 threads per threadgroup" in r.stdout, r.stdout
    assert "leaked: {} open pools: 0" in r.stdout, r.stdout


# ---- the host side's order ----------------------------------------------------------------------
_PIPELINES = r"""
import json, sys
import llmetal
from llmetal import _engine as E
m = llmetal.load(sys.argv[1], device="metal", n_ctx=128, n_batch=16, n_out=1)
m.prefill([1, 504, 3458, 282, 4649, 314])
for i, t in enumerate([28, 378, 314]):
    m.decode_step(t, 6 + i)
ran = sorted({k[0] for k in m.plan().kernels})
print(json.dumps({"events": E.metal_shim_events(), "table": E.metal_kernel_names(), "ran": ran}))
"""


def test_every_pipeline_is_made_before_the_first_command_buffer(smollm2_cut):
    """A fresh process (the device is one per process): a cut SmolLM2 loaded on "metal",
    prefilled and decoded. Every kernel of the planner's table has its pipeline, each made once,
    and all of them before the first command buffer is encoded; none is made later."""
    import json
    r = subprocess.run([sys.executable, "-c", _PIPELINES, str(smollm2_cut)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    ev, table = out["events"], out["table"]
    made = [name for kind, _, name in ev if kind == "pipeline"]
    assert sorted(made) == sorted(table) and len(set(table)) == len(table), (made, table)
    assert set(out["ran"]) <= set(table), out["ran"]
    first_encode = next(i for i, (kind, _, _) in enumerate(ev) if kind == "encode")
    last_pipeline = max(i for i, (kind, _, _) in enumerate(ev) if kind == "pipeline")
    assert last_pipeline < first_encode, ev[:first_encode + 3]


def test_next_token_encoded_while_the_current_one_runs(smollm2_cut):
    """decode_step on device.mm: each call commits the command buffer the call before encoded
    (after writing the token id and position into shared memory), then encodes the next
    position's before the current one completes (the shim completes it when the logits are
    waited for). The logits are metal-emu's, bit for bit."""
    import llmetal
    prompt = [1, 504, 3458, 282, 4649, 314, 253, 1345]
    toks = [28, 378, 314, 2, 504]
    logits = {}
    for dev in ("metal-emu:reverse", "metal"):
        m = llmetal.load(str(smollm2_cut), device=dev, n_ctx=128, n_batch=16, n_out=1)
        m.prefill(prompt)
        m.decode_step(toks[0], len(prompt))   # records the plan, encodes its own command buffer
        logits[dev], steps = [], []
        E.metal_shim_events()
        for i, t in enumerate(toks[1:]):
            logits[dev].append(m.decode_step(t, len(prompt) + 1 + i).copy())
            steps.append(E.metal_shim_events())
        del m
    np.testing.assert_array_equal(np.array(logits["metal"]), np.array(logits["metal-emu:reverse"]))
    for i, ev in enumerate(steps):
        kinds = [(kind, cb) for kind, cb, _ in ev]
        commits = [cb for kind, cb in kinds if kind == "commit"]
        encodes = [cb for kind, cb in kinds if kind == "encode"]
        assert len(commits) == 1 and len(encodes) == 1, f"step {i}: {kinds}"
        cur, nxt = commits[0], encodes[0]
        assert nxt != cur, f"step {i}: the committed command buffer was encoded in the same call: {kinds}"
        if i > 0:
            assert cur == prev_next, f"step {i}: committed {cur}, the call before encoded {prev_next}"
        assert kinds.index(("commit", cur)) < kinds.index(("encode", nxt)) < kinds.index(("complete", cur)), \
            f"step {i}: the next command buffer is not encoded while the current one runs: {kinds}"
        assert ("drop", nxt) not in kinds, kinds
        prev_next = nxt
