"""Pretrain the toy vision tower: a small HF ``CLIPModel`` trained contrastively on ShapesWorld pairs.

Recipe (from the ShapesWorld prototype): ViT with 48-px input, patch 8 (36 patches + CLS), hidden 128,
4 layers, 4 heads; text tower 128 × 2 layers; projection 128. AdamW (0.9, 0.98), wd 0.1, lr 1e-3, 100
warm-up steps then cosine, batch 256, grad clip 1.0, learnable logit scale (clamped at 100), symmetric
InfoNCE, no augmentation (flips would break positional captions).

Binding-sensitive hard negatives (``hard_negatives=True``, the shipped recipe): every scene comes with a
*twin* that differs in one thing — two objects swap colours or shapes, or one object changes colour,
shape, size or cell — and a batch holds scenes together with their twins. With random in-batch
negatives a tower can tell images apart from a bag of attributes ("something red, something square");
with the twin in the batch it must encode which object has which attribute, which is what FROMAGe's
captioning needs from the pooled feature (NegCLIP-style, with rendered image negatives as well as text).

Only the vision half is shipped (``CLIPVisionModel.save_pretrained`` + a ``CLIPImageProcessor`` config);
FROMAGe uses its ``pooler_output`` (post-LN CLS, 128-d). The text half only exists to train it.

HF pitfall: with OPT-style ids the text config has ``eos_token_id=2``, which makes ``CLIPTextTransformer``
use its legacy "argmax of input_ids" pooling (it would pick the highest token id, not the EOS). We pool
by hand: the final-LN state at the last real token (``</s>``), then ``text_projection``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

try:  # transformers 5: the PIL backend by name (no torchvision warning); it saves as "CLIPImageProcessor"
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:
    from transformers import CLIPImageProcessor

from ..metrics import recall_at_k
from .captions import canonical_caption
from .tokenizer import EOS_ID, PAD_ID
from .world import CELLS, COLOURS, SHAPES, SIZES, jpeg_roundtrip, make_scene, render, variant

TOWER_SIZE = 48


def to_tower_pixels(images: list[Image.Image], size: int = TOWER_SIZE) -> np.ndarray:
    """uint8 (N, size, size, 3): PIL bicubic resize, exactly what ``CLIPImageProcessor`` (PIL backend) does
    for these square images (shortest edge = size, centre crop = no-op)."""
    return np.stack([np.asarray(im.resize((size, size), Image.BICUBIC)) for im in images])


def normalise(u8: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 NHWC → float NCHW, rescaled to [0, 1] then standardised per channel."""
    x = torch.from_numpy(u8).float().div_(255.0).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def make_clip(vocab_size: int, image_size=TOWER_SIZE, patch=8, hidden=128, layers=4, heads=4, mlp=512,
              text_hidden=128, text_layers=2, projection=128) -> CLIPModel:
    """A freshly initialised small CLIP; text ids follow the toy tokenizer (pad 1, bos = eos 2)."""
    cfg = CLIPConfig(
        text_config={"vocab_size": vocab_size, "hidden_size": text_hidden, "intermediate_size": 4 * text_hidden,
                         "num_hidden_layers": text_layers, "num_attention_heads": 4, "max_position_embeddings": 64,
                         "pad_token_id": PAD_ID, "bos_token_id": EOS_ID, "eos_token_id": EOS_ID},
        vision_config={"image_size": image_size, "patch_size": patch, "hidden_size": hidden, "intermediate_size": mlp,
                           "num_hidden_layers": layers, "num_attention_heads": heads, "projection_dim": projection},
        projection_dim=projection)
    return CLIPModel(cfg)


