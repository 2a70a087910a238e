"""Several sequences in one step (Model.step): each sequence's greedy ids in a mixed batch equal
its single-sequence run, and the step's plan has the forward pass's stage names."""
from __future__ import annotations

import numpy as np
import pytest

import llmetal

PROMPTS = [[1, 504, 3458, 282, 9565], [2, 9565, 42, 1003, 33, 7], [5, 16, 300]]


def single_greedy(model, prompt, n):
    logits, pos, out = model.prefill(prompt, 0), len(prompt), []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = model.decode_step(out[-1], pos)
        pos += 1
    return out


def batched_greedy(model, prompts, seqs, n, chunk=None, ids=False):
    """Prompts prefilled in one mixed step (or in chunks of `chunk` rows that run together
    with the decode rows of the sequences already started), then decoded together; the argmax
    of the downloaded logits, or with ids the device's (step(ids=True))."""
    out = {s: [] for s in seqs}
    pos = {s: 0 for s in seqs}
    todo = {s: list(p) for s, p in zip(seqs, prompts)}
    while any(len(o) < n for o in out.values()):
        rows, want, owner = [], [], []
        for s in seqs:
            if todo[s]:                                      # the next prompt chunk
                take = todo[s][:chunk] if chunk else todo[s]
                todo[s] = todo[s][len(take):]
                for t in take:
                    rows.append((s, t, pos[s]))
                    pos[s] += 1
                if not todo[s]:
                    want.append(len(rows) - 1)
                    owner.append(s)
            elif len(out[s]) < n:                            # a decode row
                rows.append((s, out[s][-1], pos[s]))
                pos[s] += 1
                want.append(len(rows) - 1)
                owner.append(s)
        if not rows:
            break
        picked = model.step(rows, want, ids=True) if ids else np.argmax(model.step(rows, want), axis=1)
        for s, tok in zip(owner, picked):
            if len(out[s]) < n:
                out[s].append(int(tok))
    return [out[s] for s in seqs]


from conftest import cuda_param  # noqa: E402


@pytest.mark.parametrize("device", ["cpu", cuda_param()])
def test_mixed_batch_equals_single_runs(smollm2_path, device):
    one = llmetal.load(smollm2_path, device=device, n_ctx=64)
    ref = [single_greedy(one, p, 10) for p in PROMPTS]
    many = llmetal.load(smollm2_path, device=device, n_ctx=64, n_seq=4)
    assert batched_greedy(many, PROMPTS, [0, 1, 3], 10) == ref
    # prompts in chunks of 2 rows running alongside the others' decode rows, other slots
    assert batched_greedy(many, PROMPTS, [2, 0, 1], 10, chunk=2) == ref
    # the same through the device's argmax
    assert batched_greedy(many, PROMPTS, [3, 2, 0], 10, chunk=3, ids=True) == ref
    # seq 0 through the single-sequence path still works on a multi-sequence model
    assert single_greedy(many, PROMPTS[0], 10) == ref[0]


def test_step_plan_has_the_forward_names(smollm2_path):
    m = llmetal.load(smollm2_path, device="cpu", n_ctx=32, n_seq=2)
    names = m.stage_names()
    p = m.step_plan(3, 2)
    assert [s.key for s in p.steps] == names
    assert p.plan.n_tokens == 4                     # 3 rows run as the bucket of 4
    m.step([(0, 1, 0), (1, 2, 0), (1, 3, 1)], [0, 2])
    assert m.n_recorded == 2                        # plan() and that bucket, no more
    m.step([(0, 4, 1), (1, 5, 2), (0, 6, 2)], [1, 2])
    assert m.n_recorded == 2


def test_cpu_buckets_past_16_rows_are_multiples_of_16(smollm2_path):
    # powers of two up to 16, then multiples of 16 (a prompt of 41 rows runs as 48, not 64);
    # the padding rows change nothing: the 41-row prompt gives the single-sequence logits
    m = llmetal.load(smollm2_path, device="cpu", n_ctx=64, n_seq=2)
    assert [m.step_plan(n).plan.n_tokens for n in (3, 12, 16, 17, 41, 48)] == [4, 16, 16, 32, 48, 48]
    prompt = [1] + [(97 * i) % 4000 + 30 for i in range(40)]
    ref = llmetal.load(smollm2_path, device="cpu", n_ctx=64).prefill(prompt, 0).copy()
    got = m.step([(1, t, i) for i, t in enumerate(prompt)], [40])[0]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    assert int(np.argmax(got)) == int(np.argmax(ref))


