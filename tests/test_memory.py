"""Scaling down: the memory planner against real counts, quantization configs, checkpointing."""
import itertools
import json

import pytest
import torch

from fromage_mini import Fromage, FromageConfig
from fromage_mini.errors import FromageError
from fromage_mini.model.backbones import kv_cache
from fromage_mini.tools.memory import GIB, lm_counts, memory_table, plan_memory

CAPTION = "a large blue square on the right and a small green triangle at the bottom."


def test_opt_sizes_match_the_published_models():
    # facebook/opt-6.7b has 6,658,473,984 parameters: 13.3 GB = 12.40 GiB in bf16
    assert lm_counts("6.7b")["total"] == 6_658_473_984
    assert lm_counts("facebook/opt-1.3b")["total"] == 1_315_758_080
    w = plan_memory("6.7b", None, lm_dtype="bf16", batch=1, mode="inference")["lm_weights"]
    assert 12.3 < w < 12.5
    # the quantized part is every decoder Linear: 12 layers × (4·768² + 2·768·3072) for OPT-125m
    c = lm_counts("125m")
    assert c["linear"] == 12 * (4 * 768 ** 2 + 2 * 768 * 3072)
    assert c["tied"] and not c["gated"] and c["layers"] == 12


@pytest.mark.parametrize("size", ["125m", "1.3b", "6.7b"])
def test_quantized_weights_are_smaller(size):
    w = {d: plan_memory(size, None, lm_dtype=d, batch=32, mode="train")["lm_weights"]
         for d in ("fp32", "bf16", "int8", "nf4")}
    assert w["nf4"] < w["int8"] < w["bf16"] < w["fp32"]
    assert w["bf16"] == pytest.approx(w["fp32"] / 2)
    if size == "6.7b":  # 16-bit embeddings keep nf4 above a quarter of bf16
        assert 0.25 < w["nf4"] / w["bf16"] < 0.3 and 0.5 < w["int8"] / w["bf16"] < 0.55


@pytest.mark.parametrize("mode", ["train", "inference"])
@pytest.mark.parametrize("dtype", ["bf16", "nf4"])
def test_estimates_grow_with_batch_and_the_rest_does_not(mode, dtype):
    plans = [plan_memory("1.3b", "vit-l/14", lm_dtype=dtype, batch=b, mode=mode) for b in (1, 32, 64, 180)]
    for a, b in itertools.pairwise(plans):
        assert b["total"] > a["total"] and b["activations"] > a["activations"] and b["logits"] > a["logits"]
        assert b["lm_weights"] == a["lm_weights"] and b["adapters"] == a["adapters"]
    assert all(abs(p["total"] - sum(v for k, v in p.items() if k != "total")) < 1e-9 for p in plans)


def test_training_options_move_memory_the_right_way():
    base = dict(lm_dtype="bf16", batch=180, mode="train")
    p = plan_memory("6.7b", "vit-l/14", **base)
    assert p["vision_weights"] == 0  # cached features
    assert plan_memory("6.7b", "vit-l/14", cached_features=False, **base)["vision_weights"] > 1.0  # ViT-L fp32
    assert plan_memory("6.7b", "vit-l/14", grad_checkpointing=True, **base)["activations"] < p["activations"] / 3
    assert plan_memory("6.7b", "vit-l/14", fast_ret_pass=False, **base)["activations"] > p["activations"]
    assert plan_memory("6.7b", "vit-l/14", lm_dtype="int8", batch=180, mode="train")["activations"] > p["activations"]
    assert 5 < p["total"] - p["lm_weights"] < 40  # sanity: activations dominate at batch 180
    with pytest.raises(FromageError):
        plan_memory("6.7b", None, lm_dtype="int4", batch=1)


@pytest.mark.parametrize("family", ["opt", "gpt2", "llama"])
def test_weight_estimate_equals_the_loaded_models_bytes(tiny_lm_path, family):
    from transformers import AutoModelForCausalLM

    path = tiny_lm_path(family)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        real = sum(p.numel() * p.element_size() for p in lm.parameters())  # tied weights once
        assert plan_memory(path, None, lm_dtype=name, batch=1, mode="inference")["lm_weights"] * GIB == real


@pytest.mark.parametrize("fast", [True, False])
def test_activation_estimate_matches_what_autograd_saves(tiny_lm_path, tiny_vision_path, fast):
    """Bytes saved for the backward by one training forward (fp32, CPU) vs. the planner's model.

    The planner adds transients that are not saved for the backward (one layer of backward
    scratch; with the fast retrieval pass, the hidden states of its no-grad caption pass) and
    counts the logits' cross-entropy state under ``logits``; all are accounted for here.
    """
    path = tiny_lm_path("opt", d=64, layers=4, ffn=256)
    torch.manual_seed(0)
    m = Fromage(FromageConfig(lm=path, vision=tiny_vision_path("clip"), ret_dim=16, concat_prob=0.0, max_len=12,
                              fast_ret_pass=fast)).train()
    B = 8
    b = m.tokenize([CAPTION] * B)
    assert b["attention_mask"].all()
    T = b["input_ids"].shape[1]
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(**b, features=torch.randn(B, m.vis_dim), concat=False)
    c = lm_counts(path)
    est = plan_memory(path, None, lm_dtype="fp32", batch=B, mode="train", seq_len=T + 1, k=1, ret_dim=16,
                      fast_ret_pass=fast)
    scratch = 4 * B * (T + 1) * (6 * c["hidden"] + c["ffn"])
    scratch += 4 * B * (T - 1) * (c["layers"] + 1) * c["hidden"] if fast else 0
    log_softmax = 4 * B * c["vocab"] * (T + T - 1)  # captioning targets + retrieval targets
    want = est["activations"] * GIB - scratch + log_softmax
    assert 0.9 < sum(saved.values()) / want < 1.15


