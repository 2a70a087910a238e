"""Perplexity of a model on a text, computed as llama.cpp's `llama-perplexity` computes it.

The method (llama.cpp tools/perplexity/perplexity.cpp, `perplexity()`), step by step:

1. The whole text is tokenized once, with the model's special tokens (BOS when the model's
   add_bos says so) and without parsing special-token text. The file is read as `-f` reads
   it: one trailing newline is dropped.
2. It needs at least 2 * n_ctx tokens. It is cut into n_chunk = len(tokens) // n_ctx chunks
   of n_ctx tokens (at most --chunks of them); the rest is ignored.
3. Each chunk runs in a fresh context. When add_bos, its first token is replaced by BOS
   (the tokens themselves are kept: the next chunk starts from the text's own token).
4. Only the second half is scored: with first = n_ctx // 2, the logits at positions
   first .. n_ctx - 2 predict tokens first + 1 .. n_ctx - 1 (n_ctx - first - 1 tokens per chunk).
   Each contributes nll = -log_softmax(logits)[next token] (float32 logits, the sum of
   exponentials in float64, as llama.cpp does).
5. After chunk i the running estimate exp(sum nll / count) is printed as `[i]%.4f,`.
   The final estimate is PPL = exp(mean nll) with the error
   PPL * sqrt((mean(nll^2) - mean(nll)^2) / (count - 1)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

MIN_CTX = 4   # the smallest even context that scores a token per chunk (first = 2, one scored)


class PerplexityError(ValueError):
    """Input that perplexity cannot be computed on; the message says why."""


@dataclass
class PerplexityResult:
    n_ctx: int
    n_tokens: int            # tokens of the whole text
    n_chunks: int            # chunks scored
    running: list[float] = field(default_factory=list)   # estimate after each chunk
    nll: float = 0.0         # sum of negative log-likelihoods
    nll2: float = 0.0        # sum of their squares
    count: int = 0           # tokens scored

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.count)

    @property
    def error(self) -> float:
        """llama-perplexity's "+/-": the standard error of the mean nll, times PPL."""
        mean = self.nll / self.count
        var = self.nll2 / self.count - mean * mean
        return math.sqrt(var / (self.count - 1)) * self.ppl if var > 0 and self.count > 1 else float("nan")

    def to_dict(self) -> dict:
        return {"n_ctx": self.n_ctx, "n_tokens": self.n_tokens, "n_chunks": self.n_chunks,
                "count": self.count, "running": self.running, "ppl": self.ppl, "error": self.error}


def read_text(path) -> str:
    """The file as llama.cpp's `-f` reads it: verbatim, less one trailing newline."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    return text[:-1] if text.endswith("\n") else text


def check_ctx(n_ctx: int):
    if n_ctx < MIN_CTX or n_ctx % 2:
        raise PerplexityError(f"-c/--ctx-size {n_ctx}: perplexity needs an even context of at least "
                              f"{MIN_CTX} tokens (the second half of each chunk is scored)")


def plan_chunks(n_tokens: int, n_ctx: int, max_chunks: int | None = None, what: str = "the text") -> int:
    """How many chunks llama-perplexity scores; raises PerplexityError when there is too little text."""
    check_ctx(n_ctx)
    if n_tokens < 2 * n_ctx:
        raise PerplexityError(f"{what} tokenizes to only {n_tokens} tokens; perplexity with a context of "
                              f"{n_ctx} needs at least {2 * n_ctx} (2 * n_ctx)")
    if max_chunks is not None and max_chunks < 1:
        raise PerplexityError(f"--chunks {max_chunks}: must be >= 1")
    n = n_tokens // n_ctx
    return n if max_chunks is None else min(max_chunks, n)


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits[i])[targets[i]] per row, as llama.cpp's log_softmax: the logits as
    float32, max subtracted in float32, exp in float32, the sum in float64."""
    lg = np.asarray(logits, dtype=np.float32)
    mx = lg.max(axis=1, keepdims=True)
    sum_exp = np.exp(lg - mx).sum(axis=1, dtype=np.float64)
    picked = lg[np.arange(len(targets)), targets].astype(np.float64) - mx[:, 0].astype(np.float64)
    return -(picked - np.log(sum_exp))


# logits_fn(chunk_tokens, first) -> logits of positions first .. len(chunk_tokens) - 1
LogitsFn = Callable[[list, int], np.ndarray]


def perplexity(logits_fn: LogitsFn, tokens: list[int], n_ctx: int, add_bos: bool, bos_id: int | None,
               max_chunks: int | None = None, what: str = "the text") -> Iterator[PerplexityResult]:
    """Score `tokens` (the whole text, already tokenized with the model's BOS) chunk by chunk.

    Yields the same PerplexityResult after every chunk (its `running` grows by one).
    """
    n_chunks = plan_chunks(len(tokens), n_ctx, max_chunks, what)
    if add_bos and bos_id is None:
        raise PerplexityError("the model's add_bos is set but it has no BOS token")
    res = PerplexityResult(n_ctx=n_ctx, n_tokens=len(tokens), n_chunks=n_chunks)
    first = n_ctx // 2
    for i in range(n_chunks):
        chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if add_bos:
            chunk[0] = bos_id
        rows = np.asarray(logits_fn(chunk, first))
        n_scored = n_ctx - first - 1
        if rows.shape[0] < n_scored:
            raise RuntimeError(f"logits_fn gave {rows.shape[0]} rows, {n_scored} needed")
        nll = token_nll(rows[:n_scored], np.asarray(chunk[first + 1:], dtype=np.int64))
        res.nll += float(nll.sum())
        res.nll2 += float((nll * nll).sum())
        res.count += n_scored
        res.running.append(math.exp(res.nll / res.count))
        yield res


def model_logits_fn(model) -> LogitsFn:
    """Logits of a chunk's scored half from the engine, in a fresh context: the first half only
    fills the KV cache (`prefill`, last-row logits), the second half runs in batches that
    return every row (what `Model.logits` does for the whole chunk, without the output matmul
    of the rows that are not scored: 256 x vocab x n_embd multiply-adds per chunk saved)."""
    def fn(chunk, first):
        with model.lock:                 # one user of the KV cache for the whole chunk
            model.prefill(chunk[:first], 0)
            step = min(model.n_batch, model.n_out)
            rows = [model.forward(chunk[i:i + step], i, "all").to_numpy()
                    for i in range(first, len(chunk), step)]
        return np.concatenate(rows, axis=0)
    return fn


def reference_logits_fn(model) -> LogitsFn:
    """The float64 numpy model (`llmetal.reference.forward`) on the whole chunk."""
    from . import reference

    def fn(chunk, first):
        return reference.forward(model.gguf, model.cfg, chunk)[first:]
    return fn


def format_running(res: PerplexityResult) -> str:
    """llama-perplexity's progress line: `[1]12.3456,[2]11.9876,...`"""
    return "".join(f"[{i + 1}]{p:.4f}," for i, p in enumerate(res.running))


def format_final(res: PerplexityResult) -> str:
    return f"Final estimate: PPL = {res.ppl:.4f} +/- {res.error:.5f}"
