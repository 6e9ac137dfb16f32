"""Multi-turn dialogue with images in and retrieved images out.

Python::

    chat = Dialogue(model, index)
    print(chat.ask("what shape is this?", image=Image.open("circle.png")))
    print(chat.ask("show me one in blue [RET]"))  # a question ending in [RET] is answered with an image
                                                   # first; otherwise the model may emit [RET] itself

Command line (one question per line on stdin; ``/image PATH`` attaches an image to the next
question, ``/reset`` starts over, ``/help`` lists the commands, ``/quit`` or end of input exits)::

    fromage-mini chat --model CKPT [--index DIR] [--image PATH]... [--out-dir DIR]

Retrieved images are copied to ``--out-dir`` and their paths printed.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .infer.generate import GenerationResult, add_generation_args, generate, generation_kwargs


class Dialogue:
    """A conversation in the original notebook's format: each turn adds ``"Q: <text>\\nA:"`` (after
    its image, if any), the model answers up to the newline, and the answer plus ``"\\n"`` joins
    the history. A [RET] the model emits stays in the history as the [RET] token. A question that
    ends with [RET] ("show me a red circle [RET]") becomes ``"Q: show me a red circle\\nA: [RET]"``, so
    its answer starts with a retrieval.

    When the history no longer fits the LM's positions (with room for the answer), the oldest turns
    are dropped, keeping the most recent image (the one being discussed); :attr:`notes` says so.
    A question that cannot fit even alone raises :class:`~fromage_mini.errors.FromageError` and
    leaves the conversation as it was.

    Args:
        model: a :class:`~fromage_mini.model.fromage.Fromage`.
        index: a retrieval index (``search`` / ``metadata`` / ``len``) or None.
        context: items (text or images) placed before the first question.
        **generate_kwargs: passed to :func:`~fromage_mini.infer.generate.generate` each turn
            (``GENERATION_OPTIONS`` there lists the common ones).
    """

    def __init__(self, model, index=None, context=None, **generate_kwargs):
        self.model, self.index = model, index
        self.context = list(context or [])
        self.generate_kwargs = {"stop": ("\n",)} | generate_kwargs
        self.turns: list[list] = []  # each: [image?, "Q: ...\nA:", "answer\n"]
        self.notes: list[str] = []  # what the last ask() had to do to fit (dropped turns)

    @property
    def history(self) -> list:
        """The prompt of the next turn: the context, then every kept turn."""
        return self.context + [x for t in self.turns for x in t]

    def ask(self, text: str, image=None) -> GenerationResult:
        """Ask one question (optionally about ``image``: PIL, path or tensor); returns the answer."""
        if image is not None and isinstance(image, (str, Path)):
            from .data.images import load_image
            image = load_image(image)
        ret = self.model.config.ret_token
        asked = text.rstrip()
        if asked.endswith(ret):  # "show me ... [RET]": the answer starts with a retrieval
            turn_text = f"Q: {asked[: -len(ret)].rstrip()}\nA: {ret}"
        else:
            turn_text = f"Q: {text}\nA:"
        turn = ([image] if image is not None else []) + [turn_text]
        self.notes = []
        kept = list(self.turns)
        self.turns.append(turn)
        try:
            self._fit()
            result = generate(self.model, self.history, index=self.index, **self.generate_kwargs)
        except Exception:
            self.turns = kept  # a failed turn leaves the conversation as it was
            raise
        self.turns[-1].append(result.text + "\n")  # the current turn (``_fit`` may have rebuilt it)
        return result

    def _fit(self) -> None:
        """Drop the oldest turns until the history leaves room for an answer."""
        from .errors import FromageError
        from .infer.generate import build_inputs

        limit = self.model.max_positions
        if limit is None:
            return
        room = min(self.generate_kwargs.get("max_new_tokens", 32), limit // 4)
        dropped = 0
        while len(build_inputs(self.model, self.history).ids) + room > limit:
            if len(self.turns) == 1:
                raise FromageError(f"this question does not fit the LM's {limit} positions with room for an "
                                   "answer; ask a shorter one")
            old = self.turns.pop(0)
            images = [x for x in old if not isinstance(x, str)]
            if images and not any(not isinstance(x, str) for t in self.turns for x in t):
                self.turns[0] = [images[-1]] + self.turns[0]  # keep the image still being discussed
            dropped += 1
        if dropped:
            self.notes.append(f"dropped the {dropped} oldest turn{'s' * (dropped > 1)} to fit the LM's "
                              f"{limit} positions")

    def reset(self) -> None:
        """Forget the conversation (the initial ``context`` stays)."""
        self.turns = []
        self.notes = []


def save_retrieved(result: GenerationResult, out_dir, turn: int, index_dir=None, fetch_urls: bool = False,
                   timeout: float = 5.0) -> list[str]:
    """Copy each retrieved image file into ``out_dir``; return one printable line per result.

    Results known only by URL are printed as URLs; with ``fetch_urls`` they are downloaded (bounded
    by a timeout, a size limit and a content-type check) and a failure is reported, not raised.
    """
    lines = []
    for r, part in enumerate(result.retrievals):
        for j, (i, meta) in enumerate(zip(part.ids, part.metadata)):
            src = meta.get("path")
            label = meta.get("caption", "")
            if src:
                src = Path(src)
                if not src.is_absolute() and index_dir is not None and not src.exists():
                    src = Path(index_dir) / src
            if src and src.exists():
                dst = Path(out_dir) / f"turn{turn:03d}_ret{r}_{j}_{i}{src.suffix}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                lines.append(f"[image] {dst}  {label}".rstrip())
            elif fetch_urls and meta.get("url"):
                from .data.fetch import fetch_image

                got = fetch_image(meta["url"], timeout=timeout)
                if got.image is not None:
                    dst = Path(out_dir) / f"turn{turn:03d}_ret{r}_{j}_{i}.png"
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    got.image.save(dst)
                    lines.append(f"[image] {dst}  {label}".rstrip())
                else:
                    lines.append(f"[image #{i}] {meta['url']} (not fetched: {got.error})  {label}".rstrip())
            else:
                lines.append(f"[image #{i}] {meta.get('url') or src or '(no file)'}  {label}".rstrip())
    return lines


HELP = """commands:
  /image PATH   attach an image to the next question
  /reset        forget the conversation
  /help         this list
  /quit         leave (end of input does too)
