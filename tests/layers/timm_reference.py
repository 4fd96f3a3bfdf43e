"""timm's side of tests/layers/test_timm_port.py, run in a child process: ``python timm_reference.py NAME OUT_DIR``.

Importing timm (torchvision -> torch._dynamo -> triton) after TensorFlow segfaults in this environment (triton's and
TensorFlow's native libraries clash), so the tests never import timm in the pytest process: this script, which imports
no TensorFlow, builds the timm network with random weights and batch-norm statistics far from the identity, writes its
state dict (``model.safetensors``, and ``model.pth`` with ``--pth``) and timm's outputs on ``images(0)``
(``reference.npz``: ``x`` (3, 3, 256, 256) NCHW float32, ``want32`` / ``want64`` logits in float32 / float64,
``features`` the pooled features of ``forward_head(pre_logits=True)``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import timm
import torch


def images(seed: int) -> np.ndarray:
    """(3, 3, 256, 256) NCHW float32, normalised as timm feeds them: random normal, a colour gradient, a checkerboard."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    gradient = np.stack([xx, yy, 1.0 - xx])
    checker = np.broadcast_to(((np.mgrid[0:256, 0:256] // 16).sum(0) % 2)[None], (3, 256, 256))
    batch = np.stack([rng.standard_normal((3, 256, 256)), (gradient - 0.45) / 0.226, (checker - 0.45) / 0.226])
    return batch.astype(np.float32)


def timm_model(name: str, seed: int = 0) -> Any:
    """timm's network with random weights, batch-norm statistics measured on a batch then perturbed, eval mode.

    Batch norms at timm's initialisation (statistics 0/1, the last of each residual branch zero-scaled) would hide a
    wrongly mapped statistic; statistics from a calibration batch keep the activations from exploding through the
    16-50 layers, so the logits stay O(1) and the comparison means something.
    """
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.2)
            norm.momentum = 1.0  # the running statistics become the calibration batch's
        for module in model.modules():
            if isinstance(module, torch.nn.Conv3d):
                module.bias.normal_(0.0, 0.2)  # the position lambda's bias
            if getattr(module, "pos_emb", None) is not None:
                module.pos_emb.normal_(0.0, 0.1)  # timm's std 0.02 would make the position lambda small
        model.train()
        model(torch.from_numpy(images(1)))
        for norm in norms:
            norm.running_mean.add_(0.1 * norm.running_var.sqrt() * torch.randn_like(norm.running_mean))
            norm.running_var.mul_(torch.empty_like(norm.running_var).uniform_(0.8, 1.25))
            norm.momentum = 0.1
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pth", action="store_true", help="also write model.pth (torch.save of the state dict)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = timm_model(args.name, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(model.state_dict(), str(args.out / "model.safetensors"))
    if args.pth:
        torch.save(model.state_dict(), args.out / "model.pth")
    x = images(0)
    with torch.no_grad():
        feature_map = model.forward_features(torch.from_numpy(x))
        want32 = model.forward_head(feature_map).numpy()
        features = model.forward_head(feature_map, pre_logits=True).numpy()
        model.double()
        want64 = model(torch.from_numpy(x).double()).numpy()
    np.savez(args.out / "reference.npz", x=x, want32=want32, want64=want64, features=features)


if __name__ == "__main__":
    main()
