"""`python -m llmetal serve`: an OpenAI-compatible HTTP server that decodes many requests at once.

    python -m llmetal serve -m smollm2 -np 4 -c 4096      # http://127.0.0.1:8080/v1

One scheduler thread owns the model (it holds the model's lock while it runs) and, every step,
runs ONE `Model.step` over all active slots together (continuous batching): a decode row for
each running request plus prompt chunks of new ones, up to the step's row limit. Each request
samples with its own `Sampler` (its own seed), so its output does not depend on the others.
When every request of a step picks greedily from the plain logits (temperature 0, no repeat
penalty: `Sampler.argmax_only`), the step takes the argmax on the device (`Model.step(ids=True)`)
and downloads one int32 a request instead of its row of logits.
Requests past `-np` wait in a queue; a client that disconnects frees its slot at once (the
scheduler drops it before the next step).
Prompt cache (as llama-server's `cache_prompt`, on unless a request says `"cache_prompt": false`):
each slot remembers the tokens whose K/V rows it holds; a new request goes to the free slot that
shares the longest prefix with its prompt and starts its prefill after that prefix (a chat's
next turn resends the whole conversation: only the new part is computed). The rows computed
before are the same bits the request would compute (the engine's steps do not depend on how
rows are batched); `usage.prompt_tokens_details.cached_tokens` says how many were reused. The HTTP side is a Starlette app on uvicorn; it only
validates, queues and forwards the scheduler's events (text deltas, the end) to the client.

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with "stream": SSE),
GET /v1/models, GET /health. Errors are OpenAI error objects, never a traceback.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .sampling import Sampler, SamplerParams

log = logging.getLogger("llmetal.serve")

MAX_BODY_BYTES = 1 << 20          # a request body past this is refused (413)


class APIError(Exception):
    """An error the client sees as an OpenAI error object."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Request:
    """One completion being served: its prompt, sampler and state, and where its events go
    (("delta", text), ("done", finish_reason), ("error", message)): emit(event), called on the
    scheduler thread, or on the thread that the scheduler's `post` hands them to."""
    id: str
    prompt: list[int]
    max_tokens: int
    sampler: Sampler
    stop: list[str]
    emit: object                       # callable(event): into the client's queue
    seq: int = -1                      # the model sequence (slot) while active
    fed: int = 0                       # prompt tokens in the KV cache
    kv: int = 0                        # K/V rows of prompt + tokens written to the slot
    cache_prompt: bool = True          # start after the slot's longest shared prefix
    n_cached: int = 0                  # prompt tokens whose rows came from the slot's last request
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0                      # characters of text already sent
    cancelled: bool = False
    ignore_eos: bool = False           # go on past end-of-generation tokens (llama-server's ignore_eos)
    finish_reason: str | None = None
    decoder: object = None
    t_start: float = field(default_factory=time.perf_counter)
    t_first: float | None = None


