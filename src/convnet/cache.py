"""convnet's cache folder: ``$CONVNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/convnet``,
else ``~/.cache/convnet``. The emulator keeps its compiled kernels under ``emu/``, the
driver its generated demo set under ``demo/``. ``write_atomic`` is how the caches
write a file: readers in other threads and processes see it whole or not at all."""
from __future__ import annotations

import os
import threading
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` (its folder made if missing) through a temporary file
    of this process and thread, renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def cache_dir() -> Path:
    root = os.environ.get("CONVNET_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "convnet"
