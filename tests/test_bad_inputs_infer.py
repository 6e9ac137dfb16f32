"""Inference inputs a newcomer throws at it: long chats, huge texts, long contexts, bad chat commands.

Each case ends in a counted/said drop, a warning with the result still right, or one line (exit 2)."""
import subprocess
import sys

import pytest
import torch
from PIL import Image

from fromage_mini.chat import Dialogue
from fromage_mini.errors import FromageError
from fromage_mini.infer import scoring
from fromage_mini.infer.generate import build_inputs, fit_context, generate
from fromage_mini.model import load_model

TOY = "data_samples/toy_fromage"


@pytest.fixture(scope="module")
def toy():
    from fromage_mini.paths import resolve
    return load_model(resolve(TOY), device="cpu")


def test_a_long_chat_drops_its_oldest_turns_and_keeps_the_image(toy):
    img = Image.new("RGB", (64, 64), "red")
    chat = Dialogue(toy, max_new_tokens=16)
    chat.ask("what is in the picture? " * 3, image=img)
    dropped = []
    for i in range(14):  # ~40 positions a turn: the toy LM's 256 fill up after about six
        chat.ask(f"and what about question number {i}, is it big or small or in the middle?")
        dropped += chat.notes
    assert dropped and "oldest turn" in dropped[0] and "256 positions" in dropped[0]
    assert len(build_inputs(toy, chat.history).ids) <= toy.max_positions
    assert chat.history[0] is img  # the image being discussed stays at the front


def test_a_question_too_long_for_the_lm_is_refused_and_the_chat_goes_on(toy):
    chat = Dialogue(toy, max_new_tokens=8)
    first = chat.ask("what colour?")
    with pytest.raises(FromageError, match="does not fit the LM's 256 positions"):
        chat.ask("word " * 100_000)
    assert chat.history[-1] == first.text + "\n"  # the failed turn left nothing behind
    chat.ask("and the shape?")


def test_generate_refuses_an_overlong_prompt_in_one_line(toy):
    with pytest.raises(FromageError, match="prompt is .* positions long but the LM holds 256"):
        generate(toy, "a red circle " * 200)


def test_generation_stops_at_the_lm_s_last_position(toy):
    prompt = "a small red circle at the top left." * 10
    n = len(build_inputs(toy, prompt).ids)
    out = generate(toy, prompt, max_new_tokens=500, stop=())
    assert n + len(out.ids) <= toy.max_positions


def test_a_huge_query_text_is_cut_with_a_warning(toy):
    with pytest.warns(UserWarning, match="cut to its last"):
        v = scoring.text_vectors(toy, ["a red circle " * 30_000])
    assert v.shape == (1, toy.config.ret_dim) and torch.isfinite(v).all()


def test_a_long_context_before_candidates_is_cut_with_a_warning(toy):
    ctx = build_inputs(toy, "Q: what colour is it?\nA: red.\n" * 40)
    assert len(ctx.ids) > toy.max_positions
    with pytest.warns(UserWarning, match="context of"):
        s = scoring.candidate_scores(toy, ctx, [[5, 6], [7]])
    assert torch.isfinite(s).all()


def test_fit_context_never_splits_an_image(toy):
    f = torch.zeros(toy.vis_dim)
    inp = build_inputs(toy, ["x " * 40, f, "y " * 220])
    with pytest.warns(UserWarning):
        cut = fit_context(toy, inp, room=1)
    ids = cut.ids.tolist()
    k = toy.config.n_visual_tokens
    assert ids.count(-1) in (0, k)


def test_max_len_beyond_the_lm_is_refused_when_the_model_is_made(make_model):
    with pytest.raises(FromageError, match="more than the LM's 256"):
        make_model("opt", max_len=300)


