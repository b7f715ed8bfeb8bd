"""Kernel source text as both compilers see it.

``expand(path)`` inlines every ``#include "relative.cuh"`` (recursively, once per
file, like ``#pragma once``) and marks each piece with ``#line`` so that NVRTC and
g++ both report the real file and line. Compiling the expanded text means a cache
keyed on the text (CuPy's, ours) can never serve a stale build after a header edit.

``expand(path, portable=True)`` writes the ``#line`` names of files under the kernel
folder relative to its parent (``kernels/conv_forward.cu``) instead of absolute, so the
text — and every cache keyed on it (CuPy's kernel cache for the ``cuda`` device, the
NVRTC resource report of ``toolchain.resources``) — is the same wherever the checkout
or installation lives: a moved checkout keeps its compiled kernels. Files elsewhere
(tests' kernels) keep absolute names.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .paths import kernels_dir

_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"\s*$')
_ANGLE_INCLUDE = re.compile(r"^\s*#\s*include\s*<([^>]+)>")
_PRAGMA_ONCE = re.compile(r"^\s*#\s*pragma\s+once\s*$")


class KernelSourceError(ValueError):
    """A kernel file that cannot be read or expanded."""


def source_path(name: str | Path) -> Path:
    """The path of a kernel file given relative to ``kernels/`` (or absolute)."""
    path = Path(name)
    if not path.is_absolute():
        path = kernels_dir() / path
    if not path.is_file():
        raise KernelSourceError(f"kernel source not found: {path}")
    return path


def expand(name: str | Path, portable: bool = False) -> str:
    """The text of a kernel file with its quoted includes inlined, with #line markers
    (``portable``: names under the kernel folder relative to its parent; see above)."""
    seen: set[Path] = set()
    out: list[str] = []
    root = kernels_dir().resolve().parent if portable else None
    _expand_into(source_path(name), out, seen, chain=(), root=root)
    return "".join(out)


def _display(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def _expand_into(path: Path, out: list[str], seen: set[Path], chain: tuple[Path, ...],
                 root: Path | None = None) -> None:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise KernelSourceError(f"include cycle: {cycle}")
    if path in seen:
        return
    seen.add(path)
    try:
        lines = path.read_text().splitlines(keepends=True)
    except OSError as exc:
        raise KernelSourceError(f"cannot read kernel source {path}: {exc}") from exc
    display = _display(path, root)
    out.append(f'#line 1 "{display}"\n')
    for number, line in enumerate(lines, start=1):
        if not line.endswith("\n"):
            line += "\n"
        if _PRAGMA_ONCE.match(line):
            out.append("\n")
            continue
        match = _INCLUDE.match(line)
        if match:
            target = (path.parent / match.group(1))
            if not target.is_file():
                raise KernelSourceError(f"{display}:{number}: included file not found: {match.group(1)}")
            _expand_into(target, out, seen, (*chain, path), root)
            out.append(f'#line {number + 1} "{display}"\n')
            continue
        if _ANGLE_INCLUDE.match(line):
            raise KernelSourceError(
                f"{display}:{number}: kernel sources may not include system headers "
                f"(NVRTC has none): {line.strip()}")
        out.append(line)


def digest(text: str, *extra: str) -> str:
    """A stable hash of expanded source text plus anything else that changes a build."""
    h = hashlib.sha256(text.encode())
    for item in extra:
        h.update(b"\0" + item.encode())
    return h.hexdigest()
