"""Checkpoints: a training run's state in one safetensors file, written safely.

A checkpoint is a `safetensors <https://huggingface.co/docs/safetensors>`_ file (a JSON
header, then the raw little-endian tensors), so other tools can read its weights:

* tensors ``model.<parameter>`` (the model's ``state_dict()``) and
  ``velocity.<parameter>`` (the SGD velocities), each in its own dtype;
* metadata (strings): ``format`` = ``"convnet-checkpoint"``, ``version`` =
  ``FORMAT_VERSION``, ``optimizer`` (JSON: the SGD hyperparameters and step count),
  ``state`` (JSON: whatever the caller keeps there; the training driver keeps the
  epoch, the run's settings, the learning-rate schedule and the last metrics),
  ``sha256``, a digest of every tensor's name, dtype, shape and bytes, and
  ``meta_sha256``, a digest of the other metadata (format, version, optimizer, state)
  and of ``sha256``: an edited learning rate or epoch is refused as surely as a
  flipped bit in a weight. (Version 1 files, which have no ``meta_sha256``, are still
  read; their metadata is not covered.)

``save`` writes to a temporary file in the same folder (``.NAME.tmp-PID``), flushes
and fsyncs it, renames it into place (atomic) and fsyncs the folder: a crash leaves
the old file or the new one, never half of one. ``load`` checks the format name, the
version and both digests, so a truncated, corrupt or edited file is a
``CheckpointError`` naming the file and what is wrong (its tensors, or its metadata),
never a model with garbage weights or settings. A write that fails (disk full,
permissions) is an ``OSError`` naming the file and the reason; the previous file of
that name is untouched. ``restore`` checks
every tensor's name, shape and dtype against a model (and optimizer), lists all that
differ, and changes nothing unless all match.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..state_dict import differences

__all__ = ["Checkpoint", "CheckpointError", "FORMAT_NAME", "FORMAT_VERSION", "SUFFIX", "load",
           "restore", "save", "is_temporary"]

FORMAT_NAME = "convnet-checkpoint"
FORMAT_VERSION = 2
_READS = ("1", "2")  # 1: no meta_sha256
SUFFIX = ".safetensors"
_MODEL = "model."
_VELOCITY = "velocity."


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (missing, truncated, corrupt, another format or
    version) or that does not fit the model it is loaded into."""


@dataclass
class Checkpoint:
    """What ``load`` read: the model's parameters and the optimizer's state (in the
    form of ``SGD.state_dict()``, or None when none was saved) as NumPy arrays, and the
    caller's ``state`` dict."""

    path: Path
    model: "OrderedDict[str, np.ndarray]"
    optimizer: dict | None = None
    state: dict = field(default_factory=dict)


def _digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = tensors[name]
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.hexdigest()


def _meta_digest(metadata: dict) -> str:
    """The digest of every metadata entry but ``meta_sha256`` itself (``sha256`` included,
    which ties the tensors in)."""
    h = hashlib.sha256()
    for key in sorted(metadata):
        if key != "meta_sha256":
            h.update(f"{key}\0{metadata[key]}\0".encode())
    return h.hexdigest()


def _host(name: str, array) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype.kind not in "fiub":
        raise CheckpointError(f"cannot save {name}: dtype {a.dtype} is not a number")
    return np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_temporary(name: str) -> bool:
    """True for the name of a temporary that an interrupted ``save`` left behind."""
    return name.startswith(".") and f"{SUFFIX}.tmp-" in name


