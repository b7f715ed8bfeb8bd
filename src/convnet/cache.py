"""convnet's cache folder: ``$CONVNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/convnet``,
else ``~/.cache/convnet``. The emulator keeps its compiled kernels under ``emu/``, the
driver its generated demo set under ``demo/``."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("CONVNET_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "convnet"
