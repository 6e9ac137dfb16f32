"""An optimisation of ``Fromage.retrieval_pass``'s plain path: gradients only where they can be non-zero.

Read ``Fromage.retrieval_pass`` first: its plain path is the definition. In ``</s> w_1..w_n [RET]``
every input but [RET] is a frozen embedding, and [RET] is last, so under the causal mask no earlier
state depends on a trained parameter. We run the caption without gradients (keeping the KV cache),
then [RET] alone with gradients: the backward pass covers one position instead of L. Same numbers as
the plain pass (``fast_ret_pass=False``; tests check it), valid only while the LM is frozen.

Both functions return (CE of the retrieval-mode sequence, text vectors t (B, q)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import FromageError
from . import backbones
from .packing import pack, packable, plan_packing


def retrieval_pass_fast(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Right-padded rows (B, L) -> left-aligned so every [RET] sits in the last column; or packed."""
    B, L = input_ids.shape
    n = packable(attention_mask, shrink=1) if model.config.pack_sequences else None
    if n is not None:
        return retrieval_pass_packed(model, input_ids, n + 1)
    n = attention_mask.sum(1)  # (B,) tokens incl. BOS and [RET]
    src = torch.arange(L, device=input_ids.device) - (L - n).unsqueeze(1)  # left-align
    valid = src >= 0
    ids = torch.where(valid, input_ids.gather(1, src.clamp(min=0)), 0)
    if not bool((ids[:, -1] == model.ret_id).all()):
        raise FromageError("every retrieval-mode row must end with the [RET] token")
    mask = valid.long()
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():  # the caption: frozen inputs, frozen LM
        ctx = model.lm_hidden(model.embed_tokens(ids[:, :-1]), mask[:, :-1], position_ids=pos[:, :-1],
                              use_cache=True)
    ret_in = model.ret_embedding.expand(B, 1, -1)
    last = model.lm_hidden(ret_in, mask, position_ids=pos[:, -1:], cache=backbones.kv_cache(ctx), use_cache=True)
    # caption positions' logits are frozen except the [RET] column h·ret_row (trained);
    # position j predicts token j+1 ([RET] last); a padding position predicts nothing
    keep = valid[:, :-1]
    loss = F.cross_entropy(model.logits_at(ctx.last_hidden_state[keep]), ids[:, 1:][keep])
    t = model.vectors_at(last.hidden_states, torch.zeros(B, dtype=torch.long, device=ids.device))
    return loss, t


def retrieval_pass_packed(model, input_ids: torch.Tensor, n: torch.Tensor):
    """:func:`retrieval_pass_fast` on packed rows: captions packed without [RET], then every
    sequence's [RET] as one extra query per sequence, seeing only its own caption's cache.

    n: (B,) tokens per row including BOS and [RET].
    """
    B, L = input_ids.shape
    rows = torch.arange(B, device=input_ids.device)
    if not bool((input_ids[rows, n - 1] == model.ret_id).all()):
        raise FromageError("every retrieval-mode row must end with the [RET] token")
    p = plan_packing(n - 1, L)  # the captions "</s> w_1..w_m", without [RET]
    R, C = p.src.shape
    with torch.no_grad():
        ctx = model.lm_hidden(model.embed_tokens(pack(input_ids, p)), p.attention_mask(),
                              position_ids=p.position_ids, use_cache=True)
    # one [RET] query per sequence, in its packed row: slot q of row r
    slot = p.slot_of
    Q = int(slot.max()) + 1
    q_seg = torch.full((R, Q), -1, dtype=torch.long, device=slot.device)
    q_seg[p.row_of, slot] = rows
    q_pos = torch.zeros(R, Q, dtype=torch.long, device=slot.device)
    q_pos[p.row_of, slot] = n - 1
    see_ctx = (q_seg[:, :, None] == p.segment[:, None, :]) & (q_seg[:, :, None] >= 0)  # (R, Q, C)
    see_self = torch.eye(Q, dtype=torch.bool, device=slot.device).expand(R, Q, Q)
    mask = torch.cat([see_ctx, see_self], 2)[:, None]  # (R, 1, Q, C+Q)
    ret_in = model.ret_embedding.expand(R, Q, -1)
    last = model.lm_hidden(ret_in, mask, position_ids=q_pos, cache=backbones.kv_cache(ctx), use_cache=True)
    # frozen caption logits except the [RET] column; position j predicts token j+1 ([RET] last)
    targets = pack(torch.roll(input_ids, -1, 1), p)
    loss = F.cross_entropy(model.logits_at(ctx.last_hidden_state[p.valid]), targets[p.valid])
    t = model.vectors_at(last.hidden_states, slot, rows=p.row_of)
    return loss, t
