"""The paper: adapters, [RET], the losses, and the backbones and checkpoints they need."""
from pathlib import Path


def load_model(path, device: str = "auto"):
    """A trained model on ``device``, in eval mode. ``"auto"`` follows the one device rule of the
    package, :func:`~.backbones.pick_device` (CUDA, then Apple MPS, then CPU), as training does.

    ``path``: a ``save_pretrained`` folder, or a training run folder (its ``best.json`` names the
    checkpoint to load).
    """
    from .backbones import pick_device
    from .checkpoint import read_pointer
    from .fromage import Fromage

    path = Path(path)
    if (path / "best.json").exists() and not (path / "adapters.safetensors").exists():
        path = read_pointer(path / "best.json")
    dev = pick_device(device)
    return Fromage.from_pretrained(path, device=dev).to(dev).eval()
