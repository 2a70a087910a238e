#!/usr/bin/env python3
"""Write tests/fixtures/llamacpp_logits_{smollm2,gemma3}.npz: llama.cpp's logits for a few prompts.

    python scripts/oracle/make_logits_fixtures.py [smollm2] [gemma3]

Needs the oracle built (scripts/oracle/build_llamacpp.sh). For each model, 4 short prompts
(English, code, non-English, chat-formatted with the template written literally) are tokenized
by llama.cpp itself and run as ONE batch from position 0 (settings in oracle_common.SETTINGS).

File contents (np.load(path); 'meta' is a JSON string, json.loads(str(f['meta']))):
  meta                  provenance: llama.cpp commit, library, system info, model file, settings,
                        n_vocab, add_bos, and 'prompts' (the texts) and 'kind' ('logits').
  prompts               (4,) str, the prompt texts
  ids_{i}               (n_i,) int32, token ids llama.cpp used for prompt i (BOS included if any)
  SmolLM2 (vocab 49152):
  logits_{i}            (n_i, n_vocab) float16, logits of EVERY position
  Gemma-3 (vocab 262144, so only):
  last_logits_{i}       (n_vocab,) float16, full logits of the last position
  top_ids_{i}           (n_i, 20) int32, the 20 highest-logit ids of every position, best first
  top_logits_{i}        (n_i, 20) float32, their logits
"""
from __future__ import annotations

import sys
import time

import numpy as np

import oracle_common as oc

TOPK = 20

PROMPTS = {
    # SmolLM2 keeps every position (~80 kB compressed per position), so its prompts are short:
    # 8 + 8 + 8 + 11 tokens.
    "smollm2": [
        "The cat sat on the warm mat.",
        "for i in range(10):",
        "Il pleut à Genève.",
        oc.CHAT["smollm2"].format(msg="Hi!"),
    ],
    "gemma3": [
        "The quick brown fox jumps over the lazy dog.",
        "def add(a, b):\n    return a + b",
        "Le chat dort sur le canapé près de la fenêtre.",
        oc.CHAT["gemma3"].format(msg="What is 2+2?"),
    ],
}
# Which models store every position's full logits; the others store last-position + top-k.
FULL_ALL_POSITIONS = {"smollm2"}


def make(name: str) -> None:
    t0 = time.time()
    llm = oc.load(name)
    meta = oc.provenance(llm, name)
    meta.update(kind="logits", prompts=PROMPTS[name], topk=TOPK,
                layout="full logits every position" if name in FULL_ALL_POSITIONS
                else "full last-position logits + top-k of every position")
    arrays = {"prompts": np.array(PROMPTS[name])}
    for i, text in enumerate(PROMPTS[name]):
        ids = oc.tokenize(llm, text)
        oc.fresh_sequence(llm)
        logits = oc.decode(llm, ids)           # (n, vocab) float32 straight from llama.cpp
        arrays[f"ids_{i}"] = np.array(ids, dtype=np.int32)
        if name in FULL_ALL_POSITIONS:
            arrays[f"logits_{i}"] = logits.astype(np.float16)
        else:
            arrays[f"last_logits_{i}"] = logits[-1].astype(np.float16)
            tops = [oc.topk(row, TOPK) for row in logits]
            arrays[f"top_ids_{i}"] = np.stack([t[0] for t in tops])
            arrays[f"top_logits_{i}"] = np.stack([t[1] for t in tops]).astype(np.float32)
        print(f"{name} prompt {i}: {len(ids)} tokens, argmax of last = {int(logits[-1].argmax())}")
    oc.save_npz(oc.FIXTURES / f"llamacpp_logits_{name}.npz", meta, arrays)
    print(f"{name}: {time.time() - t0:.1f} s")


if __name__ == "__main__":
    names = sys.argv[1:] or list(PROMPTS)
    for n in names:
        if n not in PROMPTS:
            sys.exit(f"error: unknown model '{n}' (known: {', '.join(PROMPTS)})")
    for n in names:
        make(n)
