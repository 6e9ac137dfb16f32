"""FROMAGe: a frozen LM and a frozen vision tower joined by a few trained linear layers.

Read top to bottom. Shapes: B batch, L caption tokens, k visual tokens, d LM embedding width,
D vision width, q retrieval width, V vocabulary rows.

The paper in four lines (f: the frozen tower's image feature, h_l: the frozen LM's states at layer l):

    prefix     x_img = visual_prefix(f)                    (B, k, d)   captioning input [x_img, </s> w_1..w_n]
    text       t = Σ_l text_head_l(h_l at [RET])           (B, q)      retrieval input </s> w_1..w_n [RET]
    image      v = image_head(f)                           (B, q)
    loss       L = w_cap·CE_cap + w_ret·(CE_ret + (L_t2i + L_i2t)/2),   L_t2i: InfoNCE on s·cos(t_i, v_j)

Trained (everything else is frozen):
    visual_prefix   Linear(D -> k·d)       image feature f -> k LM input embeddings (FROMAGe's pooled
                                           prefix; the grid prefix maps each of g² = k cells, its patch
                                           tokens averaged or side by side, with a Linear or MLP: prefix.py)
    cell_embedding  (g², d)                grid prefix only: a learned "where" vector per cell
    ret_embedding   (d,)                   [RET]'s input embedding
    ret_output      (d_out,)               [RET]'s output-head row (untied LMs only; tied LMs
                                           share ret_embedding, as OPT's matrix is shared)
    text_heads      Linear(d_layer -> q)   hidden state at [RET] -> text vector t
    image_head      Linear(D -> q)         image feature f -> image vector v
    logit_scale     scalar                 s = exp(logit_scale), InfoNCE temperature 1/s

[RET] is *not* a row of the frozen embedding matrix. It is spliced in at forward time: input
positions holding the [RET] id take ``ret_embedding``; the output logits get one extra column
``h · ret_output`` at the [RET] id. The trainable-parameter count is exactly the adapters'.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import QUANTIZED_DTYPES, FromageConfig
from ..errors import FromageError
from . import backbones
from .checkpoint import load_adapters, load_released, save_adapters
from .losses import IGNORE, FromageOutput, caption_labels, fromage_loss, info_nce, next_token_ce, retrieval_labels
from .packing import concat_pairs, pack, packable, plan_packing, right_pad, unpack
from .prefix import VisualPrefix
from .quant import lm_load_args, place_beside_quantized_lm


class Fromage(nn.Module):
    """The FROMAGe model. ``Fromage(config)`` loads the backbones the config names.

    Pre-built backbones may be passed instead (tests, meta-device parameter counting).
    ``device``: where the model is put (and, for ``lm_dtype="auto"``, which dtype the LM loads in);
    a bitsandbytes-quantised LM is placed on the GPU by its loader.
    """

    def __init__(self, config: FromageConfig, *, lm=None, tokenizer=None, vision=None,
                 image_processor=None, device: str | torch.device = "cpu"):
        super().__init__()
        self.config = config
        if lm is None:
            lm, tokenizer = backbones.load_lm(config.lm, *lm_load_args(config.lm_dtype, device))
        if vision is None:
            vision, image_processor = backbones.load_vision(config.vision)
        self.lm = backbones.freeze(lm)
        self.vision = backbones.freeze(vision)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self._cache_kw = backbones.cache_kwarg(self.lm.base_model)  # `cache` or `past_key_values`

        dims = backbones.lm_dims(lm)
        self.dims = dims
        self.vis_dim = backbones.vision_dim(vision)
        self.ret_id = backbones.add_ret_token(tokenizer, config.ret_token) if tokenizer else dims.vocab_rows
        k, d, q = config.n_visual_tokens, dims.d_embed, config.ret_dim

        # ---- the trained adapters -------------------------------------------------------------
        self.visual_prefix = VisualPrefix(self.vis_dim, d, k, config.visual_prefix, config.projector,
                                          config.image_dropout, config.cell_names, tokenizer,
                                          backbones.patches_per_cell(vision, config.grid_size, config.cell_pool))
        # grid prefix: a learned "where" vector per cell (from 0), added to its token (the projector is shared
        # and a frozen LM does not tell cells apart by position alone); key ``cell_embedding``, see visual_embeds.
        self.cell_embedding = nn.Parameter(torch.zeros(k, d)) if config.visual_prefix == "grid" else None
        self.ret_embedding = nn.Parameter(torch.empty(d))
        self.ret_output = None if dims.tied else nn.Parameter(torch.empty(dims.d_out))
        self.text_heads = nn.ModuleList(
            nn.Sequential(nn.Linear(backbones.layer_width(dims, i), q), nn.Dropout(config.text_dropout))
            for i in config.ret_layers
        )
        self.image_head = nn.Linear(self.vis_dim, q)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        # [RET] starts from the embedding of ``ret_init_text`` or a random vector of typical norm
        backbones.init_ret_rows(self.lm, tokenizer, config.ret_init_text, self.ret_embedding, self.ret_output)
        # concatenated captions (concat_prob > 0) put two examples in one row
        backbones.check_fits(config.max_len, self.n_prefix, config.concat_prob > 0, self.max_positions)
        if any(p.is_meta for p in self.parameters()):
            return
        if config.lm_dtype in QUANTIZED_DTYPES:  # the quantised LM was placed on the GPU by its loader
            place_beside_quantized_lm(self, device)
        else:
            self.to(device)

    # ------------------------------------------------------------------------------------------
    # setup helpers
    @property
    def n_prefix(self) -> int:
        """How many LM positions one image takes: k (or g²) visual tokens, plus the cell names if any."""
        return self.visual_prefix.n_prefix

    @property
    def image_dropout(self) -> nn.Dropout:
        """The dropout on the visual prefix's tokens (``config.image_dropout``), part of :class:`VisualPrefix`."""
        return self.visual_prefix.dropout

    def train(self, mode: bool = True):
        """Adapters follow ``mode``; the frozen backbones always stay in eval mode."""
        super().train(mode)
        self.lm.eval()
        self.vision.eval()
        return self

    @torch.no_grad()
    def renorm_ret(self) -> None:
        """The original's trick, run after every training step when ``TrainConfig.ret_renorm``: rescale
        [RET]'s input embedding to the mean L2 norm of the LM's vocabulary rows (those before [RET]'s id)."""
        if getattr(self, "_vocab_norm", None) is None:
            emb = self.lm.get_input_embeddings().weight
            self._vocab_norm = emb[: min(self.ret_id, emb.shape[0])].float().norm(dim=1).mean().item()
        self.ret_embedding.mul_(self._vocab_norm / self.ret_embedding.norm().clamp(min=1e-12))

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trained tensors (what a checkpoint holds)."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def max_positions(self) -> int | None:
        """How many positions the LM can attend over (``max_position_embeddings``; None if unbounded)."""
        return getattr(self.lm.config, "max_position_embeddings", None)

    @property
    def logit_scale_exp(self) -> torch.Tensor:
        s = self.logit_scale.exp()
        m = self.config.max_logit_scale
        return s.clamp(max=m) if m is not None else s

    # ------------------------------------------------------------------------------------------
    # inputs
    def tokenize(self, captions: list[str], max_len: int | None = None, add_ret: bool = True):
        """Captions -> ``</s> caption [RET]`` ids (B, L) right-padded and the mask (long ones cut, [RET] kept)."""
        rows = backbones.tokenize_captions(self.tokenizer, captions, max_len or self.config.max_len, self.ret_id,
                                           add_ret)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, mask = right_pad(rows, pad)
        return {"input_ids": ids, "attention_mask": mask}

    def preprocess(self, images) -> torch.Tensor:
        """PIL images -> (B, 3, H, W) pixel values with the vision tower's own processor."""
        images = [im.convert("RGB") for im in images]
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> what the frozen tower gives the adapters (no grad; what the cache stores):
        (B, D) pooled features f, or for the grid prefix (B, 1 + g²·s², D): f, then the cells' tokens."""
        cfg = self.config
        if cfg.visual_prefix == "grid":
            return backbones.grid_features(self.vision, pixel_values, cfg.grid_size, cfg.grid_layer, cfg.cell_pool)
        return backbones.pooled_features(self.vision, pixel_values)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """One image's feature shape F (per image of :meth:`image_features`, the cache and prompts): the
        prefix's own, :meth:`VisualPrefix.feature_shape <.prefix.VisualPrefix.feature_shape>`."""
        return self.visual_prefix.feature_shape(self.vis_dim)

    @property
    def bos_before_image(self) -> bool:
        """The one layout rule: does BOS come before the visual prefix (``after_bos``, and the LM has a BOS)?

        Training (:meth:`caption_inputs`) and every inference prompt (``infer.generate``) follow it.
        """
        return self.has_bos and self.config.image_layout == "after_bos"

    @property
    def has_bos(self) -> bool:
        """Whether captions start with a BOS token (assumed when there is no tokenizer)."""
        return self.tokenizer is None or self.tokenizer.bos_token_id is not None

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, d) LM input embeddings, with [RET] spliced in from its own parameter."""
        emb = self.lm.get_input_embeddings()
        is_ret = input_ids == self.ret_id
        x = emb(input_ids.masked_fill(is_ret | (input_ids >= emb.num_embeddings), 0))
        return torch.where(is_ret.unsqueeze(-1), self.ret_embedding.to(x.dtype), x)

    def visual_embeds(self, features: torch.Tensor) -> torch.Tensor:
        """Features from :meth:`image_features` -> (B, k, d) visual prefix (:class:`~.prefix.VisualPrefix`).

        pooled: (B, D) -> Linear -> (B, k·d) -> k tokens. grid: (B, 1 + g², D) -> the g² cell tokens,
        each layer-normalised (no parameters: the towers' patch tokens are not on one scale) and
        projected to one LM token; with ``cell_names`` each follows its name, giving (B, n_prefix, d).
        """
        return self.visual_prefix(features, self.cell_embedding, self.lm.get_input_embeddings())

    # ------------------------------------------------------------------------------------------
    # the frozen LM with [RET] spliced into its output
    def lm_hidden(self, inputs_embeds, attention_mask, *, position_ids=None, cache=None, use_cache=False):
        """Run the frozen LM body (no output head) on embeddings (B, T, d) with mask (B, T) (or a 4-D mask).

        Returns the body's output: ``last_hidden_state`` (the state the output head reads: after
        the final norm) and ``hidden_states`` (every layer); ``backbones.kv_cache(out)`` is its KV
        cache when ``use_cache``. Logits are then computed only where they are needed
        (:meth:`logits_at`), which saves a (B, T, V) tensor.
        """
        lm_dtype = self.lm.get_input_embeddings().weight.dtype
        return self.lm.base_model(inputs_embeds=inputs_embeds.to(lm_dtype), attention_mask=attention_mask,
                                  position_ids=position_ids, use_cache=use_cache, output_hidden_states=True,
                                  **{self._cache_kw: cache})

    def logits_at(self, h: torch.Tensor) -> torch.Tensor:
        """Output logits (..., V') for final states h (..., d_out), with [RET]'s column h · ret_row spliced in
        (V' = max(V, ret_id + 1))."""
        logits = self.lm.get_output_embeddings()(h).float()
        ret_row = self.ret_output if self.ret_output is not None else self.ret_embedding
        return self._splice_ret_logit(logits, (h.float() @ ret_row.float()).unsqueeze(-1))

    def lm_forward(self, inputs_embeds, attention_mask, *, position_ids=None, cache=None, use_cache=False):
        """Frozen LM on embeddings -> (logits (B, T, V') with the [RET] column, body output); as :meth:`lm_hidden`."""
        out = self.lm_hidden(inputs_embeds, attention_mask, position_ids=position_ids, cache=cache,
                             use_cache=use_cache)
        return self.logits_at(out.last_hidden_state), out

    def _splice_ret_logit(self, logits, ret_logit):
        V, r = logits.shape[-1], self.ret_id
        if r < V:  # the id points at an unused row of a padded matrix (OPT): overwrite that column
            logits[..., r] = ret_logit[..., 0]  # in place: the head's matmul does not keep its output
            return logits
        gap = logits.new_full((*logits.shape[:-1], r - V), float("-inf"))
        return torch.cat([logits, gap, ret_logit], dim=-1)

    def vectors_at(self, hidden_states, positions: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Text vectors t = Σ over ``ret_layers`` of head_l(h_l at (``rows``, ``positions``)): (B, q), unnormalised.

        ``hidden_states``: every layer's states from :meth:`lm_hidden`; ``rows`` defaults to 0..B-1 (one
        position per batch row). The counterpart of :meth:`logits_at`."""
        if rows is None:
            rows = torch.arange(positions.shape[0], device=positions.device)
        t = 0
        for layer, head in zip(self.config.ret_layers, self.text_heads):
            h = hidden_states[layer][rows, positions]  # (B, d_layer)
            t = t + head(h.to(head[0].weight.dtype))
        return t

    # ------------------------------------------------------------------------------------------
    # the two encoders of the retrieval space (every path - training, validation, scoring, the
    # index - goes through these)
    def encode_images(self, features: torch.Tensor) -> torch.Tensor:
        """Image vectors v = image_head(f): (B, D) pooled features -> (B, q), unnormalised. ``features`` come
        from :meth:`image_features` or the feature cache; of grid features only the pooled row f is used."""
        f = features if features.dim() == 2 else features[:, 0]
        return self.image_head(f.to(self.image_head.weight.dtype))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text vectors t: ``</s> caption [RET]`` ids (B, L) from :meth:`tokenize` -> (B, q), unnormalised,
        read from the hidden states at each row's last [RET] (no logits are computed)."""
        return self.retrieval_pass(input_ids, attention_mask, with_loss=False)[1]

    def encode_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      positions: torch.Tensor) -> torch.Tensor:
        """Text vectors of already-embedded rows (B, T, d) (interleaved prompts), read at ``positions`` (B,)."""
        out = self.lm_hidden(inputs_embeds, attention_mask)  # states only: a vector needs no logits
        return self.vectors_at(out.hidden_states, positions)

    def ret_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Index of the last [RET] in each row (the retrieval state is read where [RET] is input)."""
        is_ret = input_ids == self.ret_id
        if not bool(is_ret.any(dim=1).all()):
            raise FromageError("every retrieval-mode row must contain the [RET] token")
        T = input_ids.shape[1]
        return T - 1 - is_ret.flip(1).int().argmax(dim=1)

    # ------------------------------------------------------------------------------------------
    # captioning-mode sequences
    def caption_inputs(self, prefix, tok, input_ids, attention_mask):
        """Build captioning inputs: (x (B, k+L, d), mask (B, k+L), labels (B, k+L)).

        before_bos: [img_1..img_k, </s>, w_1..w_n]  -> labels [-100 × k, </s>, w_1..w_n]
        after_bos:  [</s>, img_1..img_k, w_1..w_n]  -> labels [-100, -100 × k, w_1..w_n]
        """
        B, k = prefix.shape[:2]
        labels = caption_labels(input_ids, attention_mask, self.ret_id)
        # [RET] carries no loss in captioning mode and nothing after it does: treat it as padding
        attention_mask = attention_mask.masked_fill(input_ids == self.ret_id, 0)
        j = int(self.bos_before_image)  # tokens before the image: BOS or nothing
        labels[:, :j] = IGNORE  # a BOS before the image has no image to be predicted from
        x = torch.cat([tok[:, :j], prefix.to(tok.dtype), tok[:, j:]], 1)
        mask = torch.cat([attention_mask[:, :j], attention_mask.new_ones(B, k), attention_mask[:, j:]], 1)
        labels = torch.cat([labels[:, :j], labels.new_full((B, k), IGNORE), labels[:, j:]], 1)
        return x, mask, labels

    def concat_pairs(self, x, mask, labels):
        """The concatenated-captions trick: rows (2i, 2i+1) become one row [a, b-without-BOS].

        Only real positions are kept (padding and the masked [RET] carry no loss in captioning
        mode). Unlike the original, the second example's BOS is dropped, so the row reads like
        one text with two images in it. An odd last row stays on its own.
        """
        bos_at = 0 if self.bos_before_image else self.n_prefix  # where BOS sits in a row
        return concat_pairs(x, mask, labels, bos_at if self.has_bos else None)

    def caption_states(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Final LM states (B, T, d_out) of captioning inputs, packed (see :mod:`.packing`) when it pays."""
        n = packable(mask) if self.config.pack_sequences else None
        if n is None:
            return self.lm_hidden(x, mask).last_hidden_state
        p = plan_packing(n, mask.shape[1])
        out = self.lm_hidden(pack(x, p), p.attention_mask(), position_ids=p.position_ids)
        return unpack(out.last_hidden_state, p)

    # ------------------------------------------------------------------------------------------
    # retrieval mode
    def retrieval_pass(self, input_ids, attention_mask, with_loss: bool = True):
        """``</s> caption [RET]`` rows (B, L) -> (CE_ret or None, text vectors t (B, q)).

        [RET] is a target of CE_ret (it teaches the LM to emit [RET]) and t is read where [RET] is
        the input. The plain path below is the definition: one pass over the rows (without a loss,
        no logits are computed at all). With ``with_loss``, ``fast_ret_pass`` and a frozen LM, the
        optimisation in :mod:`.fast_ret` computes the same numbers with a one-position backward.
        """
        frozen = not any(p.requires_grad for p in self.lm.parameters())  # the optimisation needs it
        if with_loss and self.config.fast_ret_pass and frozen:
            from .fast_ret import retrieval_pass_fast
            return retrieval_pass_fast(self, input_ids, attention_mask)
        out = self.lm_hidden(self.embed_tokens(input_ids), attention_mask)
        loss = next_token_ce(out.last_hidden_state, retrieval_labels(input_ids, attention_mask),
                             self.logits_at) if with_loss else None
        return loss, self.vectors_at(out.hidden_states, self.ret_positions(input_ids))

    # ------------------------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask, features=None, pixel_values=None,
                concat: bool | None = None, gather: bool = False) -> FromageOutput:
        """One training step's losses on a batch of (image, ``</s> caption [RET]``) pairs.

        input_ids, attention_mask: (B, L) from :meth:`tokenize`.
        features: (B, D) cached pooled features, or pixel_values: (B, 3, H, W).
        concat: apply the concatenated-captions trick (None: draw with ``concat_prob`` when training).
        gather: InfoNCE over every rank's batch (the trainer sets it under data parallelism).
        """
        if features is None:
            if pixel_values is None:
                raise FromageError("forward needs either features or pixel_values")
            features = self.image_features(pixel_values)
        cfg = self.config
        if concat is None:
            concat = self.training and cfg.concat_prob > 0 and float(torch.rand(())) < cfg.concat_prob

        # 1) captioning mode: image prefix + caption, next-token CE on the caption (BOS included)
        x, mask, labels = self.caption_inputs(self.visual_embeds(features), self.embed_tokens(input_ids),
                                              input_ids, attention_mask)
        if concat and x.shape[0] > 1:
            x, mask, labels = self.concat_pairs(x, mask, labels)
        cap_loss = next_token_ce(self.caption_states(x, mask), labels, self.logits_at)

        # 2) retrieval mode: "</s> caption [RET]" alone; CE with [RET] as a target; t from its state
        ret_lm_loss, t = self.retrieval_pass(input_ids, attention_mask)  # (), (B, q)
        v = self.encode_images(features)  # (B, q)

        # 3) contrastive: InfoNCE both ways between t and v
        t2i, i2t, logits_per_text = info_nce(t, v, self.logit_scale_exp, gather=gather)
        loss = fromage_loss(cap_loss, ret_lm_loss, t2i, i2t, cfg.cap_loss_weight, cfg.ret_loss_weight)
        return FromageOutput(loss, cap_loss, ret_lm_loss, t2i, i2t, t, v, logits_per_text)

    # inference (layer above): ``fromage_mini.generate(model, prompt)``, ``fromage_mini.caption(model, images)``

    # ------------------------------------------------------------------------------------------
    # checkpoints (implemented in checkpoint.py)
    def save_pretrained(self, folder):
        """Write the trained tensors (safetensors) and the config (JSON) to ``folder``."""
        save_adapters(self, folder)

    @classmethod
    def from_pretrained(cls, folder, **overrides) -> "Fromage":
        """Rebuild a model from :meth:`save_pretrained` output (backbones loaded by name/path)."""
        return load_adapters(cls, folder, **overrides)

    @classmethod
    def from_released(cls, ckpt_path, model_args_path=None, **overrides) -> "Fromage":
        """Load the released FROMAGe checkpoint (``pretrained_ckpt.pth.tar`` + ``model_args.json``)."""
        return load_released(cls, ckpt_path, model_args_path, **overrides)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def expected_adapter_count(d_embed, d_out, d_layers, vis_dim, k, q, tied) -> int:
    """Closed-form count of the trained numbers (used in tests and the tour notebook)."""
    n = vis_dim * d_embed * k + d_embed * k  # visual prefix
    n += d_embed + (0 if tied else d_out)  # [RET] rows
    n += sum(dl * q + q for dl in d_layers)  # text heads
    n += vis_dim * q + q + 1  # image head + logit scale
    return n

