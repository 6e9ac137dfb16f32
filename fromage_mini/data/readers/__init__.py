"""Streaming readers for image–caption data, in the forms users already have, one module per source.

Every reader yields :class:`Sample` records (key, caption, RGB image) one at a time, in a fixed
order, without loading the dataset into memory:

    read_tsv(path)                the original FROMAGe TSV (``caption<TAB>image`` header row)   tsv.py
    read_image_folder(folder)     a plain folder of images (no captions), e.g. for an index     folder.py
    read_webdataset(shards)       img2dataset-style ``.tar`` shards (``{key}.jpg`` + ``.txt``)   webdataset.py
    read_hf_dataset(name)         a Hugging Face ``datasets`` dataset (imagefolder, parquet, ...) hf.py
    open_reader(spec)             picks one of the above from a path or ``hf:NAME``              entry.py
    read_images(spec, keys)       the images of a few rows, by key (for a gallery of results)    entry.py

Bad data is **skipped and counted, never replaced** (``items.py``): the original FROMAGe loader caught
any error and returned a random other item, which hides broken data and changes what the model sees.
Here each skipped item is recorded in a :class:`SkipLog` under one reason (see ``SKIP_REASONS``) and
logged at DEBUG level. Mistakes in what the user asked for (a missing TSV, a missing header column, no
shards found, an unreadable folder) raise :class:`~fromage_mini.errors.FromageError` instead: those are
errors, not bad items. Every TSV/CSV row in the package is parsed by :func:`read_table`, and every image
file is read by :func:`read_image_file`. The TSV and folder readers refuse paths leading outside the
data folder unless given ``allow_outside_root=True``; the image paths a Hugging Face dataset's cells
hold are read as given, unchecked.
"""
from ..images import IMAGE_EXTENSIONS, IMAGE_SUFFIXES
from .entry import open_reader, read_images
from .folder import list_images, read_image_folder
from .hf import CAPTION_COLUMNS, IMAGE_COLUMNS, read_hf_dataset
from .items import SKIP_REASONS, BadItem, Sample, SkipLog, decode_image, is_inside, log, read_image_file
from .tsv import read_table, read_tsv, split_row
from .webdataset import CAPTION_EXTENSIONS, list_shards, read_webdataset

__all__ = ["CAPTION_COLUMNS", "CAPTION_EXTENSIONS", "IMAGE_COLUMNS", "IMAGE_EXTENSIONS", "IMAGE_SUFFIXES",
           "SKIP_REASONS", "BadItem", "Sample", "SkipLog", "decode_image", "is_inside", "list_images", "list_shards",
           "log", "open_reader", "read_hf_dataset", "read_image_file", "read_image_folder", "read_images",
           "read_table", "read_tsv", "read_webdataset", "split_row"]
