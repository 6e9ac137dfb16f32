"""Tiny random backbones saved as ordinary Hugging Face folders.

Tests, benchmarks and the quick demo use these instead of hub models: each is written with
``save_pretrained`` and loaded back through the very ``from_pretrained`` calls that
``facebook/opt-125m`` or ``openai/clip-vit-base-patch32`` take. Nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch

TINY_TEXTS = [
    "a small red circle at the top left.",
    "a large blue square on the right and a small green triangle at the bottom.",
    "two cats sleep on a sofa in the sun.",
    "a photo of a dog running on the beach.",
    "Q: what colour is the circle?\nA: red",
    "the quick brown fox jumps over the lazy dog.",
] * 4


def make_tokenizer(folder, texts=TINY_TEXTS, vocab_size: int = 300):
    """Train a byte-level BPE with OPT-style special tokens (BOS ``</s>`` added automatically)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    bpe.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A $B",
                                                       special_tokens=[("</s>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="</s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.save_pretrained(folder)
    return tok


def lm_config(family: str, vocab_size: int, d: int = 32, layers: int = 2, heads: int = 4, ffn: int | None = None):
    """A causal-LM config of the given family ("opt", "opt-proj", "gpt2", "llama")."""
    from transformers import GPT2Config, LlamaConfig, OPTConfig

    ffn = ffn or 4 * d
    if family == "opt":
        return OPTConfig(vocab_size=vocab_size, hidden_size=d, ffn_dim=ffn, num_hidden_layers=layers,
                         num_attention_heads=heads, word_embed_proj_dim=d, max_position_embeddings=256,
                         pad_token_id=1, bos_token_id=2, eos_token_id=2)
    if family == "opt-proj":  # like opt-350m: embeddings narrower than the hidden states
        return OPTConfig(vocab_size=vocab_size, hidden_size=d, ffn_dim=ffn, num_hidden_layers=layers,
                         num_attention_heads=heads, word_embed_proj_dim=d // 2, max_position_embeddings=256,
                         pad_token_id=1, bos_token_id=2, eos_token_id=2, do_layer_norm_before=False)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=d, n_layer=layers, n_head=heads, n_positions=256,
                          bos_token_id=2, eos_token_id=2)
    if family == "llama":  # untied output head, like Llama-2 / Mistral
        return LlamaConfig(vocab_size=vocab_size, hidden_size=d, intermediate_size=ffn, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                           max_position_embeddings=256, tie_word_embeddings=False,
                           pad_token_id=1, bos_token_id=2, eos_token_id=2)
    raise ValueError(f"unknown LM family {family!r}")


def make_tiny_lm(folder, family: str = "opt", tokenizer=None, seed: int = 0, **kw) -> Path:
    """Write a tiny random causal LM plus tokenizer to ``folder`` and return the path."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    tok = tokenizer or make_tokenizer(folder)
    tok.save_pretrained(folder)
    # OPT pads its vocabulary (50265 tokens, 50272 rows), so [RET] lands on an unused row; the
    # others get exactly len(tok) rows, so [RET]'s id points past the matrix
    vocab = len(tok) + (8 - len(tok) % 8) % 8 + 8 if family.startswith("opt") else len(tok)
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(lm_config(family, vocab, **kw))
    lm.save_pretrained(folder)
    return folder


def make_tiny_vision(folder, family: str = "clip", image_size: int = 32, d: int = 32, seed: int = 0) -> Path:
    """Write a tiny random vision tower + image processor ("clip", "clip-full" or "siglip")."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    folder = Path(folder)
    torch.manual_seed(seed)
    common = dict(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=8)
    if family == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(**common))
    elif family == "clip-full":
        model = CLIPModel(CLIPConfig(vision_config=common, projection_dim=d,
                                     text_config=dict(vocab_size=64, hidden_size=d, intermediate_size=2 * d,
                                                      num_hidden_layers=1, num_attention_heads=4)))
    elif family == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(**common))
    else:
        raise ValueError(f"unknown vision family {family!r}")
    model.save_pretrained(folder)
    if family == "siglip":
        proc = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    else:
        proc = CLIPImageProcessor(size={"shortest_edge": image_size},
                                  crop_size={"height": image_size, "width": image_size})
    proc.save_pretrained(folder)
    return folder
