"""`python -m llmetal serve` through the real `openai` client: a server started here on a free
loopback port (a subprocess, -np 4), SmolLM2 on the CPU."""
from __future__ import annotations

import concurrent.futures as cf
import json
import socket
import subprocess
import sys
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from conftest import REPO, _cli_env  # noqa: E402

N_SLOTS = 4
MAX_TOKENS_LIMIT = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(smollm2_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmetal", "serve", "-m", str(smollm2_path), "--port", str(port),
                             "-np", str(N_SLOTS), "-c", "2048", "--max-tokens", str(MAX_TOKENS_LIMIT)],
                            env=_cli_env(), cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                pytest.fail("the server exited: " + proc.stdout.read())
            time.sleep(0.1)
        else:
            pytest.fail("the server did not come up")
        yield base
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        assert "Traceback" not in out, out


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def chat(client, model_id, text, **kw):
    kw.setdefault("max_tokens", 16)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": text}], **kw)


PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Count from one to five.",
           "Name three colours.", "What is 2 + 2?", "Say hello in Spanish."]


def test_models_and_health(server, client, model_id):
    assert model_id.startswith("SmolLM2")
    h = httpx.get(server + "/health").json()
    assert h["status"] == "ok" and h["slots"] == N_SLOTS


def test_chat_non_streaming(client, model_id):
    r = chat(client, model_id, PROMPTS[0])
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content
    assert c.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 16 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_equals_non_streaming(client, model_id):
    whole = chat(client, model_id, PROMPTS[1]).choices[0].message.content
    parts, reasons, usage = [], [], None
    for ch in chat(client, model_id, PROMPTS[1], stream=True, stream_options={"include_usage": True}):
        if ch.usage:
            usage = ch.usage
        for c in ch.choices:
            parts.append(c.delta.content or "")
            reasons.append(c.finish_reason)
    assert "".join(parts) == whole
    assert reasons[-1] in ("stop", "length") and usage is not None and usage.completion_tokens > 0


def test_completions(client, model_id):
    r = client.completions.create(model=model_id, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.choices[0].text and r.usage.prompt_tokens > 0


def test_stop_string(client, model_id):
    full = chat(client, model_id, PROMPTS[2], max_tokens=24).choices[0].message.content
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    r = chat(client, model_id, PROMPTS[2], max_tokens=24, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == full[:full.index(stop)]
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       chat(client, model_id, PROMPTS[2], max_tokens=24, stop=stop, stream=True) if c.choices)
    assert streamed == full[:full.index(stop)]


def test_concurrent_requests_equal_single(client, model_id):
    """More requests than slots (some queue), each greedy output equal to its output alone."""
    alone = [chat(client, model_id, p).choices[0].message.content for p in PROMPTS]
    with cf.ThreadPoolExecutor(len(PROMPTS)) as ex:
        together = list(ex.map(lambda p: chat(client, model_id, p).choices[0].message.content, PROMPTS))
    assert together == alone


def test_seed_reproducible_under_load(client, model_id):
    kw = dict(temperature=1.0, top_p=1.0, max_tokens=16, extra_body={"top_k": 0, "min_p": 0.0})

    def sampled(seed):
        return chat(client, model_id, PROMPTS[3], seed=seed, **kw).choices[0].message.content
    with cf.ThreadPoolExecutor(4) as ex:
        a = ex.submit(sampled, 1234)
        ex.submit(chat, client, model_id, PROMPTS[4])
        b = ex.submit(sampled, 1234)
        c = ex.submit(sampled, 99)
        a, b, c = a.result(), b.result(), c.result()
    assert a == b
    assert sampled(1234) == a


def test_disconnect_frees_the_slot(server, client, model_id):
    body = {"model": model_id, "messages": [{"role": "user", "content": PROMPTS[5]}], "max_tokens": MAX_TOKENS_LIMIT,
            "stream": True, "temperature": 0, "ignore_eos": True}
    with httpx.Client(timeout=30) as h:
        with h.stream("POST", server + "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            it = resp.iter_lines()
            got = [line for _, line in zip(range(3), it)]
            assert got[0].startswith("data: ")
    for _ in range(100):                      # the slot is free well before 64 tokens would take
        if httpx.get(server + "/health").json()["active"] == 0:
            break
        time.sleep(0.05)
    assert httpx.get(server + "/health").json()["active"] == 0
    assert chat(client, model_id, PROMPTS[0]).choices[0].message.content


def test_errors(server, client, model_id):
    def post(path, content, **kw):
        r = httpx.post(server + path, content=content, headers={"content-type": "application/json"}, **kw)
        body = r.json()
        assert set(body["error"]) >= {"message", "type", "param", "code"}, body
        assert "Traceback" not in r.text
        return r.status_code, body["error"]

    assert post("/v1/chat/completions", b"{not json")[0] == 400
    assert post("/v1/chat/completions", b"[1, 2]")[0] == 400
    assert post("/v1/chat/completions", json.dumps({"model": model_id}).encode())[0] == 400   # no messages
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="context"):
        chat(client, model_id, "hello " * 600)         # 512 positions a slot
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        chat(client, model_id, "hi", max_tokens=MAX_TOKENS_LIMIT + 1)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        chat(client, model_id, "hi", temperature="hot")
    status, err = post("/v1/completions", b'{"prompt": "' + b"a" * (2 << 20) + b'"}')
    assert status == 413
    # the server still serves
    assert chat(client, model_id, "hi", max_tokens=2).choices[0].message.content is not None


def test_prompt_cache_next_turn(client, model_id):
    """A chat's next turn resends the conversation: the slot's rows of the first turn are reused
    (usage.prompt_tokens_details.cached_tokens), and the reply equals the one computed without
    the cache ("cache_prompt": false, llama-server's request field)."""
    q1 = [{"role": "user", "content": "What is 2 + 2?"}]
    r1 = client.chat.completions.create(model=model_id, messages=q1, max_tokens=12, temperature=0)
    q2 = q1 + [{"role": "assistant", "content": r1.choices[0].message.content},
               {"role": "user", "content": "And 3 + 3?"}]
    r2 = client.chat.completions.create(model=model_id, messages=q2, max_tokens=12, temperature=0)
    r3 = client.chat.completions.create(model=model_id, messages=q2, max_tokens=12, temperature=0,
                                        extra_body={"cache_prompt": False})
    assert r2.usage.prompt_tokens_details.cached_tokens > r1.usage.prompt_tokens // 2
    assert r3.usage.prompt_tokens_details.cached_tokens == 0
    assert r2.choices[0].message.content == r3.choices[0].message.content
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model_id, messages=q1, max_tokens=4, extra_body={"cache_prompt": "yes"})
