"""Where a decode step's time goes inside the persistent kernel (LLMETAL_CUDA_PERSISTENT=1).

    LLMETAL_CUDA_PERSISTENT=1 LLMETAL_CUDA_PERSISTENT_PROFILE=1 \\
        python bench/cuda_persist_profile.py MODEL.gguf [--pos 520] [--tokens 8]

The persistent kernel runs a step as one launch, so a kernel profiler sees one kernel. With
LLMETAL_CUDA_PERSISTENT_PROFILE=1 each unit records the GPU's global timer when it starts, when
its first warp's wait for the instruction before it returned, and when it ends, and its SM
(E.cuda_persistent_profile). For the last of --tokens replayed steps this prints, per kernel of
the launch list: instructions, units, the span from the first unit's start to the last unit's
end summed over its instructions, and the units' time split into waiting and working; then the
chain of instructions (each waits for the one before it) split per kernel into hand-offs and
the rest, and each SM's span split into working, waiting and outside units.
"""
from __future__ import annotations

import argparse
import os
from collections import defaultdict

import numpy as np

import llmetal
from llmetal import _engine as E


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--pos", type=int, default=520)
    ap.add_argument("--tokens", type=int, default=8)
    a = ap.parse_args()
    if os.environ.get("LLMETAL_CUDA_PERSISTENT") != "1" or os.environ.get("LLMETAL_CUDA_PERSISTENT_PROFILE") != "1":
        raise SystemExit("set LLMETAL_CUDA_PERSISTENT=1 LLMETAL_CUDA_PERSISTENT_PROFILE=1")
    m = llmetal.load(a.model, device="cuda", n_ctx=max(1024, a.pos + a.tokens + 8), n_batch=512, n_out=1)
    rng = np.random.default_rng(0)
    if a.pos:
        m.prefill(rng.integers(0, m.cfg.n_vocab, a.pos).tolist())
    plan = m.plan().plan
    ids = m.full["ids"].rows(0, 1)
    for i in range(a.tokens):
        m.enc.replay_token(plan, ids, 1 + i, a.pos + i)
    m.device.wait()
    rec = E.cuda_persistent_profile(plan)
    if rec.shape[0] == 0:
        raise SystemExit("no profile: the plan did not run as kernel_persistent (see E.cuda_plan(plan, caps)['persist'])")
    launches = E.cuda_plan(plan, m.device.cuda_caps)["launches"]
    report(rec, [l["kernel"] for l in launches], f"{a.model}: one step at position {a.pos + a.tokens - 1}")


def report(rec, kernels, title):
    """rec: the profile's records (start, wait returned, end, SM << 32 | instruction) a ticket;
    kernels: each instruction's kernel name."""
    rec = rec[rec[:, 2] > 0]                      # units that ran (dead attention splits record nothing)
    t0 = rec[:, 0].min()
    start, waited, end = rec[:, 0] - t0, rec[:, 1], rec[:, 2] - t0
    ins, sm = rec[:, 3] & 0xffffffff, rec[:, 3] >> 32
    wait = np.where(waited > 0, waited - t0 - start, 0)
    span = end.max()
    print(f"{title}, span {span / 1e3:.1f} us, "
          f"{len(kernels)} instructions, {len(rec)} units on {len(np.unique(sm))} SMs")
    per = defaultdict(lambda: [0, 0, 0.0, 0.0, 0.0])   # instructions, units, span, wait, work
    for i, k in enumerate(kernels):
        sel = ins == i
        if not sel.any():
            continue
        name = k.split("/", 1)[-1]
        p = per[name]
        p[0] += 1
        p[1] += int(sel.sum())
        p[2] += float(end[sel].max() - start[sel].min())
        p[3] += float(wait[sel].sum())
        p[4] += float((end[sel] - start[sel] - wait[sel]).sum())
    print(f"{'kernel':<28} {'instr':>5} {'units':>6} {'span us':>9} {'share':>6} {'wait us/unit':>13} {'work us/unit':>13}")
    for name, (n, u, sp, w, k) in sorted(per.items(), key=lambda kv: -kv[1][2]):
        print(f"{name:<28} {n:>5} {u:>6} {sp / 1e3:>9.1f} {sp / span:>6.1%} {w / u / 1e3:>13.2f} {k / u / 1e3:>13.2f}")

    # The chain: each instruction waits for the one before it, so the step is the sum over
    # instructions of (its last unit's end - the previous one's). Split each link into the
    # hand-off (until the first of its units' waits returned: the count's release, the poll,
    # the acquire) and the rest (the slowest unit's body after that, its barrier and count).
    chain = defaultdict(lambda: [0.0, 0.0])   # kind -> hand-off ns, rest ns
    prev_end = 0.0
    for i, k in enumerate(kernels):
        sel = ins == i
        if not sel.any():
            continue
        e = float(end[sel].max())
        w = wait[sel] + start[sel]
        got = w[waited[sel] > 0]
        first = float(got.min()) if len(got) else prev_end
        c = chain[k.split("/", 1)[-1]]
        c[0] += max(0.0, first - prev_end)
        c[1] += e - max(prev_end, first)
        prev_end = max(prev_end, e)
    tot = sum(h + r for h, r in chain.values())
    print(f"\nthe chain ({tot / 1e3:.1f} us of the span): per kernel, its instructions' links")
    print(f"{'kernel':<28} {'hand-off us':>12} {'rest us':>9} {'share':>6}")
    for name, (h, r) in sorted(chain.items(), key=lambda kv: -sum(kv[1])):
        print(f"{name:<28} {h / 1e3:>12.1f} {r / 1e3:>9.1f} {(h + r) / tot:>6.1%}")
    # Each SM's span: inside units working, inside units waiting, outside units (the loop: the
    # instruction's copy, the count, the block's barriers -- or nothing left to run).
    work_sm, wait_sm = defaultdict(float), defaultdict(float)
    for s_, b_, e_, w_ in zip(sm, start, end, wait):
        work_sm[int(s_)] += float(e_ - b_ - w_)
        wait_sm[int(s_)] += float(w_)
    keys = sorted(work_sm)
    wk = np.array([work_sm[k] for k in keys]) / span
    wt = np.array([wait_sm[k] for k in keys]) / span
    out = 1.0 - wk - wt
    print(f"\nper SM, share of the span ({len(keys)} SMs): min / median / max")
    for name, v in (("working", wk), ("waiting", wt), ("outside units", out)):
        print(f"  {name:<14} {v.min():6.1%} {np.median(v):6.1%} {v.max():6.1%}")


if __name__ == "__main__":
    main()
