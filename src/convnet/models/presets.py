"""Named AlexNet settings (``convnet train --model``) and the network a run's settings
describe.

* ``"alexnet"``: the paper's widths and initial weights N(0, 0.01);
* ``"alexnet-small"``: an AlexNet-shaped network narrow enough for a CPU (about 45 s
  an epoch of the demo set at batch 32 on 2 cores); its weights start from
  N(0, 0.05), as 0.01 leaves too little signal through its small fan-ins to learn in
  a few epochs.
"""
from __future__ import annotations

from .alexnet import PAPER_WIDTHS, WEIGHT_STD, alexnet

__all__ = ["PRESETS", "build_model"]

PRESETS = {
    "alexnet": {"widths": PAPER_WIDTHS, "weight_std": WEIGHT_STD},
    "alexnet-small": {"widths": (24, 48, 64, 64, 48, 256, 256), "weight_std": 0.05},
}


def build_model(settings: dict, devices):
    """The AlexNet ``settings`` describe (``widths``, ``weight_std``, ``crop``, ``classes``,
    ``columns``, ``seed`` and, when present, ``dropout``: the settings the training
    driver keeps in its checkpoints) on ``devices`` (one per column)."""
    extra = {"dropout": settings["dropout"]} if "dropout" in settings else {}
    return alexnet(num_classes=len(settings["classes"]), columns=settings["columns"],
                   devices=devices, input_size=settings["crop"], widths=tuple(settings["widths"]),
                   weight_std=settings["weight_std"], seed=settings["seed"], **extra)
