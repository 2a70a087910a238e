"""llmetal: visible LLM inference.

Every stage of a real GGUF model -- loading, tokens, quantized matmul, RMSNorm, RoPE, KV
cache, attention, SwiGLU, logits, sampling -- callable and inspectable from Python, over a
compiled engine (`llmetal._engine`) with cpu, cuda and metal devices.
"""
__version__ = "0.1.0"

from .models import DEFAULT_MODEL, KNOWN as KNOWN_MODELS, ModelError, pull, resolve  # noqa: F401


def build_info() -> dict:
    """What the compiled engine was built with: version, compiler, flags, devices, CPU."""
    from . import _engine
    return dict(_engine.build_info())
