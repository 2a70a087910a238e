"""Why a device disagrees with the CPU on a model: overflow, a bug, or chaos from the weights.

    python bench/cuda_parity.py MODEL.gguf [--device cuda] [--reference]

Four measurements on one short prompt (11 tokens):
  1. magnitudes: the largest |value| of every activation the tensor-core prefill converts
     to fp16 (attn_norm, kqv, ffn_norm, the swiglu output; fp16 overflows past 65504), on
     the CPU device;
  2. prefill: both devices run the prompt as one batch (the device's tensor-core path),
     logits NMSE and the per-layer NMSE of the residual stream (l_out) -- how the
     difference grows layer by layer;
  3. decode only: both devices feed the prompt one token at a time through the recorded
     decode plan (8-bit activations and integer dots on both), logits NMSE at every position;
  4. --reference: the CPU device against llmetal.reference.forward (float64, no 8-bit
     activations): if the CPU's own path differs from exact arithmetic as much as the two
     devices differ from each other, the model amplifies rounding (chaos), not a bug.
"""
from __future__ import annotations

import argparse

import numpy as np

import llmetal
from llmetal import reference as R

PROMPT = [1, 9690, 28, 253, 1345, 314, 1078, 30, 2, 504, 3]
FP16_MAX = 65504.0


def nmse(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a - b) ** 2).sum() / max((b ** 2).sum(), 1e-300))


def load(path, device):
    return llmetal.load(path, device=device, n_ctx=64, n_batch=16, n_out=16)


def cache_of(m):
    logits, cache = m.run_with_cache(PROMPT)
    return logits, cache


def decode_only(m):
    return np.stack([m.decode_step(t, i).copy() for i, t in enumerate(PROMPT)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--device", default=None, help="the device to compare with the CPU (e.g. cuda)")
    ap.add_argument("--reference", action="store_true", help="also compare the CPU with float64 numpy")
    ap.add_argument("--ref-npy", default=None,
                    help="float64 reference logits: written here with --reference, else read from here")
    a = ap.parse_args()

    cpu = load(a.model, "cpu")
    L = cpu.cfg.n_layer
    c_logits, c_cache = cache_of(cpu)
    print(f"model {a.model}: {L} layers, prompt of {len(PROMPT)} tokens")

    # 1. magnitudes of the tensor-core inputs
    worst = {}
    for key, v in c_cache.items():
        stage = key.split(".")[-1]
        if stage in ("attn_norm", "kqv", "ffn_norm", "ffn_swiglu", "l_out", "ffn_out", "Qcur", "Kcur"):
            worst[stage] = max(worst.get(stage, 0.0), float(np.abs(v).max()))
    print("1. largest |activation| on the CPU device (fp16 max is 65504):")
    for k, v in worst.items():
        print(f"   {k:<12} {v:12.4g}{'   OVERFLOWS fp16' if v > FP16_MAX else ''}")

    # 4. CPU vs float64 (exact arithmetic on the same weights)
    ref = None
    if a.reference:
        ref = R.forward(cpu.gguf, cpu.cfg, PROMPT)
        if a.ref_npy:
            np.save(a.ref_npy, ref)
    elif a.ref_npy:
        ref = np.load(a.ref_npy)
    if ref is not None:
        print(f"4. CPU device vs float64 reference: logits NMSE {nmse(c_logits, ref):.3e}, "
              f"greedy ids {'==' if (c_logits.argmax(1) == ref.argmax(1)).all() else '!='}")
        print(f"   last-row NMSE {nmse(c_logits[-1], ref[-1]):.3e}")

    if a.device:
        dev = load(a.model, a.device)
        g_logits, g_cache = cache_of(dev)
        print(f"2. prefill in one batch, {a.device} vs cpu: logits NMSE {nmse(g_logits, c_logits):.3e}, "
              f"argmax {'==' if (g_logits.argmax(1) == c_logits.argmax(1)).all() else '!='}, "
              f"finite {bool(np.isfinite(g_logits).all())}")
        if ref is not None:
            print(f"   {a.device} prefill vs float64 reference: logits NMSE {nmse(g_logits, ref):.3e} "
                  f"(cpu vs reference {nmse(c_logits, ref):.3e})")
        row = []
        for il in range(L):
            k = f"blk.{il}.l_out"
            row.append(f"{il}:{nmse(g_cache[k], c_cache[k]):.1e}")
        print("   l_out NMSE per layer: " + " ".join(row))
        for st in ("attn_norm", "Qcur", "kqv", "ffn_swiglu", "ffn_out"):
            k = f"blk.0.{st}"
            if k in g_cache:
                print(f"   layer 0 {st:<11} NMSE {nmse(g_cache[k], c_cache[k]):.2e}")
        gd, cd = decode_only(dev), decode_only(cpu)
        per = " ".join(f"{nmse(gd[i], cd[i]):.1e}" for i in range(len(PROMPT)))
        print(f"3. decode only (one token at a time), {a.device} vs cpu: logits NMSE {nmse(gd, cd):.3e}, "
              f"argmax {'==' if (gd.argmax(1) == cd.argmax(1)).all() else '!='}")
        print(f"   per position: {per}")
        print(f"   cpu decode-only vs cpu prefill: NMSE {nmse(cd, c_logits):.3e}")


if __name__ == "__main__":
    main()
