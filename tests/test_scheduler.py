"""The server's scheduler in this process (no HTTP): which steps take the argmax on the device.

A step whose every token is greedy from the plain logits (temperature 0, no repeat penalty:
`Sampler.argmax_only`) runs Model.step(ids=True) and downloads one int32 a request; any other
request in the step (sampled, or greedy with a repeat penalty) makes it download the logits and
sample on the host. Either way each request's tokens are those of its own run alone.
"""
from __future__ import annotations

import threading

import pytest

import llmetal
from llmetal.sampling import Sampler, SamplerParams
from llmetal.server import Request, Scheduler
from llmetal.tokenizer import Tokenizer

PROMPTS = [[1, 504, 3458, 282, 9565], [2, 9565, 42, 1003, 33, 7], [5, 16, 300], [1, 9565, 282]]
N = 8
GREEDY = SamplerParams(temp=0.0, seed=1)


@pytest.fixture(scope="module")
def models(smollm2_path):
    one = llmetal.load(smollm2_path, n_ctx=64)
    many = llmetal.load(smollm2_path, n_ctx=64, n_seq=4)
    return one, many, Tokenizer.from_gguf(many.gguf)


def alone(model, prompt, params):
    """The request's tokens decoded alone, its sampler on the host over the logits."""
    s = Sampler(params, model.cfg.n_vocab)
    logits, out = model.prefill(prompt, 0), []
    for i in range(N):
        out.append(s.token(logits, prompt + out))
        logits = model.decode_step(out[-1], len(prompt) + i)
    return out


def serve(model, tok, specs):
    """Every (prompt, params) submitted before the scheduler starts (so they share its steps);
    returns each request's tokens and the scheduler."""
    sched = Scheduler(model, tok)
    done = [threading.Event() for _ in specs]
    reqs = []
    for i, (prompt, params) in enumerate(specs):
        def emit(ev, i=i):
            if ev[0] in ("done", "error"):
                assert ev[0] == "done", ev
                done[i].set()
        r = Request(f"r{i}", list(prompt), N, Sampler(params, model.cfg.n_vocab), [], emit=emit)
        r.ignore_eos = True
        reqs.append(r)
        sched.submit(r)
    sched.start()
    try:
        for d in done:
            assert d.wait(300), "a request did not finish"
    finally:
        sched.stop()
    return [r.tokens for r in reqs], sched


def test_sampler_argmax_only():
    assert Sampler(GREEDY, 10).argmax_only
    assert Sampler(SamplerParams(temp=0.0, repeat_penalty=1.3, repeat_last_n=0), 10).argmax_only
    assert not Sampler(SamplerParams(temp=0.0, repeat_penalty=1.3), 10).argmax_only
    assert not Sampler(SamplerParams(temp=0.7, seed=1), 10).argmax_only


def test_greedy_steps_take_the_device_argmax(models):
    one, many, tok = models
    got, sched = serve(many, tok, [(p, GREEDY) for p in PROMPTS])
    assert got == [alone(one, p, GREEDY) for p in PROMPTS]
    assert sched.n_steps_ids == sched.n_steps > 0


def test_a_step_that_needs_the_logits_downloads_them(models):
    """One sampled request and one greedy request with a repeat penalty beside two plain
    greedy ones: no step takes the device's argmax, and every greedy output is its own run's
    (the penalised one too, which differs from plain greedy on this prompt)."""
    one, many, tok = models
    penalised = SamplerParams(temp=0.0, repeat_penalty=1.5)
    specs = [(PROMPTS[0], GREEDY), (PROMPTS[1], SamplerParams(temp=0.9, top_k=0, top_p=1.0, min_p=0.0, seed=7)),
             (PROMPTS[2], penalised), (PROMPTS[3], GREEDY)]
    got, sched = serve(many, tok, specs)
    for i in (0, 2, 3):
        assert got[i] == alone(one, *specs[i]), i
    assert len(got[1]) == N
    assert sched.n_steps_ids == 0 and sched.n_steps > 0
    assert got[2] != alone(one, PROMPTS[2], GREEDY)


def serve_in_turn(model, tok, prompts, cache_prompt=True):
    """The prompts as requests one after another on one scheduler (each waits for the one
    before it to finish); returns the requests."""
    sched = Scheduler(model, tok)
    sched.start()
    reqs = []
    try:
        for i, prompt in enumerate(prompts):
            done = threading.Event()

            def emit(ev, done=done):
                if ev[0] in ("done", "error"):
                    assert ev[0] == "done", ev
                    done.set()
            r = Request(f"t{i}", list(prompt), N, Sampler(GREEDY, model.cfg.n_vocab), [], emit=emit)
            r.ignore_eos = True
            r.cache_prompt = cache_prompt
            sched.submit(r)
            assert done.wait(300), "a request did not finish"
            reqs.append(r)
    finally:
        sched.stop()
    return reqs


def test_prompt_cache_reuses_a_slots_rows(models):
    """A request whose prompt starts with what a slot holds (the previous request's prompt and
    the tokens it fed back: all but its last) starts its prefill after that prefix -- a chat's
    next turn -- and its tokens are those of its run alone; with cache_prompt off it computes
    the whole prompt, with the same tokens. A prompt that shares nothing reuses nothing."""
    one, many, tok = models
    first = PROMPTS[0]
    out1 = alone(one, first, GREEDY)
    second = first + out1[:5] + [9565, 282]
    third = PROMPTS[1]
    want = [out1, alone(one, second, GREEDY), alone(one, third, GREEDY)]
    cached = serve_in_turn(many, tok, [first, second, third])
    assert [r.tokens for r in cached] == want
    assert [r.n_cached for r in cached] == [0, len(first) + 5, 0]
    assert cached[1].seq == cached[0].seq
    plain = serve_in_turn(many, tok, [first, second, third], cache_prompt=False)
    assert [r.tokens for r in plain] == want
    assert [r.n_cached for r in plain] == [0, 0, 0]
    # the same prompt again: everything but its last token comes from the slot
    again = serve_in_turn(many, tok, [first, first])
    assert again[1].n_cached == len(first) - 1 and again[1].tokens == out1
