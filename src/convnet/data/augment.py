"""Data augmentation as in the paper (Krizhevsky et al. 2012, sections 4.1 and 4.2), fused:
crop, horizontal mirror, mean-image subtraction, PCA lighting, uint8 NHWC -> float32 NCHW.

One primitive, ``apply(device, images, mean, params, offsets, crop, scale)``, runs
``kernels/augment.cu`` on ``emu``/``cuda`` and the NumPy reference on ``cpu`` (both in
``convnet.ops.augment``)::

    out[m, c, y, x] = ((float)images[src, y0 + y, sx, c] - mean[y0 + y, sx, c] + offsets[m, c]) * scale
    sx = x0 + x, or x0 + crop - 1 - x when mirrored;   params[m] = (src, y0, x0, flip)

The parameters come from the host, so every device sees the same ones; the kernel
and the reference do the same float32 operations in the same order, so the results
agree bit for bit (the tests check crop and mirror exactly, and the lighting within
float tolerance).

``Augmentation`` makes the parameters:

* ``"train"``: a random ``crop`` x ``crop`` patch (227 by default; the paper says
  224, which does not give 55x55 after conv1) and a mirror with probability 1/2;
  PCA lighting adds ``sum_i alpha_i * m_i * p_i`` to every pixel, ``alpha_i ~ N(0,
  alpha_std = 0.1)`` drawn afresh each time the image is used, ``p_i`` the
  eigenvectors of the training set's RGB covariance and ``m_i`` the magnitudes (see
  ``LIGHTING``).
* ``"center"``: the central patch, no mirror, no lighting.
* ``"ten_crop"``: the four corner patches and the central one, then the same five
  mirrored (output ``10 * n + j`` is patch ``j`` of image ``n``, in the order of
  ``TEN_CROP``); ``ten_crop_average`` averages the network's softmax outputs over them.

Random draws: Philox4x32-10 (``convnet.philox``) keyed by the 64-bit ``seed``, with
the counter ``(index low 32, index high 32, epoch, 0x41470000 + block)`` for an image's
``index`` in its split: block 0 gives the crop (``y0 = (w0 * (H - crop + 1)) >> 32``,
``x0`` likewise from ``w1``) and the mirror (top bit of ``w2``); block 1 gives three
standard normals by Box-Muller (``(w0, w1)`` -> two, ``(w2, w3)`` -> one, with
``u1 = (w + 1) / 2**32``, ``u2 = w / 2**32``). So an image's augmentation in an epoch
depends on (seed, epoch, index) only: not on the batch it is in, the order, the
number of workers or the device.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .. import arguments
from ..ops import philox
from ..ops.augment import apply_launch, apply_reference

MODES = ("train", "center", "ten_crop")
DEFAULT_CROP = 227
DEFAULT_ALPHA_STD = 0.1
# PCA lighting magnitudes m_i from the covariance eigenvalues lambda_i (of pixel values 0..255):
#   "eigenvalue01": m_i = lambda_i / 255, the paper's formula (Krizhevsky et al. 2012,
#                   sec. 4.1: alpha_i * lambda_i * p_i) with the eigenvalues of pixel values in
#                   [0, 1] (lambda_i / 255**2), converted back to 0..255. This is how common
#                   reimplementations apply it; ImageNet's top eigenvalue is about 0.2 on
#                   [0, 1] pixels, so alpha = 0.1 moves pixels by about 5 grey levels. The default.
#   "std":          m_i = sqrt(lambda_i), the standard deviation along p_i (a unit-free
#                   reading; about twice as strong on ImageNet).
LIGHTING = ("eigenvalue01", "std")
_TAG = 0x41470000  # "AG": this stream apart from the statistics' sampling
# (y0, x0) of the ten patches for a crop of c in an image of h x w, then mirrored (flip 1)
TEN_CROP = ("top-left", "top-right", "bottom-left", "bottom-right", "center")


class AugmentError(ValueError):
    """Inputs the augmentation cannot take."""


# --------------------------------------------------------------------------- checks

def check_inputs(images, mean, params: np.ndarray, offsets: np.ndarray, crop: int) -> int:
    """Shapes, dtypes and parameter ranges, or a clear error naming what is wrong; the crop
    as an int."""
    if getattr(images, "ndim", None) != 4 or images.shape[-1] != 3:
        raise AugmentError(f"augment: images must be (N, H, W, 3), got shape "
                           f"{getattr(images, 'shape', type(images).__name__)}")
    if images.dtype != np.uint8:
        raise AugmentError(f"augment: images must be uint8 (the loader's batches), got {images.dtype}")
    n, h, w, _ = images.shape
    if getattr(mean, "shape", None) != (h, w, 3) or mean.dtype != np.float32:
        raise AugmentError(f"augment: the mean image must be float32 ({h}, {w}, 3) like the images, "
                           f"got {getattr(mean, 'dtype', type(mean).__name__)} "
                           f"{getattr(mean, 'shape', '')}")
    crop = arguments.integer(crop, "augment: crop", low=1, high=min(h, w), error=AugmentError)
    if not isinstance(params, np.ndarray) or params.dtype != np.int32 or params.ndim != 2 \
            or params.shape[1] != 4:
        raise AugmentError("augment: params must be a host int32 array (M, 4) of (src, y0, x0, flip)")
    if not isinstance(offsets, np.ndarray) or offsets.dtype != np.float32 \
            or offsets.shape != (len(params), 3):
        raise AugmentError(f"augment: offsets must be a host float32 array ({len(params)}, 3)")
    if len(params):
        src, y0, x0, flip = params.T
        bad = None
        if src.min() < 0 or src.max() >= n:
            bad = f"source image index outside [0, {n})"
        elif y0.min() < 0 or y0.max() > h - crop or x0.min() < 0 or x0.max() > w - crop:
            bad = f"crop corner outside [0, {h - crop}] x [0, {w - crop}]"
        elif not np.isin(flip, (0, 1)).all():
            bad = "flip must be 0 or 1"
        if bad:
            raise AugmentError(f"augment: bad params: {bad}")
    if not np.isfinite(offsets).all():
        raise AugmentError("augment: offsets must be finite")
    return crop


# --------------------------------------------------------------------------- on a device

def apply(device, images, mean, params: np.ndarray, offsets: np.ndarray, crop: int,
          scale: float = 1.0):
    """Augmented float32 (M, 3, crop, crop) on ``device`` (see the module docstring).

    ``images`` (uint8 NHWC) and ``mean`` (float32 HWC) are arrays of ``device``;
    ``params`` (int32 (M, 4)) and ``offsets`` (float32 (M, 3)) are host arrays.
    """
    scale = arguments.real(scale, "augment: scale", error=AugmentError)
    for what, array in (("images", images), ("the mean image", mean)):
        if not device.owns(array):
            raise AugmentError(f"augment: {what} is a {type(array).__module__}."
                               f"{type(array).__name__}, not an array of device {device.name!r} "
                               f"(move it with device.asarray)")
    crop = check_inputs(images, mean, params, offsets, crop)
    if not device.runs_kernels:
        return apply_reference(images, mean, params, offsets, crop, scale)
    xp = device.xp
    with _on(device):
        images = xp.ascontiguousarray(images)
        mean = xp.ascontiguousarray(mean)
        out = xp.empty((len(params), 3, crop, crop), dtype=np.float32)
        if len(params):
            device.launch(apply_launch(images, mean, device.asarray(params), device.asarray(offsets),
                                       out, crop, scale, device.kind))
    return out


def _on(device):
    """The device's context on cuda (allocations land on its GPU), else nothing."""
    if device.kind == "cuda":
        return device.xp.cuda.Device(device.index)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- parameters

