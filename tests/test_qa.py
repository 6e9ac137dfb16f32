"""Zero-shot QA helpers: what counts as naming an option, the prompt formats, option ranking's tally."""
import pytest
from PIL import Image

from fromage_mini.qa import chat_answers, context_items, names_option, question_text, rank_options

WHERE = ["top left", "top", "top right", "left", "center", "right"]


@pytest.mark.parametrize("answer, option, ok", [
    ("top", "top", True),
    (" It is at the top.", "top", True),
    ("top left", "top", False),          # "top" inside "top left" names top left, not top
    ("top left", "top left", True),
    ("top or top left", "top", False),   # two options named
    ("the TOP-LEFT corner", "top left", True),
    ("stop", "top", False),              # whole words only
    ("", "top", False),
])
def test_an_answer_counts_when_it_names_the_right_option_and_no_other(answer, option, ok):
    assert names_option(answer, option, WHERE) is ok


def test_contexts_and_question_format():
    img = Image.new("RGB", (8, 8))
    assert context_items("image", img, "a cap.") == [img]
    assert context_items("caption", img, "a cap.") == ["a cap.\n"]
    assert context_items("none", img, "a cap.") == []
    with pytest.raises(ValueError, match="context must be one of"):
        context_items("pixels", img, "a cap.")
    assert question_text("how many?") == "Q: how many?\nA:"


def test_option_ranking_and_chat_answers_tally_per_type(make_model):
    """On a tiny random model the numbers mean nothing; the tallies must be consistent."""
    m = make_model("opt", "clip", concat_prob=0.0).eval()
    dialogues = [{"image": None, "caption": "a small red circle at the top.",
                  "turns": [{"type": "count", "question": "how many shapes are there?", "answer": "one",
                             "options": ["one", "two", "three"]},
                            {"type": "size", "question": "is the circle small or large?", "answer": "small",
                             "options": ["small", "large"]}]}] * 2
    load = lambda rec: Image.new("RGB", (40, 40), "red")  # noqa: E731
    for ctx in ("image", "caption", "none"):
        acc = rank_options(m, dialogues, load, ctx)
        assert acc["n"] == 4 and set(acc) == {"count", "size", "all", "n"}
        assert acc["all"] == pytest.approx((acc["count"] + acc["size"]) / 2)
    acc, ex = chat_answers(m, dialogues, load, "image", max_new_tokens=3, examples=3)
    assert acc["n"] == 4 and 0 <= acc["ret_rate"] <= 1 and len(ex) == 3
    assert ex[0]["gold"] == "one" and ex[0]["question"] == "how many shapes are there?"
