"""Where the kernel sources and the emulator header live.

In a source checkout (an editable install) they are ``kernels/`` and ``csrc/emu/``
at the repository root; in an installed wheel CMake copies them into the package.
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # src/convnet
_REPO = _PACKAGE.parent.parent


def kernels_dir() -> Path:
    for candidate in (_REPO / "kernels", _PACKAGE / "kernels"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("convnet: the kernel sources (kernels/) are missing from this installation")


def emu_include_dir() -> Path:
    for candidate in (_REPO / "csrc" / "emu", _PACKAGE / "include"):
        if (candidate / "cuda_emu.h").is_file():
            return candidate
    raise FileNotFoundError("convnet: the emulator header cuda_emu.h is missing from this installation")
