"""The whole SmolLM2 (30 layers) and Gemma-3 (18 layers, vocabulary 262144) through the
metal-emu device: the Metal device's own dispatch plan (cpp/metal/dispatch.cpp, what
cpp/metal/device.mm encodes) run by the CPU emulator of Metal on the unmodified metal/*.metal
kernels, recorded once and replayed per token as `generate` does.

For each model: the prompt "The capital of France is" (with BOS) is prefilled in one batch
(tiled simdgroup matmuls), then 16 tokens go through the replayed one-token plan (mat-vec,
attention). The CPU device picks the 16 greedy tokens; metal-emu is fed the same ones
(teacher forcing), so every step compares like with like, and where metal-emu's own argmax
equals the CPU's token at every step, metal-emu's free-running greedy ids are the CPU's.

Two yardsticks, because the two devices round differently on purpose:
  * the float64 numpy model `llmetal.reference.forward`, teacher-forced on the same tokens.
    The Metal kernels compute in float32 with exact (dequantized) weights and f16 K/V, as the
    reference does in float64 (the prompt's tiled matmuls round the weights to half, and the
    K/V they leave stay in the cache), so they must agree almost exactly:
        NMSE(metal-emu, reference) <= EMU_VS_REF = 1e-6 at every step
    (measured: <= 1.7e-7 on SmolLM2, <= 2.5e-8 on Gemma-3), and the same argmax unless the
    reference's top-2 logits are within REF_TIE = 1e-3.
  * the CPU device. It quantizes matmul activations to 8 bits (as llama.cpp does); the Metal
    kernels do not. On these models that alone moves the logits by NMSE ~1e-4..2e-2 from the
    reference (largest right after the prompt, where SmolLM2's massive activations sit), and
    metal-emu, being the reference to 1e-7, sits exactly as far from the CPU. So per step
        NMSE(metal-emu, cpu) <= max(1e-3, 1.5 * NMSE(cpu, reference)),
        NMSE(cpu, reference) <= 3e-2   (test_model.py's bound for the CPU's 8-bit noise):
    the issue's 1e-3 where the CPU's own noise allows it (most steps), else the CPU's
    measured distance from the exact model with 50% slack. Greedy ids: metal-emu's argmax is
    the CPU's token at every step, except at a near-tie of the CPU's (top-2 logits within
    GAP_TIE, or within GAP_TIE_RMS times the CPU's rms logit error from the float64 model at
    that step, if larger: SmolLM2's 8-bit noise is ~0.12 rms per logit after the prompt), where metal-emu must pick the CPU's runner-up AND the float64 model must pick it
    too (the exact model arbitrates: metal-emu is right there, the CPU's 8-bit rounding tipped
    it), at most MAX_NEAR_TIES times per model. Which steps are near-ties moves whenever the
    CPU kernels change rounding (seen: Gemma-3 step 15 with one attention kernel, step 5 with
    the next), so the rule is checked rather than a list of steps.
  * the plan: one command buffer per token, and zero allocations (E.alloc_count(): every
    malloc/new/mmap of the engine) across the replayed tokens after the first (which
    records the plan).

Schedules: "forward" and "reverse" (threads, threadgroups and the dispatches between
barriers backwards), both models, all 16 tokens. Large dispatches are spread over a pool of
OS threads (LLMETAL_EMU_THREADS), each threadgroup whole on one of them.

Runtime, measured on 2 cores shared with other jobs (load ~3, so about one core ours):
~0.67 s per SmolLM2 token and ~1.35 s per Gemma-3 token through the emulator, prefill ~2.8 s
each; this file 118 s in all (the CPU runs and the float64 references included: ~9 s for
SmolLM2's, ~14 s and ~3 GB for Gemma-3's, whose float64 vocabulary matrix alone is 1.3 GB).
"""
from __future__ import annotations

import numpy as np
import pytest

import llmetal
from llmetal import _engine as E
from llmetal import reference as R
from llmetal.tokenizer import Tokenizer

if "metal-emu" not in E.build_info()["devices"]:
    pytest.skip("this build has no metal-emu device (configure with -DLLMETAL_METAL_EMU=ON)",
                allow_module_level=True)

PROMPT = "The capital of France is"
N_STEPS = 16          # greedy tokens through the replayed plan
N_CTX = 64

EMU_VS_REF = 1e-6     # NMSE, metal-emu vs the float64 model (measured <= 1.7e-7)
REF_TIE = 1e-3        # the reference's top-2 closer than this: either argmax is right
CPU_NMSE = 1e-3       # the bound vs the CPU device...
CPU_NOISE_SLACK = 1.5  # ...or 1.5x the CPU's own distance from the float64 model, if larger
CPU_NOISE_MAX = 3e-2  # the CPU's 8-bit activation noise on these models (test_model.py)
GAP_TIE = 0.1         # a CPU near-tie: top-2 within this may break either way...
GAP_TIE_RMS = 2.0     # ...or within 2x the CPU's rms logit error at that step (seen: a 0.176
                      # gap flipped at SmolLM2 step 5, CPU rms error 0.121 per logit)
MAX_NEAR_TIES = 2     # CPU/metal-emu disagreements allowed per model, each at a CPU near-tie

