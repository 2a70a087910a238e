"""`python -m llmetal trace`: one real forward pass, run eagerly, printed stage by stage.

Each row: stage, layer, output shape and dtype, the weight it used (and its GGUF type), the
time since the previous stage finished, and a few statistics of the output. The same
`Model.forward` that generation records and replays runs here, one commit per stage, ending
with the `argmax` stage (the greedy next token, as `decode_step(ids=True)` takes it).
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np


def parse_filter(spec, what):
    """'0,2,5-7' -> set of ints (layers); 'Qcur,attn_norm' -> set of names (stages)."""
    if spec is None:
        return None
    out = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if what == "layers":
            try:
                if "-" in part:
                    a, b = part.split("-", 1)
                    out.update(range(int(a), int(b) + 1))
                else:
                    out.add(int(part))
            except ValueError:
                raise ValueError(f"--layers: '{part}' is not a layer number or range") from None
        else:
            out.add(part)
    return out


def run_trace(model, tokenizer, prompt: str, layers=None, stages=None, as_json=False, top=5,
              console=None):
    layer_set = parse_filter(layers, "layers")
    stage_set = parse_filter(stages, "stages")
    if layer_set and max(layer_set) >= model.cfg.n_layer:
        raise ValueError(f"--layers: the model has layers 0..{model.cfg.n_layer - 1}")
    if stage_set:
        known = {s.name for s in model.plan(ids=True).steps}
        unknown = sorted(stage_set - known)
        if unknown:
            raise ValueError(f"--stages: no stage named {unknown[0]!r} in this model "
                             f"(stages: {', '.join(sorted(known))})")
    tokens = tokenizer.encode(prompt, parse_special=True)
    if not tokens:
        raise ValueError("the prompt gave no tokens")
    if len(tokens) > model.n_batch:
        raise ValueError(f"trace runs one batch: the prompt has {len(tokens)} tokens > {model.n_batch}")

    rows = []
    t_last = [time.perf_counter()]
    logits = []

    def hook(name, il, out, wname):
        now = time.perf_counter()
        dt, t_last[0] = now - t_last[0], now
        if name == "result_output":
            logits.append(out.to_numpy()[-1])
        if (layer_set is not None and il not in layer_set) or (stage_set is not None and name not in stage_set):
            t_last[0] = time.perf_counter()
            return
        a = out.to_numpy()
        wt = model.w.get(wname) if wname else None
        flat = a.reshape(-1).astype(np.float64)
        rows.append({
            "stage": name, "layer": il, "shape": list(a.shape), "dtype": str(a.dtype),
            "weight": wname, "weight_type": wt.type_name if wt is not None else None,
            "ms": dt * 1e3, "min": float(flat.min()), "max": float(flat.max()), "mean": float(flat.mean()),
            "first": [float(v) for v in a.reshape(-1)[:3]],
        })
        if not as_json and console is not None:
            r = rows[-1]
            layer = "" if il < 0 else str(il)
            wdesc = f"{r['weight_type']}" if r["weight_type"] else ""
            console.print(f"[cyan]{name:<15}[/] {layer:>3} {str(tuple(a.shape)):>14} {wdesc:>5} "
                          f"{r['ms']:8.3f} ms  min {r['min']:+9.4f} max {r['max']:+9.4f} "
                          f"mean {r['mean']:+8.4f}  [{', '.join(f'{v:+.4f}' for v in r['first'])}]",
                          highlight=False)
        t_last[0] = time.perf_counter()

    if not as_json and console is not None:
        c = model.cfg
        console.print(f"[bold]{c.name}[/] ({c.arch}, {c.n_layer} layers, d={c.n_embd}) on "
                      f"{model.device_name}; prompt {len(tokens)} tokens: {tokens}", highlight=False)
        console.print(f"[dim]{'stage':<15} {'blk':>3} {'shape':>14} {'wtype':>5} {'time':>11}  output stats[/]")
    greedy = int(model.run_eager(tokens, hook, out_rows="last", ids=True).to_numpy()[-1])
    logits = logits[0]
    order = np.argsort(-logits)[:top]
    lse = np.log(np.sum(np.exp(logits.astype(np.float64) - logits.max()))) + logits.max()
    top_list = [{"id": int(i), "piece": tokenizer.token_text(int(i)), "logit": float(logits[i]),
                 "prob": float(np.exp(logits[i] - lse))} for i in order]
    if as_json:
        print(json.dumps({"model": model.cfg.name, "device": model.device_name, "tokens": tokens,
                          "stages": rows, "top": top_list, "argmax": greedy}))
    elif console is not None:
        console.print(f"[bold]next token[/] (top {top}; the argmax stage picked {greedy}):", highlight=False)
        for t in top_list:
            console.print(f"  {t['id']:>7} {t['piece']!r:<20} logit {t['logit']:+8.3f}  p {t['prob']:.4f}",
                          highlight=False)
    return rows, top_list