def test_step_eager_equals_plan(smollm2_path):
    m = llmetal.load(smollm2_path, device="cpu", n_ctx=32, n_seq=3)
    rows = [(0, 1, 0), (2, 7, 0), (2, 8, 1), (1, 9, 0)]
    a = m.step(rows, eager=True)
    b = m.step(rows)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("device", ["cpu", cuda_param()])
def test_step_ids_are_the_argmax_of_the_logits(smollm2_path, device):
    """step(ids=True): the argmax stage ending the step's plan gives the ids numpy's argmax
    gives on the same step's logits (prompt and decode rows of three sequences, padding rows;
    one, several, all or no rows wanted; planned and eager); its plan is its own and lists the
    stage after result_output. decode_step(ids=True) likewise for one sequence."""
    m = llmetal.load(smollm2_path, device=device, n_ctx=32, n_seq=4)
    rows = [(0, 1, 0), (1, 504, 0), (1, 3458, 1), (3, 9565, 0), (3, 42, 1), (3, 7, 2)]
    for want in ([0, 2, 5], [4], list(range(6)), []):
        logits = m.step(rows, want)
        ids = m.step(rows, want, ids=True)
        assert ids.dtype == np.int32 and ids.shape == (len(want),)
        assert ids.tolist() == [int(np.argmax(r)) for r in logits], want
        assert m.step(rows, want, eager=True, ids=True).tolist() == ids.tolist()
    names = m.stage_names()
    p = m.step_plan(6, 3, ids=True)
    assert [s.key for s in p.steps] == names + ["argmax"]
    assert p.ops[-1] == "argmax" and p.kernels[-1][0].startswith("kernel_argmax")
    assert p.steps[-1].first == p.n_commands - 1 and p.steps[-1].weight is None
    assert m.step_plan(6, 3).steps[-1].key == "result_output" and m.step_plan(6, 3) is not p
    assert "argmax" in p.format(layers=[])

    one = llmetal.load(smollm2_path, device=device, n_ctx=32)
    one.prefill(PROMPTS[1])
    logits = one.decode_step(33, len(PROMPTS[1])).copy()
    one.prefill(PROMPTS[1])
    tok = one.decode_step(33, len(PROMPTS[1]), ids=True)
    assert type(tok) is int and tok == int(np.argmax(logits))
    assert [s.key for s in one.plan(ids=True).steps] == one.stage_names() + ["argmax"]


def test_step_refuses_bad_rows(smollm2_path):
    m = llmetal.load(smollm2_path, device="cpu", n_ctx=16, n_seq=2)
    for rows, msg in (([(2, 1, 0)], "sequence 2"), ([(0, 1, 16)], "context overflow"),
                      ([(0, -1, 0)], "outside the vocabulary"), ([(0, 1, 0), (0, 2, 0)], "two rows"),
                      ([], "1.."), ([(0, True, 0)], "token of a row must be an integer"),
                      ([(0, 1, 0), (1, 2.0, 0)], "token of a row must be an integer"),
                      ([(0, 1, 2**70)], "context overflow"), ([(-1, 1, 0)], "sequence -1")):
        with pytest.raises(ValueError, match=msg):
            m.step(rows)
    # numpy integers are rows too (checked one by one), with the same logits as plain ints
    a = m.step([(0, 5, 0), (1, 6, 0)]).copy()
    b = m.step([(np.int64(0), np.int32(5), np.int64(0)), (1, 6, 0)])
    np.testing.assert_array_equal(a, b)


def test_mixed_batch_metal_emu(smollm2_path):
    """metal-emu is slow: two sequences, three tokens. The reference is metal-emu's own single
    runs: another device may round differently, and prompt 0's first token is a three-way
    near-tie (float64 top-3 within 0.3)."""
    prompts = PROMPTS[:2]
    one = llmetal.load(smollm2_path, device="metal-emu", n_ctx=16)
    ref = [single_greedy(one, p, 3) for p in prompts]
    emu = llmetal.load(smollm2_path, device="metal-emu", n_ctx=16, n_seq=2)
    assert batched_greedy(emu, prompts, [1, 0], 3) == ref
    assert batched_greedy(emu, prompts, [0, 1], 3, ids=True) == ref
