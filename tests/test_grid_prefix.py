"""The grid visual prefix: patch tokens pooled to g x g cells, one LM token each, beside FROMAGe's pooled one."""
import pytest
import torch
from PIL import Image

from fromage_mini.errors import FromageError
from fromage_mini.model import backbones

CAPTIONS = ["a small red circle at the top left.", "two cats sleep on a sofa in the sun."]


def pixels(m, n=2):
    return m.preprocess([Image.new("RGB", (40, 40), c) for c in ("red", "blue", "green")[:n]])


@pytest.mark.parametrize("vision", ["clip", "clip-full", "siglip"])
def test_grid_features_pool_the_patch_square_and_leave_out_cls(make_model, vision):
    m = make_model("opt", vision, visual_prefix="grid", grid_size=2)
    px = pixels(m)
    f = m.image_features(px)  # (B, 1 + 4, D)
    assert f.shape == (2, 5, m.vis_dim)
    torch.testing.assert_close(f[:, 0], backbones.pooled_features(m.vision, px))  # row 0 is the pooled f
    out = m.vision(pixel_values=px)
    h = out.last_hidden_state
    patches = h[:, 1:] if vision != "siglip" else h  # CLIP puts CLS first; SigLIP has none
    P = int(patches.shape[1] ** 0.5)
    grid = patches.view(2, P, P, -1)
    top_left = grid[:, : P // 2, : P // 2].mean((1, 2))
    torch.testing.assert_close(f[:, 1], top_left, rtol=1e-5, atol=1e-5)


def test_a_grid_finer_than_the_patches_is_refused(make_model):
    m = make_model("opt", "clip", visual_prefix="grid", grid_size=9)
    with pytest.raises(FromageError, match="finer than the tower's 4x4 patches"):
        m.image_features(pixels(m))


@pytest.mark.parametrize("projector", ["linear", "mlp"])
def test_grid_model_trains_one_token_per_cell(make_model, projector):
    m = make_model("opt", "clip", visual_prefix="grid", grid_size=2, projector=projector, concat_prob=0.0)
    assert m.config.n_visual_tokens == 4
    feats = m.image_features(pixels(m))
    assert m.visual_embeds(feats).shape == (2, 4, m.dims.d_embed)
    b = m.tokenize(CAPTIONS)
    m.train()
    out = m(**b, features=feats)
    out.loss.backward()
    for name in ("visual_prefix", "cell_embedding"):
        grads = [p.grad for n, p in m.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), name
    # the retrieval head reads only the pooled row
    torch.testing.assert_close(m.encode_images(feats), m.image_head(feats[:, 0]))


def test_grid_model_generates_scores_and_round_trips(make_model, tmp_path):
    from fromage_mini import Fromage
    from fromage_mini.infer import scoring
    from fromage_mini.infer.generate import caption, to_features

    m = make_model("opt", "clip", visual_prefix="grid", grid_size=2, concat_prob=0.0).eval()
    img = Image.new("RGB", (40, 40), "red")
    px = pixels(m, 1)[0]
    f = to_features(m, [img, px])
    assert f.shape == (2, 5, m.vis_dim)
    torch.testing.assert_close(to_features(m, f), f)  # a batch of features passes through
    torch.testing.assert_close(to_features(m, f[0]), f[:1])  # so does one
    caps = caption(m, f)
    assert len(caps) == 2 and caps[0] == caption(m, [img])[0]
    v = scoring.image_vectors(m, [img])
    t = scoring.text_vectors(m, [[img, "a red circle"]])
    assert v.shape == t.shape == (1, m.config.ret_dim)
    m.save_pretrained(tmp_path / "grid")
    again = Fromage.from_pretrained(tmp_path / "grid").eval()
    assert again.config.visual_prefix == "grid" and again.cell_embedding is not None
    torch.testing.assert_close(again.visual_embeds(f), m.visual_embeds(f))


def test_pooled_and_grid_caches_never_mix(make_model, tmp_path):
    from fromage_mini.data.cache import build_cache, feature_fingerprint
    from fromage_mini.data.readers import Sample

    pooled = make_model("opt", "clip")
    grid = make_model("opt", "clip", visual_prefix="grid", grid_size=2)
    assert feature_fingerprint(pooled) != feature_fingerprint(grid)
    samples = [Sample(str(i), f"caption {i}", Image.new("RGB", (40, 40), (i * 40, 0, 0))) for i in range(3)]
    build_cache(tmp_path / "p", samples, pooled, progress=False)
    with pytest.raises(FromageError, match="another vision model"):
        build_cache(tmp_path / "p", samples, grid, progress=False)
    c = build_cache(tmp_path / "g", samples, grid, progress=False)
    assert c.shape == (5, grid.vis_dim) and c.features([0, 2]).shape == (2, 5, grid.vis_dim)
    torch.testing.assert_close(c.features([1])[0].half().float(), grid.image_features(
        grid.preprocess([samples[1].image]))[0].half().float())


def test_plan_memory_counts_the_grid_tokens_and_cache():
    from fromage_mini.tools.memory import feature_cache_gib, patch_grid_gib, plan_memory

    pooled = plan_memory("6.7b", "vit-l/14", batch=32, mode="inference")
    g3 = plan_memory("6.7b", "vit-l/14", batch=32, mode="inference", grid=3)
    assert g3["activations"] > pooled["activations"] and g3["logits"] > pooled["logits"]
    assert feature_cache_gib("vit-l/14", 3) == pytest.approx(10 * feature_cache_gib("vit-l/14"))
    assert patch_grid_gib("vit-l/14", 1) * 2 ** 30 == 256 * 1024 * 2  # 16x16 patches of 1024 fp16: 512 KiB



NAMES = ("top left", "top right", "bottom left", "bottom right")


def test_named_cells_put_each_cell_token_after_its_name(make_model):
    """cell_names: " top left:" <cell 1> " top right:" <cell 2> ...; the names are the LM's own frozen
    word embeddings, the cell tokens the projector's output, and the prefix grows by the names."""
    m = make_model("opt", "clip", visual_prefix="grid", grid_size=2, concat_prob=0.0, cell_names=NAMES).eval()
    plain = make_model("opt", "clip", visual_prefix="grid", grid_size=2, concat_prob=0.0).eval()
    feats = m.image_features(pixels(m))
    name_ids = [m.tokenizer(f" {n}:", add_special_tokens=False).input_ids for n in NAMES]
    assert m.n_prefix == 4 + sum(len(i) for i in name_ids) and plain.n_prefix == 4
    x = m.visual_embeds(feats)  # (B, n_prefix, d)
    assert x.shape == (2, m.n_prefix, m.dims.d_embed)
    cells = plain.visual_embeds(feats)  # same seed, same adapters: the bare cell tokens
    emb = m.lm.get_input_embeddings().weight
    at = 0
    for i, ids in enumerate(name_ids):
        torch.testing.assert_close(x[:, at:at + len(ids)], emb[ids].expand(2, -1, -1))
        at += len(ids)
        torch.testing.assert_close(x[:, at], cells[:, i])
        at += 1
    # a generated prompt with an image takes n_prefix positions for it, and training runs
    from fromage_mini.infer.generate import build_inputs
    prompt = [Image.new("RGB", (40, 40)), "a"]
    assert len(build_inputs(m, prompt).ids) == len(build_inputs(plain, prompt).ids) + m.n_prefix - 4
    m.train()
    m(**m.tokenize(CAPTIONS), features=feats).loss.backward()
    assert m.cell_embedding.grad.abs().sum() > 0


@pytest.mark.parametrize("bad, match", [
    (dict(cell_names=("a", "b", "c")), "3 names need"),
    (dict(cell_names="top"), "tuple of non-empty texts"),
    (dict(cell_names=("a", "", "c", "d")), "tuple of non-empty texts"),
    (dict(cell_names=("a", "b", "c", "d"), visual_prefix="pooled"), "need visual_prefix='grid'"),
])
def test_cell_names_must_name_every_cell_of_a_grid(bad, match):
    from fromage_mini.config import ConfigError, FromageConfig
    kw = dict(visual_prefix="grid", grid_size=2) | bad
    with pytest.raises(ConfigError, match=match):
        FromageConfig(**kw)


def test_concat_cells_keep_each_cells_patch_tokens_side_by_side(make_model):
    m = make_model("opt", "clip", visual_prefix="grid", grid_size=2, cell_pool="concat", concat_prob=0.0)
    px = pixels(m)
    f = m.image_features(px)  # (B, 1 + 4 cells x 4 patches, D)
    assert f.shape == (2, 1 + 16, m.vis_dim)
    from fromage_mini.infer.prompt import feature_shape
    assert feature_shape(m) == (17, m.vis_dim)
    # each cell's four patch tokens, cell after cell, average to the mean-pooled grid
    mean = backbones.grid_features(m.vision, px, 2)
    torch.testing.assert_close(f[:, 1:].reshape(2, 4, 4, -1).mean(2), mean[:, 1:], rtol=1e-5, atol=1e-5)
    # the bottom-right cell holds exactly the bottom-right 2x2 patches, row-major
    h = m.vision(pixel_values=px).last_hidden_state[:, 1:].reshape(2, 4, 4, -1)
    torch.testing.assert_close(f[:, 13:17], h[:, 2:, 2:].reshape(2, 4, -1))
    # the projector sees inside a cell: swapping two patches of one cell changes that cell's token only
    m.eval()
    swapped = f.clone()
    swapped[:, [1, 2]] = f[:, [2, 1]]
    a, b = m.visual_embeds(f), m.visual_embeds(swapped)
    assert not torch.allclose(a[:, 0], b[:, 0])
    torch.testing.assert_close(a[:, 1:], b[:, 1:])
    assert m.visual_prefix.weight.shape == (m.dims.d_embed, 4 * m.vis_dim)  # one Linear(4·D -> d) per cell


def test_concat_cells_need_a_grid_that_divides_the_patches(make_model):
    m = make_model("opt", "clip", visual_prefix="grid", grid_size=3, cell_pool="concat")
    with pytest.raises(FromageError, match="dividing the tower's 4x4 patches"):
        m.image_features(pixels(m))