@pytest.fixture(scope="module")
def chat_session(tmp_path_factory):
    """One ``fromage-mini chat`` session, fed bad input after bad input; its stdout lines (one process
    for the three tests below: the CLI's start-up is most of their time)."""
    bomb = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (15000, 15000)).save(bomb)  # 225M pixels, over Pillow's bomb limit
    lines = [b"caf\xe9 au lait?", b"what is it?",  # not UTF-8, then a question
             b"/help", b"/image no/such/file.png", b"what is it?",  # a path that is not there
             f"/image {bomb}".encode(), b"what is it?", b"/quit"]  # a decompression bomb
    r = subprocess.run([sys.executable, "-m", "fromage_mini.cli", "chat", "--model", TOY],
                       input=b"\n".join(lines) + b"\n", capture_output=True, timeout=180)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr.decode()
    return r.stdout.decode().splitlines()


def answered_after(out, marker):
    """The first line containing ``marker`` is followed, later on, by an answer line ("A: ...")."""
    i = next(i for i, line in enumerate(out) if marker in line)
    return any(line.startswith("A:") for line in out[i + 1:])


def test_chat_input_that_is_not_utf8_is_one_line_and_the_session_goes_on(chat_session):
    out = chat_session
    assert out[0] == "error: that line is not UTF-8 text (a file in another encoding?); type it again"
    assert out[1].startswith("A:")


def test_chat_keeps_the_session_after_a_bad_image_path_and_has_help(chat_session):
    out = chat_session
    assert any("/image PATH" in line for line in out)
    assert answered_after(out, "error: no/such/file.png: cannot read image")  # the next question is answered


def test_chat_survives_a_decompression_bomb(chat_session):
    out = chat_session
    assert answered_after(out, "bomb.png: cannot read image"), out
    assert sum(line.startswith("A:") for line in out) == 3  # every question answered, nothing else


def test_a_question_ending_in_ret_is_answered_with_an_image(toy):
    from fromage_mini.infer.generate import TensorIndex

    feats = torch.randn(5, toy.vis_dim, generator=torch.Generator().manual_seed(0))
    index = TensorIndex(scoring.image_vectors(toy, feats), [{"caption": f"#{i}"} for i in range(5)])
    chat = Dialogue(toy, index, max_new_tokens=4)
    result = chat.ask("show me a small red circle [RET]")
    assert result.retrievals and result.retrievals[0].ids  # the typed [RET] retrieved
    assert chat.history[0] == "Q: show me a small red circle\nA: [RET]"


def test_a_long_question_after_an_image_keeps_the_image_and_its_answer(toy):
    img = Image.new("RGB", (64, 64), "blue")
    chat = Dialogue(toy, max_new_tokens=8)
    chat.ask("what colour?", image=img)
    result = chat.ask("and " + "is it big " * 75 + "?")  # fits alone, but not after the first turn
    assert chat.notes and chat.history[0] is img  # the image moved into the question that remains
    assert chat.history[-1] == result.text + "\n"  # and the answer joined the history


def test_an_image_path_given_as_text_is_refused_and_a_path_object_is_an_image(toy, tmp_path):
    """A str naming an image file is a mistake (it used to be answered as text); a Path is an image."""
    img = tmp_path / "scene.png"
    Image.new("RGB", (64, 64), "red").save(img)
    with pytest.raises(FromageError, match=r"is the path of an image file, given as text: pass .*pathlib.Path"):
        generate(toy, [str(img), "Q: what colour is it?\nA:"], max_new_tokens=2)
    with_path = build_inputs(toy, [img, "Q: what colour is it?\nA:"])
    with_pil = build_inputs(toy, [Image.open(img), "Q: what colour is it?\nA:"])
    torch.testing.assert_close(with_path.embeds, with_pil.embeds)
    assert len(build_inputs(toy, "scene.png is a file name").ids) > 0  # text that only mentions one is text


def test_tensor_index_refuses_k_below_one_and_generate_skips_an_empty_index(toy):
    from fromage_mini.infer.tensor_index import TensorIndex

    index = TensorIndex(torch.randn(3, 4))
    for k in (0, -1):
        with pytest.raises(FromageError, match="k must be at least 1"):
            index.search(torch.randn(4), k=k)
    empty = TensorIndex(torch.zeros(0, toy.config.ret_dim))
    out = generate(toy, ["show me a red circle [RET]"], index=empty, max_new_tokens=1)
    assert all(p.ids == [] for p in out.retrievals)
