#!/usr/bin/env python3
"""Write a GGUF of a given architecture and shape with random weights (llama, qwen2, qwen3).

An architecture without a real file here is verified on a GGUF of its exact shape, against
llama.cpp (DESIGN.md); benchmarks use the same files at real sizes. Tokenizer metadata is
copied from a real GGUF (--tok) so that llama.cpp and llmetal both load and tokenize it.

  python scripts/synth_gguf.py --arch qwen3 --shape qwen3-0.6b --layers 2 --qtype Q8_0 \\
      --tok ~/.cache/llmetal/models/qwen2.5-coder-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf -o q3.gguf
  python scripts/synth_gguf.py --arch qwen2 --shape qwen2.5-0.5b --n-embd 256 --n-head 4 --n-head-kv 2 \\
      --n-ff 512 --layers 2 --qtype Q4_K_M --tok ... -o q2.gguf     # F16, then llama-quantize

What each architecture writes (as llama.cpp's convert_hf_to_gguf.py does for the real models):
- llama: `llama.*` keys, rope "norm" (adjacent pairs), freq_base from the shape.
- qwen2: `qwen2.*` keys, Q/K/V biases (`blk.N.attn_{q,k,v}.bias`), rope base 1e6; llama.cpp
  uses the "neox" rope layout for qwen2 (no key says so: it follows from the architecture).
- qwen3: `qwen3.*` keys, `attention.key_length` / `value_length` = the head size (128 in the
  real models, independent of n_embd / n_head), per-head RMSNorm weights `blk.N.attn_q_norm`
  and `attn_k_norm` of [head size], no biases, rope base 1e6, neox rope.

Weights: matrices are normal with std 1/sqrt(input width) (so every stage keeps activations
near unit scale and the logits are not flat), the embedding too (1/sqrt(n_embd): with a tied
output, an embedding of std 1 would give logits of std sqrt(n_embd) and a greedy run that
repeats the last token forever), norm weights 1 + N(0, 0.1)
(so a norm that ignores its weight shows), biases N(0, 0.5). Seeded: the same arguments give
the same file. F16 / Q8_0 / Q4_0 / Q4_1 are written directly (gguf.quants); any other type llama.cpp
knows (Q4_K_M, Q6_K, Q2_K, ...) is written as F16 and converted with `llama-quantize`
(from $LLAMA_ORACLE_BIN, default /work/oracle/llama.cpp-build/bin).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as VT

# n_layer, n_embd, n_head, n_head_kv, n_ff, head_dim (None: n_embd / n_head), rope base, tied output
SHAPES = {
    "smollm2-135m": (30, 576, 9, 3, 1536, None, 100000.0, True),
    "llama3-1b": (16, 2048, 32, 8, 8192, None, 500000.0, True),
    "llama3-8b": (32, 4096, 32, 8, 14336, None, 500000.0, False),
    "qwen2.5-0.5b": (24, 896, 14, 2, 4864, None, 1e6, False),   # the Coder-Instruct file: untied
    "qwen2.5-1.5b": (28, 1536, 12, 2, 8960, None, 1e6, True),
    "qwen2.5-7b": (28, 3584, 28, 4, 18944, None, 1e6, False),
    "qwen3-0.6b": (28, 1024, 16, 8, 3072, 128, 1e6, True),
    "qwen3-1.7b": (28, 2048, 16, 8, 6144, 128, 1e6, True),
    "qwen3-8b": (36, 4096, 32, 8, 12288, 128, 1e6, False),
}
DIRECT = {"F16": Q.F16, "Q8_0": Q.Q8_0, "Q4_0": Q.Q4_0, "Q4_1": Q.Q4_1}
FILE_TYPE = {"F16": 1, "Q8_0": 7, "Q4_0": 2, "Q4_1": 3}
DEFAULT_BIN = "/work/oracle/llama.cpp-build/bin"


def copy_tokenizer(src: gguf.GGUFReader, w: gguf.GGUFWriter):
    """Every tokenizer.* key of src, with its value type (arrays keep their element type)."""
    for key, f in src.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vt = f.types[0]
        if vt == VT.ARRAY:
            w.add_key_value(key, f.contents(), VT.ARRAY, sub_type=f.types[1])
        else:
            w.add_key_value(key, f.contents(), vt)


def add_matrix(w, rng, name, rows, cols, qt, std=None):
    a = (rng.standard_normal((rows, cols), dtype=np.float32) * (std if std is not None else cols ** -0.5))
    if qt == Q.F16:
        w.add_tensor(name, a.astype(np.float16))
    else:
        q = gguf.quants.quantize(a, qt)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qt)


def add_norm(w, rng, name, n):
    w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))


def write(arch, shape, n_vocab_src, src, out, qt, n_ctx, seed, name):
    n_layer, d, n_head, n_kv, d_ff, hd, base, tied = shape
    hd = hd or d // n_head
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(out, arch)
    w.add_name(name)
    w.add_block_count(n_layer)
    w.add_context_length(n_ctx)
    w.add_embedding_length(d)
    w.add_feed_forward_length(d_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(base)
    w.add_layer_norm_rms_eps(1e-6 if arch != "llama" else 1e-5)
    if arch == "llama":
        w.add_rope_dimension_count(hd)
        w.add_vocab_size(n_vocab_src)
    if arch == "qwen3" or hd != d // n_head:
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_file_type(FILE_TYPE[qt.name] if qt.name in FILE_TYPE else 1)
    copy_tokenizer(src, w)

    add_matrix(w, rng, "token_embd.weight", n_vocab_src, d, qt)
    add_norm(w, rng, "output_norm.weight", d)
    if not tied:
        add_matrix(w, rng, "output.weight", n_vocab_src, d, qt)
    for i in range(n_layer):
        p = f"blk.{i}."
        add_norm(w, rng, p + "attn_norm.weight", d)
        add_matrix(w, rng, p + "attn_q.weight", n_head * hd, d, qt)
        add_matrix(w, rng, p + "attn_k.weight", n_kv * hd, d, qt)
        add_matrix(w, rng, p + "attn_v.weight", n_kv * hd, d, qt)
        if arch == "qwen2":
            for t, n in (("q", n_head * hd), ("k", n_kv * hd), ("v", n_kv * hd)):
                w.add_tensor(p + f"attn_{t}.bias", (0.5 * rng.standard_normal(n)).astype(np.float32))
        if arch == "qwen3":
            add_norm(w, rng, p + "attn_q_norm.weight", hd)
            add_norm(w, rng, p + "attn_k_norm.weight", hd)
        add_matrix(w, rng, p + "attn_output.weight", d, n_head * hd, qt)
        add_norm(w, rng, p + "ffn_norm.weight", d)
        add_matrix(w, rng, p + "ffn_gate.weight", d_ff, d, qt)
        add_matrix(w, rng, p + "ffn_up.weight", d_ff, d, qt)
        add_matrix(w, rng, p + "ffn_down.weight", d, d_ff, qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()


def llama_quantize(src: str, out: str, qtype: str):
    binary = os.path.join(os.environ.get("LLAMA_ORACLE_BIN", DEFAULT_BIN), "llama-quantize")
    if not os.path.exists(binary):
        sys.exit(f"synth_gguf: {qtype} needs llama-quantize, not found at {binary} "
                 "(build it with scripts/oracle/build_llamacpp.sh or set LLAMA_ORACLE_BIN)")
    r = subprocess.run([binary, src, out, qtype], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"synth_gguf: llama-quantize failed:\n{r.stderr[-2000:]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=["llama", "qwen2", "qwen3"], required=True)
    ap.add_argument("--shape", choices=SHAPES, required=True, help="the real model's shape to start from")
    ap.add_argument("--tok", required=True, help="GGUF to copy the tokenizer.* metadata from")
    ap.add_argument("--qtype", default="Q8_0",
                    help="F16, Q8_0, Q4_0, Q4_1 (written directly) or a llama-quantize type (Q4_K_M, Q6_K, ...)")
    ap.add_argument("--layers", type=int, default=None, help="keep only the first N layers")
    ap.add_argument("--n-embd", type=int, default=None)
    ap.add_argument("--n-head", type=int, default=None)
    ap.add_argument("--n-head-kv", type=int, default=None)
    ap.add_argument("--n-ff", type=int, default=None)
    ap.add_argument("--head-dim", type=int, default=None)
    ap.add_argument("--tied", choices=["yes", "no"], default=None, help="output reuses token_embd (default: the shape's)")
    ap.add_argument("--ctx", type=int, default=4096, help="context_length written in the file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args(argv)

    n_layer, d, n_head, n_kv, d_ff, hd, base, tied = SHAPES[a.shape]
    n_layer = a.layers or n_layer
    d, n_head, n_kv, d_ff = a.n_embd or d, a.n_head or n_head, a.n_head_kv or n_kv, a.n_ff or d_ff
    hd = a.head_dim or hd
    if a.tied is not None:
        tied = a.tied == "yes"
    if n_head % n_kv or (hd is None and d % n_head):
        sys.exit(f"synth_gguf: bad shape: n_embd {d}, n_head {n_head}, n_head_kv {n_kv}")
    shape = (n_layer, d, n_head, n_kv, d_ff, hd, base, tied)

    src = gguf.GGUFReader(a.tok)
    n_vocab = len(src.fields["tokenizer.ggml.tokens"].data)
    name = (f"synthetic {a.arch} {a.shape} L{n_layer} d{d} h{n_head}/{n_kv} hd{hd or d // n_head} "
            f"ff{d_ff} {a.qtype} seed{a.seed}")
    if a.qtype in DIRECT:
        write(a.arch, shape, n_vocab, src, a.out, DIRECT[a.qtype], a.ctx, a.seed, name)
    else:
        with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(a.out))) as tmp:
            f16 = os.path.join(tmp, "f16.gguf")
            write(a.arch, shape, n_vocab, src, f16, Q.F16, a.ctx, a.seed, name)
            llama_quantize(f16, a.out, a.qtype)
    print(f"{a.out}: {name}, vocab {n_vocab}, {os.path.getsize(a.out) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
