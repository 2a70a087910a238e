"""llmetal against llama.cpp on synthetic files of the quant types the gguf package cannot write.

    python scripts/oracle/check_quant_parity.py [--types Q2_K,Q3_K_M,Q3_K_S,IQ4_XS]

A small llama-shaped F16 GGUF (2 layers, n_embd 256, 4 / 2 heads, n_ff 512, SmolLM2's tokenizer,
random weights: scripts/synth_gguf.py) is converted by llama.cpp's own `llama-quantize` into each
type; both programs then run the same prompts (llama.cpp's token ids) as one batch, and the
table gives, per type and prompt, the NMSE of llmetal's last-position logits against llama.cpp's
with flash attention off, next to llama.cpp's own NMSE between flash attention on and off.
Needs the oracle of scripts/oracle/build_llamacpp.sh (llama-quantize, llama-cpp-python); the
files live in a temporary folder.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import oracle_common as oc

PROMPTS = ["The quick brown fox jumps over the lazy dog. The capital of France is",
           "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
           "Once upon a time, in a small village by the sea, there lived"]


def nmse(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sum((a - b) ** 2) / np.sum(b ** 2))


def llama_last_logits(path: Path, ids: list[int], flash_attn: bool) -> np.ndarray:
    llama_cpp = oc.import_llama_cpp()
    s = oc.SETTINGS
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=s["n_ctx"], n_batch=s["n_batch"], n_ubatch=s["n_ubatch"],
                          n_threads=s["n_threads"], n_threads_batch=s["n_threads_batch"], logits_all=True,
                          flash_attn=flash_attn, n_gpu_layers=0, seed=0, verbose=False)
    try:
        return oc.decode(llm, ids)[-1]
    finally:
        llm.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q2_K,Q3_K_S,Q3_K_M,IQ4_XS")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(oc.REPO / "python"))
    import llmetal
    from llmetal.tokenizer import Tokenizer
    smol = oc.model_path("smollm2")
    quantize = oc.ORACLE_DIR / "bin" / "llama-quantize"
    if not quantize.exists():
        sys.exit(f"error: {quantize} is missing; run scripts/oracle/build_llamacpp.sh first")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        f16 = Path(tmp) / "f16.gguf"
        subprocess.run([sys.executable, str(oc.REPO / "scripts" / "synth_gguf.py"), "--arch", "llama",
                        "--shape", "llama3-1b", "--layers", "2", "--n-embd", "256", "--n-head", "4",
                        "--n-head-kv", "2", "--n-ff", "512", "--qtype", "F16", "--seed", "0",
                        "--tok", str(smol), "-o", str(f16)], check=True, capture_output=True)
        for qt in a.types.split(","):
            q = Path(tmp) / f"{qt}.gguf"
            subprocess.run([str(quantize), str(f16), str(q), qt], check=True, capture_output=True)
            m = llmetal.load(q, n_ctx=512, n_batch=512, n_out=1)
            types = sorted({t.type_name for t in m.gguf.tensors.values()})
            for i, prompt in enumerate(PROMPTS):
                ids = Tokenizer.from_gguf(m.gguf).encode(prompt, parse_special=True)
                ref = llama_last_logits(q, ids, flash_attn=False)
                fa = llama_last_logits(q, ids, flash_attn=True)
                ours = m.prefill(ids, 0)
                rows.append((qt, i, nmse(ours, ref), nmse(fa, ref), int(np.argmax(ours)) == int(np.argmax(ref)),
                             ",".join(types)))
    print("| file type | prompt | llmetal vs llama.cpp NMSE | llama.cpp FA on vs off | same top token | tensor types |")
    print("|---|---:|---:|---:|---|---|")
    for qt, i, e, n, same, types in rows:
        print(f"| {qt} | {i} | {e:.2e} | {n:.2e} | {'yes' if same else 'no'} | {types} |")


if __name__ == "__main__":
    main()
