"""Chat templates: render a GGUF's `tokenizer.chat_template` (Jinja) for a list of messages.

The template runs in jinja2's ImmutableSandboxedEnvironment (a template is data from a model
file: it may not touch Python objects beyond reading them) with trim_blocks and
lstrip_blocks, as Hugging Face's transformers renders these templates. Variables given:
`messages`, `bos_token`, `eos_token`, `add_generation_prompt`, plus whatever the caller adds
(`tools`, ...); functions: `raise_exception(msg)` and `strftime_now(fmt)`.

A render is bounded, on whatever thread runs it: it stops with ChatTemplateError after
MAX_RENDER_SECONDS (a trace function on the template's own code checks the clock at every
line, so loops without calls are caught too), and before any string or list it would build
(`*`, `+`, `%`, string methods, filters) or its output grows past MAX_RENDER_CHARS.

Tokenizing the rendered text is Tokenizer.encode_chat: the template's markup is parsed for
special tokens, the messages' content is not, and no second BOS is added when the template
already wrote one.
"""
from __future__ import annotations

import datetime
import functools
import sys
import threading
import time

MAX_RENDER_SECONDS = 1.5
MAX_RENDER_CHARS = 4 << 20


class ChatTemplateError(ValueError):
    """The chat template could not be compiled or rendered; the message says why."""


def _raise_exception(message):
    raise ChatTemplateError(f"chat template raised an error: {message}")


def _strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)


class _Budget(threading.local):
    deadline: float | None = None   # time.monotonic() past which the render stops


_budget = _Budget()


def _check_time():
    if _budget.deadline is not None and time.monotonic() > _budget.deadline:
        raise ChatTemplateError(f"chat template ran longer than {MAX_RENDER_SECONDS:g} s "
                                "(a loop that does not end?)")


def _check_size(n):
    if n > MAX_RENDER_CHARS:
        raise ChatTemplateError(f"chat template would build a value of {n:,} characters "
                                f"(the limit is {MAX_RENDER_CHARS:,})")


def _trace(frame, event, arg):
    """sys.settrace hook while rendering: the template's own code checks the clock per line."""
    if frame.f_code.co_filename != "<template>":
        return None
    _check_time()
    return _trace_line


def _trace_line(frame, event, arg):
    _check_time()
    return _trace_line


def _sizes(obj):
    return len(obj) if isinstance(obj, (str, bytes, list, tuple)) else 0


def _bounded_filter(f):
    @functools.wraps(f)   # keeps jinja's pass_context / pass_eval_context marks
    def run(*args, **kw):
        _check_time()
        for a in list(args) + list(kw.values()):   # widths (center, indent, truncate ...)
            if isinstance(a, int) and not isinstance(a, bool):
                _check_size(abs(a))
        if f.__name__ == "do_replace":   # (eval_ctx, s, old, new[, count])
            s_, old, new = (str(x) for x in args[1:4])
            if old:
                _check_size(len(s_) + s_.count(old) * max(0, len(new) - len(old)))
            else:
                _check_size(len(s_) * (len(new) + 1))
        out = f(*args, **kw)
        _check_size(_sizes(out))
        return out
    return run


def _sandbox():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "+", "%", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for a, b in ((left, right), (right, left)):
                    if _sizes(a) and isinstance(b, int):
                        _check_size(_sizes(a) * b)
            elif operator == "+":
                _check_size(_sizes(left) + _sizes(right))
            elif operator == "**" and isinstance(right, int) and abs(right) > 1024:
                raise ChatTemplateError(f"chat template raises to the power {right}")
            out = super().call_binop(context, operator, left, right)
            _check_size(_sizes(out))
            return out

        def call(__self, __context, __obj, *args, **kwargs):   # noqa: N805 (jinja's signature)
            owner = getattr(__obj, "__self__", None)
            name = getattr(__obj, "__name__", "")
            if isinstance(owner, str):   # str methods that grow a string
                if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
                    _check_size(args[0])
                elif name == "expandtabs":
                    _check_size(len(owner) * (args[0] if args and isinstance(args[0], int) else 8))
                elif name == "replace" and len(args) >= 2:
                    old, new = str(args[0]), str(args[1])
                    grow = owner.count(old) if old else len(owner) + 1
                    _check_size(len(owner) + grow * len(new))
            out = super().call(__context, __obj, *args, **kwargs)
            _check_size(_sizes(out))
            return out

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
    env.filters = {k: _bounded_filter(f) for k, f in env.filters.items()}
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = None


def _environment():
    global _ENV
    if _ENV is None:
        _ENV = _sandbox()
    return _ENV


@functools.lru_cache(maxsize=16)
def _compiled(template: str):
    """The template compiled once per text: jinja's compile (tens of ms for a model's template)
    would otherwise run for every request a server answers. A compiled template holds no state
    between renders."""
    return _environment().from_string(template)


def _check_messages(messages):
    if not isinstance(messages, (list, tuple)):
        raise ChatTemplateError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
                                f"got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ChatTemplateError(f"messages[{i}] must be a dict with a 'role' (and 'content'), got {m!r}")


def render_chat(template: str, messages, bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True, **extra) -> str:
    """The template's text for `messages`. Any failure is one ChatTemplateError."""
    import jinja2
    _check_messages(messages)
    try:
        tmpl = _compiled(template)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template does not compile: {e}") from None
    previous = sys.gettrace()
    _budget.deadline = time.monotonic() + MAX_RENDER_SECONDS
    sys.settrace(_trace)
    try:
        parts, n = [], 0
        for part in tmpl.generate(messages=list(messages), bos_token=bos_token, eos_token=eos_token,
                                  add_generation_prompt=add_generation_prompt, **extra):
            n += len(part)
            _check_size(n)
            parts.append(part)
        return "".join(parts)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed to render: {type(e).__name__}: {e}") from None
    except Exception as e:  # errors inside the template's own expressions (e.g. a bad index)
        raise ChatTemplateError(f"chat template failed to render: {type(e).__name__}: {e}") from None
    finally:
        sys.settrace(previous)
        _budget.deadline = None


def fit_history(tokenizer, messages, max_tokens: int):
    """Drop the oldest turns (system messages stay) until the rendered conversation fits in
    max_tokens. Returns (messages kept, their prompt ids or None when even the last message
    does not fit, how many messages were dropped)."""
    kept = list(messages)
    dropped = 0
    while True:
        ids = tokenizer.encode_chat(kept, add_generation_prompt=True)
        if len(ids) <= max_tokens:
            return kept, ids, dropped
        old = [i for i, m in enumerate(kept[:-1]) if m.get("role") != "system"]
        if not old:
            return kept, None, dropped
        del kept[old[0]]
        dropped += 1
