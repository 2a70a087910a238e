#!/usr/bin/env python3
"""Stage by stage, llmetal and llama.cpp against the float64 model on one batch of real text.

    python scripts/oracle/compare_llamacpp_stages.py qwen2.5-coder-0.5b [-n 512] [-f TEXT] [--layers 0,1,23]

The first n tokens of the text (default: the GPL-3 text's first perplexity chunk) run through

  * llmetal's CPU device, eagerly (`Model.run_with_cache`, every stage kept);
  * llama.cpp (the oracle library of scripts/oracle/build_llamacpp.sh, flash attention off,
    one batch of n, 2 threads), its intermediate tensors read by an eval callback
    (`cb_eval`, what llama-eval-callback uses) under llama.cpp's own names;
  * the float64 model (`llmetal.reference.forward`, f16 K/V cache as both engines).

For each layer and stage it prints the NMSE of llmetal's and of llama.cpp's output against the
float64 model's (the error accumulated up to that stage, not the stage's own: for that, see
`python -m llmetal trace --compare`), then the logits' NMSE and the perplexity of the batch's
second half (what llama-perplexity scores) for the three. Stages compared, llmetal name =
llama.cpp tensor: attn_norm, Qcur_rope = the last `Qcur-N` (after rope), Kcur_rope = the last
`Kcur-N`, kqv = `kqv_out-N` (heads merged, before the output projection), ffn_inp, ffn_out,
l_out, result_norm.
"""
from __future__ import annotations

import argparse
import ctypes
import re
import sys

import numpy as np

import oracle_common as oc

STAGES = [("attn_norm", "attn_norm"), ("Qcur_rope", "Qcur"), ("Kcur_rope", "Kcur"), ("kqv", "kqv_out"),
          ("ffn_inp", "ffn_inp"), ("ffn_out", "ffn_out"), ("l_out", "l_out")]
WANT = {ll for _, ll in STAGES} | {"result_norm", "result_output"}


def llamacpp_tensors(model_path, tokens, layers) -> tuple[np.ndarray, dict]:
    """llama.cpp's logits [n, vocab] and {(name, layer): last tensor of that name as [n, -1]}."""
    oc.import_llama_cpp()
    import llama_cpp
    import llama_cpp.llama_cpp as LL
    seen: dict = {}

    def read(t):
        # struct ggml_tensor (ggml.h): type @0, buffer @8, ne[4] @16, nb[4] @48, ..., data @248, name @256
        p = ctypes.cast(t, ctypes.c_void_p).value
        typ = ctypes.c_int32.from_address(p).value
        ne = [ctypes.c_int64.from_address(p + 16 + 8 * i).value for i in range(4)]
        nb = [ctypes.c_uint64.from_address(p + 48 + 8 * i).value for i in range(4)]
        return typ, ne, nb, ctypes.c_void_p.from_address(p + 248).value, ctypes.string_at(p + 256).decode()

    def cb(t, ask, _):
        typ, ne, nb, data, name = read(t)
        m = re.fullmatch(r"(\w+?)(?:-(\d+))?", name)
        if not m or m.group(1) not in WANT or typ != 0:   # f32 tensors under a wanted name
            return False
        layer = -1 if m.group(2) is None else int(m.group(2))
        if layer >= 0 and layer not in layers:
            return False
        if not ask and data:
            span = sum((n - 1) * s for n, s in zip(ne, nb)) + 4
            raw = np.frombuffer((ctypes.c_char * span).from_address(data), np.float32)
            a = np.lib.stride_tricks.as_strided(raw, shape=ne[::-1], strides=nb[::-1])
            seen[(m.group(1), layer)] = np.array(a, dtype=np.float32).reshape(len(tokens), -1)
        return True

    callback = LL.ggml_backend_sched_eval_callback(cb)
    default_params = LL.llama_context_default_params

    def with_callback():
        p = default_params()
        p.cb_eval, p.cb_eval_user_data = callback, None
        return p
    LL.llama_context_default_params = with_callback
    try:
        n = len(tokens)
        llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=n, n_batch=n, n_ubatch=n, n_threads=2,
                              n_threads_batch=2, logits_all=True, flash_attn=False, n_gpu_layers=0, verbose=False)
        llm.eval(list(tokens))
        logits = np.array(llm.scores[:n], dtype=np.float32)
    finally:
        LL.llama_context_default_params = default_params
    return logits, seen


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("-f", "--file", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("-n", type=int, default=512, help="tokens (the first n of the text)")
    ap.add_argument("--layers", default=None, help="layers to print (default: all)")
    a = ap.parse_args(argv)

    sys.path.insert(0, str(oc.REPO / "python"))
    import llmetal
    from llmetal import perplexity as P
    from llmetal import reference as R
    from llmetal.tokenizer import Tokenizer

    path = oc.model_path(a.model)
    model = llmetal.load(path, n_ctx=a.n, n_batch=a.n, n_out=a.n, n_threads=2)
    c = model.cfg
    layers = range(c.n_layer) if a.layers is None else [int(x) for x in a.layers.split(",")]
    tok = Tokenizer.from_gguf(model.gguf)
    tokens = tok.encode(P.read_text(a.file))[:a.n]
    if tok.add_bos:
        tokens[0] = tok.bos_id
    ref: dict = {}

    def keep(name, x):
        ref[name] = np.asarray(x, np.float32) if name != "result_output" else np.asarray(x)
        return x
    R.forward(model.gguf, c, tokens, patch=keep)
    got_logits, got = model.run_with_cache(tokens)
    ll_logits, ll = llamacpp_tensors(path, tokens, set(layers))

    print(f"{a.model}: {len(tokens)} tokens; NMSE against float64, llmetal / llama.cpp (FA off)")
    print("layer " + " ".join(f"{s:>19}" for s, _ in STAGES))
    for il in layers:
        cells = []
        for st, lname in STAGES:
            want = ref[f"blk.{il}.{st}"]
            mine = R.nmse(got[f"blk.{il}.{st}"], want)
            theirs = ll.get((lname, il))
            cells.append(f"{mine:8.1e} /{R.nmse(theirs, want) if theirs is not None else float('nan'):8.1e}")
        print(f"{il:5d} " + " ".join(f"{x:>19}" for x in cells))
    print(f"result_norm {R.nmse(got['result_norm'], ref['result_norm']):.2e} / "
          f"{R.nmse(ll[('result_norm', -1)], ref['result_norm']):.2e}")
    first = a.n // 2
    targets = np.asarray(tokens[first + 1:])
    for what, lg in (("llmetal", got_logits), ("llama.cpp", ll_logits), ("float64", ref["result_output"])):
        nll = P.token_nll(lg[first:a.n - 1], targets)
        err = "" if what == "float64" else f"  logits NMSE {R.nmse(lg, ref['result_output']):.2e}"
        print(f"{what:10s} second-half perplexity {np.exp(nll.mean()):.4f}{err}")


if __name__ == "__main__":
    main()
