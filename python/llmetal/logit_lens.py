"""The logit lens: what each layer would predict if the model stopped there.

    lens = llmetal.lens(model, tokens, k=5)
    lens.top_ids[l, t], lens.top_probs[l, t]      # layer l (0 = the embeddings), position t

The residual stream after each layer (`inp_embd`, then `blk.N.l_out`) is put through the
model's final norm and output projection on the device (`Model.unembed`: the same kernels as
`result_norm` / `result_output`), so the last row is exactly the model's own prediction.
`python -m llmetal trace --lens` prints it as a table of layers by positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Lens:
    tokens: list[int]
    layers: list[str]          # the residual each row reads: "inp_embd", "blk.0.l_out", ...
    top_ids: np.ndarray        # [layers, positions, k] int64, most likely first
    top_probs: np.ndarray      # [layers, positions, k] float64 softmax probabilities

    def as_json(self, tokenizer=None) -> dict:
        text = (lambda i: tokenizer.token_text(int(i))) if tokenizer is not None else (lambda i: None)
        return {"tokens": self.tokens, "layers": [
            {"layer": name, "positions": [
                [{"id": int(i), "piece": text(i), "prob": float(p)} for i, p in zip(ids, probs)]
                for ids, probs in zip(self.top_ids[l], self.top_probs[l])]}
            for l, name in enumerate(self.layers)]}


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def lens(model, tokens, k: int = 5) -> Lens:
    """Top-k next tokens and their probabilities at every layer and position of `tokens`."""
    if k < 1:
        raise ValueError("k must be >= 1")
    names = ["inp_embd"] + [f"blk.{il}.l_out" for il in range(model.cfg.n_layer)]
    _, cache = model.run_with_cache(tokens, names=names)
    ids, probs = [], []
    for name in names:
        p = _softmax(model.unembed(cache[name]))
        top = np.argsort(-p, axis=-1, kind="stable")[:, :k]
        ids.append(top)
        probs.append(np.take_along_axis(p, top, axis=-1))
    return Lens([int(t) for t in tokens], names, np.stack(ids), np.stack(probs))


def print_lens(lens_: Lens, tokenizer, console, max_positions: int = 12):
    """Layers by positions; each cell the top token and its probability."""
    from rich.table import Table
    from rich.text import Text
    T = len(lens_.tokens)
    cols = list(range(max(0, T - max_positions), T))
    table = Table(title="logit lens: top next token after each layer", show_lines=False)
    table.add_column("layer", style="cyan", no_wrap=True)
    for t in cols:
        table.add_column(Text(f"{t}: {tokenizer.token_text(lens_.tokens[t])!r}"), no_wrap=True)
    for l, name in enumerate(lens_.layers):
        cells = []
        for t in cols:
            i, p = int(lens_.top_ids[l, t, 0]), float(lens_.top_probs[l, t, 0])
            style = "bold" if p >= 0.5 else ("" if p >= 0.1 else "dim")
            cells.append(Text(f"{tokenizer.token_text(i)!r} {p:.2f}", style=style))
        table.add_row(name, *cells)
    console.print(table)