def _words(seed: int, indices: np.ndarray, epoch: int, block: int):
    idx = indices.astype(np.uint64)
    counter = ((idx & np.uint64(0xFFFFFFFF)).astype(np.uint32), (idx >> np.uint64(32)).astype(np.uint32),
               np.uint32(epoch), np.uint32(_TAG + block))
    return philox.philox4x32(counter, (seed & 0xFFFFFFFF, seed >> 32))


def _uniform_int(word: np.ndarray, n: int) -> np.ndarray:
    """``word`` (uint32) mapped to [0, n) by multiply-shift (bias below n / 2**32)."""
    return ((word.astype(np.uint64) * np.uint64(n)) >> np.uint64(32)).astype(np.int64)


def standard_normals(seed: int, indices, epoch: int) -> np.ndarray:
    """The three N(0, 1) draws of each image in ``indices`` (float64 (len, 3))."""
    w = _words(philox.check_seed(seed), np.asarray(indices, dtype=np.int64), epoch, 1)
    scale = 2.0**-32
    u1a = (w[0].astype(np.float64) + 1.0) * scale
    u2a = w[1].astype(np.float64) * scale
    u1b = (w[2].astype(np.float64) + 1.0) * scale
    u2b = w[3].astype(np.float64) * scale
    ra, rb = np.sqrt(-2.0 * np.log(u1a)), np.sqrt(-2.0 * np.log(u1b))
    return np.stack([ra * np.cos(2 * np.pi * u2a), ra * np.sin(2 * np.pi * u2a),
                     rb * np.cos(2 * np.pi * u2b)], axis=1)


