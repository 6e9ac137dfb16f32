"""Inference: interleaved image-and-text prompts in, interleaved text and retrieved images out.

``generate(model, [image, "Q: what is this?\\nA:"])`` is the counterpart of the original's
``generate_for_images_and_texts``, with its bugs fixed (reference §6):

* the prompt is built exactly as in training: each image becomes its k visual-prefix embeddings
  (no separator tokens), text segments are tokenized without special tokens, and ONE BOS starts
  the first text segment (``image_layout="after_bos"``: the BOS comes first of all);
* decoding uses the LM's KV cache (one new embedding per step, not a re-run of the whole sequence);
* decoding stops at EOS and at a stop string (the original never stopped at EOS);
* ``ret_scale_factor > 1`` always makes [RET] more likely (the original multiplied the raw logit,
  which *lowers* a negative one);
* the retrieval vector of a [RET] is read at the position where [RET] is the *input* token, as in
  training, with images and several text segments before it (the original's ``num_words=0`` path
  read a misaligned position).

Shapes: T sequence length, k visual tokens, d LM embedding width, D vision width, q retrieval width.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import FromageError
from ..model.backbones import kv_cache
from ..model.packing import right_pad

IMAGE = -1  # placeholder id at visual-prefix positions in :class:`PromptInputs`


def inference(fn):
    """Run ``fn(model, ...)`` without gradients and with the model in eval mode (dropout off),
    restoring its previous mode afterwards (so it can be called from inside a training loop)."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)

    return wrapper


# ---------------------------------------------------------------------------------------------
# results
@dataclass
class TextPart:
    """A stretch of generated text (stop string and special tokens removed)."""

    text: str

    def __str__(self) -> str:
        return self.text


@dataclass
class RetrievalPart:
    """What one [RET] brought back: the top ``images_per_ret`` index entries and the query vector.

    scores: (m,) similarity of each result (as the index reports it; cosine for :class:`TensorIndex`).
    ids: m index ids, best first (empty when no index was given or retrieval was spent).
    metadata: one dict per id from ``index.metadata(i)`` (path / url / caption ...).
    vector: (q,) the unnormalised text vector read at the [RET] input position.
    generated: False for the [RET] that ended the prompt (it is not part of the generated text).
    """

    scores: torch.Tensor
    ids: list[int]
    metadata: list[dict]
    vector: torch.Tensor
    generated: bool = True

    def __str__(self) -> str:
        if not self.ids:
            return "[RET]"
        shown = []
        for i, s, m in zip(self.ids, self.scores.tolist(), self.metadata):
            label = m.get("caption") or m.get("path") or m.get("url") or ""
            shown.append(f"#{i} ({s:.3f}) {label}".rstrip())
        return "[RET] -> " + "; ".join(shown)


@dataclass
class GenerationResult:
    """Interleaved output of :func:`generate`.

    parts: ``TextPart`` / ``RetrievalPart`` in the order they were produced.
    ids: every generated token id (the EOS that ended decoding is not included).
    stop_reason: ``"eos"``, ``"stop"`` (a stop string), ``"length"`` (``max_new_tokens``).
    ret_token: the [RET] token's text, used by :attr:`text`.
    """

    parts: list = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    stop_reason: str = "length"
    ret_token: str = "[RET]"

    @property
    def text(self) -> str:
        """The generated text with each [RET] written as its token (what the model 'said')."""
        return "".join(p.text if isinstance(p, TextPart) else self.ret_token if p.generated else ""
                       for p in self.parts)

    @property
    def retrievals(self) -> list[RetrievalPart]:
        return [p for p in self.parts if isinstance(p, RetrievalPart)]

    def __str__(self) -> str:
        out = []
        for p in self.parts:
            s = str(p)
            out.append(f"\n{s}\n" if isinstance(p, RetrievalPart) and p.ids else s)
        return "".join(out).strip()


