"""The paper: adapters, [RET], the losses, and the backbones and checkpoints they need."""
import torch


def load_model(path, device: str = "auto"):
    """A trained model from a ``save_pretrained`` folder, on ``device`` ("auto": CUDA if available), in eval mode."""
    from .fromage import Fromage

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return Fromage.from_pretrained(path, device=device).to(device).eval()
