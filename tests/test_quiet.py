"""No library noise on the default paths: no FutureWarning/DeprecationWarning, no per-load bars.

Run in a fresh interpreter with warnings turned into errors and transformers' progress bars left
*on* (as in a user's script), so a deprecated call or a "Loading weights" bar cannot hide behind
the suite's own quiet settings or a warning already shown once in this process.
"""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import warnings
    warnings.simplefilter("error", FutureWarning)
    warnings.simplefilter("error", DeprecationWarning)
    import torch
    from PIL import Image
    from fromage_mini import Fromage, caption, generate
    from fromage_mini.infer.generate import TensorIndex
    from fromage_mini.paths import DATA_SAMPLES
    from fromage_mini.model.quant import enable_gradient_checkpointing
    from fromage_mini.infer.scoring import log_likelihood

    rows = [ln.split("\\t") for ln in (DATA_SAMPLES / "shapesworld/val.tsv").read_text().splitlines()[1:9]]
    images = [Image.open(DATA_SAMPLES / "shapesworld" / p) for _, p in rows]
    model = Fromage.from_pretrained("data_samples/toy_fromage")           # the README's API path
    model.train()
    batch = model.tokenize([c for c, _ in rows])
    batch["pixel_values"] = model.preprocess(images)
    model(**batch).loss.backward()                                         # training forward/backward
    enable_gradient_checkpointing(model)                                   # ... and under checkpointing
    model(**batch).loss.backward()
    model.eval()
    with torch.no_grad():
        index = TensorIndex(model.encode_images(model.image_features(model.preprocess(images))),
                            [{"caption": c} for c, _ in rows])
    print(caption(model, images[:2]))
    print(generate(model, [images[0], "Q: what is this?\\nA:"], max_new_tokens=8).text)
    print(generate(model, [rows[0][0] + "[RET]"], index=index, max_new_tokens=1).retrievals[0].metadata[0])
    print(log_likelihood(model, [images[0], "Q: how many shapes?\\nA:"], [" one.", " two.", " three."]))
""")


def test_default_paths_print_no_library_noise(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "PYTHONWARNINGS")}
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for noise in ("Loading weights", "deprecated", "FutureWarning", "DeprecationWarning", "Warning"):
        assert noise not in r.stderr, f"{noise!r} in stderr:\n{r.stderr[-2000:]}"
    assert r.stdout.count("\n") >= 4