class Scheduler:
    """Owns the model: admits requests into free slots and steps all active ones together.

    post: None (each event goes to its request's emit at once, on this thread), or
    callable([(emit, event), ...]) that gets the events of one step together: the server hands
    them to its event loop in one wake-up a step rather than one per token."""

    def __init__(self, model, tokenizer, post=None):
        self.model, self.tok, self.post = model, tokenizer, post
        self._outbox: list = []          # (emit, event) of this step, for post
        self.n_slots = model.n_seq
        self.eog = set(tokenizer.eog_ids)
        self.queue: deque[Request] = deque()
        self.active: dict[int, Request] = {}
        self.slot_tokens: list[list[int]] = [[] for _ in range(self.n_slots)]   # K/V rows each slot holds
        self.cv = threading.Condition()
        self.stopping = False
        self.n_steps = 0
        self.n_steps_ids = 0             # steps whose tokens came from the device's argmax
        self.thread = threading.Thread(target=self._run, name="llmetal-scheduler", daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        with self.cv:
            self.stopping = True
            self.cv.notify()
        self.thread.join(timeout=10)

    def submit(self, req: Request):
        with self.cv:
            self.queue.append(req)
            self.cv.notify()

    def cancel(self, req: Request):
        with self.cv:
            req.cancelled = True
            self.cv.notify()

    @property
    def n_queued(self) -> int:
        return len(self.queue)

    # ---- the scheduler thread ------------------------------------------------------------
    def _run(self):
        with self.model.lock:          # the model is this thread's for the server's life
            self.model.plan()
            while True:
                with self.cv:
                    while not self.stopping and not self.active and not self.queue:
                        self.cv.wait()
                    if self.stopping:
                        return
                    self._admit()
                if self.active:
                    try:
                        self._step()
                    except Exception as e:     # noqa: BLE001 -- every request learns of it
                        log.exception("step failed")
                        for r in list(self.active.values()):
                            self._finish(r, None, error=f"the engine failed: {type(e).__name__}: {e}")
                    self._flush()

    def _emit(self, r: Request, ev):
        if self.post is None:
            r.emit(ev)
        else:
            self._outbox.append((r.emit, ev))

    def _flush(self):
        if self._outbox:
            batch, self._outbox = self._outbox, []
            self.post(batch)

    def _admit(self):
        for r in [r for r in self.active.values() if r.cancelled]:
            self._release(r)
        self.queue = deque(r for r in self.queue if not r.cancelled)
        free = [s for s in range(self.n_slots) if s not in self.active]
        while free and self.queue:
            r = self.queue.popleft()
            shared = [_common(self.slot_tokens[s], r.prompt) if r.cache_prompt else 0 for s in free]
            best = max(range(len(free)), key=lambda k: (shared[k], -k))
            r.seq = free.pop(best)
            # the last prompt token always runs: its logits give the first new token
            r.fed = r.kv = r.n_cached = min(shared[best], len(r.prompt) - 1)
            self.slot_tokens[r.seq] = self.slot_tokens[r.seq][:r.kv]
            r.decoder = self.tok.decoder()
            self.active[r.seq] = r

    def _release(self, r: Request, error: bool = False):
        """The request leaves its slot; the slot keeps the tokens of the rows it wrote (none
        after an engine error: their state is unknown)."""
        self.active.pop(r.seq, None)
        self.slot_tokens[r.seq] = [] if error else (r.prompt + r.tokens)[:r.kv]

    def _step(self):
        budget = self.model.step_rows_max()
        rows, want, owners = [], [], []
        for r in self.active.values():           # decode rows first: one each
            if r.fed == len(r.prompt) and r.tokens and not r.cancelled:
                rows.append((r.seq, r.tokens[-1], len(r.prompt) + len(r.tokens) - 1))
                r.kv = len(r.prompt) + len(r.tokens)
                want.append(len(rows) - 1)
                owners.append(r)
        for r in self.active.values():           # then prompt chunks, oldest first
            room = budget - len(rows)
            if room <= 0:
                break
            if r.fed < len(r.prompt) and not r.cancelled:
                chunk = r.prompt[r.fed:r.fed + room]
                rows += [(r.seq, t, r.fed + i) for i, t in enumerate(chunk)]
                r.fed += len(chunk)
                r.kv = r.fed
                if r.fed == len(r.prompt):
                    want.append(len(rows) - 1)
                    owners.append(r)
        if not rows:
            return
        # every token of the step greedy from the plain logits: the argmax on the device, one
        # int32 downloaded a request instead of a row of logits
        greedy = bool(owners) and all(r.sampler.argmax_only for r in owners)
        out = self.model.step(rows, want, ids=greedy)
        self.n_steps += 1
        self.n_steps_ids += greedy
        for r, o in zip(owners, out):
            if not r.cancelled:
                self._accept(r, int(o) if greedy else r.sampler.token(o, r.prompt + r.tokens))

    def _accept(self, r: Request, tok: int):
        """The request's next token `tok`: stop tokens and strings, limits, the text to send."""
        if r.t_first is None:
            r.t_first = time.perf_counter()
        r.tokens.append(tok)
        if tok in self.eog and not r.ignore_eos:
            r.tokens.pop()
            return self._finish(r, "stop")
        r.text += r.decoder.add(tok)
        for s in r.stop:                          # a stop string ends the text before it
            i = r.text.find(s, max(0, r.sent - len(s)))
            if i >= 0:
                r.text = r.text[:i]
                return self._finish(r, "stop")
        full = len(r.prompt) + len(r.tokens) >= self.model.n_ctx   # no room for the next row
        if len(r.tokens) >= r.max_tokens or full:
            r.text += r.decoder.flush()
            return self._finish(r, "length")
        # send what can no longer become the start of a stop string
        hold = max((len(s) - 1 for s in r.stop), default=0)
        safe = len(r.text) - hold
        if safe > r.sent:
            self._emit(r, ("delta", r.text[r.sent:safe]))
            r.sent = safe

    def _finish(self, r: Request, reason: str | None, error: str | None = None):
        self._release(r, error=bool(error))
        if error:
            self._emit(r, ("error", error))
            return
        if len(r.text) > r.sent:
            self._emit(r, ("delta", r.text[r.sent:]))
            r.sent = len(r.text)
        r.finish_reason = reason
        self._emit(r, ("done", reason))


def _common(a: list[int], b: list[int]) -> int:
    """The length of the common prefix of a and b."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


# ---- the HTTP side ----------------------------------------------------------------------------
def _num(body, key, kind, lo=None, hi=None, default=None):
    v = body.get(key, default)
    if v is None:
        return default
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or isinstance(v, int))
    if not ok or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f" in [{lo}, {hi}]" if hi is not None else f" >= {lo}" if lo is not None else ""
        raise APIError(400, f"'{key}' must be {'an integer' if kind is int else 'a number'}{rng}, got {v!r}",
                       param=key)
    return kind(v)


def _deliver(batch):
    for emit, ev in batch:
        emit(ev)


class App:
    """The Starlette application around one Scheduler."""

    def __init__(self, model, tokenizer, model_id: str, max_tokens_limit: int = 4096):
        from starlette.applications import Starlette
        from starlette.routing import Route
        self.model, self.tok, self.model_id = model, tokenizer, model_id
        self.max_tokens_limit = max_tokens_limit
        self.sched = Scheduler(model, tokenizer, post=self._post)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ids = itertools.count(1)
        self.created = int(time.time())
        self.app = Starlette(routes=[
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ], lifespan=self._lifespan)

    def _post(self, batch):
        """A step's events, from the scheduler thread to the event loop in one wake-up."""
        self.loop.call_soon_threadsafe(_deliver, batch)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self.loop = asyncio.get_running_loop()
        self.sched.start()
        try:
            yield
        finally:
            self.sched.stop()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        info = {"status": 500, "prompt": 0, "completion": 0}

        async def send_logged(msg):
            if msg["type"] == "http.response.start":
                info["status"] = msg["status"]
            await send(msg)
        scope.setdefault("state", {})["info"] = info
        try:
            await self.app(scope, receive, send_logged)
        finally:
            log.info('%s %s %d prompt=%d completion=%d %.3fs', scope["method"], scope["path"], info["status"],
                     info["prompt"], info["completion"], time.perf_counter() - t0)

    # ---- endpoints ---------------------------------------------------------------------------
    async def health(self, request):
        from starlette.responses import JSONResponse
        return JSONResponse({"status": "ok", "slots": self.sched.n_slots, "active": len(self.sched.active),
                             "queued": self.sched.n_queued})

    async def models(self, request):
        from starlette.responses import JSONResponse
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "llmetal"}]})

    async def chat(self, request):
        return await self._serve(request, chat=True)

    async def completions(self, request):
        return await self._serve(request, chat=False)

    async def _serve(self, request, chat: bool):
        from starlette.responses import JSONResponse
        try:
            body = await self._body(request)
            req, stream, include_usage = self._parse(body, chat, request)
        except APIError as e:
            return JSONResponse(e.body(), status_code=e.status)
        request.scope["state"]["info"]["prompt"] = len(req.prompt)
        if stream:
            return self._stream(request, req, chat, include_usage)
        try:
            return await self._complete(request, req, chat)
        except APIError as e:
            return JSONResponse(e.body(), status_code=e.status)

    async def _body(self, request) -> dict:
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BODY_BYTES:
                raise APIError(413, f"the request body exceeds {MAX_BODY_BYTES} bytes", code="request_too_large")
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        return body

    def _parse(self, body: dict, chat: bool, request):
        model = body.get("model")
        if model is not None and model != self.model_id:
            raise APIError(404, f"the model '{model}' does not exist (this server has '{self.model_id}')",
                           param="model", code="model_not_found")
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise APIError(400, "'messages' must be a non-empty list", param="messages")
            clean = []
            for m in msgs:
                if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                    raise APIError(400, "each message must be an object with a 'role'", param="messages")
                content = m.get("content")
                if isinstance(content, list):    # content parts: the text ones
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict)
                                      and p.get("type") == "text")
                if not isinstance(content, str):
                    raise APIError(400, "a message's 'content' must be text", param="messages")
                clean.append({"role": m["role"], "content": content})
            try:
                prompt = self.tok.encode_chat(clean)
            except Exception as e:  # noqa: BLE001 -- a template that fails on these messages
                raise APIError(400, f"the chat template failed on these messages: {e}") from None
        else:
            p = body.get("prompt")
            if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
                p = p[0]
            if isinstance(p, str):
                prompt = self.tok.encode(p, parse_special=True)
            elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
                bad = [t for t in p if not 0 <= t < self.model.cfg.n_vocab]
                if bad:
                    raise APIError(400, f"token id {bad[0]} outside the vocabulary", param="prompt")
                prompt = list(p)
            else:
                raise APIError(400, "'prompt' must be a string or a list of token ids", param="prompt")
        if not prompt:
            raise APIError(400, "the prompt is empty (no tokens)")
        n_ctx = self.model.n_ctx
        if len(prompt) >= n_ctx:
            raise APIError(400, f"the prompt has {len(prompt)} tokens; this server's context is {n_ctx} per "
                                "request (raise -c or lower -np)", code="context_length_exceeded")
        mt = body.get("max_completion_tokens", body.get("max_tokens"))
        max_tokens = _num({"max_tokens": mt}, "max_tokens", int, 1, None, default=None)
        if max_tokens is not None and max_tokens > self.max_tokens_limit:
            raise APIError(400, f"max_tokens {max_tokens} exceeds this server's limit of {self.max_tokens_limit}",
                           param="max_tokens")
        max_tokens = min(max_tokens or self.max_tokens_limit, n_ctx - len(prompt))
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else stop or []
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise APIError(400, "'stop' must be a string or a list of up to 4 non-empty strings", param="stop")
        d = SamplerParams()
        try:
            params = SamplerParams(
                temp=_num(body, "temperature", float, 0.0, 2.0, default=d.temp),
                top_p=_num(body, "top_p", float, 0.0, 1.0, default=d.top_p) or 1.0,
                top_k=_num(body, "top_k", int, 0, None, default=d.top_k),
                min_p=_num(body, "min_p", float, 0.0, 1.0, default=d.min_p),
                repeat_penalty=_num(body, "repeat_penalty", float, 0.0, None, default=d.repeat_penalty),
                seed=_num(body, "seed", int, 0, None, default=None)).with_seed()
        except ValueError as e:
            raise APIError(400, str(e)) from None
        n = _num(body, "n", int, 1, 1, default=1)   # noqa: F841 -- one choice per request
        stream = bool(body.get("stream", False))
        so = body.get("stream_options") or {}
        include_usage = bool(isinstance(so, dict) and so.get("include_usage"))
        q: asyncio.Queue = asyncio.Queue()
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{next(self.ids)}"
        req = Request(rid, prompt, max_tokens, Sampler(params, self.model.cfg.n_vocab), stop,
                      emit=q.put_nowait)      # on the event loop, through _post
        req.queue = q
        req.ignore_eos = bool(body.get("ignore_eos", False))
        cp = body.get("cache_prompt", True)
        if not isinstance(cp, bool):
            raise APIError(400, "'cache_prompt' must be true or false", param="cache_prompt")
        req.cache_prompt = cp
        return req, stream, include_usage

    def _usage(self, req) -> dict:
        return {"prompt_tokens": len(req.prompt), "completion_tokens": len(req.tokens),
                "total_tokens": len(req.prompt) + len(req.tokens),
                "prompt_tokens_details": {"cached_tokens": req.n_cached}}

    async def _complete(self, request, req, chat):
        from starlette.responses import JSONResponse
        self.sched.submit(req)
        text, reason = "", None
        try:
            while True:
                try:
                    ev = await asyncio.wait_for(req.queue.get(), 0.25)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        self.sched.cancel(req)
                        return JSONResponse({}, status_code=499)
                    continue
                if ev[0] == "delta":
                    text += ev[1]
                elif ev[0] == "done":
                    reason = ev[1]
                    break
                else:
                    raise APIError(500, ev[1], type_="server_error")
        except asyncio.CancelledError:
            self.sched.cancel(req)
            raise
        request.scope["state"]["info"]["completion"] = len(req.tokens)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                   "logprobs": None} if chat else
                  {"index": 0, "text": text, "finish_reason": reason, "logprobs": None})
        return JSONResponse({"id": req.id, "object": "chat.completion" if chat else "text_completion",
                             "created": int(time.time()), "model": self.model_id, "choices": [choice],
                             "usage": self._usage(req)})

    def _stream(self, request, req, chat, include_usage):
        from starlette.responses import StreamingResponse
        obj = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())

        def chunk(delta: str | None, reason, role=False) -> str:
            if chat:
                d = {"role": "assistant", "content": delta or ""} if role else ({"content": delta} if delta else {})
                ch = {"index": 0, "delta": d, "finish_reason": reason, "logprobs": None}
            else:
                ch = {"index": 0, "text": delta or "", "finish_reason": reason, "logprobs": None}
            return "data: " + json.dumps({"id": req.id, "object": obj, "created": created,
                                          "model": self.model_id, "choices": [ch]}) + "\n\n"

        async def events():
            self.sched.submit(req)
            try:
                if chat:
                    yield chunk("", None, role=True)
                while True:
                    ev = await req.queue.get()
                    if ev[0] == "delta":
                        yield chunk(ev[1], None)
                    elif ev[0] == "done":
                        yield chunk(None, ev[1])
                        if include_usage:
                            yield "data: " + json.dumps({"id": req.id, "object": obj, "created": created,
                                                         "model": self.model_id, "choices": [],
                                                         "usage": self._usage(req)}) + "\n\n"
                        yield "data: [DONE]\n\n"
                        break
                    else:
                        yield "data: " + json.dumps(APIError(500, ev[1], "server_error").body()) + "\n\n"
                        break
            finally:   # the end, an error, or the client went away: the slot is free at once
                self.sched.cancel(req)
                request.scope["state"]["info"]["completion"] = len(req.tokens)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})


