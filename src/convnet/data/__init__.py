"""The data pipeline: ImageNet-style folders -> prepared shards -> augmented batches.

* ``scan_folder(root)`` reads the ImageNet layout (``train/<wnid>/*.JPEG``,
  ``val/<wnid>/*.JPEG``, optional ``synset_words.txt``): ``folders``.
* ``prepare(src, dst)`` (``convnet prepare SRC DST``) resizes, center-crops and packs
  the images into shards once, with the mean image and the RGB eigen-statistics:
  ``prepare``, ``shards`` (formats, manifest), ``stats``. ``prepare_arrays`` does the
  same for images already in memory.
* ``open_prepared(dst)`` reads a prepared folder; ``Loader(dst, "train", ...)`` delivers
  batches from it with worker processes and shared memory: ``loader``.
* ``Augmentation`` (crop, mirror, mean subtraction, PCA lighting, ten-crop; one fused
  kernel on ``emu``/``cuda``, a NumPy reference on ``cpu``) and ``ten_crop_average``:
  ``augment``.
* ``make_demo_data(dir)`` (``convnet make-demo-data DIR``) writes a generated data set
  in the same layout: ``demo``.
* ``resolve_data(data)`` finds the prepared set a command means (preparing an image
  folder once; none: the demo set, made on first use by ``demo_dataset``): ``datasets``.
"""
from .augment import Augmentation, AugmentError, ten_crop_average
from ._pool import WorkerError
from .datasets import demo_dataset, resolve_data
from .demo import DemoError, make_demo_data
from .folders import DatasetError, ImageFolder, load_rgb, prepare_image, scan_folder
from .loader import Batch, Loader, LoaderError, epoch_order
from .prepare import PrepareError, prepare, prepare_arrays
from .shards import (FORMAT_VERSION, ManifestError, PreparedDataset, PreparedSplit, ShardError,
                     open_prepared, read_manifest)

__all__ = [
    "AugmentError", "Augmentation", "Batch", "DatasetError", "DemoError", "FORMAT_VERSION",
    "ImageFolder", "Loader", "LoaderError", "ManifestError", "PrepareError", "PreparedDataset",
    "PreparedSplit", "ShardError", "WorkerError", "demo_dataset", "epoch_order", "load_rgb",
    "make_demo_data", "open_prepared", "prepare", "prepare_arrays", "prepare_image",
    "read_manifest", "resolve_data", "scan_folder", "ten_crop_average",
]
