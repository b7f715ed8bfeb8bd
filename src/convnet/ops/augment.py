"""The fused augmentation op (``kernels/augment.cu``): crop, mirror, mean subtraction,
lighting offset and scale, uint8 NHWC -> float32 NCHW, for a batch of crops::

    out[m, c, y, x] = ((float)images[src, y0 + y, sx, c] - mean[y0 + y, sx, c] + offsets[m, c]) * scale
    sx = x0 + x, or x0 + crop - 1 - x when mirrored;   params[m] = (src, y0, x0, flip)

``apply_reference`` is the NumPy reference, doing the kernel's float32 operations in
the same order (the two agree bit for bit); ``apply_launch`` builds the kernel's
Launch. The parameters, their checks and the device entry point are the data
pipeline's (``convnet.data.augment``).
"""
from __future__ import annotations

import numpy as np

from ..toolchain.launch import KernelModule, Launch

MODULE = KernelModule("augment.cu", ("augment_crops",))
BLOCK = (32, 8)


def apply_reference(images: np.ndarray, mean: np.ndarray, params: np.ndarray,
                    offsets: np.ndarray, crop: int, scale: float = 1.0) -> np.ndarray:
    """float32 (M, 3, crop, crop), the same float32 operations in the same order as the kernel
    (mirroring before or after the elementwise steps gives the same values)."""
    out = np.empty((len(params), 3, crop, crop), np.float32)
    s = np.float32(scale)
    planes = np.ascontiguousarray(mean.transpose(2, 0, 1))  # (3, H, W)
    for m, (src, y0, x0, flip) in enumerate(params.tolist()):
        pixels = images[src, y0:y0 + crop, x0:x0 + crop].transpose(2, 0, 1)
        means = planes[:, y0:y0 + crop, x0:x0 + crop]
        if flip:
            pixels, means = pixels[:, :, ::-1], means[:, :, ::-1]
        o = out[m]
        np.subtract(pixels, means, out=o, dtype=np.float32)
        o += offsets[m][:, None, None]
        o *= s
    return out


def apply_launch(images, mean, params, offsets, out, crop: int, scale: float,
                 kind: str = "cuda") -> Launch:
    """The launch of ``augment_crops``: grid (M, row groups); one row group on ``emu``.
    ``images`` is the whole (n, H, W, 3) array: the kernel reads aligned words only inside it."""
    m = int(out.shape[0])
    groups = 1 if kind == "emu" else -(-int(crop) // BLOCK[1])
    return Launch(MODULE, "augment_crops", grid=(m, groups), block=BLOCK,
                  args=(images, mean, params, offsets, out, np.int32(images.shape[1]),
                        np.int32(images.shape[2]), np.int32(crop), np.float32(scale),
                        np.int32(images.shape[0])))
