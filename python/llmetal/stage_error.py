"""Where the error enters: each stage of the device against the float64 reference fed the
device's own inputs.

    rows = llmetal.compare_stages(model, tokens)     # [{"stage", "layer", "nmse", ...}, ...]

One eager pass keeps every stage's output (`run_with_cache`); then, stage by stage, the numpy
float64 version of that stage (`llmetal.reference`) recomputes it from the device's outputs of
the stages before it. So each NMSE is the error that stage adds by itself: quantized weights
dotted with 8-bit activations (CPU, CUDA), the f16 KV cache (the attention's reference reads
float64 keys and values), float32 accumulation order. `python -m llmetal trace --compare`
prints the table; `--json` gives the rows.
"""
from __future__ import annotations

import numpy as np

from . import reference as R


def compare_stages(model, tokens) -> list[dict]:
    """NMSE of every stage output against the reference fed the device's inputs."""
    c, gf = model.cfg, model.gguf
    tokens = [int(t) for t in tokens]
    T = len(tokens)
    _, got = model.run_with_cache(tokens)

    def W(name):
        info = gf.tensors[name]
        return R.dequantize(gf.tensor_array(name), info.ggml_type, info.shape)

    rows = []

    def row(key, want, weight=None):
        wt = model.w.get(weight).type_name if weight else None
        rows.append({"stage": key.rsplit(".", 1)[-1] if key.startswith("blk.") else key,
                     "layer": int(key.split(".")[1]) if key.startswith("blk.") else -1,
                     "nmse": R.nmse(got[key], want), "weight": weight, "weight_type": wt})

    info = gf.tensors["token_embd.weight"]
    row("inp_embd", R.embed(gf.tensor_array("token_embd.weight"), info.ggml_type, tokens, c.embed_scale,
                            shape=info.shape), "token_embd.weight")
    mode = R.ROPE_NEOX if c.rope_type == "neox" else R.ROPE_NORM
    factors = W("rope_freqs.weight") if "rope_freqs.weight" in gf.tensors else None
    resid = got["inp_embd"]
    for il in range(c.n_layer):
        L, B = f"blk.{il}.", lambda n: got[f"blk.{il}.{n}"]
        row(L + "attn_norm", R.rmsnorm(resid, W(L + "attn_norm.weight"), c.rms_eps), L + "attn_norm.weight")
        for stage, n in (("Qcur", "q"), ("Kcur", "k"), ("Vcur", "v")):
            want = R.matmul(W(L + f"attn_{n}.weight"), B("attn_norm"))
            if c.has_qkv_bias:
                want = want + W(L + f"attn_{n}.bias")
            row(L + stage, want, L + f"attn_{n}.weight")
        q, k = B("Qcur"), B("Kcur")
        if c.has_qk_norm:
            row(L + "Qcur_normed", R.rmsnorm(q.reshape(-1, c.head_dim), W(L + "attn_q_norm.weight"),
                                             c.rms_eps).reshape(T, -1), L + "attn_q_norm.weight")
            row(L + "Kcur_normed", R.rmsnorm(k.reshape(-1, c.head_dim), W(L + "attn_k_norm.weight"),
                                             c.rms_eps).reshape(T, -1), L + "attn_k_norm.weight")
            q, k = B("Qcur_normed"), B("Kcur_normed")
        base, fs = c.rope_freq_base_for(il), c.rope_freq_scale_for(il)
        row(L + "Qcur_rope", R.rope(q, c.n_head, c.n_rot, mode, base, fs, 0, factors))
        row(L + "Kcur_rope", R.rope(k, c.n_head_kv, c.n_rot, mode, base, fs, 0, factors))
        # float64 keys and values: the f16 cache's rounding counts as this stage's error
        row(L + "kqv", R.attention(B("Qcur_rope"), B("Kcur_rope"), B("Vcur"), c.n_head, c.n_head_kv, 0,
                                   c.attn_scale, c.window_for(il), c.attn_softcap))
        row(L + "kqv_out", R.matmul(W(L + "attn_output.weight"), B("kqv")), L + "attn_output.weight")
        o = B("kqv_out")
        if c.has_post_norms:
            row(L + "attn_post_norm", R.rmsnorm(o, W(L + "post_attention_norm.weight"), c.rms_eps),
                L + "post_attention_norm.weight")
            o = B("attn_post_norm")
        row(L + "ffn_inp", resid.astype(np.float64) + o)
        row(L + "ffn_norm", R.rmsnorm(B("ffn_inp"), W(L + "ffn_norm.weight"), c.rms_eps), L + "ffn_norm.weight")
        row(L + "ffn_gate", R.matmul(W(L + "ffn_gate.weight"), B("ffn_norm")), L + "ffn_gate.weight")
        row(L + "ffn_up", R.matmul(W(L + "ffn_up.weight"), B("ffn_norm")), L + "ffn_up.weight")
        if c.arch == "gemma3":
            act = "ffn_geglu"
            row(L + act, R.geglu(B("ffn_gate"), B("ffn_up")))
        else:
            act = "ffn_swiglu"
            row(L + act, R.swiglu(B("ffn_gate"), B("ffn_up")))
        row(L + "ffn_out", R.matmul(W(L + "ffn_down.weight"), B(act)), L + "ffn_down.weight")
        o = B("ffn_out")
        if c.has_post_norms:
            row(L + "ffn_post_norm", R.rmsnorm(o, W(L + "post_ffw_norm.weight"), c.rms_eps),
                L + "post_ffw_norm.weight")
            o = B("ffn_post_norm")
        row(L + "l_out", B("ffn_inp").astype(np.float64) + o)
        resid = B("l_out")
    row("result_norm", R.rmsnorm(resid, W("output_norm.weight"), c.rms_eps), "output_norm.weight")
    row("result_output", R.matmul(W(model.output_name), got["result_norm"]), model.output_name)
    return rows


def print_compare(rows, console):
    """One line per stage name: its NMSE in each layer's worst and median, and the weight type."""
    from rich.table import Table
    by = {}
    for r in rows:
        by.setdefault(r["stage"], []).append(r)
    table = Table(title="error each stage adds (NMSE vs float64 fed the device's inputs)")
    for col in ("stage", "weight type", "median", "worst", "worst layer"):
        table.add_column(col, justify="left" if col in ("stage", "weight type") else "right")
    for stage, rs in by.items():
        e = np.array([r["nmse"] for r in rs])
        worst = rs[int(np.argmax(e))]
        types = sorted({r["weight_type"] for r in rs if r["weight_type"]})
        table.add_row(stage, ",".join(types), f"{np.median(e):.2e}", f"{e.max():.2e}",
                      "" if worst["layer"] < 0 else str(worst["layer"]))
    console.print(table)