CASES = [(m, s) for m in ("smollm2", "gemma3") for s in ("forward", "reverse")]
# Shim builds (-DLLMETAL_METAL_SHIM=ON, .ci/run): the same models through cpp/metal/device.mm on
# the Linux Metal shim ("metal"), which must give metal-emu:reverse's logits bit for bit.
if E.build_info().get("metal_shim"):
    CASES += [(m, "metal") for m in ("smollm2", "gemma3")]
_EMU_LOGITS: dict[tuple, list] = {}

_RUNS: dict[str, dict] = {}


def cpu_run(name: str) -> dict:
    """The CPU device's greedy run and the float64 reference on the same tokens (cached)."""
    if name not in _RUNS:
        path = str(llmetal.models.resolve(name))
        prompt = Tokenizer.from_gguf(path).encode(PROMPT, add_bos=True)
        cpu = llmetal.load(path, device="cpu", n_ctx=N_CTX, n_batch=16, n_out=1)
        logits, toks = [cpu.prefill(prompt).copy()], []
        for i in range(N_STEPS):
            toks.append(int(np.argmax(logits[-1])))
            logits.append(cpu.decode_step(toks[-1], len(prompt) + i).copy())
        # row len(prompt) - 1 + i of the reference predicts what step i predicts
        ref = R.forward(cpu.gguf, cpu.cfg, prompt + toks)[len(prompt) - 1:]
        _RUNS[name] = {"path": path, "prompt": prompt, "toks": toks, "cpu": logits, "ref": ref}
    return _RUNS[name]


def top2(v: np.ndarray) -> tuple[int, int, float]:
    i = np.argsort(v)[::-1][:2]
    return int(i[0]), int(i[1]), float(v[i[0]] - v[i[1]])


@pytest.mark.parametrize("name,schedule", CASES, ids=lambda v: str(v))
def test_whole_model_on_metal_emu(name, schedule):
    n_steps = N_STEPS
    run = cpu_run(name)
    prompt, toks = run["prompt"], run["toks"]
    dev = "metal" if schedule == "metal" else f"metal-emu:{schedule}"
    m = llmetal.load(run["path"], device=dev, n_ctx=N_CTX, n_batch=16, n_out=1)
    logits = [m.prefill(prompt).copy()]
    cbufs, allocs = [], []
    for i in range(n_steps):
        cb0, a0 = E.metal_counters(m.device)["command_buffers"], E.alloc_count()
        logits.append(m.decode_step(toks[i], len(prompt) + i).copy())
        cbufs.append(E.metal_counters(m.device)["command_buffers"] - cb0)
        allocs.append(E.alloc_count() - a0)

    _EMU_LOGITS[(name, schedule)] = logits
    if schedule == "metal" and (name, "reverse") in _EMU_LOGITS:   # device.mm: metal-emu's numbers
        np.testing.assert_array_equal(np.array(logits), np.array(_EMU_LOGITS[(name, "reverse")]))
    # the plan: one command buffer per token; nothing allocated once the plan is recorded
    assert cbufs == [1] * n_steps, f"command buffers per token: {cbufs}"
    assert sum(allocs[1:]) == 0, f"allocations per replayed token: {allocs}"

    for i, got in enumerate(logits):   # step 0: the prompt's last position
        want, cpu = run["ref"][i], run["cpu"][i]
        assert np.isfinite(got).all(), f"{name} {schedule} step {i}: non-finite logits"
        # vs the float64 model: the same arithmetic, float32 instead of float64
        e_ref = R.nmse(got, want)
        assert e_ref <= EMU_VS_REF, f"{name} {schedule} step {i}: NMSE vs reference {e_ref:.2e}"
        r0, r1, rgap = top2(want)
        assert int(np.argmax(got)) == r0 or (rgap < REF_TIE and int(np.argmax(got)) == r1), \
            f"{name} {schedule} step {i}: argmax {np.argmax(got)}, reference {r0} (gap {rgap:.2e})"
        # vs the CPU device: as far as the CPU's own 8-bit noise puts it from the exact model
        e_noise = R.nmse(cpu, want)
        assert e_noise <= CPU_NOISE_MAX, f"{name} step {i}: the CPU is {e_noise:.2e} from the reference"
        e_cpu = R.nmse(got, cpu)
        bound = max(CPU_NMSE, CPU_NOISE_SLACK * e_noise)
        assert e_cpu <= bound, \
            f"{name} {schedule} step {i}: NMSE vs cpu {e_cpu:.2e} > {bound:.2e} (cpu vs reference {e_noise:.2e})"
        # greedy ids: the CPU's token, or its runner-up at a listed near-tie
        c0, c1, cgap = top2(cpu)
        pick = int(np.argmax(got))
        if pick != c0:
            # a near-tie of the CPU's: the CPU's runner-up, and the exact (float64) model's choice
            tie = max(GAP_TIE, GAP_TIE_RMS * float(np.sqrt(np.mean((cpu.astype(np.float64) - want) ** 2))))
            assert cgap < tie and pick == c1 and pick == r0, \
                (f"{name} {schedule} step {i}: metal-emu picks {pick}, cpu {c0} (cpu top-2 gap {cgap:.3f}, "
                 f"runner-up {c1}), reference {r0}")
    # the greedy ids as a whole (while they agree, teacher-forced ids are free-running ids)
    ids = [int(np.argmax(v)) for v in logits[:-1]]
    differ = [i for i, (a, b) in enumerate(zip(ids, toks)) if a != b]
    assert len(differ) <= MAX_NEAR_TIES, (differ, ids, toks)
