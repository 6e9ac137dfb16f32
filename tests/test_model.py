"""The FROMAGe model on tiny backbones: building, freezing, the losses, learning, label rules."""
import math

import pytest
import torch
import torch.nn.functional as F

from fromage_mini.metrics import recall_at_k
from fromage_mini.model.fromage import expected_adapter_count
from fromage_mini.model.losses import IGNORE

CAPTIONS = ["a small red circle at the top left.", "two cats sleep on a sofa in the sun.",
            "a photo of a dog running on the beach.", "the quick brown fox."]


def batch(model, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = model.tokenize(CAPTIONS[:n])
    b["features"] = torch.randn(n, model.vis_dim, generator=g)
    return b


@pytest.mark.parametrize("lm", ["opt", "opt-proj", "gpt2", "llama"])
@pytest.mark.parametrize("vision", ["clip", "clip-full", "siglip"])
def test_builds_and_backpropagates_with_any_backbone(make_model, lm, vision):
    from PIL import Image

    m = make_model(lm, vision, n_visual_tokens=2)
    px = m.preprocess([Image.new("RGB", (40, 50), "red"), Image.new("RGBA", (64, 64), "blue")])
    b = m.tokenize(CAPTIONS[:2])
    m.train()
    out = m(**b, pixel_values=px, concat=True)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert out.text_vectors.shape == out.image_vectors.shape == (2, 16)


@pytest.mark.parametrize("lm", ["opt", "opt-proj", "gpt2", "llama"])
def test_output_head_reads_last_hidden_state(make_model, lm):
    """The [RET] logit is h_last · ret_row; that is only right if the head reads hidden_states[-1]."""
    m = make_model(lm)
    b = batch(m)
    with torch.no_grad():
        out = m.lm(input_ids=b["input_ids"].clamp(max=m.dims.vocab_rows - 1), output_hidden_states=True)
        again = m.lm.get_output_embeddings()(out.hidden_states[-1])
    torch.testing.assert_close(again, out.logits)


@pytest.mark.parametrize("lm,tied", [("opt", True), ("gpt2", True), ("llama", False)])
def test_trainable_parameters_are_exactly_the_adapters(make_model, lm, tied):
    m = make_model(lm, n_visual_tokens=3, ret_layers=(-1, 1))
    d = m.dims
    assert d.tied is tied
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert all(not n.startswith(("lm.", "vision.")) for n in trainable)
    want = expected_adapter_count(d.d_embed, d.d_out, [d.d_out, d.d_hidden], m.vis_dim, 3, 16, tied)
    assert m.num_trainable() == want
    assert ("ret_output" in trainable) is (not tied)


def test_backbones_bit_identical_after_training_and_stay_in_eval(make_model):
    m = make_model("llama", image_dropout=0.1)
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    m.train()
    assert not m.lm.training and not m.vision.training and m.image_dropout.training
    b = batch(m)
    for _ in range(4):
        opt.zero_grad()
        m(**b).loss.backward()
        opt.step()
    for n, p in m.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
        else:
            assert not torch.equal(p, adapters[n]), f"{n} did not change"


# ------------------------------------------------------------------------------------------------
# the losses against references computed here by hand


def hand_logits(m, embeds):
    """Frozen-LM logits with the [RET] column appended/replaced, computed independently."""
    out = m.lm(inputs_embeds=embeds, output_hidden_states=True)
    h = out.hidden_states[-1]
    W = m.lm.get_output_embeddings().weight  # (V, d)
    ret_row = m.ret_embedding if m.ret_output is None else m.ret_output
    full = torch.full((*h.shape[:2], max(W.shape[0], m.ret_id + 1)), float("-inf"))
    full[..., : W.shape[0]] = h @ W.T
    full[..., m.ret_id] = h @ ret_row
    return full, out.hidden_states


def hand_ce(logits, targets_at):
    """Mean over (position t, target y) pairs of -log softmax(logits[t])[y]."""
    terms = [-torch.log_softmax(logits[t], -1)[y] for t, y in targets_at]
    return torch.stack(terms).mean()


@pytest.mark.parametrize("lm", ["opt", "llama"])
@pytest.mark.parametrize("layout", ["before_bos", "after_bos"])
def test_losses_match_hand_computation(make_model, lm, layout):
    k = 2
    m = make_model(lm, n_visual_tokens=k, image_layout=layout).eval()
    tok = m.tokenizer
    E = m.lm.get_input_embeddings().weight
    caps = ["a red circle.", "two cats sleep on a sofa in the sun."]
    words = [tok(c, add_special_tokens=False).input_ids for c in caps]
    bos = tok.bos_token_id
    f = torch.randn(2, m.vis_dim)
    b = m.tokenize(caps)
    with torch.no_grad():
        out = m(**b, features=f, concat=False)
        cap_terms, ret_terms, t_vecs = [], [], []
        for i, w in enumerate(words):
            prefix = (m.visual_prefix.weight @ f[i] + m.visual_prefix.bias).view(k, -1)
            text = torch.stack([E[bos]] + [E[j] for j in w])  # </s> caption (no [RET] needed)
            if layout == "before_bos":
                seq = torch.cat([prefix, text])
                targets = [bos] + w  # the BOS after the image is a target
                first = k - 1  # the last prefix position predicts BOS
            else:
                seq = torch.cat([text[:1], prefix, text[1:]])
                targets = w
                first = k  # the last prefix position predicts the first word
            logits, _ = hand_logits(m, seq[None])
            cap_terms += [(logits[0], first + j, y) for j, y in enumerate(targets)]
            # retrieval mode: </s> w [RET]; [RET] is a target, its input state gives t
            rseq = torch.cat([text, m.ret_embedding[None]])
            rlogits, hs = hand_logits(m, rseq[None])
            ret_terms += [(rlogits[0], j, y) for j, y in enumerate(w + [m.ret_id])]
            t_vecs.append(m.text_heads[0][0](hs[-1][0, len(w) + 1]))
        ce = lambda terms: torch.stack([-torch.log_softmax(lg[t], -1)[y] for lg, t, y in terms]).mean()  # noqa: E731
        torch.testing.assert_close(out.cap_loss, ce(cap_terms), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.ret_lm_loss, ce(ret_terms), rtol=1e-5, atol=1e-6)
        # InfoNCE both directions, by hand
        t = torch.stack(t_vecs)
        torch.testing.assert_close(out.text_vectors, t, rtol=1e-4, atol=1e-5)
        v = m.image_head.weight @ f.T + m.image_head.bias[:, None]  # (q, B)
        v = v.T
        s = math.exp(m.config.init_logit_scale)
        sim = torch.tensor([[s * float(F.cosine_similarity(t[i], v[j], dim=0)) for j in range(2)] for i in range(2)])
        t2i = -torch.stack([torch.log_softmax(sim[i], 0)[i] for i in range(2)]).mean()
        i2t = -torch.stack([torch.log_softmax(sim[:, j], 0)[j] for j in range(2)]).mean()
        torch.testing.assert_close(out.t2i_loss, t2i, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.i2t_loss, i2t, rtol=1e-4, atol=1e-5)
        want = out.cap_loss + out.ret_lm_loss + (out.t2i_loss + out.i2t_loss) / 2
        torch.testing.assert_close(out.loss, want)


def test_label_rules(make_model):
    m = make_model("opt", n_visual_tokens=2)
    b = m.tokenize(["a red circle.", "two cats sleep on a sofa in the sun."])
    ids, mask = b["input_ids"], b["attention_mask"]
    tok = m.embed_tokens(ids)
    prefix = m.visual_embeds(torch.randn(2, m.vis_dim))
    _, cmask, labels = m.caption_inputs(prefix, tok, ids, mask)
    bos = m.tokenizer.bos_token_id
    for i in range(2):
        n = int(mask[i].sum())  # </s> words [RET]
        assert (labels[i, :2] == IGNORE).all()  # visual prefix masked
        assert labels[i, 2] == bos  # BOS after the image is a target
        assert labels[i, 2 + n - 1] == IGNORE and ids[i, n - 1] == m.ret_id  # [RET] masked
        assert (labels[i, 2 + n:] == IGNORE).all()  # padding masked
        assert (labels[i, 3: 2 + n - 1] == ids[i, 1: n - 1]).all()  # words are targets
    from fromage_mini.model.losses import retrieval_labels

    r = retrieval_labels(ids, mask)
    assert (r[mask == 1] == ids[mask == 1]).all() and (r[mask == 0] == IGNORE).all()
    assert (r == m.ret_id).sum() == 2  # [RET] is a target in retrieval mode


def test_truncation_keeps_ret_last(make_model):
    m = make_model("opt", max_len=6)
    b = m.tokenize(["a very long caption about many many things in the sun"])
    assert b["input_ids"].shape[1] == 6 and b["input_ids"][0, -1] == m.ret_id


def test_concatenated_captions_have_one_bos(make_model):
    m = make_model("opt", n_visual_tokens=1)
    b = m.tokenize(CAPTIONS)
    ids, mask = b["input_ids"], b["attention_mask"]
    x, cmask, labels = m.caption_inputs(m.visual_embeds(torch.randn(4, m.vis_dim)), m.embed_tokens(ids), ids, mask)
    cx, cm, cl = m.concat_pairs(x, cmask, labels)
    assert cx.shape[0] == 2
    bos = m.tokenizer.bos_token_id
    n = mask.sum(1)  # includes BOS and [RET]
    for r in range(2):
        a, bb = 2 * r, 2 * r + 1
        assert int(cm[r].sum()) == (1 + n[a] - 1) + (1 + n[bb] - 2)  # img+</s>+words, img+words
        assert int((cl[r] == bos).sum()) == 1  # no doubled BOS
        assert int((cl[r] == m.ret_id).sum()) == 0
        words_a = ids[a, 1: n[a] - 1]
        words_b = ids[bb, 1: n[bb] - 1]
        kept = cl[r][cl[r] != IGNORE]
        assert torch.equal(kept, torch.cat([ids[a, :1], words_a, words_b]))


def test_training_drives_losses_down_and_model_emits_ret(make_model):
    torch.manual_seed(0)
    m = make_model("opt", n_visual_tokens=1, concat_prob=0.0)
    b = batch(m)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-2)
    m.train()
    first = m(**b)
    for _ in range(40):
        opt.zero_grad()
        m(**b).loss.backward()
        opt.step()
    last = m(**b)
    for name in ("cap_loss", "ret_lm_loss", "t2i_loss", "i2t_loss"):
        assert getattr(last, name) < getattr(first, name), name
    assert recall_at_k(last.logits_per_text, (1,))["R@1"] == 1.0
    # after a caption (retrieval mode, no image) the most likely next token is now [RET]
    m.eval()
    ids = m.tokenize(CAPTIONS[:2], add_ret=False)
    with torch.no_grad():
        logits, _ = m.lm_forward(m.embed_tokens(ids["input_ids"]), ids["attention_mask"])
    last_pos = ids["attention_mask"].sum(1) - 1
    assert (logits[torch.arange(2), last_pos].argmax(-1) == m.ret_id).all()


