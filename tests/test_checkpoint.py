"""Checkpoints: our safetensors format, the released FROMAGe format, and clear mismatch errors."""
import json

import pytest
import torch

from fromage_mini import Fromage, FromageError
from fromage_mini.model.checkpoint import RELEASED_KEYS, write_released_format


def perturb(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def outputs(m):
    g = torch.Generator().manual_seed(0)
    b = m.tokenize(["a red circle.", "two cats sleep."])
    m.eval()
    with torch.no_grad():
        return m(**b, features=torch.randn(2, m.vis_dim, generator=g), concat=False)


@pytest.mark.parametrize("lm", ["opt", "llama"])
def test_save_load_gives_identical_outputs(make_model, tmp_path, lm):
    m = make_model(lm, n_visual_tokens=2)
    perturb(m)
    m.save_pretrained(tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["adapters.safetensors", "fromage_config.json"]
    # only adapters are stored: the file is tiny compared with the LM
    assert (tmp_path / "ckpt/adapters.safetensors").stat().st_size < 4 * (m.num_trainable() + 1000)
    m2 = Fromage.from_pretrained(tmp_path / "ckpt")
    a, b = outputs(m), outputs(m2)
    assert torch.equal(a.loss, b.loss)
    assert torch.equal(a.text_vectors, b.text_vectors)
    for n, p in m.adapter_state_dict().items():
        assert torch.equal(p, m2.adapter_state_dict()[n])


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("ret_shape", ["row", "flat"])
def test_import_released_format(make_model, tmp_path, k, ret_shape):
    """A synthetic file with the official key names and shapes (both [RET] shapes) restores the values."""
    src = make_model("opt", n_visual_tokens=k)
    perturb(src, seed=3)
    sd = src.adapter_state_dict()
    theirs = {t: sd[o].to(torch.bfloat16).clone() for t, o in RELEASED_KEYS.items()}
    ret = theirs["ret_input_embeddings.weight"]
    theirs["ret_input_embeddings.weight"] = ret.reshape(1, -1) if ret_shape == "row" else ret.reshape(-1)
    torch.save({"state_dict": theirs, "epoch": 3}, tmp_path / "pretrained_ckpt.pth.tar")
    (tmp_path / "model_args.json").write_text(json.dumps({
        "opt_version": src.config.lm, "visual_encoder": src.config.vision, "n_visual_tokens": k,
        "shared_emb_dim": 16, "text_emb_layers": [-1], "retrieval_token_idx": 50266, "task": "multitask",
        "image_embed_dropout_prob": 0.0, "text_embed_dropout_prob": 0.0}))
    m = Fromage.from_released(tmp_path / "pretrained_ckpt.pth.tar")
    assert m.config.n_visual_tokens == k and m.config.ret_dim == 16
    for ours in RELEASED_KEYS.values():
        want = sd[ours].to(torch.bfloat16).float().reshape(m.adapter_state_dict()[ours].shape)
        assert torch.equal(m.adapter_state_dict()[ours], want), ours


def test_write_released_format_round_trip(make_model, tmp_path):
    src = make_model("opt")
    perturb(src)
    write_released_format(src, tmp_path / "pretrained_ckpt.pth.tar")
    m = Fromage.from_released(tmp_path / "pretrained_ckpt.pth.tar")
    for n, p in src.adapter_state_dict().items():
        torch.testing.assert_close(m.adapter_state_dict()[n], p.to(torch.bfloat16).float())


def test_mismatched_checkpoint_names_both_sizes(make_model, tiny_lm_path, tmp_path):
    m = make_model("opt")
    m.save_pretrained(tmp_path / "ckpt")
    wider = tiny_lm_path("opt", d=48)
    with pytest.raises(FromageError) as e:
        Fromage.from_pretrained(tmp_path / "ckpt", lm=wider)
    msg = str(e.value)
    assert "visual_prefix.weight" in msg and "(32, 32)" in msg and "(48, 32)" in msg and "d_lm=48" in msg


def test_released_import_rejects_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"state_dict": {"x": Evil()}}, tmp_path / "bad.pth.tar")
    (tmp_path / "model_args.json").write_text("{}")
    from fromage_mini.model.checkpoint import read_released_state

    with pytest.raises(FromageError, match="refusing to unpickle"):
        read_released_state(tmp_path / "bad.pth.tar")


def test_corrupted_safetensors_gives_clear_error(make_model, tmp_path):
    m = make_model("opt")
    m.save_pretrained(tmp_path / "ckpt")
    f = tmp_path / "ckpt/adapters.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(FromageError, match="adapters.safetensors: not a readable safetensors"):
        Fromage.from_pretrained(tmp_path / "ckpt")


def test_config_naming_missing_model(tmp_path):
    from fromage_mini import FromageConfig

    with pytest.raises(FromageError, match="could not load the language model"):
        Fromage(FromageConfig(lm=str(tmp_path / "no-such-model"), vision=str(tmp_path / "nope")))
