"""model.plan() and Model.decode_step: the recorded decode step as a printable object.

The plan's named stages come from the forward pass itself (the stage hook), the commands from
the engine's recording, and the kernels from the device (`Device.describe`). These tests check
that the three line up: every command belongs to exactly one named stage, every command is run
by the kernels listed, and each stage names the weight its call read.
"""
import gguf
import numpy as np
import pytest

import llmetal
from llmetal import _engine as E

# llama.cpp's names of one llama layer's stages, in the order Model.forward runs them
LLAMA_LAYER = ["attn_norm", "Qcur", "Kcur", "Vcur", "Qcur_rope", "Kcur_rope", "kv_store", "kqv",
               "kqv_out", "ffn_inp", "ffn_norm", "ffn_gate", "ffn_up", "ffn_swiglu", "ffn_out", "l_out"]
STAGE_WEIGHT = {"attn_norm": "attn_norm.weight", "Qcur": "attn_q.weight", "Kcur": "attn_k.weight",
                "Vcur": "attn_v.weight", "kqv_out": "attn_output.weight", "ffn_norm": "ffn_norm.weight",
                "ffn_gate": "ffn_gate.weight", "ffn_up": "ffn_up.weight", "ffn_out": "ffn_down.weight"}


@pytest.fixture(scope="module")
def smol(smollm2_path):
    return llmetal.load(smollm2_path, n_ctx=128, n_batch=16)


def check_plan(model, plan):
    c = model.cfg
    names = [s.key for s in plan.steps]
    want = (["inp_embd"] + [f"blk.{il}.{n}" for il in range(c.n_layer) for n in LLAMA_LAYER]
            + ["result_norm", "result_output"])
    assert names == want
    # the named stages tile the command list
    assert plan.steps[0].first == 0 and plan.steps[-1].end == plan.n_commands
    for a, b in zip(plan.steps, plan.steps[1:]):
        assert a.end == b.first and a.first < a.end
    # each stage names the weight its call read
    for s in plan.steps:
        if s.layer >= 0:
            assert s.weight == (f"blk.{s.layer}.{STAGE_WEIGHT[s.name]}" if s.name in STAGE_WEIGHT else None), s
    assert plan.steps[0].weight == "token_embd.weight"
    assert plan.steps[-1].weight == model.output_name
    # the kernels run every command, in order
    covered = []
    for kernel, first, count, fusion in plan.kernels:
        assert kernel.startswith("kernel_") and count >= 1
        covered.extend(range(first, first + count))
    assert sorted(set(covered)) == list(range(plan.n_commands))
    assert covered == sorted(covered)


def test_plan_cpu(smol):
    plan = smol.plan()
    assert smol.plan() is plan                       # recorded once
    check_plan(smol, plan)
    # cpu: one kernel a command, named after the stage and its weight's type
    assert len(plan.kernels) == plan.n_commands
    qcur = next(s for s in plan.steps if s.key == "blk.0.Qcur")
    wtype = smol.w["blk.0.attn_q.weight"].type_name.lower()
    assert plan.kernels[qcur.first][0] == f"kernel_matmul_{wtype}"


def test_plan_listing(smol):
    text = smol.plan().format(layers=[0])
    lines = text.splitlines()
    assert lines[0].startswith(f"decode step of {smol.cfg.name} on cpu:")
    assert any(line.startswith("blk.0.Qcur") for line in lines)
    assert not any(line.startswith("blk.1.") for line in lines)
    assert "commands of other layers" in lines[-3] and lines[-1].startswith("result_output")
    full = str(smol.plan())
    assert f"blk.{smol.cfg.n_layer - 1}.l_out" in full and "result_output" in full


