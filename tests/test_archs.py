"""The architecture families on small GGUFs of their exact layout (random weights, written by
tests/conftest.py's write_tiny_model): the engine's logits against the float64 reference model
(llmetal.reference.forward), on every device built here, and the stages each family adds.

qwen2: biases on Q, K, V (the `add` stage, one row broadcast over the batch) and neox rope.
qwen3: RMSNorm of each head of Q and K before rope (as gemma3), neox rope, head size from
`attention.key_length` (here 32 with d 64 and 4 heads, as Qwen3's 128 with d 1024 / 16 heads).
"""
import numpy as np
import pytest

import llmetal
from llmetal import _engine as E
from llmetal import reference as ref

from conftest import cuda_param  # noqa: E402

DEVICES = ["cpu"] + (["metal-emu"] if "metal-emu" in E.build_info()["devices"] else []) + [cuda_param()]
FAMILIES = {
    "llama": dict(),
    "qwen2": dict(),
    "qwen3": dict(head_dim=32),
    "gemma3": dict(),
}
TOKENS = [3, 17, 5, 22, 9, 31, 4, 12]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from conftest import write_tiny_model
    d = tmp_path_factory.mktemp("archs")
    out = {}
    for arch, kw in FAMILIES.items():
        # quant=False: F32 weights, so only the engine's arithmetic differs from the reference
        out[arch] = write_tiny_model(d / f"{arch}.gguf", arch=arch, n_layer=2, tied=arch != "qwen2",
                                     quant=False, seed=7, **kw)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_logits_match_the_reference(files, arch, device):
    m = llmetal.load(files[arch], device=device, n_ctx=64, n_batch=8, n_out=8)
    assert m.cfg.arch == arch
    got = m.logits(TOKENS)
    want = ref.forward(m.gguf, m.cfg, TOKENS)
    e = ref.nmse(got, want)
    assert e < 1e-6, f"{arch} on {device}: logits NMSE {e:.2e}"


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_decode_step_equals_the_batched_pass(files, arch):
    m = llmetal.load(files[arch], n_ctx=64, n_batch=8, n_out=8)
    full = m.logits(TOKENS)
    m.prefill(TOKENS[:5], 0)
    for i in range(5, len(TOKENS)):
        row = m.decode_step(TOKENS[i], i)
        assert ref.nmse(row, full[i]) < 1e-9, i


def test_family_stages(files):
    q2 = llmetal.load(files["qwen2"], n_ctx=64, n_batch=8)
    steps = {s.key: s for s in q2.plan().steps}
    # Qcur is the matmul and its bias add, under llama.cpp's one name; its weight is the matrix
    assert [q2.plan().ops[i] for i in range(steps["blk.0.Qcur"].first, steps["blk.0.Qcur"].end)] == ["matmul", "add"]
    assert steps["blk.0.Qcur"].weight == "blk.0.attn_q.weight"
    assert q2.cfg.rope_type == "neox" and q2.cfg.has_qkv_bias and not q2.cfg.tied_output
    q3 = llmetal.load(files["qwen3"], n_ctx=64, n_batch=8)
    keys = set(q3.stage_names())
    assert {"blk.0.Qcur_normed", "blk.0.Kcur_normed"} <= keys and q3.cfg.head_dim == 32
    assert q3.cfg.rope_type == "neox" and not q3.cfg.has_qkv_bias


def test_qwen2_without_its_biases_is_refused(tmp_path):
    from conftest import write_tiny_model
    from llmetal.gguf_file import GGUFError
    p = write_tiny_model(tmp_path / "q.gguf", arch="qwen2", drop_tensors=("blk.1.attn_k.bias",))
    with pytest.raises(GGUFError, match="attn_k.bias"):
        llmetal.load(p, n_ctx=32)


def test_bias_add_is_a_broadcast_add(files):
    """The bias add on the device equals numpy's broadcast, bit for bit on the CPU."""
    m = llmetal.load(files["qwen2"], n_ctx=64, n_batch=8, n_out=8)
    _, cache = m.run_with_cache(TOKENS[:4], names=["blk.0.attn_norm", "blk.0.Qcur"])
    w = ref.dequantize(m.gguf.tensor_array("blk.0.attn_q.weight"), m.gguf.tensors["blk.0.attn_q.weight"].ggml_type,
                       m.gguf.tensors["blk.0.attn_q.weight"].shape)
    b = m.gguf.tensor_array("blk.0.attn_q.bias")
    want = ref.matmul(w, cache["blk.0.attn_norm"]) + b
    assert ref.nmse(cache["blk.0.Qcur"], want) < 1e-10
    assert np.abs(b).max() > 0.1   # the bias is not negligible in this check
