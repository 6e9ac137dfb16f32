"""``fromage-mini tour``: a one-minute tour on tiny random backbones (no data, no downloads).

(Not ``make demo``, which trains the toy preset on ShapesWorld: ``fromage-mini train --preset toy``.)

It builds a tiny OPT and a tiny CLIP tower, trains the adapters for a few dozen steps on random
image features paired with fixed captions, shows every loss falling and the model learning to
emit [RET], then saves and reloads the adapters.
"""
from __future__ import annotations

from pathlib import Path


def run(out: str | Path, steps: int = 60, seed: int = 0) -> dict:
    import torch

    from . import Fromage, FromageConfig
    from .metrics import recall_at_k
    from .toyworld.tiny import TINY_TEXTS, make_tiny_lm, make_tiny_vision

    out = Path(out)
    torch.manual_seed(seed)
    lm = make_tiny_lm(out / "backbones/tiny-opt", "opt")
    vision = make_tiny_vision(out / "backbones/tiny-clip", "clip")
    model = Fromage(FromageConfig(lm=str(lm), vision=str(vision), ret_dim=32, concat_prob=0.0))
    print(f"trainable parameters: {model.num_trainable():,} "
          f"(frozen: {sum(p.numel() for p in model.parameters() if not p.requires_grad):,})")
    captions = sorted(set(TINY_TEXTS))
    batch = model.tokenize(captions)
    batch["features"] = torch.randn(len(captions), model.vis_dim)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, betas=(0.9, 0.95))
    model.train()
    first = None
    for step in range(steps + 1):
        o = model(**batch)
        first = o.loss.item() if first is None else first
        if step % 20 == 0:
            print(f"step {step:3d}  loss {o.loss.item():.3f}  cap {o.cap_loss.item():.3f}  "
                  f"ret-lm {o.ret_lm_loss.item():.3f}  t2i {o.t2i_loss.item():.3f}  "
                  f"i2t {o.i2t_loss.item():.3f}  in-batch t2i R@1 {recall_at_k(o.logits_per_text, (1,))['R@1']:.2f}")
        if step < steps:
            opt.zero_grad()
            o.loss.backward()
            opt.step()
    model.save_pretrained(out / "adapters")
    again = Fromage.from_pretrained(out / "adapters")
    same = all(torch.equal(a, again.adapter_state_dict()[n]) for n, a in model.adapter_state_dict().items())
    print(f"saved adapters to {out / 'adapters'} and reloaded them (identical: {same})")
    return {"first_loss": first, "final_loss": o.loss.item(), "reload_identical": same}


def register(sub):
    p = sub.add_parser("tour", help="a one-minute tour of the losses on tiny random backbones "
                                    "(make demo is train --preset toy)")
    p.add_argument("--out", default="runs/tour")
    p.add_argument("--steps", type=int, default=60)
    p.set_defaults(func=lambda a: run(a.out, a.steps) and 0)
