"""Inference on tiny backbones: prompt building, KV-cache decoding, [RET] handling, scoring, chat."""
import argparse
import io
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fromage_mini.chat import Dialogue, save_retrieved
from fromage_mini.infer import scoring
from fromage_mini.infer.generate import (
    IMAGE,
    TensorIndex,
    add_generation_args,
    build_inputs,
    caption,
    generate,
    next_token_logits,
    pick_token,
)

K = 2  # visual tokens in the test models


@pytest.fixture(scope="module")
def models(tiny_lm_path, tiny_vision_path):
    """Tiny models by (lm, layout), built once per module."""
    from fromage_mini import Fromage, FromageConfig

    cache = {}

    def get(lm="opt", layout="before_bos", **cfg):
        key = (lm, layout, tuple(sorted(cfg.items())))
        if key not in cache:
            torch.manual_seed(0)
            cache[key] = Fromage(FromageConfig(lm=tiny_lm_path(lm), vision=tiny_vision_path("clip"), ret_dim=16,
                                               n_visual_tokens=K, image_layout=layout, **cfg)).eval()
        return cache[key]

    return get


def feats(model, n, seed=0):
    return torch.randn(n, model.vis_dim, generator=torch.Generator().manual_seed(seed))


def words(model, text):
    return model.tokenizer(text, add_special_tokens=False).input_ids


@torch.no_grad()
def direct_vector(model, embeds):
    """Text vector at the last position of a hand-built (T, d) sequence."""
    _, out = model.lm_forward(embeds[None], torch.ones(1, len(embeds), dtype=torch.long))
    return model.vectors_at(out.hidden_states, torch.tensor([len(embeds) - 1]))[0]


def force(monkeypatch, model, plan):
    """Make the LM prefer ``plan[step]`` (a token id) at the given decoding steps (generation computes
    the next token's logits with one ``logits_at`` call per step)."""
    calls = {"n": 0}
    real = model.logits_at

    def patched(*a, **kw):
        logits = real(*a, **kw)
        step = calls["n"]
        calls["n"] += 1
        if step in plan:
            logits = logits.clone()
            logits[:, -1, plan[step]] += 1e4
        return logits

    monkeypatch.setattr(model, "logits_at", patched)


# ---------------------------------------------------------------------------------------------
# prompt building
@pytest.mark.parametrize("layout", ["before_bos", "after_bos"])
def test_prompt_mixes_pil_pixels_and_features(models, layout):
    m = models(layout=layout)
    f = feats(m, 1)[0]
    pil = Image.new("RGB", (40, 30), "red")
    px = m.preprocess([Image.new("RGB", (32, 32), "blue")])[0]
    inp = build_inputs(m, ["Q: hi", pil, f, "A:", px])
    bos = m.tokenizer.bos_token_id
    head = [bos] if layout == "after_bos" else []
    first = [] if layout == "after_bos" else [bos]
    want = head + first + words(m, "Q: hi") + [IMAGE] * K * 2 + words(m, "A:") + [IMAGE] * K
    assert inp.ids.tolist() == want
    with torch.no_grad():
        vis = m.visual_embeds(torch.stack([m.image_features(m.preprocess([pil]))[0], f,
                                           m.image_features(px[None])[0]]))  # (3, K, d)
    spans = [i for i, t in enumerate(want) if t == IMAGE]
    torch.testing.assert_close(inp.embeds[spans], vis.reshape(-1, vis.shape[-1]))


@pytest.mark.parametrize("layout", ["before_bos", "after_bos"])
@settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.one_of(st.just("IMG"), st.sampled_from(["a red", " circle", "Q: what?\nA:", "", "x y z"])),
                      min_size=1, max_size=6))