def text_features(clip: CLIPModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Projected text embedding pooled at the last real token (avoids the eos_token_id=2 argmax pitfall)."""
    h = clip.text_model(input_ids=ids, attention_mask=mask).last_hidden_state     # (B, T, d)
    last = mask.sum(1) - 1
    return clip.text_projection(h[torch.arange(len(ids)), last])


def image_features(clip: CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    """Projected image embedding from the post-LN CLS (``pooler_output``)."""
    return clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)


def _tokens(tok, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tok([c for c in captions], padding=True, return_tensors="pt")
    ids = torch.cat([enc.input_ids, torch.full((len(captions), 1), PAD_ID)], 1)
    mask = torch.cat([enc.attention_mask, torch.zeros((len(captions), 1), dtype=torch.long)], 1)
    ends = mask.sum(1)
    ids[torch.arange(len(captions)), ends] = EOS_ID       # append </s>: "</s> caption </s>"
    mask[torch.arange(len(captions)), ends] = 1
    return ids, mask


@torch.no_grad()
def retrieval_recalls(clip: CLIPModel, pixels: torch.Tensor, ids, mask, ks=(1, 5, 10)) -> dict:
    """Zero-shot text→image and image→text recall@k of paired (image i, caption i)."""
    clip.eval()
    v = F.normalize(torch.cat([image_features(clip, pixels[i:i + 256]) for i in range(0, len(pixels), 256)]), dim=-1)
    t = F.normalize(torch.cat([text_features(clip, ids[i:i + 256], mask[i:i + 256])
                               for i in range(0, len(ids), 256)]), dim=-1)
    sim = t @ v.T
    return {f"{name}_{k}": round(r, 4) for name, s in (("t2i", sim), ("i2t", sim.T))
            for k, r in recall_at_k(s, ks).items()}


def twin(scene: dict, rng: np.random.Generator) -> dict:
    """A copy of ``scene`` that differs in exactly one binding-relevant way (its caption differs too).

    With two or more objects, half the twins swap the colours (or shapes) of two objects that differ in
    it — the same bag of attributes, bound differently; the rest change one attribute of one object.
    """
    objs = scene["objects"]
    if len(objs) > 1 and rng.random() < 0.5:
        i, j = (int(v) for v in rng.choice(len(objs), 2, replace=False))
        for key in ("colour", "shape") if rng.random() < 0.5 else ("shape", "colour"):
            if objs[i][key] != objs[j][key]:
                # colour/shape changes keep every object in its cell, so indices stay valid
                return variant(variant(scene, i, **{key: objs[j][key]}), j, **{key: objs[i][key]})
    i = int(rng.integers(len(objs)))
    o = objs[i]
    key = ("colour", "shape", "size", "cell")[int(rng.integers(4))]
    if key == "cell":
        free = [c for c in range(len(CELLS)) if all(p["cell"] != c for p in objs)]
        return variant(scene, i, cell=int(rng.choice(free)))
    options = [v for v in {"colour": COLOURS, "shape": SHAPES, "size": SIZES}[key] if v != o[key]]
    return variant(scene, i, **{key: options[int(rng.integers(len(options)))]})


@torch.no_grad()
def twin_accuracy(clip: CLIPModel, pixels, twin_pixels, ids, mask) -> float:
    """How often a caption scores its own image above the image's twin (0.5 = blind to binding)."""
    clip.eval()
    t = F.normalize(text_features(clip, ids, mask), dim=-1)
    own = (t * F.normalize(image_features(clip, pixels), dim=-1)).sum(-1)
    other = (t * F.normalize(image_features(clip, twin_pixels), dim=-1)).sum(-1)
    return round((own > other).float().mean().item(), 4)


def pretrain_clip(out: str | Path, tokenizer, steps: int = 500, batch_size: int = 256, n_images: int = 30_000,
                  lr: float = 1e-3, warmup: int = 100, seed: int = 0, n_val: int = 500, device: str = "cpu",
                  progress: bool = True, hard_negatives: bool = False, **model_kw) -> dict:
    """Render train scenes, train the CLIP, save its vision tower + image processor to ``out``; return metrics.

    ``tokenizer`` is the toy tokenizer (object). ``model_kw`` overrides :func:`make_clip` sizes; tiny values
    plus ``steps=2, n_images=64, n_val=16`` give a smoke run. ``hard_negatives``: each batch is
    ``batch_size // 2`` scenes plus their :func:`twin` (otherwise ``batch_size`` random scenes).
    """
    t0 = time.time()
    torch.manual_seed(seed)
    size = model_kw.get("image_size", TOWER_SIZE)
    scenes = [make_scene(seed, "train", i) for i in range(n_images)]
    if hard_negatives:  # scene i's twin is scene n_images + i
        rng = np.random.default_rng([seed, 7])
        scenes += [twin(s, rng) for s in scenes]
    pix = to_tower_pixels([jpeg_roundtrip(render(s)) for s in tqdm(scenes, desc="render", disable=not progress)],
                          size)
    caps = [canonical_caption(s) for s in scenes]
    mean = [round(float(v), 3) for v in pix[:2000].reshape(-1, 3).mean(0) / 255]
    std = [round(float(v), 3) for v in pix[:2000].reshape(-1, 3).std(0) / 255]
    ids, mask = _tokens(tokenizer, caps)
    val = [make_scene(seed, "val", i) for i in range(n_val)]
    val_pix = normalise(to_tower_pixels([jpeg_roundtrip(render(s)) for s in val], size), mean, std)
    val_ids, val_mask = _tokens(tokenizer, [canonical_caption(s) for s in val])
    vrng = np.random.default_rng([seed, 8])
    val_twins = [twin(s, vrng) for s in val]
    twin_pix = normalise(to_tower_pixels([jpeg_roundtrip(render(s)) for s in val_twins], size), mean, std)
    t_data = time.time() - t0

    clip = make_clip(len(tokenizer), **model_kw).to(device)
    opt = torch.optim.AdamW(clip.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) *
                                              0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    t1 = time.time()
    bar = tqdm(range(steps), desc="toy CLIP", disable=not progress)
    for _ in bar:
        clip.train()
        if hard_negatives:
            base = torch.randperm(n_images, generator=g)[:batch_size // 2]
            idx = torch.cat([base, base + n_images])
        else:
            idx = torch.randperm(len(scenes), generator=g)[:batch_size]
        x = normalise(pix[idx.numpy()], mean, std).to(device)
        bi, bm = ids[idx], mask[idx]
        n = int(bm.sum(1).max())
        v = F.normalize(image_features(clip, x), dim=-1)
        t = F.normalize(text_features(clip, bi[:, :n].to(device), bm[:, :n].to(device)), dim=-1)
        logits = clip.logit_scale.exp().clamp(max=100) * t @ v.T
        target = torch.arange(len(idx), device=device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    train_s = time.time() - t1

    clip = clip.cpu().eval()
    recalls = retrieval_recalls(clip, val_pix, val_ids, val_mask)
    recalls["twin_acc"] = twin_accuracy(clip, val_pix, twin_pix, val_ids, val_mask)
    vision = CLIPVisionModel(clip.config.vision_config)
    vision.load_state_dict(clip.vision_model.state_dict())   # transformers 5: no .vision_model wrapper
    out = Path(out)
    vision.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=mean, image_std=std, resample=Image.BICUBIC).save_pretrained(out)
    return {"params_total": sum(p.numel() for p in clip.parameters()),
            "params_vision": sum(p.numel() for p in vision.parameters()),
            "pooled_dim": clip.config.vision_config.hidden_size, "n_images": n_images,
            "hard_negatives": hard_negatives, "steps": steps, "batch_size": batch_size, "image_mean": mean,
            "image_std": std,
            "data_seconds": round(t_data, 1), "train_seconds": round(train_s, 1), "final_loss": round(loss.item(), 4),
            "logit_scale": round(clip.logit_scale.exp().item(), 2), "val_pairs": n_val, **recalls}
