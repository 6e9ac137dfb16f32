"""Settings are checked when a config is made: one line naming the setting and what it accepts."""
import pytest

from fromage_mini import FromageError
from fromage_mini.cli import main
from fromage_mini.config import ConfigError, FromageConfig, TrainConfig

BAD_TRAIN = [("batch_size", 0), ("batch_size", -1), ("lr", -1), ("lr", 0), ("max_steps", "abc"), ("max_steps", -5),
             ("grad_accum", 0), ("seed", "abc"), ("warmup_steps", -1), ("precision", "fp8"), ("lr_decay", "step"),
             ("val_batch_size", 0), ("caption_metric", "bleu"), ("max_seconds", 0), ("batch_size", True),
             ("lr", float("nan"))]
BAD_MODEL = [("n_visual_tokens", 0), ("max_len", 0), ("ret_dim", 0), ("lm_dtype", "int4"), ("concat_prob", 1.5),
             ("image_layout", "middle"), ("image_dropout", 1.0), ("ret_layers", ()), ("ret_layers", ("a",))]


@pytest.mark.parametrize("name,value", BAD_TRAIN)
def test_bad_train_setting_names_itself(name, value):
    with pytest.raises(ConfigError, match=rf"^{name}="):
        TrainConfig(**{name: value})


@pytest.mark.parametrize("name,value", BAD_MODEL)
def test_bad_model_setting_names_itself(name, value):
    with pytest.raises(ConfigError, match=rf"^{name}="):
        FromageConfig(**{name: value})


def test_config_error_is_both_a_user_error_and_a_value_error():
    assert issubclass(ConfigError, FromageError) and issubclass(ConfigError, ValueError)


def test_good_values_pass_and_none_means_default_where_allowed():
    t = TrainConfig(lr=1, lr_decay=None, max_seconds=None, grad_clip=0)  # an int lr is a number
    assert t.lr_decay == "none" and t.lr == 1
    FromageConfig(ret_init_text=None, max_logit_scale=None, ret_layers=[-1, 2])


@pytest.mark.parametrize("setting", ["batch_size=0", "lr=-1", "max_steps=abc", "n_visual_tokens=0", "precision=fp8"])
def test_cli_refuses_in_one_line_before_loading_anything(setting, tmp_path, capsys):
    assert main(["train", "--preset", "toy", "--out", str(tmp_path / "run"), "--set", setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fromage-mini: error: {setting.split('=')[0]}=")
    assert not (tmp_path / "run").exists()
