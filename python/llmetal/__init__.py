"""llmetal: visible LLM inference.

Every stage of a real GGUF model -- loading, tokens, quantized matmul, RMSNorm, RoPE, KV
cache, attention, SwiGLU, logits, sampling -- callable and inspectable from Python, over a
compiled engine (`llmetal._engine`) with cpu, cuda and metal devices.
"""
__version__ = "0.1.0"

from .models import DEFAULT_MODEL, KNOWN as KNOWN_MODELS, ModelError, pull, resolve  # noqa: F401
# Imported here, not on first call: importing the submodule later would rebind the package's
# `generate` attribute from the function to the module llmetal.generate.
from .generate import GenerationResult, TokenRecord, generate, stream_generate  # noqa: F401
from .logit_lens import Lens, lens  # noqa: F401
from .stage_error import compare_stages  # noqa: F401


def build_info() -> dict:
    """What the compiled engine was built with: version, compiler, flags, devices, CPU."""
    from . import _engine
    return dict(_engine.build_info())


def load(model=None, device="cpu", n_ctx: int = 4096, n_threads: int = 0, **kw):
    """Load a GGUF model: a path, a known name ("smollm2", "gemma3") or None (the default).

    See llmetal.model.Model for the keyword arguments (n_batch, n_out)."""
    from .model import load as _load
    return _load(model, device=device, n_ctx=n_ctx, n_threads=n_threads, **kw)