def test_ret_init_from_text(make_model):
    m = make_model("llama", ret_init_text=" circle")
    ids = m.tokenizer(" circle", add_special_tokens=False).input_ids
    torch.testing.assert_close(m.ret_embedding.detach(), m.lm.get_input_embeddings().weight[ids].mean(0))
    torch.testing.assert_close(m.ret_output.detach(), m.lm.get_output_embeddings().weight[ids].mean(0))


def test_meta_device_count_for_opt_6_7b_and_vit_l14():
    """The paper model's trained numbers, from configs alone (no weights)."""
    from transformers import AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel, OPTConfig

    from fromage_mini import Fromage, FromageConfig

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(OPTConfig(
            hidden_size=4096, num_hidden_layers=32, ffn_dim=16384, num_attention_heads=32,
            word_embed_proj_dim=4096, vocab_size=50272))
        vis = CLIPVisionModel(CLIPVisionConfig(hidden_size=1024, num_hidden_layers=24, intermediate_size=4096,
                                               num_attention_heads=16, patch_size=14, image_size=224))
        m = Fromage(FromageConfig(n_visual_tokens=1, ret_dim=256), lm=lm, vision=vis)
    assert m.num_trainable() == 5_513_729  # = the original's effectively-trained count


@pytest.mark.parametrize("lm", ["opt", "gpt2", "llama"])
def test_fast_retrieval_pass_equals_plain_pass(make_model, lm):
    """Losses and every adapter gradient agree between the cheap and the plain retrieval pass."""
    m = make_model(lm, n_visual_tokens=2, ret_layers=(-1, 1), concat_prob=0.0)
    b = batch(m)
    grads = {}
    for fast in (True, False):
        m.config.fast_ret_pass = fast
        m.zero_grad()
        out = m(**b)
        out.loss.backward()
        grads[fast] = (out, {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad})
    (fo, fg), (po, pg) = grads[True], grads[False]
    torch.testing.assert_close(fo.ret_lm_loss, po.ret_lm_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fo.text_vectors, po.text_vectors, rtol=1e-4, atol=1e-5)
    for n in pg:
        torch.testing.assert_close(fg[n], pg[n], rtol=1e-4, atol=1e-5, msg=n)


