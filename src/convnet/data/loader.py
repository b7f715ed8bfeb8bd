"""The loader: prepared shards to batches on a device, fast enough to feed a GPU.

::

    with Loader("prepared/", "train", batch_size=128, device="cuda:0", augment="train") as loader:
        for epoch in range(90):
            for batch in loader:                  # one epoch per iteration of the loader
                logits = net(batch.images)        # float32 (128, 3, 227, 227) on cuda:0
                loss = cross_entropy(logits, batch.labels)

How it works
------------
* Order: a permutation of the split per epoch from ``(seed, epoch)`` when shuffling
  (``shuffle`` defaults to True for ``"train"``): the Philox4x32-10 words of each
  index (counter ``(index low 32, index high 32, epoch, 0x53480000)``, key ``seed``) as
  64-bit sort keys. Consecutive runs of ``batch_size`` make the batches; the last,
  shorter batch is kept unless ``drop_last``. Every image comes exactly once per epoch.
* Workers: ``workers`` processes (default: every usable core) read images from the
  shards (``os.pread``; shards stay closed between uses except for a small cache of
  file descriptors) and decode them (JPEG) or copy them (raw) straight into uint8
  batch slots in one shared-memory segment (``multiprocessing.shared_memory``). A
  batch is cut into one chunk per worker, so all workers fill the same batch at once.
* Integrity: a shard's CRCs (``shards.verify_once``) are checked before its first
  image is used, by one worker (a byte per shard after the slots says it is done; in
  the rare race two check it), so a corrupt shard stops the loader with its file
  named and no image of it is trained on.
* Prefetch: ``prefetch`` batch slots (default 4): the workers fill the next batches
  while the caller uses this one. The queue is bounded by the slots.
* To the device: on ``cpu``/``emu`` the slot is read directly (by the augmentation)
  or copied into a fresh array. On ``cuda`` the slot is copied into pinned host
  memory and from there to the GPU with an asynchronous copy on a separate stream;
  the caller's stream waits for that copy on the GPU, not on the host, and the
  device buffer is reused only after the work that read it (recorded as an event on
  the caller's stream) is done.
* Ranks (``shard=(rank, size)``): each batch of ``batch_size`` is cut into ``size``
  consecutive shares (``np.array_split``: equal when ``size`` divides it) and this
  loader yields share ``rank``; with the augmentation depending on (seed, epoch,
  index) only, the union of the ranks' batches is the single-process batch. A share
  can be empty (a last batch shorter than ``size``); it is still yielded.
* Augmentation (``augment=``): ``"train"``, ``"center"`` or ``"ten_crop"`` (with the
  data set's mean image and eigen-statistics, ``crop`` and ``seed``), or an
  ``Augmentation``; None yields the uint8 (N, H, W, 3) batches themselves.
* Shutdown: ``close()`` (also on leaving a ``with`` block, when the loader is
  garbage-collected, and at interpreter exit) stops the workers (asking first, then
  SIGTERM/SIGKILL) and unlinks the shared memory. An exception inside the loader
  (a worker failed or died, Ctrl-C while waiting for a batch) closes it at once.
  Workers ignore SIGINT, and exit by themselves when the parent process dies.
"""
from __future__ import annotations

import collections
import inspect
import os
import secrets
import weakref
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from ..arguments import integer, positive_int
from ..ops import philox
from ._pool import WorkerError, WorkerPool, usable_cpus
from .augment import Augmentation
from .shards import PreparedDataset, ShardError, decode_jpeg, open_prepared, verify_once

SHM_PREFIX = "convnet-ld-"  # short: macOS allows 31 characters
DEFAULT_PREFETCH = 4
_SHUFFLE_TAG = 0x53480000  # "SH"
_MAX_OUTSTANDING = 3       # chunks queued per worker
_FD_CACHE = 64


class LoaderError(RuntimeError):
    """The loader cannot go on: a worker failed or died, or its settings are wrong."""


