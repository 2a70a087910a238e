"""Shared pieces of the llama.cpp oracle scripts (make_logits_fixtures.py, make_greedy_fixtures.py).

The oracle is llama.cpp as vendored in the llama-cpp-python 0.3.36 sdist, built by
scripts/oracle/build_llamacpp.sh, driven through the llama-cpp-python ctypes bindings
(installed over the same shared library by scripts/oracle/install_llama_cpp_python.sh).

Everything that defines *how* the reference numbers were produced lives here, so both fixture
kinds share one set of settings, and the settings are written into every fixture file.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"

# Where build_llamacpp.sh put things (overridable, same variables as the shell scripts).
ORACLE_ROOT = Path(os.environ.get("ORACLE_ROOT", "/work/oracle"))
ORACLE_DIR = Path(os.environ.get("ORACLE_DIR", ORACLE_ROOT / "llama.cpp-build"))
LLAMA_SRC = ORACLE_ROOT / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"

# The settings every fixture is made with (written verbatim into the fixture's metadata).
SETTINGS = dict(
    n_ctx=512,          # context size
    n_batch=512,        # the whole prompt goes to llama_decode as ONE batch
    n_ubatch=512,
    n_threads=2,
    n_threads_batch=2,
    logits_all=True,    # llama.cpp returns float32 logits for every position of a batch
    flash_attn=False,   # llama-cpp-python passes LLAMA_FLASH_ATTN_TYPE_DISABLED
    type_k="f16",       # llama.cpp default KV cache types
    type_v="f16",
    n_gpu_layers=0,     # CPU build, no offload
    seed=0,             # irrelevant (no sampling), recorded anyway
)

# The llama.cpp chat templates of the two models, written literally (what their GGUF
# tokenizer.chat_template renders for one user turn plus the generation prompt; SmolLM2's
# template would also insert a default system turn, left out here to keep prompts short).
CHAT = {
    "smollm2": "<|im_start|>user\n{msg}<|im_end|>\n<|im_start|>assistant\n",
    "gemma3": "<start_of_turn>user\n{msg}<end_of_turn>\n<start_of_turn>model\n",
}


def _point_bindings_at_oracle_lib() -> None:
    """llama-cpp-python reads LLAMA_CPP_LIB_PATH (a directory holding libllama.so) at import."""
    if "LLAMA_CPP_LIB_PATH" not in os.environ and (ORACLE_DIR / "bin" / "libllama.so").exists():
        os.environ["LLAMA_CPP_LIB_PATH"] = str(ORACLE_DIR / "bin")


def import_llama_cpp():
    _point_bindings_at_oracle_lib()
    try:
        import llama_cpp  # noqa: F401
    except Exception as e:  # missing package or library: say what to run
        sys.exit(f"error: cannot import llama_cpp ({e}); run scripts/oracle/build_llamacpp.sh first")
    return llama_cpp


def model_path(name: str) -> Path:
    """The GGUF of a known model, through the project's own registry (pulls it when absent)."""
    sys.path.insert(0, str(REPO / "python"))
    from llmetal.models import resolve
    return Path(resolve(name))


def load(name: str):
    """A llama_cpp.Llama over the model `name` with SETTINGS."""
    llama_cpp = import_llama_cpp()
    s = SETTINGS
    return llama_cpp.Llama(
        model_path=str(model_path(name)), n_ctx=s["n_ctx"], n_batch=s["n_batch"],
        n_ubatch=s["n_ubatch"], n_threads=s["n_threads"], n_threads_batch=s["n_threads_batch"],
        logits_all=s["logits_all"], flash_attn=s["flash_attn"], n_gpu_layers=s["n_gpu_layers"],
        seed=s["seed"], verbose=False)


def tokenize(llm, text: str) -> list[int]:
    """llama.cpp's own tokenizer: add_special=True (BOS only where the GGUF's add_bos_token
    says so), parse_special=True (so '<|im_start|>' etc. become their single special ids)."""
    return llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)


def fresh_sequence(llm) -> None:
    """Start a new sequence at position 0: forget the Python-side history and clear the KV memory
    (the bindings' own eval() would only trim it past n_tokens)."""
    llm.reset()
    llama_cpp = sys.modules["llama_cpp"]
    mem = llama_cpp.llama_get_memory(llm._ctx.ctx)
    llama_cpp.llama_memory_clear(mem, True)


def decode(llm, ids: list[int]) -> np.ndarray:
    """Run `ids` as one batch after what is already in the context; return their float32
    logits, shape (len(ids), n_vocab) (a copy)."""
    n0 = llm.n_tokens
    if n0 + len(ids) > SETTINGS["n_ctx"]:
        raise ValueError(f"sequence of {n0 + len(ids)} tokens exceeds n_ctx {SETTINGS['n_ctx']}")
    llm.eval(ids)
    return np.array(llm.scores[n0:n0 + len(ids)], dtype=np.float32, copy=True)


def is_eog(llm, tok: int) -> bool:
    """End-of-generation per llama.cpp's vocabulary (EOS, <end_of_turn>, <|im_end|>, ...)."""
    llama_cpp = sys.modules["llama_cpp"]
    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok))


def provenance(llm, name: str) -> dict:
    """Which llama.cpp, which model file, which settings: stored in every fixture."""
    llama_cpp = sys.modules["llama_cpp"]
    commit = "unknown"
    try:
        commit = subprocess.run(["git", "-C", str(LLAMA_SRC), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except Exception:
        pass
    mp = model_path(name)
    return dict(
        oracle="llama.cpp (vendored in llama-cpp-python sdist)",
        llama_cpp_python=llama_cpp.__version__,
        llama_cpp_commit=commit,
        llama_lib=os.environ.get("LLAMA_CPP_LIB_PATH", "<package lib dir>"),
        system_info=llama_cpp.llama_print_system_info().decode(),
        model=name,
        model_file=mp.name,
        model_bytes=mp.stat().st_size,
        n_vocab=int(llm.n_vocab()),
        add_bos=bool(llama_cpp.llama_vocab_get_add_bos(llm._model.vocab)),
        bos_id=int(llm.token_bos()),
        eos_id=int(llm.token_eos()),
        settings=SETTINGS,
        tokenize="llama_tokenize(add_special=True, parse_special=True)",
    )


def sha256(path) -> str:
    """The file's sha256, read in 4 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def save_npz(path: Path, meta: dict, arrays: dict) -> None:
    """np.savez_compressed with the metadata as a JSON string under 'meta'."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, meta=np.array(json.dumps(meta, indent=1, ensure_ascii=False)), **arrays)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


def topk(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids and values of the k largest entries of `row`, highest first (lowest id first on ties)."""
    idx = np.argpartition(-row, k - 1)[:k]
    order = np.lexsort((idx, -row[idx]))
    idx = idx[order]
    return idx.astype(np.int32), row[idx]
