"""Generation: prefill the prompt in batches, then a plain loop over `Model.decode_step`.

The decode step is where the original prototype lost most of its time (a GPU round-trip per
stage, an allocation per matmul). Here `Model.forward` runs ONCE against a recording encoder
to produce the plan of one token (`model.plan()` prints it); every later token is

    model.decode_step(token, pos)      # C++: write id, set step, submit the plan; one copy out
    sampler.sample(logits, history)    # numpy

so Python does O(1) work per token and the engine allocates nothing. `trace` and
`run_with_cache` use the same `forward` eagerly, so inspection and speed never diverge.
"""
from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .sampling import Sampler, SamplerParams


class NonFiniteError(ValueError):
    """A stage produced NaN or infinity (a damaged weight, or values past float range)."""


def peak_memory_bytes() -> int:
    """Peak resident set size of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


@dataclass
class TokenRecord:
    """One generated token with the running timings, as stream_generate yields them."""
    token: int
    text: str                 # the text this token completes (may be "" mid UTF-8 sequence)
    logprob: float
    index: int                # 0-based index among generated tokens
    prompt_tokens: int
    prompt_tps: float
    gen_tps: float            # generated tokens per second so far (decode steps only)
    peak_mem_bytes: int
    finish_reason: str | None = None   # "stop" (end-of-generation token) or "length" on the last


@dataclass
class GenerationResult:
    prompt_tokens: list[int]
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[float] = field(default_factory=list)
    prompt_tps: float = 0.0
    gen_tps: float = 0.0
    peak_mem_bytes: int = 0
    finish_reason: str = "length"

    def add(self, rec: TokenRecord) -> None:
        """Accumulate one record of stream_generate."""
        self.tokens.append(rec.token)
        self.text += rec.text
        self.logprobs.append(rec.logprob)
        self.prompt_tps, self.gen_tps, self.peak_mem_bytes = rec.prompt_tps, rec.gen_tps, rec.peak_mem_bytes
        if rec.finish_reason:
            self.finish_reason = rec.finish_reason

    def as_json(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "tokens": self.tokens, "text": self.text,
                "prompt_tps": self.prompt_tps, "gen_tps": self.gen_tps,
                "peak_mem_bytes": self.peak_mem_bytes, "finish_reason": self.finish_reason}


def prompt_ids(tokenizer, prompt, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
    """The token ids of a prompt given as text (tokenized) or as ids."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, add_bos=add_bos, parse_special=parse_special)
    return [int(t) for t in prompt]


def room_after(model, ids) -> int:
    """How many tokens can be generated after the prompt `ids` before the context is full."""
    return model.n_ctx - len(ids) + 1


def stream_generate(model, tokenizer, prompt, max_tokens: int = 128, params: SamplerParams | None = None,
                    add_bos: bool | None = None, parse_special: bool = True, stop_at_eog: bool = True,
                    progress=None):
    """Yield a TokenRecord per generated token. `prompt` is text or a list of token ids;
    progress(done, total) follows the prompt's prefill, chunk by chunk."""
    ids = prompt_ids(tokenizer, prompt, add_bos, parse_special)
    if not ids:
        raise ValueError("the prompt is empty (no tokens)")
    if max_tokens < 0:
        raise ValueError("the number of tokens to generate must be >= 0")
    if len(ids) > model.n_ctx:
        raise ValueError(f"context overflow: the prompt has {len(ids)} tokens > n_ctx {model.n_ctx} "
                         "(raise -c/--ctx-size)")
    # generation stops when the context is full (finish reason "length"): the last token is
    # sampled from the logits of position n_ctx - 1, so the prompt leaves n_ctx - len + 1
    max_tokens = min(max_tokens, room_after(model, ids))
    # The model is this generation's until it ends: other threads wait for it; the same thread
    # interleaving two generations would mix their tokens in the one KV cache, so that is an error.
    with model.lock:
        if model.generating:
            raise RuntimeError("this model is already generating (finish or close that stream_generate "
                               "first: one KV cache serves one sequence)")
        model.generating = True
        try:
            yield from _generate_locked(model, tokenizer, ids, max_tokens, params, stop_at_eog, progress)
        finally:
            model.generating = False


def _generate_locked(model, tokenizer, ids, max_tokens, params, stop_at_eog, progress):
    params = params or SamplerParams(temp=0.0)
    sampler = Sampler(params, model.cfg.n_vocab)
    eog = set(tokenizer.eog_ids) if stop_at_eog else set()
    model.plan()          # recorded before the clock starts
    stream = tokenizer.decoder()

    t0 = time.perf_counter()
    logits = model.prefill(ids, 0, progress)
    t_prompt = time.perf_counter() - t0
    prompt_tps = len(ids) / t_prompt if t_prompt > 0 else 0.0

    history = list(ids)
    pos = len(ids)
    t_gen, n_steps = 0.0, 0
    for i in range(max_tokens):
        tok, logprob = sampler.sample(logits, history)
        if not math.isfinite(logprob):   # a non-finite logit the per-step check did not read
            raise NonFiniteError(f"the logits sampled at position {pos - 1} are not finite (logprob "
                                 f"{logprob}); run `trace` or run_with_cache to find the stage")
        history.append(tok)
        done = tok in eog
        last = done or i == max_tokens - 1
        text = "" if done else stream.add(tok)
        if last and not done:
            text += stream.flush()
        if not last:   # the next token's logits; a finished stream needs none
            t1 = time.perf_counter()
            logits = model.decode_step(tok, pos)
            t_gen += time.perf_counter() - t1
            n_steps += 1
            pos += 1
        yield TokenRecord(token=tok, text=text, logprob=float(logprob), index=i,
                          prompt_tokens=len(ids), prompt_tps=prompt_tps,
                          gen_tps=(n_steps / t_gen) if t_gen > 0 else 0.0,
                          peak_mem_bytes=peak_memory_bytes(),
                          finish_reason=("stop" if done else "length") if last else None)
        if done:
            break


def generate(model, tokenizer, prompt, max_tokens: int = 128, params: SamplerParams | None = None,
             add_bos: bool | None = None, parse_special: bool = True, **kw) -> GenerationResult:
    """Run stream_generate to the end and collect the result."""
    ids = prompt_ids(tokenizer, prompt, add_bos, parse_special)
    res = GenerationResult(prompt_tokens=ids, peak_mem_bytes=peak_memory_bytes())
    for rec in stream_generate(model, tokenizer, ids, max_tokens, params, **kw):
        res.add(rec)
    return res