def test_prompt_building_any_mix(models, layout, items):
    """Exactly one BOS, where the layout puts it; k visual positions per image, in order; text ids as tokenized."""
    m = models(layout=layout)
    fs = feats(m, len(items), seed=len(items))
    prompt = [fs[i] if it == "IMG" else it for i, it in enumerate(items)]
    inp = build_inputs(m, prompt)
    bos = m.tokenizer.bos_token_id
    want, seen_text = ([bos] if layout == "after_bos" else []), False
    for it in items:
        if it == "IMG":
            want += [IMAGE] * K
        else:
            if layout == "before_bos" and not seen_text:
                want.append(bos)
            seen_text = True
            want += words(m, it)
    if layout == "before_bos" and not seen_text:
        want.append(bos)  # no text: BOS after the images, where generation starts
    assert inp.ids.tolist() == want
    assert inp.ids.tolist().count(bos) == 1
    assert inp.embeds.shape == (len(want), m.dims.d_embed)
    img_rows = [i for i, it in enumerate(items) if it == "IMG"]
    if img_rows:
        with torch.no_grad():
            vis = m.visual_embeds(fs[img_rows]).reshape(-1, m.dims.d_embed)
        torch.testing.assert_close(inp.embeds[inp.ids == IMAGE], vis)
    text_pos = inp.ids != IMAGE
    with torch.no_grad():
        torch.testing.assert_close(inp.embeds[text_pos], m.embed_tokens(inp.ids[text_pos][None])[0])


def test_per_text_bos_is_the_originals_vist_layout(models):
    m = models()
    f = feats(m, 1)[0]
    inp = build_inputs(m, ["one", f, "two"], bos="per_text")
    assert inp.ids.tolist().count(m.tokenizer.bos_token_id) == 2


# ---------------------------------------------------------------------------------------------
# decoding
@pytest.mark.parametrize("lm,layout", [("opt", "before_bos"), ("opt", "after_bos"), ("llama", "before_bos")])
def test_kv_cache_decoding_equals_full_rerun(models, lm, layout):
    m = models(lm, layout)
    f = feats(m, 2)
    prompt = [f[0], "a red circle", f[1], "the"]
    res = generate(m, prompt, max_new_tokens=12, stop=())
    inp = build_inputs(m, prompt)
    ids = []
    with torch.no_grad():
        for _ in range(12):  # re-run the whole sequence every step
            x = torch.cat([inp.embeds, m.embed_tokens(torch.tensor([ids], dtype=torch.long))[0]])
            logits, _ = m.lm_forward(x[None], torch.ones(1, len(x), dtype=torch.long))
            t = int(logits[0, -1].argmax())
            if t == m.tokenizer.eos_token_id:
                break
            ids.append(t)
    assert res.ids == ids and len(ids) > 0


def test_ret_vector_is_read_at_the_ret_input_position(models):
    """Images and several text segments before [RET]: the vector equals a direct forward's at [RET]."""
    m = models(ret_layers=(-1, 1))
    f = feats(m, 2)
    bos = m.tokenizer.bos_token_id
    with torch.no_grad():
        vis = m.visual_embeds(f)
        seg1 = m.embed_tokens(torch.tensor([[bos] + words(m, "a red circle")]))[0]
        seg2_ids = words(m, "then the [RET]")
        assert seg2_ids[-1] == m.ret_id
        seg2 = m.embed_tokens(torch.tensor([seg2_ids]))[0]
        full = torch.cat([vis[0], seg1, vis[1], seg2])
    want = direct_vector(m, full)
    prompt = [f[0], "a red circle", f[1], "then the [RET]"]
    got = generate(m, prompt, max_new_tokens=0).retrievals[0].vector
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(scoring.text_vectors(m, [prompt])[0], want)
    # the original's num_words=0 bug read a neighbouring position: a different vector
    assert not torch.allclose(direct_vector(m, full[:-1]), want)

    # a [RET] the model emits: its vector is the one a direct forward gives with [RET] as input
    res = generate(m, prompt[:-1] + ["then the"], max_new_tokens=3, min_tokens_before_ret=2,
                   ret_scale_factor=1e30, stop=())
    assert res.ids[2] == m.ret_id and len(res.retrievals) == 1
    with torch.no_grad():
        tail = m.embed_tokens(torch.tensor([words(m, "then the") + res.ids[:3]]))[0]
    torch.testing.assert_close(res.retrievals[0].vector, direct_vector(m, torch.cat([vis[0], seg1, vis[1], tail])))