# ---------------------------------------------------------------------------------------------
# a minimal index (the project's RetrievalIndex has the same methods)
class TensorIndex:
    """An in-memory cosine-similarity index over (N, q) vectors, with optional per-item metadata.

    Same duck-typed interface as ``fromage_mini.retrieval.index.RetrievalIndex``:
    ``search(queries, k, exclude) -> (scores (n, k), ids (n, k))``, ``metadata(i)``, ``len()``.
    """

    def __init__(self, vectors: torch.Tensor, metadata: list[dict] | None = None):
        self.vectors = F.normalize(torch.as_tensor(vectors).float(), dim=-1)  # (N, q)
        self._meta = metadata if metadata is not None else [{} for _ in range(len(self.vectors))]
        if len(self._meta) != len(self.vectors):
            raise FromageError(f"{len(self.vectors)} vectors but {len(self._meta)} metadata entries")

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def search(self, queries, k: int = 10, exclude=None):
        """queries (n, q) or (q,) -> (scores (n, k), ids (n, k)), best first; ``exclude``: ids never returned."""
        q = torch.as_tensor(queries).float().reshape(-1, self.vectors.shape[1])
        scores = F.normalize(q, dim=-1) @ self.vectors.T  # (n, N)
        if exclude is not None:
            ex = torch.tensor(sorted({int(i) for i in exclude}), dtype=torch.long)
            if len(ex):
                scores[:, ex] = float("-inf")
        k = min(k, len(self))
        top = scores.topk(k, dim=1)
        return top.values, top.indices

    def metadata(self, i: int) -> dict:
        return self._meta[int(i)]


# ---------------------------------------------------------------------------------------------
# prompts
@dataclass
class PromptInputs:
    """One built prompt. embeds: (T, d) LM input embeddings; ids: (T,) token ids, ``IMAGE`` at visual positions."""

    embeds: torch.Tensor
    ids: torch.Tensor


def _is_image(x) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


def feature_shape(model) -> tuple[int, ...]:
    """Shape of one image's feature: (D,) pooled, or (1 + g², D) pooled + grid cells."""
    D = model.vis_dim
    return (D,) if model.feature_rank == 1 else (1 + model.config.grid_size ** 2, D)


def as_items(model, images) -> list:
    """A list of images, or one tensor holding a batch ((N, *F) features, (N, 3, H, W) pixels) or a
    single item -> a list of items."""
    if torch.is_tensor(images):
        batch = tuple(images.shape[1:]) == feature_shape(model) or images.dim() == 4
        return list(images) if batch else [images]
    return list(images)


def to_features(model, images) -> torch.Tensor:
    """Images -> (N, *F) features, F = :func:`feature_shape` ((D,) for FROMAGe's pooled prefix).

    ``images``: a list of PIL images, feature tensors of shape F or (3, H, W) pixel tensors (mixed
    is fine), or one tensor: (N, *F) features, (N, 3, H, W) pixels, or a single item.
    """
    shape = feature_shape(model)
    is_feature = lambda t: tuple(t.shape) == shape  # noqa: E731
    is_pixels = lambda t: t.dim() == 3 and t.shape[0] == 3  # noqa: E731
    images = as_items(model, images)
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
    if isinstance(prompt, str) or _is_image(prompt) or torch.is_tensor(prompt):
        prompt = [prompt]
    prompt = list(prompt)
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


# ---------------------------------------------------------------------------------------------
# one decoding step
RET_SCALE_RULES = ("odds", "original")


def next_token_logits(logits: torch.Tensor, ret_id: int, *, temperature: float = 0.0,
                      ret_scale_factor: float = 1.0, forbid_ret: bool = False,
                      ret_scale_rule: str = "odds") -> torch.Tensor:
    """(V',) raw logits -> the logits a token is drawn from.

    ``ret_scale_rule="odds"`` (ours): divide by ``temperature`` (if > 0), then add
    ``log(ret_scale_factor)`` to the [RET] logit: the odds of [RET] against every other token are
    multiplied by exactly ``ret_scale_factor``, whatever the sign of its logit (factor 0 forbids
    [RET]). ``"original"``: the released code's rule, reproduced for comparing with its outputs:
    the raw [RET] logit is multiplied by the factor, before the temperature (so a factor > 1
    *lowers* a negative logit). ``forbid_ret``: [RET] gets -inf.
    """
    if ret_scale_factor < 0:
        raise ValueError("ret_scale_factor must be >= 0")
    if ret_scale_rule not in RET_SCALE_RULES:
        raise ValueError(f"ret_scale_rule must be one of {', '.join(RET_SCALE_RULES)}, not {ret_scale_rule!r}")
    out = logits.float().clone()
    if ret_scale_rule == "original" and ret_scale_factor != 1:
        out[..., ret_id] *= ret_scale_factor  # z_RET <- factor * z_RET (raw logit)
    if temperature > 0:
        out = out / temperature
    if forbid_ret or ret_scale_factor == 0:
        out[..., ret_id] = float("-inf")
    elif ret_scale_rule == "odds" and ret_scale_factor != 1:
        out[..., ret_id] += math.log(ret_scale_factor)  # z_RET <- z_RET + log(factor)
    return out


