"""A byte-level BPE tokenizer for ShapesWorld text, with OPT's special tokens and BOS habit.

Ids: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3 (as in OPT); ``bos = eos = </s>``, pad ``<pad>``.
Like OPT's tokenizer, encoding prepends ``</s>`` automatically. Saved as a ``PreTrainedTokenizerFast``
(``tokenizer.json``), so ``AutoTokenizer.from_pretrained(path)`` loads it offline.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 2, 1, 2, 3


def train_tokenizer(texts, vocab_size: int = 2000, model_max_length: int = 256) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on ``texts``; the trainer stops early once every word is a single token."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    assert [bpe.token_to_id(t) for t in SPECIALS] == [0, 1, 2, 3]
    bpe.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A $B:1",
                                                       special_tokens=[("</s>", EOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=model_max_length, padding_side="right")