def test_one_text_encoder_for_training_and_inference(make_model):
    """encode_text (validation, centring), scoring's prompt vectors and forward's t agree; encode_text
    computes no logits."""
    from fromage_mini.infer import scoring

    m = make_model("opt", n_visual_tokens=2, concat_prob=0.0)
    m.eval()
    b = batch(m, n=2)
    with torch.no_grad():
        t_fwd = m(**b).text_vectors
        calls = []
        real = m.logits_at
        m.logits_at = lambda h: calls.append(h.shape) or real(h)
        t_enc = m.encode_text(b["input_ids"], b["attention_mask"])
        del m.logits_at
    assert calls == []  # no output head at all
    torch.testing.assert_close(t_enc, t_fwd, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scoring.text_vectors(m, CAPTIONS[:2]), t_enc, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.encode_images(b["features"]), m(**b).image_vectors)


@pytest.mark.parametrize("fast", [True, False])
def test_forward_reads_nothing_back_to_the_host(make_model, monkeypatch, fast):
    """No .item() in a training step (metrics are the trainer's job, on the steps it logs)."""
    m = make_model("opt", n_visual_tokens=2, concat_prob=0.0, fast_ret_pass=fast)
    m.train()
    b = batch(m, n=2)

    def no_item(self):
        raise AssertionError("forward called .item()")

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    out = m(**b, concat=False)
    out.loss.backward()
    assert out.logits_per_text.shape == (2, 2)
