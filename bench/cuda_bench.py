"""Decode / prefill speed of the CUDA device on GGUF models, plus a CPU-vs-CUDA check.

    python bench/cuda_bench.py MODEL.gguf [MODEL.gguf ...] [--tokens 128] [--check-cpu]

Per model (llmetal.load): decode tokens/s through the recorded one-token plan (a CUDA graph, replayed
with replay_token; no logits read back inside the timed loop, one wait at the end), the
same with the logits row read back every token, prefill of 512 tokens, and the decode
bandwidth (weight bytes streamed per token x tokens/s) next to a measured device-to-device
copy. --check-cpu also runs a short greedy generation on the CPU device and reports
whether the ids match and the logits NMSE.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import llmetal  # noqa: E402


def copy_roof_gbs():
    """Device-to-device copy bandwidth (bytes read + written), through torch if present."""
    try:
        import torch
    except Exception:
        return None
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.random_(0, 255)
    for _ in range(3):
        b.copy_(a)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        s.record(); b.copy_(a); e.record(); e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * n / float(np.median(times)) / 1e9


def weight_bytes(m) -> int:
    """Bytes of weights a decode step streams: every matrix but the embedding table (one row),
    which a tied output projection streams in full."""
    tot = 0
    for name, t in m.gguf.tensors.items():
        if name == "token_embd.weight" and not m.cfg.tied_output:
            continue
        tot += t.nbytes
    return tot


def greedy(device, path, prompt, n):
    m = llmetal.load(path, device=device, n_ctx=64, n_batch=16, n_out=16)
    rows = [m.logits(prompt)]
    ids = [int(np.argmax(rows[0][-1]))]
    for i in range(n - 1):
        rows.append(m.decode_step(ids[-1], len(prompt) + i).copy()[None])
        ids.append(int(np.argmax(rows[-1])))
    return ids, np.concatenate(rows)


def bench(path, n_tok, check_cpu):
    print(f"bench {path}", flush=True)
    m = llmetal.load(path, device="cuda", n_ctx=1024, n_batch=512, n_out=1)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, m.cfg.n_vocab, 512).tolist()
    m.prefill(prompt)   # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter(); m.prefill(prompt); times.append(time.perf_counter() - t0)
    pp = 512 / float(np.median(times))
    plan = m.plan().plan
    ids = m.full["ids"].rows(0, 1)
    for i in range(8):   # warm-up: graph capture on the first replay
        m.enc.replay_token(plan, ids, 1 + i, 512 + i)
    m.device.wait()
    m.decode_step(1, 520)
    t0 = time.perf_counter()
    for i in range(n_tok):   # no logits read back: one graph launch per token
        m.enc.replay_token(plan, ids, 1 + i % 100, 520 + i)
    m.decode_step(1, 520 + n_tok)   # one download at the end waits for all of them
    tg = (n_tok + 1) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    tok = 1
    for i in range(n_tok):
        tok = int(np.argmax(m.decode_step(tok, 520 + i)))
    tg_read = n_tok / (time.perf_counter() - t0)
    wb = weight_bytes(m)
    res = dict(model=os.path.basename(path), pp512=pp, tg=tg, tg_read=tg_read, wbytes=wb, gbs=wb * tg / 1e9)
    if check_cpu and os.path.getsize(path) < 2e9:   # the CPU side of 8B shapes takes too long
        prompt = [1, 9690, 28, 253, 1345, 314, 1078, 30, 2, 504, 3]
        g, c = greedy("cuda", path, prompt, 4), greedy("cpu", path, prompt, 4)
        err = float(((g[1] - c[1]) ** 2).sum() / (c[1] ** 2).sum())
        res.update(ids_match=g[0] == c[0], nmse=err, ids=g[0])
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--check-cpu", action="store_true")
    a = ap.parse_args()
    roof = copy_roof_gbs()
    rows = [bench(p, a.tokens, a.check_cpu) for p in a.models]
    print(f"\ndevice-to-device copy: {roof:.0f} GB/s" if roof else "\n(no torch: copy roof not measured)")
    print(f"{'model':<32} {'pp512 t/s':>10} {'tg t/s':>9} {'tg+read':>9} {'GB/tok':>7} {'GB/s':>7} {'%roof':>6}  cpu check")
    for r in rows:
        chk = f"ids {'==' if r.get('ids_match') else '!='} NMSE {r['nmse']:.2e}" if "nmse" in r else ""
        pct = f"{100 * r['gbs'] / roof:5.1f}%" if roof else "   -"
        print(f"{r['model']:<32} {r['pp512']:10.0f} {r['tg']:9.1f} {r['tg_read']:9.1f} "
              f"{r['wbytes'] / 1e9:7.3f} {r['gbs']:7.0f} {pct:>6}  {chk}")


if __name__ == "__main__":
    main()
