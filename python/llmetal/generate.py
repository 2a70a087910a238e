"""Generation: prefill the prompt in batches, then decode one token at a time by replaying a
recorded plan.

The decode step is where the original prototype lost most of its time (a GPU round-trip per
stage, an allocation per matmul). Here `Model.forward` runs ONCE against a recording encoder
to produce a `Plan` (the command list of one token); every later token is

    encoder.replay_token(plan, ids, token, pos)     # C++: write id, set step, submit the list
    logits.download_into(buffer)                    # one copy out
    sampler.sample(buffer, history)                 # numpy

so Python does O(1) work per token and the engine allocates nothing. `trace` and
`run_with_cache` use the same `forward` eagerly, so inspection and speed never diverge.
"""
from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .sampling import Sampler, SamplerParams


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

    def as_json(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "tokens": self.tokens, "text": self.text,
                "prompt_tps": self.prompt_tps, "gen_tps": self.gen_tps,
                "peak_mem_bytes": self.peak_mem_bytes, "finish_reason": self.finish_reason}


class Decoder:
    """Owns the decode plan of a model and steps it one token at a time."""

    def __init__(self, model):
        self.model = model
        self.plan = None
        self.n_recorded = 0
        # reused every step; page-locked on cuda, so the download is one DMA
        self.logits = model.device.host_empty(model.cfg.n_vocab)
        self._ids = model.full["ids"].rows(0, 1)
        self._out = model.full["logits"].rows(0, 1)

    def record(self):
        """Record the one-token forward pass once (per model, n_ctx and batch shape)."""
        if self.plan is None:
            m = self.model
            m.enc.begin_record(1)
            try:
                m.forward([0], 0, "last")     # token and position come from buffers at replay
            finally:
                self.plan = m.enc.end_record()
            self.n_recorded += 1
        return self.plan

    def step(self, token: int, pos: int) -> np.ndarray:
        """Run one token at position pos; returns the logits [vocab] (a reused buffer)."""
        if pos >= self.model.n_ctx:
            raise ValueError(f"context overflow: position {pos} >= n_ctx {self.model.n_ctx}")
        self.model.enc.replay_token(self.plan or self.record(), self._ids, int(token), int(pos))
        self._out.download_into(self.logits)
        return self.logits


def _decoder(model) -> Decoder:
    d = getattr(model, "_decoder", None)
    if d is None:
        d = model._decoder = Decoder(model)
    return d


def stream_generate(model, tokenizer, prompt, max_tokens: int = 128, params: SamplerParams | None = None,
                    add_bos: bool | None = None, parse_special: bool = True, stop_at_eog: bool = True):
    """Yield a TokenRecord per generated token. `prompt` is text or a list of token ids."""
    if isinstance(prompt, str):
        prompt_ids = tokenizer.encode(prompt, add_bos=add_bos, parse_special=parse_special)
    else:
        prompt_ids = [int(t) for t in prompt]
    if not prompt_ids:
        raise ValueError("the prompt is empty (no tokens)")
    if max_tokens < 0:
        raise ValueError("the number of tokens to generate must be >= 0")
    if len(prompt_ids) + max_tokens > model.n_ctx:
        raise ValueError(f"context overflow: prompt {len(prompt_ids)} + {max_tokens} new tokens "
                         f"> n_ctx {model.n_ctx} (raise -c/--ctx-size or lower -n)")
    params = params or SamplerParams(temp=0.0)
    sampler = Sampler(params, model.cfg.n_vocab)
    eog = set(tokenizer.eog_ids) if stop_at_eog else set()
    dec = _decoder(model)
    dec.record()
    stream = tokenizer.decoder()

    t0 = time.perf_counter()
    logits = model.prefill(prompt_ids, 0)
    t_prompt = time.perf_counter() - t0
    prompt_tps = len(prompt_ids) / t_prompt if t_prompt > 0 else 0.0

    history = list(prompt_ids)
    pos = len(prompt_ids)
    t_gen, n_steps = 0.0, 0
    for i in range(max_tokens):
        tok, logprob = sampler.sample(logits, history)
        history.append(tok)
        done = tok in eog
        last = done or i == max_tokens - 1
        text = "" if done else stream.add(tok)
        if last and not done:
            text += stream.flush()
        if not last:   # the next token's logits; a finished stream needs none
            t1 = time.perf_counter()
            logits = dec.step(tok, pos)
            t_gen += time.perf_counter() - t1
            n_steps += 1
            pos += 1
        yield TokenRecord(token=tok, text=text, logprob=float(logprob), index=i,
                          prompt_tokens=len(prompt_ids), prompt_tps=prompt_tps,
                          gen_tps=(n_steps / t_gen) if t_gen > 0 else 0.0,
                          peak_mem_bytes=peak_memory_bytes(),
                          finish_reason=("stop" if done else "length") if last else None)
        if done:
            break


def generate(model, tokenizer, prompt, max_tokens: int = 128, params: SamplerParams | None = None,
             **kw) -> GenerationResult:
    """Run stream_generate to the end and collect the result."""
    res = None
    for rec in stream_generate(model, tokenizer, prompt, max_tokens, params, **kw):
        if res is None:
            res = GenerationResult(prompt_tokens=[])
        res.tokens.append(rec.token)
        res.text += rec.text
        res.logprobs.append(rec.logprob)
        res.prompt_tps, res.gen_tps, res.peak_mem_bytes = rec.prompt_tps, rec.gen_tps, rec.peak_mem_bytes
        if rec.finish_reason:
            res.finish_reason = rec.finish_reason
    if res is None:
        res = GenerationResult(prompt_tokens=[], peak_mem_bytes=peak_memory_bytes())
    if isinstance(prompt, str):
        res.prompt_tokens = tokenizer.encode(prompt, add_bos=kw.get("add_bos"),
                                             parse_special=kw.get("parse_special", True))
    else:
        res.prompt_tokens = [int(t) for t in prompt]
    return res
