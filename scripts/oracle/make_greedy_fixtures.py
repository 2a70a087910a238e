#!/usr/bin/env python3
"""Write tests/fixtures/llamacpp_greedy_{smollm2,gemma3}.npz: llama.cpp's greedy continuations.

    python scripts/oracle/make_greedy_fixtures.py [smollm2] [gemma3]

Needs the oracle built (scripts/oracle/build_llamacpp.sh). For each of 12 prompts: tokenize with
llama.cpp, decode the prompt as ONE batch from position 0, then 32 greedy steps: pick the argmax
of the float32 logits (lowest id on ties, i.e. temperature 0), feed it back as a batch of one
token. Generation does NOT stop at end-of-generation tokens; where they came is recorded.
"Step s" means the logits that chose generated token s: step 0 is the prompt's last position,
step s > 0 is the position of generated token s-1.

File contents (np.load(path); 'meta' is a JSON string with provenance, settings, prompts):
  prompts               (12,) str
  prompt_ids_{i}        (n_i,) int32, prompt token ids (BOS included where the GGUF says)
  gen_ids_{i}           (32,) int32, greedy tokens
  gap_{i}               (32,) float32, logit[top1] - logit[top2] at every step (small = near tie:
                        a faithful engine may legitimately pick the other token there)
  eog_{i}               (32,) bool, whether gen_ids[s] is an end-of-generation token (llama.cpp's
                        llama_vocab_is_eog)
  first_eog             (12,) int32, first step with eog, -1 if none
  snapshot_steps        (3,) int32 = [0, 8, 16]
  SmolLM2:
  step_logits_{i}       (3, n_vocab) float16, full logits at the snapshot steps
  Gemma-3 (vocab 262144, so only):
  step_top_ids_{i}      (3, 1000) int32, the 1000 highest-logit ids at the snapshot steps, best first
  step_top_logits_{i}   (3, 1000) float16, their logits
"""
from __future__ import annotations

import sys
import time

import numpy as np

import oracle_common as oc

N_GEN = 32
SNAPSHOT_STEPS = (0, 8, 16)
GEMMA_TOPK = 1000

# (label, text) -- chat prompts use "{chat}" and are filled with each model's template.
PROMPTS = [
    ("story", "Once upon a time, in a small village by the sea,"),
    ("code", 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'),
    ("question", "Q: What is the capital of France?\nA:"),
    ("list", "Three tips for staying healthy:\n1."),
    ("chat", "{chat}Write a haiku about autumn."),
    ("german", "Die Hauptstadt von Deutschland ist"),
    ("chinese", "我最喜欢的食物是"),
    ("arithmetic", "12 + 7 = 19\n23 + 45 ="),
    ("json", '{"name": "Alice", "age": 30, "city":'),
    ("chat2", "{chat}Explain photosynthesis in one sentence."),
    ("spanish", "Había una vez un gato que"),
    ("counting", "one, two, three, four, five,"),
]
MODELS = ("smollm2", "gemma3")


def prompt_texts(name: str) -> list[str]:
    out = []
    for _, text in PROMPTS:
        if text.startswith("{chat}"):
            text = oc.CHAT[name].format(msg=text[len("{chat}"):])
        out.append(text)
    return out


def make(name: str) -> None:
    t0 = time.time()
    llm = oc.load(name)
    texts = prompt_texts(name)
    meta = oc.provenance(llm, name)
    meta.update(kind="greedy", prompts=texts, labels=[p[0] for p in PROMPTS], n_gen=N_GEN,
                snapshot_steps=list(SNAPSHOT_STEPS),
                selection="argmax of float32 logits, lowest id on ties; no stop at EOG",
                decode="prompt as one batch, then one token per llama_decode")
    if name == "gemma3":
        meta["snapshot_topk"] = GEMMA_TOPK
    arrays = {"prompts": np.array(texts), "snapshot_steps": np.array(SNAPSHOT_STEPS, dtype=np.int32)}
    first_eog = []
    for i, text in enumerate(texts):
        ids = oc.tokenize(llm, text)
        oc.fresh_sequence(llm)
        last = oc.decode(llm, ids)[-1]
        gen, gaps, eog, snaps = [], [], [], []
        for step in range(N_GEN):
            top_ids, top_vals = oc.topk(last, 2)
            tok = int(top_ids[0])
            gen.append(tok)
            gaps.append(float(top_vals[0] - top_vals[1]))
            eog.append(oc.is_eog(llm, tok))
            if step in SNAPSHOT_STEPS:
                snaps.append(last.copy())
            if step + 1 < N_GEN:
                last = oc.decode(llm, [tok])[-1]
        arrays[f"prompt_ids_{i}"] = np.array(ids, dtype=np.int32)
        arrays[f"gen_ids_{i}"] = np.array(gen, dtype=np.int32)
        arrays[f"gap_{i}"] = np.array(gaps, dtype=np.float32)
        arrays[f"eog_{i}"] = np.array(eog, dtype=bool)
        if name == "gemma3":
            tk = [oc.topk(s, GEMMA_TOPK) for s in snaps]
            arrays[f"step_top_ids_{i}"] = np.stack([t[0] for t in tk])
            arrays[f"step_top_logits_{i}"] = np.stack([t[1] for t in tk]).astype(np.float16)
        else:
            arrays[f"step_logits_{i}"] = np.stack(snaps).astype(np.float16)
        first_eog.append(eog.index(True) if any(eog) else -1)
        shown = llm.detokenize(gen).decode("utf-8", "replace").replace("\n", "\\n")
        print(f"{name} [{PROMPTS[i][0]}] {len(ids)} tok, min gap {min(gaps):.3f}, eog@{first_eog[-1]}: {shown[:70]!r}")
    arrays["first_eog"] = np.array(first_eog, dtype=np.int32)
    oc.save_npz(oc.FIXTURES / f"llamacpp_greedy_{name}.npz", meta, arrays)
    print(f"{name}: {time.time() - t0:.1f} s")


if __name__ == "__main__":
    names = sys.argv[1:] or list(MODELS)
    for n in names:
        if n not in MODELS:
            sys.exit(f"error: unknown model '{n}' (known: {', '.join(MODELS)})")
    for n in names:
        make(n)
