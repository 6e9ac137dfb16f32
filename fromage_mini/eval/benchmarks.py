"""The evaluations under their former home: every name the notebooks import from here.

The protocols now live in :mod:`.recall`, :mod:`.vist` and :mod:`.visdial`, the command line in
:mod:`.cli`; this module only re-exports them (notebooks import ``fromage_mini.eval.benchmarks``).
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
