#!/usr/bin/env python3
"""Write tests/fixtures/llamacpp_qwen_{qwen2-synth,qwen3-synth,qwen2.5-coder-0.5b}.npz: llama.cpp's
last-token logits and greedy ids for qwen2 / qwen3 models, for parity tests of those architectures.

    python scripts/oracle/make_qwen_fixtures.py [qwen2-synth] [qwen3-synth] [qwen2.5-coder-0.5b]

Models:
- qwen2-synth, qwen3-synth: random-weight GGUFs of the exact architectures, written by
  scripts/synth_gguf.py with the arguments in SYNTH below (2 layers, n_embd 256, Q8_0, the Qwen
  tokenizer copied from the real 0.5B file). The same arguments give the same file: its sha256
  is in the fixture's meta, with the arguments, so a test can write it again and check it.
- qwen2.5-coder-0.5b: the real Qwen2.5-Coder-0.5B-Instruct Q4_K_M (`llmetal pull`).

For each of PROMPTS (tokenized by llama.cpp, add_special and parse_special on; Qwen adds no BOS)
the prompt is decoded as one batch from position 0, then 16 greedy steps, one token per decode
(argmax of the float32 logits, lowest id on ties), twice: flash attention OFF (the reference)
and ON (an equally valid llama.cpp run: the distance between the two is llama.cpp's own noise).
Every other setting is oracle_common.SETTINGS (n_ctx 512, one batch, 2 threads, f16 KV cache).

The vocabulary has 151,936 entries (600 kB of float32 per row), so a row is stored reduced:
the top-64 ids of the FA-off row with their values, the values at 512 fixed random ids
(`sample_ids`, the same for every prompt), and the row's logsumexp (so a test can turn the
stored logits into probabilities). NMSE(FA on, FA off) is computed on the full rows.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

import oracle_common as oc

N_GEN, TOP_K, N_SAMPLE = 16, 64, 512
QWEN = "qwen2.5-coder-0.5b"
SYNTH = {   # name -> scripts/synth_gguf.py arguments (plus --tok <the Qwen file> -o <path>)
    "qwen2-synth": ["--arch", "qwen2", "--shape", "qwen2.5-0.5b", "--layers", "2", "--n-embd", "256",
                    "--n-head", "4", "--n-head-kv", "2", "--n-ff", "512", "--qtype", "Q8_0", "--seed", "0"],
    "qwen3-synth": ["--arch", "qwen3", "--shape", "qwen3-0.6b", "--layers", "2", "--n-embd", "256",
                    "--n-head", "4", "--n-head-kv", "2", "--n-ff", "512", "--head-dim", "128",
                    "--qtype", "Q8_0", "--seed", "0"],
}
PROMPTS = [
    "The quick brown fox jumps over the lazy dog. The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "你好，世界！今天的天气很好，我们去",
]


def synth_path(name: str) -> Path:
    """Write the synthetic model (once) under $ORACLE_ROOT/synth/ and return its path."""
    out = oc.ORACLE_ROOT / "synth" / f"{name}.gguf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(oc.REPO / "scripts" / "synth_gguf.py"), *SYNTH[name],
                        "--tok", str(oc.model_path(QWEN)), "-o", str(out)], check=True)
    return out


def nmse(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sum((a - b) ** 2) / np.sum(b ** 2))


def logsumexp(row) -> float:
    r = np.asarray(row, np.float64)
    m = r.max()
    return float(m + np.log(np.exp(r - m).sum()))


def greedy(llm, ids):
    """Prompt as one batch, then N_GEN single-token decodes: (last prompt row, gen ids, gaps)."""
    oc.fresh_sequence(llm)
    row = oc.decode(llm, ids)[-1]
    first = row.copy()
    gen, gaps = [], []
    for _ in range(N_GEN):
        top2 = np.argsort(-row, kind="stable")[:2]
        tok = int(np.argmax(row))                  # lowest id on ties
        gen.append(tok)
        gaps.append(float(row[top2[0]] - row[top2[1]]))
        row = oc.decode(llm, [tok])[-1]
    return first, np.array(gen, np.int32), np.array(gaps, np.float32)


def run(name: str) -> None:
    path = synth_path(name) if name in SYNTH else oc.model_path(name)
    llms = {}
    for fa in (False, True):
        oc.SETTINGS["flash_attn"] = fa
        llms[fa] = oc.load(str(path))
    oc.SETTINGS["flash_attn"] = False
    meta = oc.provenance(llms[False], str(path))
    meta.update(model=name, model_file=path.name, model_sha256=oc.sha256(path), prompts=PROMPTS,
                n_gen=N_GEN, top_k=TOP_K, n_sample=N_SAMPLE,
                synth_args=SYNTH.get(name), synth_tok=QWEN if name in SYNTH else None,
                flash_attn="reference rows and ids with flash attention OFF; *_fa with it ON")
    n_vocab = meta["n_vocab"]
    sample_ids = np.sort(np.random.default_rng(0).choice(n_vocab, N_SAMPLE, replace=False)).astype(np.int32)
    arrays = {"prompts": np.array(PROMPTS), "sample_ids": sample_ids}
    nm = []
    for i, text in enumerate(PROMPTS):
        ids = oc.tokenize(llms[False], text)
        assert ids == oc.tokenize(llms[True], text)
        off, gen, gap = greedy(llms[False], ids)
        on, gen_fa, _ = greedy(llms[True], ids)
        top_ids, top_vals = oc.topk(off, TOP_K)
        arrays.update({
            f"ids_{i}": np.array(ids, np.int32),
            f"top_ids_{i}": top_ids, f"top_logits_{i}": top_vals.astype(np.float32),
            f"top_logits_fa_{i}": on[top_ids].astype(np.float32),
            f"sample_logits_{i}": off[sample_ids].astype(np.float32),
            f"sample_logits_fa_{i}": on[sample_ids].astype(np.float32),
            f"lse_{i}": np.float64(logsumexp(off)), f"lse_fa_{i}": np.float64(logsumexp(on)),
            f"nmse_fa_{i}": np.float64(nmse(on, off)),
            f"gen_ids_{i}": gen, f"gen_ids_fa_{i}": gen_fa, f"gap_{i}": gap,
        })
        nm.append(nmse(on, off))
        agree = int(np.argmax(gen != gen_fa)) if (gen != gen_fa).any() else N_GEN
        print(f"{name} prompt {i}: {len(ids)} tokens, NMSE(FA on, off) {nm[-1]:.2e}, "
              f"greedy FA on/off agree for {agree}/{N_GEN} steps, min gap {gap.min():.3f}")
    meta["nmse_fa_max"] = max(nm)
    oc.save_npz(oc.FIXTURES / f"llamacpp_qwen_{name}.npz", meta, arrays)


if __name__ == "__main__":
    for n in sys.argv[1:] or [*SYNTH, QWEN]:
        run(n)
