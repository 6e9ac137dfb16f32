"""Packed rows give the same losses and adapter gradients as padded rows, for every LM family."""
import pytest
import torch

from fromage_mini.model.packing import pack, plan_packing, prefix_lengths, unpack, worth_packing

# very different lengths, so packing saves rows
CAPTIONS = ["a red circle", "two small blue squares at the top left of a grey picture", "a cat",
            "a large green star next to a small yellow cross on the right", "dog", "a white diamond"]


def test_plan_keeps_every_token_once_and_restarts_positions():
    lengths = torch.tensor([5, 2, 3, 1, 4])
    p = plan_packing(lengths, T=6)
    assert p.n_rows < len(lengths)  # 15 tokens in rows of 5: 3 rows
    assert sorted(p.src[p.valid].tolist()) == sorted(i * 6 + j for i, n in enumerate(lengths.tolist())
                                                      for j in range(n))
    x = torch.randn(5, 6, 3) * (torch.arange(6)[None, :, None] < lengths[:, None, None])
    torch.testing.assert_close(unpack(pack(x, p), p), x)
    for i, n in enumerate(lengths.tolist()):
        assert p.position_ids[p.segment == i].tolist() == list(range(n))
    m = p.attention_mask()[:, 0]
    # a token never sees another sequence's token, nor a later one of its own
    seg = p.segment
    for r in range(p.n_rows):
        for a in range(m.shape[1]):
            for b in range(m.shape[2]):
                if m[r, a, b] and p.valid[r, a]:
                    assert seg[r, a] == seg[r, b] and b <= a


def test_prefix_lengths_and_worth():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert prefix_lengths(mask).tolist() == [2, 3]
    assert prefix_lengths(torch.tensor([[0, 1, 1]])) is None  # left padding: not packable here
    assert worth_packing(torch.tensor([1, 1, 3])) and not worth_packing(torch.tensor([3, 3, 2]))


@pytest.mark.parametrize("lm", ["opt", "gpt2", "llama"])
@pytest.mark.parametrize("layout", ["before_bos", "after_bos"])
def test_packed_step_equals_padded_step(make_model, lm, layout):
    m = make_model(lm, n_visual_tokens=2, ret_layers=(-1, 1), concat_prob=0.0, image_layout=layout)
    b = m.tokenize(CAPTIONS)
    assert worth_packing(b["attention_mask"].sum(1))
    b["features"] = torch.randn(len(CAPTIONS), m.vis_dim, generator=torch.Generator().manual_seed(0))
    res = {}
    for packed in (True, False):
        m.config.pack_sequences = packed
        m.zero_grad()
        out = m(**b)
        out.loss.backward()
        res[packed] = (out, {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad})
    (po, pg), (uo, ug) = res[True], res[False]
    for name in ("cap_loss", "ret_lm_loss", "t2i_loss", "i2t_loss"):
        torch.testing.assert_close(getattr(po, name), getattr(uo, name), rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(po.text_vectors, uo.text_vectors, rtol=1e-4, atol=1e-5)
    for n in ug:
        torch.testing.assert_close(pg[n], ug[n], rtol=1e-4, atol=1e-5, msg=n)
