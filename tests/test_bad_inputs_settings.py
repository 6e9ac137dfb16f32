"""Settings a newcomer gets wrong on the command line: one line on stderr, exit code 2, nothing written.

Run in this process (:func:`cli_runner.run_cli`), but for one test through the real ``python -m
fromage_mini.cli`` entry point (``train`` has its own end-to-end subprocess test in test_train.py).
"""
import pytest
from cli_runner import run_cli as cli
from cli_runner import run_cli_process as cli_process

TOY = "data_samples/toy_fromage"
PAIRS = "data_samples/shapesworld/val.tsv"


def one_line_error(r, pattern):
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert pattern in r.stderr.strip().splitlines()[-1], r.stderr


@pytest.mark.parametrize("setting, says", [
    ("device=cuda", "no such CUDA GPU here"),
    ("device=tpu9", "not a device name"),
    ("batch_size=0", "batch_size"),
    ("precision=fp8", "precision"),
    ("max_len=0", "max_len"),
])
def test_bad_train_setting_is_one_line_and_writes_nothing(tmp_path, setting, says):
    out = tmp_path / "run"
    r = cli("train", "--preset", "toy", "--out", str(out), "--set", setting, "max_steps=1")
    one_line_error(r, says)
    assert not (out / "log.csv").exists() and not (out / "checkpoints").exists()


@pytest.mark.parametrize("args, says", [
    (["--ks", "1,x"], "comma-separated positive integers"),
    (["--ks", "0"], "comma-separated positive integers"),
    (["--batch-size", "0"], "positive integer"),
    (["--limit", "-3"], "positive integer"),
])
def test_bad_eval_option_is_one_line(args, says):
    one_line_error(cli("eval", "--model", TOY, *args, "recall", "--pairs", PAIRS), says)


def test_eval_device_that_is_not_here():
    """Through a fresh ``python -m fromage_mini.cli`` process: the real entry point's one line and exit code."""
    r = cli_process("eval", "--model", TOY, "--device", "cuda:3", "recall", "--pairs", PAIRS)
    one_line_error(r, "no such CUDA GPU")


def test_model_option_accepts_a_training_run_folder(tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(TOY, run / "checkpoints" / "step_000300")
    (run / "best.json").write_text('{"checkpoint": "checkpoints/step_000300"}')
    r = cli("eval", "--model", str(run), "--limit", "20", "recall", "--pairs", PAIRS)
    assert r.returncode == 0, r.stderr
    assert "t2i_R@1" in r.stdout


def test_missing_built_backbone_names_the_command(tmp_path, monkeypatch):
    """An LM folder that fromage-mini builds itself (cache:backbones/...) and that is missing: say how to build it."""
    from fromage_mini.errors import FromageError
    from fromage_mini.model.backbones import load_lm

    monkeypatch.setenv("FROMAGE_MINI_CACHE", str(tmp_path))
    with pytest.raises(FromageError, match="fromage-mini backbones smollm2"):
        load_lm("cache:backbones/smollm2-135m-instruct")
