"""Image–caption data: streaming readers with counted skips, and CC3M preparation."""
from .cc3m import prepare_cc3m
from .readers import (
    SKIP_REASONS,
    BadItem,
    Sample,
    SkipLog,
    decode_image,
    list_shards,
    open_reader,
    read_hf_dataset,
    read_image_folder,
    read_images,
    read_table,
    read_tsv,
    read_webdataset,
)

__all__ = [
    "SKIP_REASONS",
    "BadItem",
    "Sample",
    "SkipLog",
    "decode_image",
    "list_shards",
    "open_reader",
    "prepare_cc3m",
    "read_hf_dataset",
    "read_image_folder",
    "read_images",
    "read_table",
    "read_tsv",
    "read_webdataset",
]