def test_memory_table_marks_measured_rows(tmp_path):
    rows = [("125m", "bf16", "train", 32), ("125m", "nf4", "inference", 180)]
    meas = {"machine": {"gpu": "NVIDIA H100"},
            "rows": [{"lm": "125m", "lm_dtype": "bf16", "mode": "train", "batch": 32, "total_gib": 1.23}]}
    (tmp_path / "m.json").write_text(json.dumps(meas))
    table = memory_table(rows, measured=tmp_path / "m.json").splitlines()
    assert len(table) == 4 and table[0].startswith("| LM |")
    assert "**1.2** measured (NVIDIA H100)" in table[2] and "measured" not in table[3]
    assert "measured (" not in memory_table(rows, measured=tmp_path / "missing.json")


# ----------------------------------------------------------------------------------------------
def test_bnb_config_explains_what_is_missing(monkeypatch):
    import importlib.util

    from fromage_mini.model import quant

    with pytest.raises(FromageError, match="int8' or 'nf4"):
        quant.bnb_config("int4")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    with pytest.raises(FromageError, match="pip install"):
        quant.bnb_config("nf4")
    with pytest.raises(FromageError, match="pip install"):  # model.py goes through bnb_config
        Fromage(FromageConfig(lm="unused", vision="unused", lm_dtype="nf4"))
    with pytest.raises(FromageError, match="accelerate"):  # transformers needs it to load bnb weights
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda n, *a: (None if n == "accelerate" else object() if n == "bitsandbytes"
                                           else real(n, *a)))
        quant.bnb_config("nf4")
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: object() if n in ("bitsandbytes", "accelerate") else real(n, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FromageError, match="CUDA GPU"):
        quant.bnb_config("int8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    nf4, int8 = quant.bnb_config("nf4"), quant.bnb_config("int8")
    assert nf4.load_in_4bit and nf4.bnb_4bit_quant_type == "nf4" and nf4.bnb_4bit_use_double_quant
    assert nf4.bnb_4bit_compute_dtype == torch.bfloat16 and int8.load_in_8bit and not int8.load_in_4bit


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_quantized_weight_estimate_matches_bitsandbytes(tiny_lm_path, tiny_vision_path, monkeypatch, kind):
    """Runs where bitsandbytes and accelerate are installed (its CPU backend will do)."""
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("accelerate")
    from fromage_mini.model import quant

    if not torch.cuda.is_available():  # let bnb_config through; the loading itself stays on the CPU
        real = quant.bnb_config

        def on_cpu(k):
            with monkeypatch.context() as mp:
                mp.setattr(torch.cuda, "is_available", lambda: True)
                return real(k)

        monkeypatch.setattr(quant, "bnb_config", on_cpu)
    path = tiny_lm_path("opt", d=64, ffn=256)
    m = Fromage(FromageConfig(lm=path, vision=tiny_vision_path("clip"), ret_dim=16, lm_dtype=kind))
    got = 0
    for p in m.lm.parameters():
        got += p.numel() * p.element_size()
        qs = getattr(p, "quant_state", None)  # nf4: absmax per block (+ its own fp32 absmax)
        if qs is not None:
            got += qs.absmax.numel() * qs.absmax.element_size()
            got += qs.state2.absmax.numel() * qs.state2.absmax.element_size() if qs.state2 is not None else 0
        scb = getattr(p, "SCB", None)  # int8: one fp32 scale per row
        got += scb.numel() * scb.element_size() if scb is not None else 0
    est = plan_memory(path, None, lm_dtype=kind, batch=1, mode="inference")["lm_weights"] * GIB
    assert est == pytest.approx(got, rel=1e-3)
    out = m(**m.tokenize(["a small red circle.", "two cats"]), features=torch.randn(2, m.vis_dim), concat=False)
    out.loss.backward()
    assert m.visual_prefix.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("lm,fast", [("opt", True), ("gpt2", False), ("llama", True)])
def test_gradient_checkpointing_changes_nothing_but_memory(make_model, lm, fast):
    from fromage_mini.model.quant import disable_gradient_checkpointing, enable_gradient_checkpointing

    m = make_model(lm, n_visual_tokens=2, ret_layers=(-1, 1), fast_ret_pass=fast, concat_prob=0.0).train()
    b = m.tokenize(["a small red circle at the top left.", "two cats sleep on a sofa.", "a dog", "the quick fox"])
    b["features"] = torch.randn(4, m.vis_dim, generator=torch.Generator().manual_seed(0))

    def step():
        m.zero_grad()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            out = m(**b, concat=False)
        out.loss.backward()
        return out.loss.item(), {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}, sum(saved)

    loss, grads, n_saved = step()
    assert enable_gradient_checkpointing(m) == m.dims.n_layers
    loss_ck, grads_ck, n_saved_ck = step()
    assert loss_ck == pytest.approx(loss, rel=1e-6)
    for n in grads:
        torch.testing.assert_close(grads_ck[n], grads[n], rtol=1e-5, atol=1e-7, msg=n)
    assert n_saved_ck < n_saved  # fewer activations kept for the backward
    with torch.no_grad():  # generation-style calls with a KV cache still work while enabled
        assert kv_cache(m.lm(input_ids=b["input_ids"][:, :3].clamp(max=m.dims.vocab_rows - 1), use_cache=True))
    disable_gradient_checkpointing(m)
    assert step()[2] == n_saved