def save(path, model_state, optimizer_state: dict | None = None, state: dict | None = None) -> Path:
    """Write a checkpoint to ``path`` atomically (see the module docstring); returns the path.

    ``model_state``: name → array (``Module.state_dict()``); ``optimizer_state``:
    ``SGD.state_dict()`` (its ``velocity`` dict is stored as tensors, the rest as JSON);
    ``state``: a JSON-serialisable dict.
    """
    path = Path(path)
    tensors = OrderedDict((_MODEL + n, _host(n, a)) for n, a in model_state.items())
    hyper = None
    if optimizer_state is not None:
        hyper = {k: v for k, v in optimizer_state.items() if k != "velocity"}
        for n, v in optimizer_state.get("velocity", {}).items():
            tensors[_VELOCITY + n] = _host(f"the velocity of {n}", v)
    try:
        state_text = json.dumps(state or {}, allow_nan=True)
        hyper_text = json.dumps(hyper)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot save {path}: the state is not JSON-serialisable ({exc})") \
            from None
    metadata = {"format": FORMAT_NAME, "version": str(FORMAT_VERSION), "state": state_text,
                "optimizer": hyper_text, "sha256": _digest(tensors)}
    metadata["meta_sha256"] = _meta_digest(metadata)
    from safetensors import SafetensorError
    from safetensors.numpy import save_file
    tmp = temporary_name(path)
    try:
        try:
            save_file(dict(tensors), str(tmp), metadata=metadata)
        except SafetensorError as exc:  # the library's I/O errors: an OSError naming the file
            raise _write_error(exc, tmp, path) from None
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates 0600; a checkpoint is a normal file
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _write_error(exc, tmp: Path, path: Path) -> OSError:
    """safetensors reports a failed write as ``... (os error N)``; the OSError it means."""
    import re
    text = str(exc)
    match = re.search(r"os error (\d+)", text)
    if match:
        code = int(match.group(1))
        return OSError(code, f"cannot write the checkpoint: {os.strerror(code)}", str(path))
    return OSError(f"{path}: cannot write the checkpoint ({text})")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path) -> Checkpoint:
    """Read and verify a checkpoint; ``CheckpointError`` says what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    from safetensors import SafetensorError, safe_open
    _check_container(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT_NAME:
                raise CheckpointError(f"{path}: not a convnet checkpoint (a safetensors file "
                                      f"without \"format\": \"{FORMAT_NAME}\" in its metadata)")
            version = metadata.get("version")
            if version not in _READS:
                raise CheckpointError(f"{path}: checkpoint format version {version}, this convnet "
                                      f"reads versions {', '.join(_READS)}")
            if version != "1" and metadata.get("meta_sha256") != _meta_digest(metadata):
                raise CheckpointError(
                    f"{path}: checksum mismatch in the metadata: the run's state or optimizer "
                    f"settings (epoch, learning rate, ...) were changed after it was saved")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint, truncated or corrupt ({exc})") \
            from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc})") from None
    if _digest(tensors) != metadata.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch in the tensors: the weights or "
                              f"velocities are corrupt")
    try:
        state = json.loads(metadata.get("state", "{}"))
        hyper = json.loads(metadata.get("optimizer", "null"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    model, velocity = OrderedDict(), OrderedDict()
    for name in sorted(tensors):
        if name.startswith(_MODEL):
            model[name[len(_MODEL):]] = tensors[name]
        elif name.startswith(_VELOCITY):
            velocity[name[len(_VELOCITY):]] = tensors[name]
        else:
            raise CheckpointError(f"{path}: unexpected tensor {name!r} in the checkpoint")
    optimizer = None if hyper is None else {**hyper, "velocity": velocity}
    return Checkpoint(path=path, model=model, optimizer=optimizer, state=state)


def _check_container(path: Path) -> None:
    """A ``CheckpointError`` for a file that is no safetensors file at all (a text file,
    an image), rather than calling it truncated: safetensors starts with the header's
    length (u64, little-endian) and the header's JSON ``{``."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") \
            from None
    if len(head) < 9:
        raise CheckpointError(f"{path}: truncated checkpoint ({size} bytes: not even a header)")
    if head[8:9] != b"{":
        raise CheckpointError(f"{path}: not a checkpoint (not a safetensors file: it does not "
                              f"start with a safetensors header; {size} bytes)")
    if int.from_bytes(head[:8], "little") + 8 > size:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint (its header alone "
                              f"would need more than the file's {size} bytes)")


def _differences(expected, given: dict, what: str) -> list[str]:
    """Every difference between the model's ``expected`` (name -> parameter, or
    velocity) and the checkpoint's name -> array ``given``."""
    return differences(given, {n: p.shape for n, p in expected.items()},
                       expected_dtypes={n: p.dtype for n, p in expected.items()}, what=what,
                       given_where="in the checkpoint", expected_where="in the model",
                       missing="missing from the checkpoint",
                       unexpected="in the checkpoint but not in the model")


def restore(checkpoint: Checkpoint, model, optimizer=None) -> None:
    """Load ``checkpoint`` into ``model`` (and ``optimizer``, an ``SGD``), in place.

    Every parameter (and velocity) name, shape and dtype must match; otherwise a
    ``CheckpointError`` lists all that differ and nothing is changed.
    """
    problems = _differences(OrderedDict(model.named_parameters()), checkpoint.model, "parameter")
    if optimizer is not None:
        if checkpoint.optimizer is None:
            problems.append("the checkpoint holds no optimizer state")
        else:
            problems += _differences(optimizer.params, checkpoint.optimizer["velocity"],
                                     "velocity")
    if problems:
        raise CheckpointError(f"{checkpoint.path} does not fit this model: " + "; ".join(problems))
    if optimizer is not None:
        try:
            optimizer.load_state_dict(checkpoint.optimizer)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{checkpoint.path}: bad optimizer state ({exc})") from None
    model.load_state_dict(checkpoint.model)
