"""Evaluation protocols: caption↔image recall (:mod:`.recall`), VIST contextual retrieval
(:mod:`.vist`), VisDial answer ranking and retrieval (:mod:`.visdial`); ``fromage-mini eval`` in :mod:`.cli`.

The default is the *corrected* protocol. ``faithful_to_original=True`` reproduces the original
scripts' quirks (reference §7), which changes the published numbers:

=====================  ==========================================  ==========================================
eval                   corrected (default)                         faithful_to_original=True
=====================  ==========================================  ==========================================
VIST retrieval         captions sorted by                          file order; a BOS before *every* caption;
                       ``worker_arranged_photo_order``; one BOS;   images squashed to 224×224 first
                       images through the tower's own processor
VisDial answers        log p(answer | image, dialogue), causal     cross-entropy *without* the shift (logit t
                       shift, answer tokenized without BOS;        scores token t), a BOS before each option;
                       NDCG on round ``round_id - 1`` (1-based)    NDCG on the flat index ``i·10 + round_id``
                                                                   (one round late); 224×224 squash
VisDial retrieval      dialogue → image (T2I), cosine              ranks dialogues per image (I→T, labelled
                                                                   T2I), unnormalised image vectors; squash
=====================  ==========================================  ==========================================

Images can be given everywhere as PIL images, file paths, features or (3, H, W)
pixels; features (of the model's ``feature_shape``: (D,) pooled, or (1 + g², D) with grid cells) are
computed once per image (:func:`.images.compute_features`).
"""
from .cli import register
from .images import compute_features, find_images, readable_images, skip_counts, trivial_cutoffs, usable_images
from .recall import read_pairs, recall_at_k_dataset
from .visdial import (
    VisDialDialog,
    VisDialRound,
    dialogue_text,
    option_ranks,
    read_visdial,
    read_visdial_dense,
    visdial_answer_ranking,
    visdial_image_retrieval,
)
from .vist import Story, contextual_retrieval, read_story_list, read_vist, story_prompt

__all__ = ["Story", "VisDialDialog", "VisDialRound", "compute_features", "contextual_retrieval", "dialogue_text",
           "find_images", "option_ranks", "read_pairs", "read_story_list", "read_visdial", "read_visdial_dense",
           "read_vist", "readable_images", "recall_at_k_dataset", "register", "skip_counts", "story_prompt",
           "trivial_cutoffs", "usable_images", "visdial_answer_ranking", "visdial_image_retrieval"]
