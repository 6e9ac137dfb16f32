"""Data parallelism: two gloo processes with DDP give the same losses and gradients as one process.

The parent writes tiny models' adapters and a fixed global batch of 8 to a temp folder, then runs
this file as a script twice, as ranks 0 and 1 of a world of 2 (the environment ``torchrun`` would
set). Each rank runs the forward on its half, backward, and writes its losses and adapter
gradients (after DDP's average) to a safetensors file. The parent runs the same models in one
process on the whole batch and compares.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

# 8 distinct captions; each half gets the same multiset of lengths (tokens incl. BOS and [RET]),
# so the two ranks' token-mean CE losses average to the global token-mean (see test below)
CAPTIONS = ["a small red circle at the top left.", "two cats sleep on a sofa in the sun.",
            "a photo of a dog running on the beach.", "the quick brown fox jumps over the lazy dog.",
            "a large blue square on the right and a small green triangle.", "Q: what colour is the circle?",
            "three birds sit on a wire above the street.", "a green triangle below a yellow star."]
LENGTHS = [5, 7, 9, 6, 7, 5, 6, 9]
MODELS = {  # name -> (lm family, config): a tied OPT and an untied Llama (which trains ret_output)
    "opt": ("opt", dict(n_visual_tokens=2, ret_layers=(-1, 1))),
    "llama": ("llama", dict(n_visual_tokens=1, fast_ret_pass=False)),
}
WORLD = 2


def global_batch(model) -> dict[str, torch.Tensor]:
    """``</s> caption [RET]`` rows cut to LENGTHS, right-padded, plus random features."""
    b = model.tokenize(CAPTIONS, max_len=max(LENGTHS))
    ids, mask = b["input_ids"], b["attention_mask"]
    assert ids.shape[1] == max(LENGTHS)
    pad = model.tokenizer.pad_token_id
    for i, n in enumerate(LENGTHS):
        ids[i, n - 1] = model.ret_id
        ids[i, n:] = pad
        mask[i, n:] = 0
    g = torch.Generator().manual_seed(1)
    return {"input_ids": ids, "attention_mask": mask, "features": torch.randn(len(ids), model.vis_dim, generator=g)}


def results(out, model, prefix: str) -> dict[str, torch.Tensor]:
    """Losses and adapter gradients as a flat dict of tensors."""
    res = {f"{prefix}.loss.{k}": getattr(out, k).detach().reshape(1)
           for k in ("loss", "cap_loss", "ret_lm_loss", "t2i_loss", "i2t_loss")}
    for n, p in model.named_parameters():
        if p.requires_grad:
            res[f"{prefix}.grad.{n}"] = p.grad.detach().clone()
    return res


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(work: Path, timeout: float = 150) -> None:
    """Start WORLD ranks of this file as a script and wait for all of them (killing on timeout)."""
    port = free_port()
    procs = []
    for r in range(WORLD):
        env = {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(WORLD),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
               "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
        if sys.platform.startswith("linux"):
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        log = open(work / f"rank{r}.log", "w")
        procs.append((subprocess.Popen([sys.executable, __file__, str(work)], env=env, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1]), log))
    deadline = time.monotonic() + timeout
    try:  # wait for all; stop early if one rank fails (the other would wait for it until timeout)
        while time.monotonic() < deadline and any(p.poll() is None for p, _ in procs):
            if any(p.poll() not in (None, 0) for p, _ in procs):
                break
            time.sleep(0.2)
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    bad = [(r, p.returncode) for r, (p, _) in enumerate(procs) if p.returncode != 0]
    if bad:
        logs = "\n".join(f"--- rank {r} (exit {rc}) ---\n{(work / f'rank{r}.log').read_text()[-3000:]}"
                         for r, rc in bad)
        raise AssertionError(f"distributed workers failed or timed out:\n{logs}")


def test_ddp_two_ranks_match_one_process(tmp_path, make_model):
    from safetensors.torch import load_file, save_file

    refs = {}
    for name, (lm, cfg) in MODELS.items():
        m = make_model(lm, concat_prob=0.0, **cfg)
        m.save_pretrained(tmp_path / name)
        data = global_batch(m)
        save_file(data, str(tmp_path / f"{name}.batch.safetensors"))
        refs[name] = (m, data)
    t0 = time.time()
    launch(tmp_path)
    print(f"2-rank run: {time.time() - t0:.1f}s")
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD)]

    for name, (m, data) in refs.items():
        m.train()
        out = m(**data, concat=False)
        out.loss.backward()
        ref = results(out, m, name)
        # InfoNCE: every rank computes the global-batch loss
        for r in range(WORLD):
            for k in ("t2i_loss", "i2t_loss"):
                torch.testing.assert_close(ranks[r][f"{name}.loss.{k}"], ref[f"{name}.loss.{k}"],
                                           rtol=1e-5, atol=1e-6, msg=f"{name} rank {r} {k}")
        # CE terms: the mean over ranks of the local means (equal token counts per rank)
        for k in ("cap_loss", "ret_lm_loss", "loss"):
            mean = sum(rk[f"{name}.loss.{k}"] for rk in ranks) / WORLD
            torch.testing.assert_close(mean, ref[f"{name}.loss.{k}"], rtol=1e-5, atol=1e-6, msg=f"{name} {k}")
        grads = [k for k in ref if k.startswith(f"{name}.grad.")]
        assert len(grads) == sum(p.requires_grad for p in m.parameters())
        assert (f"{name}.grad.ret_output" in ref) is (name == "llama")
        for k in grads:
            assert ref[k].abs().max() > 0, k
            for r in range(WORLD):
                torch.testing.assert_close(ranks[r][k], ref[k], rtol=1e-4, atol=1e-6, msg=f"rank {r} {k}")


def test_helpers_without_a_process_group():
    import pytest

    from fromage_mini.errors import FromageError
    from fromage_mini.train import distributed as d

    assert not d.active() and d.world() == 1 and d.rank() == 0 and d.is_main()
    assert d.init_from_env() is False or d.active()  # WORLD_SIZE unset under pytest
    d.barrier()
    assert d.broadcast_from_main({"stop": True}) == {"stop": True}
    x = torch.randn(3, 4, requires_grad=True)
    assert d.all_gather_with_grad(x) is x
    assert d.shard_indices(range(8), 1, 2) == [4, 5, 6, 7]
    assert d.shard_indices([5, 3, 9], 0, 1) == [5, 3, 9]
    with pytest.raises(FromageError, match="divisible"):
        d.shard_indices(range(9), 0, 2)
    y = d.scale_grad(x, 3.0)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0))


# ----------------------------------------------------------------------------------------------
def _worker(work: Path) -> None:
    """One rank: DDP forward/backward on this rank's half of each model's global batch."""
    torch.set_num_threads(1)
    from safetensors.torch import load_file, save_file

    from fromage_mini import Fromage
    from fromage_mini.train import distributed

    assert distributed.init_from_env(), "expected WORLD_SIZE > 1"
    try:
        assert distributed.world() == WORLD and distributed.is_main() == (distributed.rank() == 0)
        assert distributed.broadcast_from_main(f"rank {distributed.rank()}") == "rank 0"
        res = {}
        for name in MODELS:
            model = Fromage.from_pretrained(work / name)
            model.train()
            net = distributed.wrap_ddp(model)
            data = load_file(str(work / f"{name}.batch.safetensors"))
            idx = distributed.shard_indices(range(len(data["input_ids"])))
            out = net(data["input_ids"][idx], data["attention_mask"][idx], features=data["features"][idx],
                      concat=False, gather=True)  # InfoNCE over the global batch
            out.loss.backward()
            res |= results(out, model, name)
        save_file(res, str(work / f"rank{distributed.rank()}.safetensors"))
        distributed.barrier()
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    _worker(Path(sys.argv[1]))