@dataclass
class Batch:
    """One batch: ``images`` and ``labels`` (int64) on the loader's device; ``indices``
    (host int64) are the images' positions in their split; ``number`` counts the
    batches of the epoch from 0; ``total``: the images of the whole batch (more than
    ``len(batch)`` when the loader gives this rank a share of it, ``shard``)."""

    images: object
    labels: object
    indices: np.ndarray
    epoch: int
    number: int
    total: int | None = None

    def __len__(self) -> int:
        return len(self.indices)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the ``n`` images of a split."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    seed = philox.check_seed(seed)
    idx = np.arange(n, dtype=np.uint64)
    words = philox.philox4x32(((idx & np.uint64(0xFFFFFFFF)).astype(np.uint32),
                               (idx >> np.uint64(32)).astype(np.uint32),
                               np.uint32(epoch), np.uint32(_SHUFFLE_TAG)),
                              (seed & 0xFFFFFFFF, seed >> 32))
    keys = (words[0].astype(np.uint64) << np.uint64(32)) | words[1].astype(np.uint64)
    return np.argsort(keys, kind="stable").astype(np.int64)


# --------------------------------------------------------------------------- worker side

class _Reader:
    """Reads images of one split into uint8 arrays (in a worker, or in the parent)."""

    def __init__(self, paths, kind: str, size, verified=None):
        self.paths = list(paths)
        self.kind = kind
        self.size = tuple(size)
        self.item = int(np.prod(self.size))
        self.fds: collections.OrderedDict[int, int] = collections.OrderedDict()
        self.verified = verified  # one byte per shard shared by the workers: 1 once checked

    def _fd(self, shard: int) -> int:
        fd = self.fds.get(shard)
        if fd is None:
            if self.verified is None or not self.verified[shard]:
                verify_once(self.paths[shard])  # its CRCs, once per shard and loader
                if self.verified is not None:
                    self.verified[shard] = 1
            fd = os.open(self.paths[shard], os.O_RDONLY)
            self.fds[shard] = fd
            if len(self.fds) > _FD_CACHE:
                os.close(self.fds.popitem(last=False)[1])
        else:
            self.fds.move_to_end(shard)
        return fd

    def read_into(self, shard: int, offset: int, length: int, out: np.ndarray) -> None:
        fd = self._fd(shard)
        where = f"{self.paths[shard]} at byte {offset}"
        if self.kind == "raw":
            got = os.preadv(fd, [memoryview(out).cast("B")], offset)
            if got != self.item:
                raise ShardError(f"{where}: short read ({got} of {self.item} bytes): truncated shard")
        else:
            data = os.pread(fd, length, offset)
            if len(data) != length:
                raise ShardError(f"{where}: short read ({len(data)} of {length} bytes): truncated shard")
            decode_jpeg(data, self.size, out, where)

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.popitem()[1])


def _attach(name: str) -> shared_memory.SharedMemory:
    if "track" in inspect.signature(shared_memory.SharedMemory).parameters:  # Python >= 3.13
        return shared_memory.SharedMemory(name=name, track=False)
    return shared_memory.SharedMemory(name=name)


def _worker_init(shm_name: str, slots: int, batch_size: int, paths, kind: str, size):
    shm = _attach(shm_name)
    buffer = np.ndarray((slots, batch_size) + tuple(size), dtype=np.uint8, buffer=shm.buf)
    verified = np.ndarray((len(paths),), dtype=np.uint8, buffer=shm.buf, offset=buffer.nbytes)
    return {"shm": shm, "buffer": buffer, "reader": _Reader(paths, kind, size, verified)}


def _worker_task(state, task, progress) -> int:
    slot, start, shard_ids, offsets, lengths = task
    buffer, reader = state["buffer"], state["reader"]
    for j in range(len(shard_ids)):
        reader.read_into(int(shard_ids[j]), int(offsets[j]), int(lengths[j]), buffer[slot, start + j])
    return len(shard_ids)


# --------------------------------------------------------------------------- device stages

class _HostStage:
    """cpu/emu: the slot's array is used where it lies."""

    def __init__(self, device):
        self.device = device

    def put(self, host: np.ndarray):
        return host, None

    def labels(self, labels: np.ndarray):
        return labels

    def release(self, token) -> None:
        pass