def build(model_path, n_slots: int = 4, n_ctx: int = 4096, device: str | None = None, n_threads: int = 0,
          max_tokens_limit: int = 4096) -> App:
    """Load the model for n_slots sequences of n_ctx // n_slots positions each (-c is the total
    context, as llama-server's) and build the app."""
    from . import load
    from .model import make_device  # noqa: F401 -- the same device names as the other commands
    from .tokenizer import Tokenizer
    if n_slots < 1 or n_slots > 256:
        raise ValueError(f"-np must be in 1..256, got {n_slots}")
    per = n_ctx // n_slots
    if per < 16:
        raise ValueError(f"-c {n_ctx} over {n_slots} slots leaves {per} positions each (at least 16)")
    model = load(model_path, device=device or "cpu", n_ctx=per, n_threads=n_threads, n_seq=n_slots,
                 n_out=max(32, n_slots))
    tok = Tokenizer.from_gguf(model.gguf)
    return App(model, tok, model.path.stem, max_tokens_limit=max_tokens_limit)


def serve(app: App, host: str = "127.0.0.1", port: int = 8080):
    import uvicorn
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info("serving %s on http://%s:%d/v1 (%d slots of %d positions, device %s)", app.model_id, host, port,
             app.sched.n_slots, app.model.n_ctx, app.model.device_name)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
