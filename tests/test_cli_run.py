"""The running commands end to end on the real default model: trace, generate, bench, chat,
and their one-line errors."""
import json

import pytest

STAGES_PER_LAYER_LLAMA = ["attn_norm", "Qcur", "Kcur", "Vcur", "Qcur_rope", "Kcur_rope", "kv_store", "kqv",
                          "kqv_out", "ffn_inp", "ffn_norm", "ffn_gate", "ffn_up", "ffn_swiglu", "ffn_out", "l_out"]


def test_trace_prints_every_stage_of_every_layer(run_cli):
    r = run_cli("trace", "-p", "The capital of France is", timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for il in range(30):
        for st in STAGES_PER_LAYER_LLAMA:
            assert any(l.split()[:2] == [st, str(il)] for l in lines), f"stage {st} of layer {il} missing"
    assert any(l.startswith("result_output") for l in lines)
    assert any(l.startswith("argmax") for l in lines)   # the greedy pick on the device, last
    assert "' Paris'" in r.stdout.split("next token")[1]


def test_trace_json_and_filters(run_cli):
    r = run_cli("trace", "--json", "--layers", "0,2-3", "--stages", "Qcur,l_out", "-p", "Hello", timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    got = {(s["stage"], s["layer"]) for s in out["stages"]}
    assert got == {(st, il) for st in ("Qcur", "l_out") for il in (0, 2, 3)}
    q = next(s for s in out["stages"] if s["stage"] == "Qcur")
    assert q["shape"][1] == 576 and q["weight_type"] == "Q4_1" and q["dtype"] == "float32"
    assert len(out["top"]) == 5 and out["top"][0]["prob"] >= out["top"][1]["prob"]
    assert out["argmax"] == out["top"][0]["id"]


def test_trace_gemma3_has_its_extra_stages(run_cli):
    r = run_cli("trace", "-m", "gemma3", "--json", "--layers", "0", "-p", "Hi", timeout=300)
    assert r.returncode == 0, r.stderr
    names = [s["stage"] for s in json.loads(r.stdout)["stages"]]
    for st in ("Qcur_normed", "Kcur_normed", "attn_post_norm", "ffn_geglu", "ffn_post_norm"):
        assert st in names


def test_generate_json_greedy_is_deterministic(run_cli):
    args = ("generate", "-p", "Once upon a time", "-n", "12", "--temp", "0", "--json")
    a, b = run_cli(*args, timeout=300), run_cli(*args, timeout=300)
    assert a.returncode == 0, a.stderr
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert set(ja) >= {"prompt_tokens", "tokens", "text", "prompt_tps", "gen_tps", "peak_mem_bytes"}
    assert ja["tokens"] == jb["tokens"] and 1 <= len(ja["tokens"]) <= 12
    assert ja["prompt_tps"] > 0 and ja["peak_mem_bytes"] > 0


def test_generate_seeded_sampling_reproducible(run_cli):
    args = ("generate", "-p", "My favourite colour is", "-n", "10", "--temp", "1.0", "-s", "7", "--json")
    a, b = run_cli(*args, timeout=300), run_cli(*args, timeout=300)
    assert json.loads(a.stdout)["tokens"] == json.loads(b.stdout)["tokens"]


def test_generate_streams_text_and_reports_speed(run_cli):
    r = run_cli("generate", "-p", "The capital of France is", "-n", "8", "--temp", "0", "-v", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "t/s" in r.stderr and "peak memory" in r.stderr and "sampler: greedy" in r.stderr


def test_generate_chat_template(run_cli):
    r = run_cli("generate", "--chat", "-p", "What is 2+2?", "-n", "16", "--temp", "0", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    from llmetal.models import resolve
    from llmetal.tokenizer import Tokenizer
    tok = Tokenizer.from_gguf(resolve("smollm2"))
    want = tok.encode("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", parse_special=True)
    ids = out["prompt_tokens"]
    assert ids[-len(want):] == want, "the template's user turn and generation prompt end the prompt"
    assert not (ids[0] == ids[1] == tok.bos_id), "BOS doubled"
    assert out["tokens"] and out["text"].strip()


@pytest.mark.parametrize("args,needle", [
    (("generate", "-p", "hi " * 40, "-n", "4", "-c", "16"), "context overflow"),
    (("generate", "-p", "hi", "--top-p", "2"), "top_p"),
    (("generate", "-n", "4"), "no prompt"),
    (("generate", "-p", "hi", "--bogus"), "unrecognized"),
    (("trace", "--layers", "99"), "layers"),
    (("plan", "--layers", "99"), "layers"),
    (("plan", "--layers", "x"), "--layers"),
    (("trace", "--lens", "-p", "word " * 300), "at most"),
    (("bench", "-r", "0"), "-r"),
    (("generate", "-m", "/nonexistent.gguf", "-p", "x"), "no such model"),
    (("generate", "-m", "gemma3", "--chat", "-p", "x"), "chat_template"),
    (("generate", "-p", "hi", "-t", "-1"), "--threads"),
    (("bench", "-b", "0"), "--batch-size"),
    (("generate", "-p", "hi", "-n", "-2"), "--n-predict"),
    (("generate", "-f", "/nonexistent/prompt.txt"), "prompt.txt"),
    (("generate", "-p", "hi", "--device", "metal"), "no Metal device"),
    (("trace", "-m", "gemma3", "-c", "999999", "-p", "x"), "n_ctx"),
    (("tokenize", "-p", "x", "-m", "/dev/null"), "/dev/null"),
])
def test_errors_are_one_line_exit_2(run_cli, args, needle):
    # builds with the Linux Metal shim do have a "metal" device (device.mm on the emulator):
    # the shim is told to offer none, as a machine without a Metal GPU does
    r = run_cli(*args, timeout=300, env={"LLMETAL_METAL_SHIM_DEVICES": "none"})
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llmetal: error:") and needle in err[0], err
    assert "Traceback" not in r.stderr


def test_bench_table_and_json(run_cli):
    r = run_cli("bench", "-p", "16", "-n", "8", "-r", "2", "-t", "2", timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("| model") and "t/s" in lines[0]
    assert any("pp16" in l for l in lines) and any("tg8" in l for l in lines)
    assert all("CPU" in l and "±" in l for l in lines[2:])
    r = run_cli("bench", "-p", "16", "-n", "8", "-r", "2", "-o", "json", timeout=300)
    res = json.loads(r.stdout)
    assert [x["test"] for x in res] == ["pp16", "tg8"] and all(x["avg_ts"] > 0 for x in res)



def test_bench_depth_fills_the_cache_first(run_cli):
    r = run_cli("bench", "-p", "16", "-n", "8", "-r", "1", "-d", "40", "-o", "json", timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert [x["test"] for x in res] == ["pp16 @ d40", "tg8 @ d40"] and all(x["n_depth"] == 40 for x in res)
    r = run_cli("bench", "-p", "16", "-n", "8", "-d", "100", "-c", "64", timeout=300)
    assert r.returncode == 2 and "exceed n_ctx 64" in r.stderr


def test_chat_loop_answers_and_quits_on_eof(run_cli_input):
    r = run_cli_input(["chat", "-n", "8", "--temp", "0"], "Hello!\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() != ""


def test_plan_and_lens_cli(run_cli):
    r = run_cli("plan", "--layers", "0", "--cuda-planner", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "on the CUDA planner (H100)" in r.stdout and "kernel_mmvq_group" in r.stdout
    assert "argmax" not in r.stdout
    r = run_cli("plan", "--layers", "0", "--ids", timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].split() == ["argmax", "argmax", "kernel_argmax_f32"]
    r = run_cli("trace", "--lens", "--compare", "--json", "-p", "The capital of France is", timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["lens"]["layers"][-1]["positions"][-1][0]["piece"] == " Paris"
    assert {row["stage"] for row in out["compare"]} >= {"Qcur", "kqv", "result_output"}