def test_ret_scale_factor_raises_p_ret_even_for_negative_logit(models):
    logits = torch.tensor([1.0, 0.5, -2.0])  # [RET] is id 2, with a negative logit
    p = lambda z: z.softmax(-1)[2].item()
    up = next_token_logits(logits, 2, ret_scale_factor=2.0)
    assert p(up) > p(logits)
    odds = lambda z: (z.softmax(-1)[2] / z.softmax(-1)[0]).item()
    assert odds(up) == pytest.approx(2 * odds(logits))
    original = logits.clone()
    original[2] *= 2.0  # the original's rule
    assert p(original) < p(logits)
    assert next_token_logits(logits, 2, ret_scale_factor=0.0)[2] == float("-inf")

    # end to end: make the [RET] logit negative, then a factor > 1 makes it the greedy choice
    m = models()
    f = feats(m, 1)
    prompt = [f[0], "a red"]
    inp = build_inputs(m, prompt)
    row = m.ret_output if m.ret_output is not None else m.ret_embedding  # [RET]'s output row
    saved = row.detach().clone()
    try:
        with torch.no_grad():
            logits, out = m.lm_forward(inp.embeds[None], torch.ones(1, len(inp.ids), dtype=torch.long))
            h = out.last_hidden_state[0, -1].float()
            row.copy_(-3.0 * h / h.dot(h))  # h · row = -3: a clearly negative [RET] logit
            logits, _ = m.lm_forward(inp.embeds[None], torch.ones(1, len(inp.ids), dtype=torch.long))
        r = logits[0, -1, m.ret_id].item()
        others = torch.cat([logits[0, -1, : m.ret_id], logits[0, -1, m.ret_id + 1:]]).max().item()
        assert r < 0
        factor = math.exp(others - r + 1)
        assert generate(m, prompt, max_new_tokens=1, ret_scale_factor=factor).ids == [m.ret_id]
        assert r * factor < others  # the original's multiplication would never have chosen [RET]
    finally:
        with torch.no_grad():
            row.copy_(saved)


def test_original_ret_scale_rule_multiplies_the_raw_logit_before_the_temperature(models):
    logits = torch.tensor([1.0, 0.5, -2.0, 3.0])  # [RET] is id 2, negative logit
    out = next_token_logits(logits, 2, ret_scale_factor=1.5, temperature=0.5, ret_scale_rule="original")
    torch.testing.assert_close(out, torch.tensor([2.0, 1.0, -6.0, 6.0]))  # (-2 * 1.5) / 0.5 = -6
    # a positive [RET] logit: both rules raise it, by different amounts
    pos = torch.tensor([1.0, 0.5, 2.0])
    orig = next_token_logits(pos, 2, ret_scale_factor=1.3, ret_scale_rule="original")
    odds = next_token_logits(pos, 2, ret_scale_factor=1.3)
    assert orig[2].item() == pytest.approx(2.6) and odds[2].item() == pytest.approx(2.0 + math.log(1.3))
    assert next_token_logits(pos, 2, ret_scale_factor=0.0, ret_scale_rule="original")[2] == float("-inf")
    with pytest.raises(ValueError, match="ret_scale_rule"):
        next_token_logits(pos, 2, ret_scale_rule="multiply")

    # end to end through generate() and the command-line options
    m = models()
    f = feats(m, 1)
    base = generate(m, [f[0], "a red"], max_new_tokens=6, ret_scale_factor=1.0, stop=())
    again = generate(m, [f[0], "a red"], max_new_tokens=6, ret_scale_factor=1.0, stop=(), ret_scale_rule="original")
    assert base.ids == again.ids  # factor 1: the two rules agree
    p = argparse.ArgumentParser()
    add_generation_args(p)
    assert p.parse_args(["--ret-scale-rule", "original"]).ret_scale_rule == "original"
    with pytest.raises(SystemExit):  # argparse refuses an unknown rule in one line
        p.parse_args(["--ret-scale-rule", "multiply"])


