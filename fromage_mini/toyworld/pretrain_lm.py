"""Pretrain the toy LM: a 0.9M-parameter ``OPTForCausalLM``, text-only, on the ShapesWorld corpus.

Recipe (from the ShapesWorld prototype): hidden 128, 4 layers, 4 heads, ffn 512, tied embeddings,
dropout 0; AdamW (0.9, 0.95), wd 0.01, lr 2e-3 with 100 warm-up steps then cosine, batch 128 documents,
grad clip 1.0; each document is ``</s> text </s>``, batches are bucketed by length to waste little
compute on padding. Saved with ``save_pretrained`` (model + tokenizer together), so
``AutoModelForCausalLM.from_pretrained(out)`` and ``AutoTokenizer.from_pretrained(out)`` load it.

Run alone: ``python -m fromage_mini.toyworld.pretrain_lm --out data_samples/toy_lm``.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import OPTConfig, OPTForCausalLM

from .captions import compound
from .corpus import GRID_MIX, SUMMARY_WORD, build_corpus, caption_corpus
from .tokenizer import EOS_ID, PAD_ID, train_tokenizer
from .world import make_scene

LM_DEFAULTS = {"hidden": 128, "layers": 4, "heads": 4, "ffn": 512, "max_positions": 256}


def make_lm(vocab_size: int, hidden=128, layers=4, heads=4, ffn=512, max_positions=256) -> OPTForCausalLM:
    """A freshly initialised OPT-architecture causal LM with OPT's special ids (pad 1, bos = eos 2)."""
    cfg = OPTConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, ffn_dim=ffn,
                    num_attention_heads=heads, max_position_embeddings=max_positions, word_embed_proj_dim=hidden,
                    do_layer_norm_before=True, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                    layerdrop=0.0, pad_token_id=PAD_ID, bos_token_id=EOS_ID, eos_token_id=EOS_ID,
                    tie_word_embeddings=True)
    return OPTForCausalLM(cfg)


def bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 50):
    """Yield index batches forever: shuffle, sort within pools of ``pool`` batches by length, shuffle batches."""
    while True:
        perm = rng.permutation(len(lengths))
        batches = []
        for s in range(0, len(perm), batch_size * pool):
            chunk = perm[s:s + batch_size * pool]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[i:i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
        for j in rng.permutation(len(batches)):
            yield batches[j]


def collate(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad with ``<pad>``; labels are the ids with pads set to -100 (the model shifts them)."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask, ids.masked_fill(mask == 0, -100)


def encode_documents(tok, docs: list) -> list[list[int]]:
    """Token ids of corpus documents: a string as one text (``</s>`` first); a tuple's parts tokenized
    separately and joined, so each later part starts as it would after a visual prefix."""
    plain = [i for i, d in enumerate(docs) if isinstance(d, str)]
    out = [None] * len(docs)
    for i, ids in zip(plain, tok([docs[i] for i in plain]).input_ids if plain else []):
        out[i] = ids
    for i, d in enumerate(docs):
        if out[i] is None:
            out[i] = tok(d[0]).input_ids + [t for part in d[1:] for t in tok(part, add_special_tokens=False).input_ids]
    return out


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def caption_nll(model, tok, captions: list[str], batch_size: int = 256) -> float:
    """Mean NLL (nats/token) of ``</s> caption </s>``, over the caption tokens and the final ``</s>``."""
    total, count = 0.0, 0
    for s in range(0, len(captions), batch_size):
        seqs = [x + [EOS_ID] for x in tok(captions[s:s + batch_size]).input_ids]
        ids, mask, labels = collate(seqs)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:], reduction="sum")
        total += nll.item()
        count += (labels[:, 1:] != -100).sum().item()
    return total / count


def unigram_nll(tok, train_texts: list[str], captions: list[str]) -> float:
    """NLL (nats/token) of the held-out captions under an add-one unigram model of the train captions."""
    counts = np.ones(len(tok))
    for x in tok(train_texts).input_ids:
        np.add.at(counts, x[1:] + [EOS_ID], 1)
    logp = np.log(counts / counts.sum())
    toks = [t for x in tok(captions).input_ids for t in x[1:] + [EOS_ID]]
    return float(-logp[toks].mean())