def pick_token(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
               generator: torch.Generator | None = None) -> int:
    """Greedy argmax when ``temperature == 0``, else nucleus (top-p) sampling from softmax(logits).

    ``logits`` are already divided by the temperature (see :func:`next_token_logits`). Top-p
    keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (at least one).
    """
    if temperature == 0:
        return int(logits.argmax())
    probs = logits.float().softmax(-1)
    if top_p < 1.0:
        p, order = probs.sort(descending=True)
        keep = (p.cumsum(-1) - p) < top_p  # mass before this token is still short of top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(-1, order[keep], p[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def _stop_at(text: str, stops, started: bool) -> int | None:
    """Index of the first stop string that follows some content (a leading one is skipped, as in the original)."""
    best = None
    for s in stops or ():
        start = 0
        while s and (i := text.find(s, start)) != -1:
            if started or text[:i].strip():
                best = i if best is None else min(best, i)
                break
            start = i + 1
    return best


class _Retriever:
    """Searches the index for each [RET] until ``max_retrievals`` are spent; never repeats an id."""

    def __init__(self, index, max_retrievals: int, per_ret: int, exclude):
        self.index, self.left, self.per_ret = index, max_retrievals, per_ret
        self.seen = {int(i) for i in (exclude or ())}

    def __call__(self, vector: torch.Tensor) -> RetrievalPart:
        vector = vector.detach().float().cpu()  # (q,)
        empty = RetrievalPart(torch.zeros(0), [], [], vector)
        if self.index is None or self.left <= 0 or self.per_ret <= 0:
            return empty
        self.left -= 1
        q = F.normalize(vector, dim=-1)[None]  # (1, q)
        k = min(len(self.index), self.per_ret + len(self.seen))
        scores, ids = self.index.search(q, k=k, exclude=sorted(self.seen) or None)
        got_s, got_i = [], []
        for s, i in zip(torch.as_tensor(scores).reshape(-1).tolist(), torch.as_tensor(ids).reshape(-1).tolist()):
            if i >= 0 and i not in self.seen and len(got_i) < self.per_ret:
                got_s.append(s)
                got_i.append(int(i))
        self.seen.update(got_i)
        return RetrievalPart(torch.tensor(got_s), got_i, [self.index.metadata(i) for i in got_i], vector)