def test_stops_at_eos_and_at_the_stop_string(models, monkeypatch):
    m = models()
    f = feats(m, 1)
    eos, nl = m.tokenizer.eos_token_id, words(m, "\n")[0]
    force(monkeypatch, m, {3: eos})
    res = generate(m, [f[0], "a"], max_new_tokens=10, stop=(), ret_scale_factor=0)
    assert res.stop_reason == "eos" and len(res.ids) == 3 and eos not in res.ids

    monkeypatch.undo()
    red = words(m, " red")[0]
    force(monkeypatch, m, {0: red, 2: nl})
    res = generate(m, [f[0], "a"], max_new_tokens=10, ret_scale_factor=0)
    assert res.stop_reason == "stop" and res.ids[0] == red and len(res.ids) == 3 and res.ids[-1] == nl
    assert "\n" not in res.text and res.text.startswith(m.tokenizer.decode([red]))

    monkeypatch.undo()
    force(monkeypatch, m, {0: nl, 1: red, 2: nl})  # a newline before any text does not stop (as in the original)
    res = generate(m, [f[0], "a"], max_new_tokens=10, ret_scale_factor=0)
    assert res.stop_reason == "stop" and len(res.ids) == 3 and res.text.startswith("\n"), res

    monkeypatch.undo()
    res = generate(m, [f[0], "a"], max_new_tokens=4, stop=(), ret_scale_factor=0)
    assert res.stop_reason in ("length", "eos") and len(res.ids) <= 4


def test_sampling_is_reproducible_with_a_seed(models):
    m = models()
    f = feats(m, 1)
    kw = {"max_new_tokens": 16, "temperature": 1.0, "top_p": 0.9, "stop": ()}
    a = generate(m, [f[0], "a"], seed=123, **kw).ids
    assert a == generate(m, [f[0], "a"], seed=123, **kw).ids
    assert a != generate(m, [f[0], "a"], seed=124, **kw).ids
    # a tiny nucleus leaves only the most likely token: sampling becomes greedy
    greedy = generate(m, [f[0], "a"], max_new_tokens=8, stop=()).ids
    assert generate(m, [f[0], "a"], max_new_tokens=8, temperature=0.7, top_p=1e-6, seed=0, stop=()).ids == greedy


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    g = torch.Generator().manual_seed(0)
    assert {pick_token(logits, 1.0, 0.8, g) for _ in range(300)} == {0, 1}
    assert {pick_token(logits, 1.0, 0.81, g) for _ in range(300)} == {0, 1, 2}


def test_min_tokens_before_ret(models):
    m = models()
    f = feats(m, 1)
    res = generate(m, [f[0], "a"], max_new_tokens=5, min_tokens_before_ret=3, ret_scale_factor=1e30, stop=())
    assert m.ret_id not in res.ids[:3] and res.ids[3] == m.ret_id


def test_retrieval_excludes_ids_and_never_repeats(models):
    m = models()
    f = feats(m, 1)
    idx = TensorIndex(torch.randn(10, 16, generator=torch.Generator().manual_seed(1)),
                      [{"caption": f"image {i}", "path": f"/nowhere/{i}.png"} for i in range(10)])
    prompt = [f[0], "a red circle [RET]"]
    q = torch.nn.functional.normalize(scoring.text_vectors(m, [prompt]), dim=-1)[0]
    order = (idx.vectors @ q).argsort(descending=True).tolist()
    res = generate(m, prompt, max_new_tokens=0, index=idx, images_per_ret=3, exclude=[order[0]])
    (part,) = res.retrievals
    assert part.ids == order[1:4]
    assert [d["caption"] for d in part.metadata] == [f"image {i}" for i in order[1:4]]
    torch.testing.assert_close(part.scores, (idx.vectors @ q)[order[1:4]])

    res = generate(m, prompt, max_new_tokens=2, index=idx, images_per_ret=3, max_retrievals=2,
                   ret_scale_factor=1e30, stop=())
    first, second, third = res.retrievals
    assert len(first.ids) == len(second.ids) == 3 and not set(first.ids) & set(second.ids)
    assert third.ids == [] and third.vector.shape == (16,)  # retrieval spent; the vector is still there
    assert "[RET] ->" in str(res) and res.text.count("[RET]") == 2  # the prompt's [RET] is not generated text


