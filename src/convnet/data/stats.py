"""Training-set statistics: the mean image and the eigen-decomposition of the RGB
covariance, for mean subtraction and PCA lighting (Krizhevsky et al. 2012, §2 and §4.1).

* Mean image: the per-pixel, per-channel mean of the prepared training images
  (uint8, H x W x 3), accumulated as exact integer sums, so the result does not
  depend on the order or the number of workers.
* RGB covariance: over a seeded sample of pixel values (0..255) of the training
  images: ``k = ceil(pixels / N)`` positions per image, so at least ``pixels`` in all
  (10**6 by default), or every pixel of every image when that is fewer. Positions
  are drawn with replacement from Philox4x32-10 (``convnet.philox``) under ``seed``
  with the counter ``(index low 32, index high 32, j, 0x5354)`` for block ``j`` of
  image ``index`` (its position in the prepared training split), word ``w`` mapped
  to ``(w * H * W) >> 32``. The sums of the sampled values and of their outer
  products are exact integers as well.
* Eigen-decomposition: ``numpy.linalg.eigh`` of the covariance (ddof 1), eigenvalues
  in descending order, each eigenvector (a column) signed so that its largest
  component is positive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..ops import philox

DEFAULT_PIXELS = 1_000_000
_STATS_TAG = 0x5354  # "ST": keeps this stream apart from the augmentation's


def pixels_per_image(images: int, pixels: int, height: int, width: int) -> int | None:
    """Sampled positions per image, or None for "every pixel" (when that is fewer)."""
    if images <= 0:
        return None
    if images * height * width <= pixels:
        return None
    return max(1, math.ceil(pixels / images))


def sample_positions(seed: int, index: int, k: int, npix: int) -> np.ndarray:
    """The ``k`` sampled flat pixel positions (0 <= p < npix) of image ``index``."""
    seed = philox.check_seed(seed)
    blocks = -(-k // 4)
    j = np.arange(blocks, dtype=np.uint32)
    words = philox.philox4x32((np.uint32(index & 0xFFFFFFFF), np.uint32(index >> 32), j,
                               np.uint32(_STATS_TAG)), (seed & 0xFFFFFFFF, seed >> 32))
    flat = np.stack(words, axis=1).reshape(-1)[:k].astype(np.uint64)
    return ((flat * np.uint64(npix)) >> np.uint64(32)).astype(np.int64)


@dataclass
class Accumulator:
    """Exact integer sums over images; ``add`` per image, ``merge`` partial results."""

    shape: tuple[int, int, int]
    images: int = 0
    pixel_count: int = 0
    pixel_sum: np.ndarray | None = None      # int64 (3,)
    pixel_outer: np.ndarray | None = None    # int64 (3, 3)
    image_sum: np.ndarray | None = None      # int64 (H, W, 3)

    def __post_init__(self):
        if self.image_sum is None:
            self.image_sum = np.zeros(self.shape, np.int64)
            self.pixel_sum = np.zeros(3, np.int64)
            self.pixel_outer = np.zeros((3, 3), np.int64)

    def add(self, image: np.ndarray, positions: np.ndarray | None) -> None:
        """One uint8 image; ``positions`` the sampled flat positions (None: all)."""
        self.image_sum += image
        self.images += 1
        flat = image.reshape(-1, 3)
        values = flat if positions is None else flat[positions]
        values = values.astype(np.int64)
        self.pixel_count += len(values)
        self.pixel_sum += values.sum(axis=0)
        self.pixel_outer += values.T @ values

    def merge(self, other: "Accumulator") -> None:
        self.image_sum += other.image_sum
        self.images += other.images
        self.pixel_count += other.pixel_count
        self.pixel_sum += other.pixel_sum
        self.pixel_outer += other.pixel_outer

    def to_payload(self) -> dict:
        return {"shape": self.shape, "images": self.images, "pixel_count": self.pixel_count,
                "pixel_sum": self.pixel_sum, "pixel_outer": self.pixel_outer,
                "image_sum": self.image_sum}

    @classmethod
    def from_payload(cls, payload: dict) -> "Accumulator":
        return cls(**payload)

    # ------------------------------------------------------------------ results
    def mean_image(self) -> np.ndarray:
        """float64 (H, W, 3)."""
        if not self.images:
            raise ValueError("no training images: the mean image is undefined")
        return self.image_sum / self.images

    def covariance(self) -> np.ndarray:
        """The 3x3 covariance (ddof 1) of the sampled pixel values, float64."""
        n = self.pixel_count
        if n < 2:
            raise ValueError("fewer than two sampled pixels: the covariance is undefined")
        # exact integers first: n * sum(x x^T) - sum(x) sum(x)^T, as Python ints
        outer = np.array([[int(self.pixel_outer[a, b]) * n - int(self.pixel_sum[a]) * int(self.pixel_sum[b])
                           for b in range(3)] for a in range(3)], dtype=np.float64)
        return outer / (n * (n - 1))


def rgb_eigen(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(eigenvalues, eigenvectors)`` of a 3x3 covariance: values descending, vectors
    as columns, each signed so that its largest-magnitude component is positive."""
    values, vectors = np.linalg.eigh(np.asarray(covariance, dtype=np.float64))
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    for i in range(vectors.shape[1]):
        if vectors[np.argmax(np.abs(vectors[:, i])), i] < 0:
            vectors[:, i] = -vectors[:, i]
    return np.clip(values, 0.0, None), vectors