@pytest.mark.skipif("metal-emu" not in E.build_info()["devices"], reason="built without metal-emu")
def test_plan_metal_emu(smollm2_path):
    m = llmetal.load(smollm2_path, device="metal-emu", n_ctx=600, n_batch=16)
    plan = m.plan()
    check_plan(m, plan)
    # a split attention is two dispatches of one command (n_ctx 600: more than one split)
    kqv = next(s for s in plan.steps if s.key == "blk.0.kqv")
    ks = [k[0] for k in plan.kernels if k[1] == kqv.first]
    assert len(ks) == 2 and ks[1].startswith("kernel_attention_combine"), ks


def test_decode_step_equals_forward(smol):
    prompt = [504, 3458, 282, 4649, 314]
    smol.prefill(prompt, 0)
    a = smol.decode_step(1345, len(prompt)).copy()
    smol.prefill(prompt, 0)
    b = smol.forward([1345], len(prompt), "last").to_numpy()[-1]
    assert np.array_equal(a, b)


def test_trace_hook_gets_the_weight(smol):
    seen = {}
    smol.run_eager([504, 3458], lambda name, il, out, weight: seen.setdefault((name, il), weight))
    assert seen[("Qcur", 0)] == "blk.0.attn_q.weight"
    assert seen[("kv_store", 0)] is None
    assert seen[("result_output", -1)] == smol.output_name


def test_final_softcap_fails_at_load(tiny_model):
    V = gguf.GGUFValueType
    path = tiny_model(arch="gemma3", kv_overrides={"gemma3.final_logit_softcapping": (V.FLOAT32, 30.0)})
    with pytest.raises(ValueError, match="final logit softcapping"):
        llmetal.load(path, n_ctx=64)


def test_engine_type_names():
    assert E.TYPE_NAMES[E.Q4_K] == "Q4_K" and E.Q4_K == int(gguf.GGMLQuantizationType.Q4_K)
    for t, name in E.TYPE_NAMES.items():
        assert int(gguf.GGMLQuantizationType[name]) == t


def test_stage_names_come_from_the_forward_pass(smol):
    from llmetal.tokenizer import Tokenizer
    from llmetal.trace import run_trace
    names = smol.stage_names()
    assert names[0] == "inp_embd" and names[-1] == "result_output" and "blk.0.ffn_swiglu" in names
    with pytest.raises(ValueError, match="no stage named 'Qcurr'"):
        run_trace(smol, Tokenizer.from_gguf(smol.gguf), "Hi", stages="Qcur,Qcurr")


def test_kept_plan_outlives_its_model(smollm2_path):
    """A plan and encoder kept after the model is dropped still replay (the plan holds every
    buffer it binds); a plan replayed on another device's encoder is an error. In a child
    process: the failure this guards against was a segfault."""
    import subprocess
    import sys
    code = f"""
import gc, numpy as np, llmetal
from llmetal import _engine as E
m = llmetal.load({str(smollm2_path)!r}, n_ctx=64, n_batch=8)
want = m.decode_step(1, 0).copy()
plan, enc, ids, out = m.plan().plan, m.enc, m.full["ids"].rows(0, 1), m.full["logits"].rows(0, 1)
del m
gc.collect()
enc.replay_token(plan, ids, 1, 0)
assert np.array_equal(out.to_numpy()[0], want)
other = E.Encoder(E.cpu_device(1))
try:
    other.replay_token(plan, ids, 1, 0)
    raise SystemExit("replayed on another device")
except ValueError as e:
    assert "another device" in str(e), e
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stdout, r.stderr[-2000:])


def test_plan_with_the_cuda_planner(smol):
    """The CUDA planner's launches for this plan, shown through the same listing: fused kernels
    cover several commands, and a row whose kernel started in a hidden layer names it."""
    launches = E.cuda_plan(smol.plan().plan)["launches"]
    p = smol.plan().with_kernels(launches, "cuda planner")
    check_plan(smol, p)
    assert len(p.kernels) < p.n_commands
    text = p.format(layers=[0])
    assert "[mmvq_group: 3 commands]" in text and "(in the kernel above)" in text
    assert f"(in kernel_add_rmsnorm_q of blk.{smol.cfg.n_layer - 1}.l_out)" in text
