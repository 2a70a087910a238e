"""Chat templates: render a GGUF's `tokenizer.chat_template` (Jinja) for a list of messages.

The template runs in jinja2's ImmutableSandboxedEnvironment (a template is data from a model
file: it may not touch Python objects beyond reading them) with trim_blocks and
lstrip_blocks, as Hugging Face's transformers renders these templates. Variables given:
`messages`, `bos_token`, `eos_token`, `add_generation_prompt`, plus whatever the caller adds
(`tools`, ...); functions: `raise_exception(msg)` and `strftime_now(fmt)`.

Tokenizing the rendered text is Tokenizer.encode_chat: it parses special tokens and does not
add a second BOS when the template already wrote one.
"""
from __future__ import annotations

import datetime


class ChatTemplateError(ValueError):
    """The chat template could not be compiled or rendered; the message says why."""


def _raise_exception(message):
    raise ChatTemplateError(f"chat template raised an error: {message}")


def _strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)


_ENV = None


def _environment():
    global _ENV
    if _ENV is None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        _ENV = env
    return _ENV


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
    env = _environment()
    try:
        tmpl = env.from_string(template)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template does not compile: {e}") from None
    try:
        return tmpl.render(messages=list(messages), bos_token=bos_token, eos_token=eos_token,
                           add_generation_prompt=add_generation_prompt, **extra)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed to render: {type(e).__name__}: {e}") from None
    except Exception as e:  # errors inside the template's own expressions (e.g. a bad index)
        raise ChatTemplateError(f"chat template failed to render: {type(e).__name__}: {e}") from None