class _CudaStage:
    """cuda: shared memory -> pinned host buffer -> device buffer, on a copy stream.

    ``depth`` pinned and device buffers are used in turn. Before the host overwrites a
    pinned buffer it waits for that buffer's last copy to finish; before the copy
    stream overwrites a device buffer it waits (on the GPU) for the event recorded on
    the caller's stream after the last work that read it; the caller's stream waits
    (on the GPU) for the copy before the work that reads it.
    """

    def __init__(self, device, shape, depth: int = 3):
        import cupyx
        cp = device.xp
        self.device, self.cp, self.depth = device, cp, depth
        with cp.cuda.Device(device.index):
            self.stream = cp.cuda.Stream(non_blocking=True)
            self.pinned = [cupyx.empty_pinned(shape, dtype=np.uint8) for _ in range(depth)]
            self.buffers = [cp.empty(shape, dtype=cp.uint8) for _ in range(depth)]
        self.copied = [None] * depth
        self.released = [None] * depth
        self.turn = 0

    def put(self, host: np.ndarray):
        cp, j, n = self.cp, self.turn, len(host)
        self.turn = (self.turn + 1) % self.depth
        with cp.cuda.Device(self.device.index):
            if self.copied[j] is not None:
                self.copied[j].synchronize()
            np.copyto(self.pinned[j][:n], host)
            if self.released[j] is not None:
                self.stream.wait_event(self.released[j])
            target = self.buffers[j][:n]
            target.set(self.pinned[j][:n], stream=self.stream)
            event = cp.cuda.Event(disable_timing=True)
            event.record(self.stream)
            self.copied[j] = event
            cp.cuda.get_current_stream().wait_event(event)
        return target, j

    def labels(self, labels: np.ndarray):
        return self.device.asarray(labels)

    def release(self, token) -> None:
        cp = self.cp
        with cp.cuda.Device(self.device.index):
            event = cp.cuda.Event(disable_timing=True)
            event.record(cp.cuda.get_current_stream())
            self.released[token] = event


# --------------------------------------------------------------------------- the loader

def _shutdown(pool_box: list, shm_box: list, buffer_box: list) -> None:
    """Stop the workers and free the shared memory (also the finalizer: no reference to
    the Loader itself)."""
    buffer_box[0] = None  # the view into the segment, so that it can be closed
    pool = pool_box[0] if pool_box else None
    if pool is not None:
        try:
            pool.close(timeout=5.0)
        finally:
            pool_box[0] = None
    shm = shm_box[0] if shm_box else None
    if shm is not None:
        shm_box[0] = None
        try:
            shm.close()
        except BufferError:  # a view is still exported: unlinking below frees the name anyway
            pass
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


