"""Inference: interleaved image-and-text prompts in, interleaved text and retrieved images out.

``generate(model, [image, "Q: what is this?\\nA:"])`` is the counterpart of the original's
``generate_for_images_and_texts``, with its bugs fixed (reference §6):

* the prompt is built exactly as in training (:mod:`.prompt`): each image becomes its k
  visual-prefix embeddings (no separator tokens), text segments are tokenized without special
  tokens, and ONE BOS starts the first text segment (``image_layout="after_bos"``: the BOS comes
  first of all);
* decoding uses the LM's KV cache (one new embedding per step, not a re-run of the whole sequence);
* decoding stops at EOS and at a stop string (the original never stopped at EOS);
* ``ret_scale_factor > 1`` always makes [RET] more likely (the original multiplied the raw logit,
  which *lowers* a negative one);
* the retrieval vector of a [RET] is read at the position where [RET] is the *input* token, as in
  training, with images and several text segments before it (the original's ``num_words=0`` path
  read a misaligned position).

The pieces live beside this file and are importable from here too: :mod:`.results` (what comes
back), :mod:`.prompt`, :mod:`.decoding` (one step), :mod:`.caption` (batched greedy captions),
:mod:`.tensor_index` (a small in-memory index), :mod:`.modes` (eval mode without gradients).

Shapes: T sequence length, q retrieval width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import FromageError
from .caption import caption
from .decoding import RET_SCALE_RULES, Decoder, next_token_logits, pick_token, stop_at
from .modes import inference
from .prompt import IMAGE, PromptInputs, as_items, build_inputs, feature_shape, fit_context, pad_batch, to_features
from .results import GenerationResult, RetrievalPart, TextPart
from .tensor_index import TensorIndex

__all__ = ["GENERATION_OPTIONS", "IMAGE", "RET_SCALE_RULES", "GenerationResult", "PromptInputs", "RetrievalPart",
           "TensorIndex", "TextPart", "add_generation_args", "as_items", "build_inputs", "caption",
           "feature_shape", "fit_context", "generate", "generation_kwargs", "inference", "next_token_logits",
           "pad_batch", "pick_token", "to_features"]


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
        if k <= 0:  # an empty index: nothing to bring back
            return empty
        scores, ids = self.index.search(q, k=k, exclude=sorted(self.seen) or None)
        got_s, got_i = [], []
        for s, i in zip(torch.as_tensor(scores).reshape(-1).tolist(), torch.as_tensor(ids).reshape(-1).tolist()):
            if i >= 0 and i not in self.seen and len(got_i) < self.per_ret:
                got_s.append(s)
                got_i.append(int(i))
        self.seen.update(got_i)
        return RetrievalPart(torch.tensor(got_s), got_i, [self.index.metadata(i) for i in got_i], vector)


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
        index: an :class:`~.tensor_index.ImageIndex` (``search(queries, k, exclude)``, ``metadata(i)``,
            ``len()``: a ``RetrievalIndex`` or :class:`TensorIndex`); None = no retrieval (vectors still kept).
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
    T, limit = len(inp.ids), model.max_positions
    if limit is not None and T >= limit:
        raise FromageError(f"the prompt is {T} positions long but the LM holds {limit}; shorten it "
                           "(Dialogue drops the oldest turns itself)")
    if limit is not None:
        max_new_tokens = min(max_new_tokens, limit - T)  # room for every generated token (and a [RET] after it)
    lm = Decoder(model, inp.embeds[None])
    gen = torch.Generator(device=lm.logits.device).manual_seed(seed) if seed is not None else None
    retrieve = _Retriever(index, max_retrievals, images_per_ret, exclude)
    result = GenerationResult(ret_token=model.config.ret_token)
    if int(inp.ids[-1]) == model.ret_id:  # a prompt ending in [RET] is answered with a retrieval first
        result.parts.append(retrieve(lm.vector(T - 1)))
        result.parts[-1].generated = False

    def choose(step: int) -> int:
        scores = next_token_logits(lm.logits[0, -1], model.ret_id, temperature=temperature,
                                   ret_scale_factor=ret_scale_factor, forbid_ret=step < min_tokens_before_ret,
                                   ret_scale_rule=ret_scale_rule)  # (V',)
        return pick_token(scores, temperature, top_p, gen)

    _decode(model, lm, choose, max_new_tokens, stop, retrieve, result)
    return result


def _decode(model, lm: Decoder, choose, max_new_tokens: int, stop, retrieve: _Retriever,
            result: GenerationResult) -> None:
    """The decoding loop of :func:`generate`: ``choose(step)`` picks each token from ``lm.logits``; the
    text, each [RET]'s retrieval and the stop reason go into ``result``."""
    ret_id, eos, dev = model.ret_id, model.tokenizer.eos_token_id, model.device
    segment: list[int] = []

    def decode(ids: list[int]) -> str:
        return model.tokenizer.decode(ids, skip_special_tokens=True)

    for step in range(max_new_tokens):
        token = choose(step)
        if token == eos:
            result.stop_reason = "eos"
            break
        result.ids.append(token)
        if token == ret_id:
            if segment:
                result.parts.append(TextPart(decode(segment)))
                segment = []
            lm.feed(torch.tensor([token], device=dev))  # the vector is read where [RET] is the input token
            result.parts.append(retrieve(lm.vector(0)))
            continue
        segment.append(token)
        text = decode(segment)
        started = any(isinstance(p, TextPart) or p.generated for p in result.parts)
        cut = stop_at(text, stop, started=started)
        if cut is not None:
            result.parts.append(TextPart(text[:cut]))
            segment, result.stop_reason = [], "stop"
            break
        if step + 1 < max_new_tokens:
            lm.feed(torch.tensor([token], device=dev))
    if segment:
        result.parts.append(TextPart(decode(segment)))


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