def test_works_with_the_project_retrieval_index(models, tmp_path):
    import fromage_mini.retrieval.index as index
    m = models()
    vecs = torch.randn(12, 16, generator=torch.Generator().manual_seed(2))
    meta = [{"caption": f"image {i}"} for i in range(12)]
    real = index.RetrievalIndex.build(tmp_path / "idx", vecs, meta, model_fingerprint="test")
    prompt = [feats(m, 1)[0], "a red circle [RET]"]
    kw = {"max_new_tokens": 0, "images_per_ret": 4, "exclude": [3]}
    a = generate(m, prompt, index=real, **kw).retrievals[0]
    b = generate(m, prompt, index=TensorIndex(vecs, meta), **kw).retrievals[0]
    assert a.ids == b.ids and a.metadata == b.metadata and 3 not in a.ids


@pytest.mark.parametrize("lm", ["opt", "gpt2", "llama"])
def test_shared_context_cache_gives_the_same_scores(models, lm):
    """Scoring 100-option style: the context's KV cache reused for every candidate = re-running it."""
    m = models(lm)
    ctx = build_inputs(m, [feats(m, 1)[0], "Q: what colour is it?\nA:"])
    cands = [words(m, c) for c in (" red", " a blue square", " no", " two small green circles", " yes")]
    for normalize in (False, True):
        shared = scoring.candidate_scores(m, ctx, cands, normalize=normalize, batch_size=2)
        rerun = scoring.candidate_scores(m, ctx, cands, normalize=normalize, batch_size=2, share_context=False)
        torch.testing.assert_close(shared, rerun, rtol=1e-4, atol=1e-4)


def test_log_likelihood_equals_a_hand_computation(models):
    m = models()
    f = feats(m, 1)
    bos = m.tokenizer.bos_token_id
    ctx_ids = [bos] + words(m, "Q: what colour?\nA:")
    cands = [" red", " a blue square"]
    got_sum = scoring.log_likelihood(m, [f[0], "Q: what colour?\nA:"], cands, normalize=False)
    got_mean = scoring.log_likelihood(m, [f[0], "Q: what colour?\nA:"], cands)
    ctx = build_inputs(m, [f[0], "Q: what colour?\nA:"])
    unshifted = scoring.candidate_scores(m, ctx, [words(m, c) for c in cands], shift=False)
    with torch.no_grad():
        vis = m.visual_embeds(f)[0]
        for i, c in enumerate(cands):
            c_ids = words(m, c)
            x = torch.cat([vis, m.embed_tokens(torch.tensor([ctx_ids + c_ids]))[0]])
            logits, _ = m.lm_forward(x[None], torch.ones(1, len(x), dtype=torch.long))
            lp = logits[0].log_softmax(-1)
            C = K + len(ctx_ids)
            terms = [lp[C - 1 + j, t].item() for j, t in enumerate(c_ids)]  # logit t predicts token t+1
            assert got_sum[i].item() == pytest.approx(sum(terms), abs=1e-4)
            assert got_mean[i].item() == pytest.approx(sum(terms) / len(terms), abs=1e-4)
            flat = [lp[C + j, t].item() for j, t in enumerate(c_ids)]  # the original's unshifted score
            assert unshifted[i].item() == pytest.approx(sum(flat), abs=1e-4)


def test_captions_batched_equal_one_by_one_and_greedy(models):
    m = models()
    f = feats(m, 3)
    caps = caption(m, f, max_new_tokens=8)
    assert caps == [caption(m, f[i: i + 1], max_new_tokens=8)[0] for i in range(3)]
    text = generate(m, [f[0]], max_new_tokens=8, ret_scale_factor=0, stop=()).text
    cut = text.find(".")
    text = text[: cut + 1] if cut != -1 else text
    assert caps[0] == text.split("\n")[0].strip() or caps[0] == text.strip()


