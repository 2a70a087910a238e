#!/usr/bin/env python3
"""Write tests/fixtures/llamacpp_noise_{smollm2,gemma3}.json: how far llama.cpp is from itself.

    python scripts/oracle/make_noise_fixtures.py [smollm2] [gemma3]

The parity fixtures come from llama.cpp with flash attention OFF. llama.cpp with flash
attention ON is an equally valid run of the same model (other rounding: f16 softmax
accumulation, another reduction order), so the distance between the two measures the
oracle's own numerical noise on these small quantized models. For the same prompts as the
logits and greedy fixtures this records:
  logits[i][t]        NMSE(FA on, FA off) of the logits at position t of logits prompt i
  greedy[i]           for greedy prompt i, teacher-forced on the fixture's tokens:
    nmse[s]           NMSE(FA on, FA off) of the step-s logits
    fa_argmax[s]      FA-on argmax at step s (the fixture's gen_ids[s] is the FA-off argmax)
    free_ids          FA-on free-running greedy ids (32 steps)
Every other setting is the fixtures' (oracle_common.SETTINGS).
"""
from __future__ import annotations

import json
import sys

import numpy as np

import oracle_common as oc


def nmse(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sum((a - b) ** 2) / np.sum(b ** 2))


def run(name: str) -> None:
    lz = np.load(oc.FIXTURES / f"llamacpp_logits_{name}.npz")
    gz = np.load(oc.FIXTURES / f"llamacpp_greedy_{name}.npz")
    oc.SETTINGS["flash_attn"] = False
    off = oc.load(name)
    oc.SETTINGS["flash_attn"] = True
    on = oc.load(name)
    out = {"model": name, "what": "NMSE and argmax of llama.cpp flash-attention ON vs OFF",
           "provenance": oc.provenance(on, name), "logits": [], "greedy": []}
    for i in range(len(lz["prompts"])):
        ids = lz[f"ids_{i}"].tolist()
        oc.fresh_sequence(off)
        oc.fresh_sequence(on)
        a, b = oc.decode(on, ids), oc.decode(off, ids)
        out["logits"].append([nmse(a[t], b[t]) for t in range(len(ids))])
    for i in range(len(gz["prompts"])):
        prompt, gen = gz[f"prompt_ids_{i}"].tolist(), gz[f"gen_ids_{i}"].tolist()
        rec = {"nmse": [], "fa_argmax": [], "free_ids": []}
        oc.fresh_sequence(off)
        oc.fresh_sequence(on)
        la, lb = oc.decode(on, prompt)[-1], oc.decode(off, prompt)[-1]
        for s in range(len(gen)):
            rec["nmse"].append(nmse(la, lb))
            rec["fa_argmax"].append(int(np.argmax(la)))
            if s + 1 < len(gen):
                la, lb = oc.decode(on, [gen[s]])[-1], oc.decode(off, [gen[s]])[-1]
        oc.fresh_sequence(on)
        last = oc.decode(on, prompt)[-1]
        for s in range(len(gen)):
            tok = int(np.argmax(last))
            rec["free_ids"].append(tok)
            if s + 1 < len(gen):
                last = oc.decode(on, [tok])[-1]
        out["greedy"].append(rec)
        print(name, i, "max NMSE %.1e" % max(rec["nmse"]),
              "teacher-forced argmax flips:", sum(x != y for x, y in zip(rec["fa_argmax"], gen)), flush=True)
    path = oc.FIXTURES / f"llamacpp_noise_{name}.json"
    path.write_text(json.dumps(out, indent=None))
    print(f"wrote {path}")


if __name__ == "__main__":
    for n in sys.argv[1:] or ("smollm2", "gemma3"):
        run(n)