def ten_crop_corners(height: int, width: int, crop: int) -> list[tuple[int, int]]:
    """(y0, x0) of the five patches named in ``TEN_CROP``; the center rounds down."""
    dy, dx = height - crop, width - crop
    return [(0, 0), (0, dx), (dy, 0), (dy, dx), (dy // 2, dx // 2)]


class Augmentation:
    """The paper's augmentation for one mode; call it on a batch.

    ``mean``: float32 (H, W, 3) (None: nothing subtracted). ``eigenvalues`` (3,) and
    ``eigenvectors`` (3 x 3, columns): the training statistics (required for lighting
    in ``"train"`` mode unless ``alpha_std=0``). ``crop``: the patch side. ``mirror``:
    random mirrors in training. ``scale``: a factor applied last (1: the paper's
    0..255 units). ``from_dataset`` fills the statistics from a prepared data set.
    """

    def __init__(self, mode: str = "train", mean=None, eigenvalues=None, eigenvectors=None, *,
                 crop: int = DEFAULT_CROP, image_size=(256, 256), seed: int = 0,
                 mirror: bool = True, alpha_std: float = DEFAULT_ALPHA_STD,
                 lighting: str = "eigenvalue01", scale: float = 1.0):
        if mode not in MODES:
            raise AugmentError(f"augmentation mode must be one of {MODES}, got {mode!r}")
        if lighting not in LIGHTING:
            raise AugmentError(f"lighting must be one of {LIGHTING}, got {lighting!r}")
        alpha_std = arguments.real(alpha_std, "alpha_std", low=0.0, error=AugmentError)
        scale = arguments.real(scale, "scale", error=AugmentError)
        self.mode = mode
        self.seed = philox.check_seed(seed)
        self.mirror = bool(mirror)
        self.alpha_std = alpha_std
        self.lighting = lighting
        self.scale = scale
        if mean is not None:
            mean = np.ascontiguousarray(np.asarray(mean), dtype=np.float32)
            if mean.ndim != 3 or mean.shape[2] != 3:
                raise AugmentError(f"the mean image must be (H, W, 3), got {mean.shape}")
            image_size = mean.shape[:2]
        self.image_size = tuple(int(s) for s in image_size)
        h, w = self.image_size
        self.crop = arguments.integer(crop, "crop", low=1, high=min(h, w), error=AugmentError)
        self.mean = mean if mean is not None else np.zeros((h, w, 3), np.float32)
        self.magnitudes = self.eigenvectors = None
        if mode == "train" and self.alpha_std > 0:
            if eigenvalues is None or eigenvectors is None:
                raise AugmentError("PCA lighting needs the eigenvalues and eigenvectors of the "
                                   "training set (from prepare), or alpha_std=0 to turn it off")
            values = np.asarray(eigenvalues, dtype=np.float64)
            vectors = np.asarray(eigenvectors, dtype=np.float64)
            if values.shape != (3,) or vectors.shape != (3, 3) or not np.isfinite(values).all() \
                    or not np.isfinite(vectors).all() or (values < 0).any():
                raise AugmentError("eigenvalues must be 3 finite values >= 0 and eigenvectors a "
                                   "finite 3x3 matrix (columns)")
            self.eigenvectors = vectors
            self.magnitudes = np.sqrt(values) if lighting == "std" else values / 255.0
        self._device_mean: dict = {}

    @classmethod
    def from_dataset(cls, dataset, mode: str = "train", **kwargs) -> "Augmentation":
        from .shards import open_prepared
        ds = open_prepared(dataset)
        return cls(mode, ds.mean, ds.eigenvalues, ds.eigenvectors,
                   image_size=ds.image_size[:2], **kwargs)

    @property
    def patches(self) -> int:
        """Output images per input image: 10 for ten_crop, else 1."""
        return 10 if self.mode == "ten_crop" else 1

    def lighting_offsets(self, indices, epoch: int = 0) -> np.ndarray:
        """float32 (len, 3): each image's ``sum_i alpha_i m_i p_i`` (zeros when off)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.magnitudes is None:
            return np.zeros((len(indices), 3), np.float32)
        alpha = self.alpha_std * standard_normals(self.seed, indices, epoch)
        return ((alpha * self.magnitudes) @ self.eigenvectors.T).astype(np.float32)

    def params(self, indices, epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(params int32 (M, 4), offsets float32 (M, 3)) for a batch of images whose
        split indices are ``indices`` (batch row ``b`` is ``indices[b]``)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and indices.min() < 0:
            raise AugmentError("image indices must be >= 0")
        epoch = arguments.integer(epoch, "epoch", low=0, high=2**32 - 1, error=AugmentError)
        n = len(indices)
        h, w = self.image_size
        c = self.crop
        rows = np.arange(n, dtype=np.int64)
        if self.mode == "train":
            words = _words(self.seed, indices, epoch, 0)
            y0, x0 = _uniform_int(words[0], h - c + 1), _uniform_int(words[1], w - c + 1)
            flip = (words[2] >> np.uint32(31)).astype(np.int64) if self.mirror else np.zeros(n, np.int64)
            params = np.stack([rows, y0, x0, flip], axis=1)
            offsets = self.lighting_offsets(indices, epoch)
        elif self.mode == "center":
            params = np.stack([rows, np.full(n, (h - c) // 2), np.full(n, (w - c) // 2),
                               np.zeros(n, np.int64)], axis=1)
            offsets = np.zeros((n, 3), np.float32)
        else:
            corners = np.array(ten_crop_corners(h, w, c) * 2, dtype=np.int64)  # (10, 2)
            flips = np.repeat([0, 1], 5)
            params = np.concatenate([np.repeat(rows, 10)[:, None], np.tile(corners, (n, 1)),
                                     np.tile(flips, n)[:, None]], axis=1)
            offsets = np.zeros((10 * n, 3), np.float32)
        return np.ascontiguousarray(params, dtype=np.int32), offsets

    def device_mean(self, device):
        """The mean image as an array of ``device`` (uploaded once per device)."""
        mean = self._device_mean.get(device.name)
        if mean is None:
            mean = self.mean if not device.runs_kernels or device.kind == "emu" \
                else device.asarray(self.mean)
            self._device_mean[device.name] = mean
        return mean

    def __call__(self, device, images, indices=None, epoch: int = 0):
        """Augment a uint8 batch (N, H, W, 3) of ``device`` whose rows are images
        ``indices`` of their split (default 0..N-1); float32 (N * patches, 3, crop, crop)."""
        from ..backend import get_device
        device = get_device(device)
        n = getattr(images, "shape", (0,))[0]
        if indices is None:
            indices = np.arange(n)
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) != n:
            raise AugmentError(f"augment: {n} images but {len(indices)} indices")
        if tuple(getattr(images, "shape", ())[1:3]) != self.image_size:
            raise AugmentError(f"augment: images of {tuple(images.shape[1:3])}, this augmentation "
                               f"is for {self.image_size}")
        params, offsets = self.params(indices, epoch)
        return apply(device, images, self.device_mean(device), params, offsets, self.crop, self.scale)

    def __repr__(self) -> str:
        return (f"Augmentation({self.mode!r}, crop={self.crop}, image_size={self.image_size}, "
                f"seed={self.seed}, mirror={self.mirror}, alpha_std={self.alpha_std}, "
                f"lighting={self.lighting!r}, scale={self.scale})")


def ten_crop_average(probs, patches: int = 10):
    """Average the softmax outputs of each image's ten patches: (N * 10, K) or (N, 10, K)
    -> (N, K). Works on NumPy and CuPy arrays and on convnet Tensors (returns an array)."""
    data = getattr(probs, "data", probs) if type(probs).__name__ == "Tensor" else probs
    shape = tuple(getattr(data, "shape", ()))
    if len(shape) == 3 and shape[1] == patches:
        return data.mean(axis=1)
    if len(shape) != 2 or shape[0] % patches:
        raise AugmentError(f"ten_crop_average: expected (N * {patches}, K) or (N, {patches}, K) "
                           f"outputs, got shape {shape}")
    return data.reshape(shape[0] // patches, patches, shape[1]).mean(axis=1)