# ---------------------------------------------------------------------------------------------
@inference
def generate(model, prompt, *, max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
             ret_scale_factor: float = 1.0, min_tokens_before_ret: int = 0, stop=("\n",), index=None,
             max_retrievals: int = 1, images_per_ret: int = 1, exclude=None,
             seed: int | None = None, ret_scale_rule: str = "odds") -> GenerationResult:
    """Continue an interleaved prompt with text and retrieved images.

    Args:
        model: a :class:`~fromage_mini.model.fromage.Fromage`.
        prompt: a list of ``str``, ``PIL.Image`` or tensors ((D,) pooled feature or (3, H, W)
            pixels) in any order (see :func:`build_inputs`). A prompt ending in [RET] is answered
            with a retrieval first (the original's ``num_words=0`` use; ``max_new_tokens=0`` stops there).
        max_new_tokens: at most this many tokens are generated.
        temperature: 0 = greedy; otherwise sample from softmax(logits / temperature) ...
        top_p: ... restricted to the nucleus of probability ``top_p``.
        ret_scale_factor: the odds of [RET] against every other token are multiplied by this
            factor (``log(factor)`` is added to the [RET] logit after the temperature), so a
            factor > 1 always makes [RET] more likely. The original multiplied the raw logit,
            which lowers P([RET]) when the logit is negative.
        ret_scale_rule: ``"odds"`` (the rule above) or ``"original"`` (multiply the raw [RET]
            logit by the factor, as the released code did; use it to reproduce that code's outputs
            with its factors, e.g. 1.3 in its example notebook).
        min_tokens_before_ret: [RET] is forbidden for the first this-many generated tokens.
        stop: stop once the generated text contains one of these strings after some other text
            (a leading one is skipped, as in the original); the text is cut before it. Decoding
            also stops at EOS (the original never did).
        index: anything with ``search(queries, k, exclude)``, ``metadata(i)`` and ``len()``
            (a ``RetrievalIndex`` or :class:`TensorIndex`); None = no retrieval (vectors still kept).
        max_retrievals: only the first this-many [RET]s search the index.
        images_per_ret: results attached to each [RET].
        exclude: index ids never returned; ids already returned are never returned again.
        seed: seeds a private ``torch.Generator`` for sampling (reproducible output).

    Returns:
        :class:`GenerationResult`: ``parts`` (``TextPart`` / ``RetrievalPart``), raw ``ids``.

    Each emitted [RET] is fed back as the next input (its own embedding) and its text vector is
    read from the hidden states of that step, i.e. at the [RET] *input* position, as in training.
    Runs without gradients in eval mode (the model's mode is restored afterwards).
    """
    inp = build_inputs(model, prompt)
    ret_id, eos = model.ret_id, model.tokenizer.eos_token_id
    T = len(inp.ids)
    limit = model.max_positions
    if limit is not None and T >= limit:
        raise FromageError(f"the prompt is {T} positions long but the LM holds {limit}; shorten it "
                           "(Dialogue drops the oldest turns itself)")
    if limit is not None:
        max_new_tokens = min(max_new_tokens, limit - T)  # room for every generated token (and a [RET] after it)
    dev = model.device
    out = model.lm_hidden(inp.embeds[None], torch.ones(1, T, dtype=torch.long, device=dev), use_cache=True)
    logits = model.logits_at(out.last_hidden_state[:, -1:])  # (1, 1, V'): only the next token needs logits
    past = kv_cache(out)
    gen = torch.Generator(device=logits.device).manual_seed(seed) if seed is not None else None
    retrieve = _Retriever(index, max_retrievals, images_per_ret, exclude)
    result = GenerationResult(ret_token=model.config.ret_token)
    if int(inp.ids[-1]) == ret_id:
        vec = model.vectors_at(out.hidden_states, torch.tensor([T - 1], device=dev))[0]
        result.parts.append(retrieve(vec))
        result.parts[-1].generated = False

    def feed(token: int):
        nonlocal logits, out, past, T
        T += 1
        x = model.embed_tokens(torch.tensor([[token]], device=dev))  # (1, 1, d)
        out = model.lm_hidden(x, torch.ones(1, T, dtype=torch.long, device=dev), cache=past, use_cache=True)
        logits = model.logits_at(out.last_hidden_state)  # (1, 1, V')
        past = kv_cache(out)

    segment: list[int] = []

    def decode(ids: list[int]) -> str:
        return model.tokenizer.decode(ids, skip_special_tokens=True)

    for step in range(max_new_tokens):
        scores = next_token_logits(logits[0, -1], ret_id, temperature=temperature,
                                   ret_scale_factor=ret_scale_factor, forbid_ret=step < min_tokens_before_ret,
                                   ret_scale_rule=ret_scale_rule)
        token = pick_token(scores, temperature, top_p, gen)
        if token == eos:
            result.stop_reason = "eos"
            break
        result.ids.append(token)
        if token == ret_id:
            if segment:
                result.parts.append(TextPart(decode(segment)))
                segment = []
            feed(token)  # the vector is read where [RET] is the input token
            vec = model.vectors_at(out.hidden_states, torch.tensor([0], device=dev))[0]
            result.parts.append(retrieve(vec))
            continue
        segment.append(token)
        text = decode(segment)
        started = any(isinstance(p, TextPart) or p.generated for p in result.parts)
        cut = _stop_at(text, stop, started=started)
        if cut is not None:
            result.parts.append(TextPart(text[:cut]))
            segment, result.stop_reason = [], "stop"
            break
        if step + 1 < max_new_tokens:
            feed(token)
    if segment:
        result.parts.append(TextPart(decode(segment)))
    return result


