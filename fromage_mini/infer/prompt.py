"""Interleaved prompts -> LM input embeddings, laid out exactly as in training.

A prompt is a ``str``, an image, or a list of ``str`` / PIL images / tensors (features of the
model's shape F, (3, H, W) pixels) in any order. Each image becomes its k visual-prefix embeddings (no
separator tokens), each text segment is tokenized without special tokens, and the BOS goes where
training put it (:attr:`Fromage.bos_before_image`).

Shapes: T sequence length, k visual tokens, d LM embedding width, D vision width, F one image's
feature shape (:func:`feature_shape`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..errors import FromageError
from ..model.packing import right_pad

IMAGE = -1  # placeholder id at visual-prefix positions in :class:`PromptInputs`


@dataclass
class PromptInputs:
    """One built prompt. embeds: (T, d) LM input embeddings; ids: (T,) token ids, ``IMAGE`` at visual positions."""

    embeds: torch.Tensor
    ids: torch.Tensor


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _open_path(item):
    """A ``pathlib.Path`` in a prompt or an image list is an image file: open it; anything else as is."""
    from pathlib import PurePath

    if isinstance(item, PurePath):
        from ..data.images import load_image
        return load_image(item)
    return item


def _names_an_image_file(text: str) -> bool:
    """A one-line text ending in an image suffix that names an existing file (a path passed as text)."""
    from pathlib import Path

    t = text.strip()
    if "\n" in t or not t.lower().endswith(IMAGE_SUFFIXES):
        return False
    try:
        return Path(t).expanduser().is_file()
    except (OSError, ValueError):
        return False


def _is_image(x) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


def feature_shape(model) -> tuple[int, ...]:
    """Shape F of one image's feature: the model's own, ``model.feature_shape`` ((D,) pooled, or the
    pooled vector and the grid cells' tokens: ``VisualPrefix.feature_shape``)."""
    return tuple(model.feature_shape)


def as_items(model, images) -> list:
    """A list of images, or one tensor holding a batch ((N, *F) features, (N, 3, H, W) pixels) or a
    single item -> a list of items."""
    if torch.is_tensor(images):
        batch = tuple(images.shape[1:]) == feature_shape(model) or images.dim() == 4
        return list(images) if batch else [images]
    return list(images)


def to_features(model, images) -> torch.Tensor:
    """Images -> (N, *F) features, F = :func:`feature_shape` ((D,) for FROMAGe's pooled prefix).

    ``images``: a list of PIL images, image files as ``pathlib.Path``, feature tensors of shape F or
    (3, H, W) pixel tensors (mixed is fine), or one tensor: (N, *F) features, (N, 3, H, W) pixels, or a single item.
    """
    shape = feature_shape(model)
    is_feature = lambda t: tuple(t.shape) == shape  # noqa: E731
    is_pixels = lambda t: t.dim() == 3 and t.shape[0] == 3  # noqa: E731
    images = [_open_path(im) for im in as_items(model, images)]
    out: list[torch.Tensor | None] = [None] * len(images)
    for i, im in enumerate(images):
        if torch.is_tensor(im) and is_feature(im):
            out[i] = im.float().to(model.device)
        elif not (_is_image(im) or (torch.is_tensor(im) and is_pixels(im))):
            raise FromageError(f"an image must be a PIL image, a {shape} feature or a (3, H, W) pixel tensor, "
                               f"got {type(im).__name__}{tuple(im.shape) if torch.is_tensor(im) else ''}")
    pil = [i for i, im in enumerate(images) if _is_image(im)]
    pix = [i for i, im in enumerate(images) if torch.is_tensor(im) and out[i] is None]
    for group, pixels in ((pil, lambda: model.preprocess([images[i] for i in pil])),
                          (pix, lambda: torch.stack([images[i] for i in pix]))):
        if group:
            feats = model.image_features(pixels())  # (n, *F)
            for j, i in enumerate(group):
                out[i] = feats[j].to(model.device)
    if not out:
        return torch.zeros(0, *shape, device=model.device)
    return torch.stack(out)


def build_inputs(model, prompt, *, bos: str = "once") -> PromptInputs:
    """An interleaved prompt (list of str / PIL image / tensor, any order) -> :class:`PromptInputs`.

    Each image becomes its k visual-prefix embeddings with no separator tokens; each text segment
    is tokenized without special tokens (a "[RET]" in the text becomes the [RET] id).

    bos="once" (the training layout): ONE BOS. With ``image_layout="before_bos"`` it starts the
    first text segment (``[img, </s>, text]``, as ``[img, </s>, caption]`` in training); a prompt
    with no text gets it after its images, where the generated text will start. With
    ``"after_bos"`` it comes first of all (``[</s>, img, text]``).
    bos="per_text": every text segment starts with its own BOS (the original VIST eval's quirk).
    """
    if bos not in ("once", "per_text"):
        raise ValueError(f"bos must be 'once' or 'per_text', got {bos!r}")
    from pathlib import PurePath

    if isinstance(prompt, (str, PurePath)) or _is_image(prompt) or torch.is_tensor(prompt):
        prompt = [prompt]
    prompt = list(prompt)
    for p in prompt:
        if isinstance(p, str) and _names_an_image_file(p):
            raise FromageError(f"{p!r} is the path of an image file, given as text: pass it as an image, "
                               f"pathlib.Path({p!r}) or PIL.Image.open({p!r})")
    tok = model.tokenizer
    bos_id = tok.bos_token_id
    dev = model.device
    is_text = [isinstance(p, str) for p in prompt]
    imgs = [p for p, t in zip(prompt, is_text) if not t]
    visual = model.visual_embeds(to_features(model, imgs)) if imgs else None  # (n_img, k, d)

    after = model.bos_before_image  # the training layout rule (Fromage.bos_before_image)
    ids: list[torch.Tensor] = []
    if bos_id is not None and bos == "once" and after:
        ids.append(torch.tensor([bos_id]))
    bos_pending = bos_id is not None and (bos == "per_text" or not after)
    seg_ids: list[list[int] | None] = []
    for p, t in zip(prompt, is_text):
        if t:
            words = tok(p, add_special_tokens=False).input_ids
            if bos_pending:
                words = [bos_id] + words
                bos_pending = bos == "per_text"
            seg_ids.append(words)
        else:
            seg_ids.append(None)
    if bos_pending and bos == "once":  # before_bos and no text at all: BOS after the images
        seg_ids.append([bos_id])

    k = model.n_prefix
    emb_parts, img_i = [], 0
    if ids:
        emb_parts.append(model.embed_tokens(ids[0][None].to(dev))[0])
    for words in seg_ids:
        if words is None:
            emb_parts.append(visual[img_i])
            ids.append(torch.full((k,), IMAGE))
            img_i += 1
        elif words:
            w = torch.tensor(words)
            emb_parts.append(model.embed_tokens(w[None].to(dev))[0])
            ids.append(w)
    if not emb_parts:
        raise FromageError("the prompt is empty and the tokenizer has no BOS token to start from")
    dtype = model.lm.get_input_embeddings().weight.dtype
    embeds = torch.cat([e.to(dtype) for e in emb_parts])  # (T, d)
    return PromptInputs(embeds, torch.cat(ids).long())


def fit_context(model, inp: PromptInputs, room: int = 0, what: str = "prompt") -> PromptInputs:
    """Keep the newest part of a built prompt so that ``room`` more positions fit the LM.

    A cut never splits an image's visual prefix (a partly cut image is dropped whole). Warns when
    anything is dropped; returns ``inp`` itself when it fits.
    """
    limit = model.max_positions
    if limit is None or len(inp.ids) + room <= limit:
        return inp
    keep = limit - room
    if keep <= 0:
        raise FromageError(f"the LM holds {limit} positions, too few for the {room} this {what} needs after it")
    start = len(inp.ids) - keep
    while start < len(inp.ids) and int(inp.ids[start]) == IMAGE and start > 0 and int(inp.ids[start - 1]) == IMAGE:
        start += 1  # inside an image's prefix: drop the rest of that image too
    warnings.warn(f"{what} of {len(inp.ids)} positions cut to its last {len(inp.ids) - start} "
                  f"(the LM holds {limit})", stacklevel=3)
    return PromptInputs(inp.embeds[start:], inp.ids[start:])


def pad_batch(inputs: list[PromptInputs]):
    """Right-pad built prompts: -> (embeds (B, T, d), attention_mask (B, T), lengths (B,))."""
    x, mask = right_pad([p.embeds for p in inputs])
    return x, mask, torch.tensor([len(p.ids) for p in inputs])