def test_inference_is_functions_of_the_model_not_patched_in_methods():
    """Importing the package leaves the model class as model/fromage.py defines it (no methods added)."""
    import fromage_mini
    from fromage_mini.model.fromage import Fromage

    assert fromage_mini.generate is generate and fromage_mini.caption is caption
    assert "generate" not in vars(Fromage) and "caption" not in vars(Fromage)


# ---------------------------------------------------------------------------------------------
# chat
def test_dialogue_keeps_history_in_the_original_format(models):
    m = models()
    img = Image.new("RGB", (32, 32), "red")
    chat = Dialogue(m, max_new_tokens=6)
    a1 = chat.ask("what is it?", image=img)
    a2 = chat.ask("and the colour?")
    assert chat.history == [img, "Q: what is it?\nA:", a1.text + "\n", "Q: and the colour?\nA:", a2.text + "\n"]
    assert "\n" not in a1.text
    chat.reset()
    assert chat.history == []


def test_save_retrieved_copies_files(models, tmp_path):
    m = models()
    src = tmp_path / "img0.png"
    Image.new("RGB", (8, 8), "blue").save(src)
    idx = TensorIndex(torch.randn(2, 16), [{"path": str(src), "caption": "blue"}, {"url": "http://x/1.jpg"}])
    res = generate(m, [feats(m, 1)[0], "a [RET]"], max_new_tokens=0, index=idx, images_per_ret=2)
    lines = save_retrieved(res, tmp_path / "out", turn=1)
    assert len(lines) == 2
    copied = list((tmp_path / "out").glob("*.png"))
    assert len(copied) == 1 and str(copied[0]) in "\n".join(lines)


def test_chat_cli_reads_stdin_until_eof(models, tmp_path, monkeypatch, capsys):
    from fromage_mini import chat

    m = models()
    m.save_pretrained(tmp_path / "ckpt")
    img = tmp_path / "q.png"
    Image.new("RGB", (32, 32), "green").save(img)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"/image {img}\nwhat is it?\n\n/reset\nhello\n"))
    p = argparse.ArgumentParser()
    chat.register(p.add_subparsers(dest="command"))
    args = p.parse_args(["chat", "--model", str(tmp_path / "ckpt"), "--device", "cpu", "--image", str(img),
                         "--max-new-tokens", "4", "--out-dir", str(tmp_path / "out")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.count("A:") == 2 and "(image attached" in out and "(conversation reset)" in out


def test_inference_turns_dropout_off_and_restores_the_mode(models):
    m = models(image_dropout=0.5, text_dropout=0.5)
    f = feats(m, 2)
    m.train()
    try:
        a = generate(m, [f[0], "a"], max_new_tokens=6, stop=()).ids
        assert m.training and m.visual_prefix.training
        assert a == generate(m, [f[0], "a"], max_new_tokens=6, stop=()).ids
        torch.testing.assert_close(scoring.text_vectors(m, [[f[1], "b"]] * 2)[0],
                                   scoring.text_vectors(m, [[f[1], "b"]])[0])
    finally:
        m.eval()


def test_chat_command_exposes_generate_options_with_generates_defaults():
    import argparse
    import inspect

    from fromage_mini import chat
    from fromage_mini.infer.generate import GENERATION_OPTIONS, generation_kwargs

    sub = argparse.ArgumentParser().add_subparsers()
    chat.register(sub)
    parser = sub.choices["chat"]
    params = inspect.signature(generate).parameters
    assert generation_kwargs(parser.parse_args(["--model", "m"])) == {n: params[n].default for n in GENERATION_OPTIONS}
    got = generation_kwargs(parser.parse_args(["--model", "m", "--top-p", "0.5", "--max-new-tokens", "7"]))
    assert got["top_p"] == 0.5 and got["max_new_tokens"] == 7