@torch.no_grad()
def bag_mass(model, tok, scenes: list[dict]) -> float:
    """Mean probability, right after ``</s> <caption> summary``, that the next token is one of the scene's compounds.

    A perfect LM gives 1.0; this is the leading indicator of whether a FROMAGe [RET] head on this frozen
    LM will retrieve (the prototype's FROMAGe reached t2i R@1 0.64–0.71 with bag mass ≈ 0.52).
    """
    from .captions import canonical_caption

    texts = [f"{canonical_caption(s)} {SUMMARY_WORD}" for s in scenes]
    seqs = tok(texts).input_ids
    ids, mask, _ = collate(seqs)
    logits = model(input_ids=ids, attention_mask=mask).logits
    last = mask.sum(1) - 1
    probs = logits[torch.arange(len(seqs)), last].softmax(-1)
    out = []
    for i, s in enumerate(scenes):
        want = {tok.convert_tokens_to_ids("Ġ" + compound(o)) for o in s["objects"]}
        out.append(probs[i, sorted(want)].sum().item())
    return float(np.mean(out))


@torch.no_grad()
def greedy(model, tok, prompt: str, max_new_tokens: int = 24) -> str:
    """Greedy continuation of ``prompt`` (stops at ``</s>``)."""
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


# ---------------------------------------------------------------- training

def pretrain_lm(out: str | Path, steps: int = 3000, batch_size: int = 128, n_docs: int = 100_000, lr: float = 2e-3,
                warmup: int = 100, seed: int = 0, eval_every: int = 500, n_eval: int = 500,
                device: str = "cpu", tokenizer=None, progress: bool = True, mix: dict | None = None,
                **model_kw) -> dict:
    """Build the corpus (train split only) and tokenizer, train the LM, save both to ``out``; return metrics.

    ``model_kw`` overrides :data:`LM_DEFAULTS` (``hidden``, ``layers``, ``heads``, ``ffn``,
    ``max_positions``); tiny values plus ``steps=2`` give a smoke run.
    """
    t0 = time.time()
    torch.manual_seed(seed)
    docs = build_corpus(seed, n_docs, mix)
    tok = tokenizer or train_tokenizer([d if isinstance(d, str) else "".join(d) for d in docs],
                                       model_max_length=model_kw.get("max_positions", 256))
    max_len = model_kw.get("max_positions", 256)
    seqs = [(x + [EOS_ID])[:max_len] for x in encode_documents(tok, docs)]
    lengths = np.array([len(s) for s in seqs])
    val_scenes = [make_scene(seed, "val", i) for i in range(n_eval)]
    from .captions import canonical_caption
    val_caps = [canonical_caption(s) for s in val_scenes]
    t_data = time.time() - t0

    model = make_lm(len(tok), **{**LM_DEFAULTS, **model_kw}).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) *
                                              0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    batches = bucketed_batches(lengths, batch_size, np.random.default_rng([seed, 202]))
    history = []
    t1 = time.time()
    bar = tqdm(range(steps), desc="toy LM", disable=not progress)
    for step in bar:
        model.train()
        ids, mask, labels = (t.to(device) for t in collate([seqs[i] for i in next(batches)]))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            model.eval()
            bm = bag_mass(model.cpu(), tok, val_scenes[:200])
            model.to(device)
            history.append({"step": step + 1, "loss": round(loss.item(), 4), "bag_mass": round(bm, 4),
                            "seconds": round(time.time() - t1, 1)})
            bar.set_postfix(loss=f"{loss.item():.3f}", bag=f"{bm:.3f}")
    train_s = time.time() - t1

    model = model.cpu().eval()
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    nll = caption_nll(model, tok, val_caps)
    uni = unigram_nll(tok, caption_corpus(seed, "train", min(20_000, n_docs)), val_caps)
    demo = val_scenes[:3]
    completions = {p: greedy(model, tok, p) for p in
                   [f"{canonical_caption(s)} {SUMMARY_WORD}" for s in demo]
                   + [f"{canonical_caption(demo[0])}\nQ: how many shapes are there?\nA:", "a small", "then the"]}
    return {
        "params": sum(p.numel() for p in model.parameters()), "vocab_size": len(tok), "n_docs": n_docs,
        "steps": steps, "batch_size": batch_size, "data_seconds": round(t_data, 1), "train_seconds": round(train_s, 1),
        "val_caption_ppl": round(math.exp(nll), 4), "unigram_ppl": round(math.exp(uni), 4),
        "bag_mass": round(bag_mass(model, tok, val_scenes), 4), "history": history, "greedy": completions,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data_samples/toy_lm")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n-docs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mix", choices=("default", "grid"), default="default",
                    help="grid: add documents in the named-cell grid layout (an LM for the grid prefix)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on a busy machine)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    import json

    m = pretrain_lm(a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, n_docs=a.n_docs, seed=a.seed,
                    device=a.device, mix=GRID_MIX if a.mix == "grid" else None)
    print(json.dumps(m, indent=2))


if __name__ == "__main__":
    main()
