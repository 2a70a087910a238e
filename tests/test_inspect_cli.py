"""`python -m llmetal inspect` on the real models: tables and JSON show the right values."""
from __future__ import annotations

import json
import re

import pytest

from llmetal import inspect_cmd
from llmetal.gguf_file import GGUFFile

pytestmark = pytest.mark.timeout(180)


def row(text: str, label: str) -> str:
    """The value cell of a two-column table row whose first cell is `label`."""
    m = re.search(rf"^\s*{re.escape(label)}\s{{2,}}(.+?)\s*$", text, re.M)
    assert m, f"no row {label!r} in output:\n{text}"
    return m.group(1)


@pytest.fixture(scope="module")
def smol_json(smollm2_path, run_cli):
    r = run_cli("inspect", "smollm2", "--json", "--tensors")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_smollm2_json(smol_json, smollm2_path):
    j = smol_json
    assert j["family"] == "llama" and j["path"] == str(smollm2_path)
    assert j["file_type"] == "Q4_1" and j["gguf_version"] == 3
    assert j["n_tensors"] == 272 and len(j["tensors"]) == 272
    assert j["file_size"] == smollm2_path.stat().st_size
    a = j["architecture"]
    assert (a["n_layer"], a["n_embd"], a["n_ff"], a["n_head"], a["n_head_kv"]) == (30, 576, 1536, 9, 3)
    assert a["head_dim"] == 64 and a["tied_output"] is True and a["sliding_window"] == 0
    assert a["rope_freq_base"] == 100000.0 and a["n_ctx_train"] == 8192 and a["n_vocab"] == 49152
    t = j["tokenizer"]
    assert t["model"] == "gpt2" and t["kind"].startswith("BPE") and t["pre"] == "smollm"
    assert t["vocab_size"] == 49152 and t["n_merges"] == 48900 and t["add_bos"] is False
    sp = t["special"]
    assert sp["bos"] == {"id": 1, "text": "<|im_start|>", "source": "metadata"}
    assert sp["eos"]["id"] == 2 and sp["eos"]["text"] == "<|im_end|>"
    assert sp["unk"]["id"] == 0 and sp["unk"]["text"] == "<|endoftext|>"
    assert sp["pad"]["id"] == 2
    # parameter count and sizes agree with the tensor table
    assert j["n_params"] == sum(_n(x["shape"]) for x in j["tensors"]) == 134515008
    assert j["tensor_bytes"] == sum(x["bytes"] for x in j["tensors"])
    assert j["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    emb = next(x for x in j["tensors"] if x["name"] == "token_embd.weight")
    assert emb == {"name": "token_embd.weight", "type": "Q8_0", "shape": [49152, 576],
                   "bytes": 49152 * 18 * 34, "offset": 1785664}


def _n(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def test_smollm2_tables(run_cli, smollm2_path):
    r = run_cli("inspect", "-m", smollm2_path, "--tensors")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert row(out, "family") == "llama"
    assert row(out, "file type") == "Q4_1"
    assert row(out, "tensors") == "272"
    assert row(out, "parameters").startswith("134,515,008")
    assert row(out, "n_layer") == "30" and row(out, "n_embd") == "576"
    assert row(out, "n_head") == "9" and row(out, "n_head_kv") == "3"
    assert row(out, "tied_output") == "True"
    assert row(out, "vocab size") == "49152"
    assert row(out, "bos") == "1 '<|im_start|>'"
    assert row(out, "add_bos") == "False"
    # the tensor table: name, type, shape, bytes
    assert re.search(r"blk\.29\.ffn_down\.weight\s+Q4_1\s+576 x 1536\s+552,960", out)
    assert re.search(r"output_norm\.weight\s+F32\s+576\s+2,304", out)


def test_default_model_is_smollm2(run_cli, smollm2_path):
    r = run_cli("inspect", "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["path"] == str(smollm2_path) and "tensors" not in j


def test_gemma3_json_and_tables(run_cli, gemma3_path):
    r = run_cli("inspect", "gemma3", "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    a = j["architecture"]
    assert j["family"] == "gemma3" and j["file_type"] == "Q4_K_M" and j["n_tensors"] == 236
    assert (a["n_layer"], a["n_embd"], a["n_head"], a["n_head_kv"]) == (18, 640, 4, 1)
    assert a["head_dim"] == 256 and a["sliding_window"] == 512 and a["n_ff"] == 2048
    assert a["rope_type"] == "neox" and a["rope_freq_base"] == 1e6 and a["rope_freq_base_swa"] == 1e4
    assert a["layer_is_swa"] == [il % 6 < 5 for il in range(18)]
    assert a["has_qk_norm"] and a["has_post_norms"] and a["tied_output"]
    t = j["tokenizer"]
    assert t["model"] == "llama" and t["kind"].startswith("SPM") and t["vocab_size"] == 262144
    assert t["add_bos"] is True and t["special"]["bos"]["text"] == "<bos>"
    assert t["special"]["eot"] == {"id": 106, "text": "<end_of_turn>", "source": "by text"}
    assert j["tensor_types"]["Q6_K"] == 9 and j["n_params"] == GGUFFile(gemma3_path).n_params

    r = run_cli("inspect", gemma3_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert row(out, "family") == "gemma3" and row(out, "n_layer") == "18"
    assert row(out, "head_dim") == "256" and row(out, "sliding_window") == "512"
    assert row(out, "layer_is_swa") == "15 of 18 sliding-window; global: [5, 11, 17]"
    assert row(out, "n_head") == "4" and row(out, "n_head_kv") == "1"


def test_run_in_process(capsys, smollm2_path):
    assert inspect_cmd.run(str(smollm2_path), as_json=True) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["architecture"]["n_layer"] == 30


@pytest.mark.parametrize("arg, needle", [("no_such_model", "no such model file or known model name"),
                                         ("/nonexistent/x.gguf", "no such model file")])
def test_bad_model_argument(run_cli, arg, needle):
    r = run_cli("inspect", arg)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmetal: error: ") and needle in lines[0]


def test_names_with_markup_are_printed_verbatim(tiny_model, run_cli):
    """general.name comes from the file: rich must show it, not parse it as markup."""
    from gguf import GGUFValueType as V
    p = tiny_model(kv_overrides={"general.name": (V.STRING, "[bold]x[/] [/oops]")})
    r = run_cli("inspect", p)
    assert r.returncode == 0, r.stderr
    assert row(r.stdout, "name") == "[bold]x[/] [/oops]"


def test_unknown_architecture_is_inspected_not_run(tiny_model, run_cli):
    """A valid GGUF of an architecture llmetal does not run: inspect shows its metadata,
    tokenizer and tensors and says it cannot run; running it is an error listing what can."""
    from gguf import GGUFValueType as V
    from llmetal.config import SUPPORTED_ARCHS
    p = tiny_model("phi3.gguf", arch="phi3", n_vocab=300,
                   kv_overrides={"phi3.rope.scaling.attn_factor": (V.FLOAT32, 1.5),
                                 "phi3.layer_list": (V.ARRAY, list(range(100)), V.UINT32)})
    supported = f"(supported: {', '.join(SUPPORTED_ARCHS)})"
    r = run_cli("inspect", p, "--json", "--tensors")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["family"] == "phi3" and j["name"] == "tiny phi3" and j["runnable"] is False
    assert j["unsupported"] == f"unknown architecture 'phi3' {supported}"
    a = j["architecture"]                         # the file's phi3.* keys, prefix removed
    assert a["block_count"] == 2 and a["embedding_length"] == 64 and a["attention.head_count_kv"] == 2
    assert a["rope.scaling.attn_factor"] == pytest.approx(1.5)
    assert a["layer_list"] == {"array_len": 100, "head": list(range(8))}
    assert j["tokenizer"]["vocab_size"] == 300 and j["tokenizer"]["special"]["bos"]["id"] == 1
    assert len(j["tensors"]) == j["n_tensors"] == 2 + 2 * 9

    r = run_cli("inspect", p)
    assert r.returncode == 0, r.stderr
    assert row(r.stdout, "family") == "phi3"
    assert row(r.stdout, "runs in llmetal") == f"no: unknown architecture 'phi3' {supported}"
    assert row(r.stdout, "block_count") == "2"
    assert row(r.stdout, "layer_list").startswith("array of 100: [0, 1, 2")

    r = run_cli("generate", "-m", p, "-p", "hi", "-n", "1")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == (f"llmetal: error: {p}: metadata 'general.architecture': "
                                f"unknown architecture 'phi3' {supported}")


def test_supported_architecture_says_it_runs(run_cli, smollm2_path):
    r = run_cli("inspect", "smollm2")
    assert r.returncode == 0 and row(r.stdout, "runs in llmetal") == "yes"
