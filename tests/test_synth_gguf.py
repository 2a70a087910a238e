"""scripts/synth_gguf.py writes the architectures it says: keys, tensor names and shapes of
llama / qwen2 / qwen3, the copied tokenizer, and the same bytes for the same arguments.
(llama.cpp loading them is checked by scripts/oracle/make_qwen_fixtures.py, which needs it.)"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

from llmetal.gguf_file import GGUFFile

pytestmark = pytest.mark.timeout(300)
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "synth_gguf.py"


@pytest.fixture(scope="module")
def synth():
    spec = importlib.util.spec_from_file_location("synth_gguf", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write(synth, tmp_path, tok, arch, *extra, name="m.gguf"):
    out = tmp_path / name
    synth.main(["--arch", arch, "--shape", {"llama": "llama3-1b", "qwen2": "qwen2.5-0.5b",
                                            "qwen3": "qwen3-0.6b"}[arch],
                "--layers", "2", "--n-embd", "64", "--n-head", "4", "--n-head-kv", "2", "--n-ff", "128",
                "--tok", str(tok), "-o", str(out), *extra])
    return GGUFFile(out)


def test_qwen2(synth, tmp_path, smollm2_path):
    gf = write(synth, tmp_path, smollm2_path, "qwen2", "--qtype", "Q4_0")
    md, t = gf.metadata, gf.tensors
    assert gf.arch == "qwen2" and md["qwen2.block_count"] == 2 and md["qwen2.rope.freq_base"] == 1e6
    assert md["qwen2.embedding_length"] == 64 and "qwen2.attention.key_length" not in md
    assert t["blk.1.attn_q.bias"].shape == (64,) and t["blk.1.attn_k.bias"].shape == (32,)
    assert t["blk.0.attn_v.bias"].type_name == "F32" and t["blk.0.attn_q.weight"].type_name == "Q4_0"
    assert "output.weight" in t and "blk.2.attn_norm.weight" not in t            # untied, cut to 2
    src = GGUFFile(smollm2_path).metadata
    assert md["tokenizer.ggml.tokens"] == src["tokenizer.ggml.tokens"]
    assert md["tokenizer.ggml.merges"] == src["tokenizer.ggml.merges"]
    assert t["token_embd.weight"].shape == (len(src["tokenizer.ggml.tokens"]), 64)


def test_qwen3(synth, tmp_path, smollm2_path):
    gf = write(synth, tmp_path, smollm2_path, "qwen3", "--head-dim", "32", "--qtype", "F16")
    md, t = gf.metadata, gf.tensors
    assert md["qwen3.attention.key_length"] == md["qwen3.attention.value_length"] == 32
    assert t["blk.0.attn_q.weight"].shape == (4 * 32, 64) and t["blk.0.attn_k.weight"].shape == (2 * 32, 64)
    assert t["blk.0.attn_output.weight"].shape == (64, 4 * 32)
    assert t["blk.1.attn_q_norm.weight"].shape == (32,) and t["blk.1.attn_k_norm.weight"].shape == (32,)
    assert "blk.0.attn_q.bias" not in t and "output.weight" not in t               # tied, no biases


def test_llama_and_determinism(synth, tmp_path, smollm2_path):
    a = write(synth, tmp_path, smollm2_path, "llama", "--qtype", "Q8_0", name="a.gguf")
    b = write(synth, tmp_path, smollm2_path, "llama", "--qtype", "Q8_0", name="b.gguf")
    c = write(synth, tmp_path, smollm2_path, "llama", "--qtype", "Q8_0", "--seed", "1", name="c.gguf")
    assert a.arch == "llama" and a.metadata["llama.rope.dimension_count"] == 16
    digest = [hashlib.sha256(g.path.read_bytes()).hexdigest() for g in (a, b, c)]
    assert digest[0] == digest[1] != digest[2]