class Loader:
    """Batches of a prepared split on a device (see the module docstring).

    ``data``: a prepared folder or ``PreparedDataset``. ``split``: ``"train"`` or
    ``"val"``. ``batch_size``; ``shuffle`` (default: ``split == "train"``); ``seed``;
    ``drop_last``: drop the last, shorter batch. ``workers`` (default: every usable
    core; 0 decodes in this process), ``prefetch`` (batch slots, default 4).
    ``device``: where batches go. ``augment``: None, ``"train"``, ``"center"``,
    ``"ten_crop"`` or an ``Augmentation``; ``crop`` its patch size.
    ``start_method``: the multiprocessing start method (default forkserver, else spawn).
    ``shard``: ``(rank, size)``: yield this rank's share of every batch (data parallelism).
    Iterating the loader runs the next epoch (from ``epoch``, default 0);
    ``loader.epoch(e)`` runs epoch ``e``.
    """

    def __init__(self, data, split: str = "train", *, batch_size: int = 128,
                 shuffle: bool | None = None, seed: int = 0, drop_last: bool = False,
                 workers: int | None = None, prefetch: int | None = None, device="cpu",
                 augment=None, crop: int = 227, epoch: int = 0, start_method: str | None = None,
                 shard: tuple | None = None):
        from ..backend import get_device
        self.dataset: PreparedDataset = open_prepared(data)
        self.split = self.dataset.split(split)
        self.device = get_device(device)
        self.batch_size = positive_int(batch_size, "batch_size", error=LoaderError)
        self.seed = philox.check_seed(seed)
        self.shuffle = (split == "train") if shuffle is None else bool(shuffle)
        self.drop_last = bool(drop_last)
        self.workers = usable_cpus() if workers is None else integer(workers, "workers", low=0,
                                                                     error=LoaderError)
        self.prefetch = (DEFAULT_PREFETCH if prefetch is None
                         else positive_int(prefetch, "prefetch", error=LoaderError))
        self.next_epoch = int(epoch)
        self.start_method = start_method
        self.shard = _check_shard(shard)
        self._totals: list[int] = []  # the current epoch's whole-batch sizes
        if isinstance(augment, str):
            augment = Augmentation.from_dataset(self.dataset, augment, crop=crop, seed=self.seed)
        elif augment is not None and not isinstance(augment, Augmentation):
            raise LoaderError(f"augment must be None, 'train', 'center', 'ten_crop' or an "
                              f"Augmentation, got {type(augment).__name__}")
        if augment is not None and augment.image_size != self.split.size[:2]:
            raise LoaderError(f"the augmentation is for {augment.image_size} images, the data set "
                              f"has {self.split.size[:2]}")
        self.augment = augment
        self._pool_box: list = [None]
        self._shm_box: list = [None]
        self._buffer_box: list = [None]   # uint8 (slots, batch, H, W, 3): shared memory or local
        self._stage = None
        self._active = None  # weak reference to the running epoch's generator
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._pool_box, self._shm_box,
                                           self._buffer_box)

    # ------------------------------------------------------------------ info
    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def labels(self) -> np.ndarray:
        return self.split.labels

    def worker_pids(self) -> list[int]:
        pool = self._pool_box[0]
        return pool.pids() if pool is not None else []

    @property
    def shared_memory_name(self) -> str | None:
        shm = self._shm_box[0]
        return shm.name if shm is not None else None

    def order(self, epoch: int) -> np.ndarray:
        return epoch_order(len(self.split), self.seed, epoch, self.shuffle)

    # ------------------------------------------------------------------ resources
    def _slot_shape(self):
        return (self.batch_size,) + tuple(self.split.size)

    def _start(self) -> None:
        if self._closed:
            raise LoaderError("this loader is closed")
        if self._stage is None:
            if self.device.kind == "cuda":
                self._stage = _CudaStage(self.device, self._slot_shape())
            else:
                self._stage = _HostStage(self.device)
        if self.workers == 0:
            if self._buffer_box[0] is None:
                self._buffer_box[0] = np.empty((1,) + self._slot_shape(), np.uint8)
            return
        if self._shm_box[0] is None:
            # the batch slots, then one byte per shard: set by the worker that checked its CRCs
            nbytes = self.prefetch * int(np.prod(self._slot_shape())) + len(self.split.paths)
            _check_shm_space(nbytes)
            name = f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
            shm = shared_memory.SharedMemory(name=name, create=True, size=nbytes)
            self._shm_box[0] = shm
            self._buffer_box[0] = np.ndarray((self.prefetch,) + self._slot_shape(), np.uint8,
                                             buffer=shm.buf)
        if self._pool_box[0] is None:
            self._pool_box[0] = WorkerPool(
                self.workers, "convnet.data.loader:_worker_task", "convnet.data.loader:_worker_init",
                (self._shm_box[0].name, self.prefetch, self.batch_size, self.split.paths,
                 self.split.kind, self.split.size),
                start_method=self.start_method, name="convnet-loader")

    def close(self) -> None:
        """Stop the workers and free the shared memory; the loader cannot be used after."""
        self._closed = True
        self._close_active()
        self._finalizer()

    def _close_active(self) -> None:
        active, self._active = self._active, None
        generator = active() if active is not None else None
        if generator is not None:
            generator.close()

    def _fail(self) -> None:
        """After an error: kill the workers at once and free everything."""
        pool = self._pool_box[0]
        if pool is not None:
            pool.terminate()
        self._closed = True
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ iteration
    def __iter__(self):
        epoch = self.next_epoch
        self.next_epoch += 1
        return self.epoch(epoch)

    def epoch(self, epoch: int):
        """An iterator over the batches of epoch ``epoch`` (starting it abandons a running one)."""
        epoch = integer(epoch, "epoch", low=0, high=2**32 - 1, error=LoaderError)
        if self._closed:
            raise LoaderError("this loader is closed")
        self._close_active()
        generator = self._run_epoch(epoch)
        self._active = weakref.ref(generator)
        return generator

    def _batches(self, epoch: int) -> list[np.ndarray]:
        order = self.order(epoch)
        cuts = list(range(0, len(order), self.batch_size))
        batches = [order[c:c + self.batch_size] for c in cuts]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        self._totals = [len(b) for b in batches]
        if self.shard is not None:
            rank, size = self.shard
            batches = [np.array_split(b, size)[rank] for b in batches]
        return batches

    def _emit(self, host: np.ndarray, indices: np.ndarray, epoch: int, number: int) -> Batch:
        from .augment import _on
        with _on(self.device):
            images, token = self._stage.put(host)
            if self.augment is not None:
                images = self.augment(self.device, images, indices, epoch)
            else:
                images = images.copy()  # the caller may keep it; the slot is reused
            self._stage.release(token)
            labels = self._stage.labels(self.split.labels[indices])
        return Batch(images=images, labels=labels, indices=indices, epoch=epoch, number=number,
                     total=self._totals[number] if number < len(self._totals) else len(indices))

    def _run_epoch(self, epoch: int):
        batches = self._batches(epoch)
        if not batches:
            return
        self._start()
        if self.workers == 0:
            yield from self._run_inline(batches, epoch)
            return
        pool: WorkerPool = self._pool_box[0]
        split = self.split
        chunk = max(1, -(-self.batch_size // pool.size))
        free = collections.deque(range(self.prefetch))
        slot_of: dict[int, int] = {}
        left: dict[int, int] = {}   # chunks still being filled, per batch
        tasks: dict[int, int] = {}  # task id -> batch number
        pending = collections.deque()
        next_task = scheduled = emitted = 0
        finished = False
        try:
            while emitted < len(batches):
                while free and scheduled < len(batches):
                    slot = free.popleft()
                    idx = batches[scheduled]
                    slot_of[scheduled] = slot
                    left[scheduled] = 0
                    for start in range(0, len(idx), chunk):
                        part = idx[start:start + chunk]
                        payload = (slot, start, split.shard_ids[part], split.offsets[part],
                                   split.lengths[part])
                        pending.append((next_task, payload))
                        tasks[next_task] = scheduled
                        left[scheduled] += 1
                        next_task += 1
                    scheduled += 1
                while pending:
                    worker = pool.least_busy()
                    if pool.outstanding[worker] >= _MAX_OUTSTANDING:
                        break
                    pool.submit(worker, *pending.popleft())
                if left.get(emitted, 1) == 0:
                    slot = slot_of.pop(emitted)
                    del left[emitted]
                    idx = batches[emitted]
                    batch = self._emit(self._buffer_box[0][slot, :len(idx)], idx, epoch, emitted)
                    free.append(slot)
                    emitted += 1
                    yield batch
                    continue
                for task_id, kind, value, _ in pool.receive(timeout=1.0):
                    if kind == "progress":
                        continue
                    if kind == "error":
                        line, trace = value
                        raise WorkerError(f"a loader worker failed: {line}", trace)
                    left[tasks.pop(task_id)] -= 1
            finished = True
        except GeneratorExit:
            for task_id, _ in pending:  # never sent: nothing to wait for
                tasks.pop(task_id, None)
            self._drain(tasks)
            raise
        except WorkerError as exc:
            self._fail()
            error = LoaderError(str(exc))
            error.traceback = exc.traceback
            raise error from None
        except BaseException:
            self._fail()
            raise
        finally:
            if finished:
                self._active = None

    def _drain(self, tasks: dict) -> None:
        """An epoch abandoned midway: wait for the chunks in flight, so their slots can
        be reused (or shut the workers down if that does not go cleanly)."""
        pool = self._pool_box[0]
        if pool is None:
            return
        try:
            waited = 0
            while tasks and waited < 30:
                messages = pool.receive(timeout=1.0)
                waited = waited + 1 if not messages else 0
                for task_id, kind, _, _ in messages:
                    if kind in ("done", "error"):
                        tasks.pop(task_id, None)
            if tasks:
                raise LoaderError("workers did not finish")
        except BaseException:
            self._fail()

    def _run_inline(self, batches, epoch: int):
        reader = _Reader(self.split.paths, self.split.kind, self.split.size)
        split = self.split
        try:
            for number, idx in enumerate(batches):
                host = self._buffer_box[0][0, :len(idx)]
                for j, i in enumerate(idx):
                    reader.read_into(int(split.shard_ids[i]), int(split.offsets[i]),
                                     int(split.lengths[i]), host[j])
                yield self._emit(host, idx, epoch, number)
        finally:
            reader.close()


def _check_shard(shard):
    if shard is None:
        return None
    try:
        rank, size = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise LoaderError(f"shard must be (rank, size), got {shard!r}") from None
    if not 0 <= rank < size:
        raise LoaderError(f"shard (rank {rank}, size {size}): the rank must be in 0..size-1")
    return (rank, size) if size > 1 else None


def _check_shm_space(nbytes: int) -> None:
    """A clear error instead of a SIGBUS later, when /dev/shm cannot hold the slots."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free and nbytes > free:
        raise LoaderError(
            f"the loader needs {nbytes / 2**20:.0f} MiB of shared memory (prefetch x batch_size x "
            f"image bytes) but /dev/shm has {free / 2**20:.0f} MiB free; lower prefetch or "
            f"batch_size, or enlarge /dev/shm (e.g. docker run --shm-size=2g)")