@inference
def caption(model, images_or_features, max_new_tokens: int = 32, batch_size: int = 32) -> list[str]:
    """Greedy captions for a batch of images (PIL / (D,) features / (3, H, W) pixels, or one tensor).

    Each row is ``[img, </s>]`` (``after_bos``: ``[</s>, img]``), all the same length, so rows
    decode together with one KV cache and no padding. [RET] is forbidden; a row stops at EOS or
    at the first '.' (kept) or newline (dropped).
    """
    feats = to_features(model, images_or_features)  # (N, D)
    captions: list[str] = []
    for s in range(0, feats.shape[0], batch_size):
        captions += _caption_batch(model, feats[s: s + batch_size], max_new_tokens)
    return captions


def _caption_batch(model, feats: torch.Tensor, max_new_tokens: int) -> list[str]:
    B, dev, tok = feats.shape[0], model.device, model.tokenizer
    # a caption of just BOS, laid out as in training: [img, </s>] or [</s>, img]
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    ids = torch.tensor([bos] * B, dtype=torch.long, device=dev).view(B, len(bos))
    x, _, _ = model.caption_inputs(model.visual_embeds(feats), model.embed_tokens(ids), ids, torch.ones_like(ids))
    dtype = model.lm.get_input_embeddings().weight.dtype
    x = x.to(dtype)  # (B, k + 1, d)
    T = x.shape[1]
    out = model.lm_hidden(x, torch.ones(B, T, dtype=torch.long, device=dev), use_cache=True)
    logits = model.logits_at(out.last_hidden_state[:, -1:])  # (B, 1, V')
    rows: list[list[int]] = [[] for _ in range(B)]
    texts = [""] * B
    done = [False] * B
    for step in range(max_new_tokens):
        nxt = next_token_logits(logits[:, -1], model.ret_id, forbid_ret=True).argmax(-1)  # (B,)
        for i, t in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if t == tok.eos_token_id:
                done[i] = True
                continue
            rows[i].append(t)
            text = tok.decode(rows[i], skip_special_tokens=True)
            dot, nl = text.find("."), _stop_at(text, ("\n",), started=False)
            if dot != -1 and (nl is None or dot < nl):
                texts[i], done[i] = text[: dot + 1], True
            elif nl is not None:
                texts[i], done[i] = text[:nl], True
            else:
                texts[i] = text
        if all(done) or step + 1 == max_new_tokens:
            break
        T += 1
        out = model.lm_hidden(model.embed_tokens(nxt[:, None]), torch.ones(B, T, dtype=torch.long, device=dev),
                              cache=kv_cache(out), use_cache=True)
        logits = model.logits_at(out.last_hidden_state)  # (B, 1, V')
    return [t.strip() for t in texts]


# the options a user sets from the command line (``chat``): (type, help[, choices]); defaults are generate()'s own
GENERATION_OPTIONS = {
    "max_new_tokens": (int, "at most this many tokens per answer"),
    "temperature": (float, "0 = greedy; otherwise sample from softmax(logits / temperature)"),
    "top_p": (float, "sample only from the nucleus of this probability"),
    "ret_scale_factor": (float, "multiply the odds of [RET] against every other token by this"),
    "ret_scale_rule": (str, "odds (ours) or original (multiply the raw [RET] logit, as the released code)",
                       RET_SCALE_RULES),
    "max_retrievals": (int, "only the first this-many [RET]s search the index"),
    "images_per_ret": (int, "images returned for each [RET]"),
    "seed": (int, "seed for sampling (reproducible answers)"),
}


def add_generation_args(parser) -> None:
    """Add ``--max-new-tokens`` ... (:data:`GENERATION_OPTIONS`) to an argparse parser, with generate()'s defaults."""
    import inspect

    defaults = inspect.signature(generate).parameters
    for name, (kind, text, *choices) in GENERATION_OPTIONS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=defaults[name].default, help=text,
                            choices=choices[0] if choices else None)


def generation_kwargs(args) -> dict:
    """The :data:`GENERATION_OPTIONS` values of parsed arguments, as keyword arguments of generate()."""
    return {name: getattr(args, name) for name in GENERATION_OPTIONS}


def attach(cls) -> type:
    """Add :func:`generate` and :func:`caption` as methods of ``cls`` (``model.generate(prompt, ...)``).

    The package calls this on :class:`~fromage_mini.model.fromage.Fromage` when it is imported.
    """
    cls.generate = generate
    cls.caption = caption
    return cls