anything else is a question; end it with [RET] to ask for an image back"""


def _run(args) -> int:
    from .data.images import load_image
    from .errors import FromageError
    from .model import load_model
    from .retrieval.build import load_for

    model = load_model(args.model, args.device)
    index = load_for(model, args.index) if args.index else None  # refuses an index built with another model
    chat = Dialogue(model, index, context=[load_image(p) for p in args.image], **generation_kwargs(args))
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"fromage-mini chat: {args.model}" + (f", retrieving from {args.index}" if index else ", no index")
              + " - /help for commands", file=sys.stderr, flush=True)
    pending, turn = None, 0
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = _read_line()
        if line is None:
            print("error: that line is not UTF-8 text (a file in another encoding?); type it again", flush=True)
            continue
        if not line or line.strip() in ("/quit", "/exit"):
            return 0
        line = line.strip()
        if not line:
            continue
        try:
            if line == "/help":
                print(HELP, flush=True)
                continue
            if line.startswith("/image"):
                pending = load_image(line[len("/image"):].strip())
                print("(image attached to the next question)", flush=True)
                continue
            if line == "/reset":
                chat.reset()
                pending = None
                print("(conversation reset)", flush=True)
                continue
            result = chat.ask(line, image=pending)
        except FromageError as e:  # a bad path or an over-long question: say so, keep the session
            print(f"error: {e}", flush=True)
            continue
        pending, turn = None, turn + 1
        for note in chat.notes:
            print(f"({note})", flush=True)
        print("A:" + result.text.rstrip(), flush=True)
        for out in save_retrieved(result, args.out_dir, turn, args.index, fetch_urls=args.fetch_urls):
            print(out, flush=True)


def _read_line() -> str | None:
    """The next line of stdin ("" at the end), or None when it is not valid UTF-8."""
    raw = getattr(sys.stdin, "buffer", None)
    try:
        return sys.stdin.readline() if raw is None else raw.readline().decode("utf-8")
    except UnicodeDecodeError:
        return None


def register(sub):
    import argparse

    p = sub.add_parser("chat", help="talk with a trained model; images in and retrieved images out",
                       epilog="one question per line on stdin; " + HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder (save_pretrained) or a training run folder")
    p.add_argument("--index", help="retrieval index folder (enables retrieval)")
    p.add_argument("--image", action="append", default=[], help="image placed before the first question")
    p.add_argument("--out-dir", default="runs/chat", help="where retrieved images are copied")
    p.add_argument("--device", default="auto")
    add_generation_args(p)
    p.add_argument("--fetch-urls", action="store_true",
                   help="download retrieved images known only by URL (off by default: no network unless asked)")
    p.set_defaults(func=_run)
