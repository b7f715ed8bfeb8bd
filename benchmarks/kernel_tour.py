"""Every kernel of the project once, on small shapes, checked against the cpu reference.

Not a benchmark: the workload that sanitizers run over. ``gpu_check.sh`` runs it
under compute-sanitizer (memcheck, racecheck) on ``cuda:0``; the test suite runs it
on ``emu`` with AddressSanitizer (``tests/test_kernel_tour.py``). Each case launches
its kernels on the device under test and on ``cpu`` with the same inputs and
compares; the variants an op can choose between (saved or recomputed LRN scale,
fused or separate LRN + max-pool, saved or recomputed argmax, every tile shape
of the convolutions) all run.

    python benchmarks/kernel_tour.py [DEVICE]     # default: cuda:0 if present, else emu
"""
from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np

import convnet
from convnet.data import augment
from convnet.ops import (conv, conv_layout, conv_tc, cross_entropy, dropout, linear, lrn, lrn_max_pool,
                         max_pool, relu, sgd)


class Tour:
    def __init__(self, device):
        self.device = convnet.get_device(device)
        if self.device.kind == "cuda":
            # Plain cudaMalloc per array instead of CuPy's pool, so that memcheck sees
            # each array's own bounds rather than one large pooled block.
            self.device.xp.cuda.set_allocator(None)
        self.cpu = convnet.get_device("cpu")
        self.rng = np.random.default_rng(0)
        self.cases = 0

    def data(self, *shape, dtype=np.float32):
        return self.rng.standard_normal(shape).astype(dtype)

    def on(self, array):
        return self.device.asarray(array)

    def check(self, name, got, want, rtol=1e-4, atol=1e-4):
        got = self.device.to_numpy(got)
        want = np.asarray(want)
        if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
            raise AssertionError(f"kernel tour: {name} on {self.device.name} differs from cpu")
        self.cases += 1
        print(f"ok  {name}", flush=True)

    # ---------------------------------------------------------------- elementwise
    def elementwise(self):
        d, c = self.device, self.cpu
        x, dy = self.data(1031), self.data(1031)
        y = relu.forward(d, self.on(x))
        self.check("relu forward", y, relu.forward(c, x))
        self.check("relu backward", relu.backward(d, y, self.on(dy)), relu.backward(c, relu.forward(c, x), dy))
        plan = dropout.plan(0.5, True, "inverted", seed=7)
        self.check("dropout", dropout.apply(d, self.on(x), plan), dropout.apply(c, x, plan))

    # ---------------------------------------------------------------- convolution
    def convolution(self):
        d, c = self.device, self.cpu
        shapes = [  # (x, w, stride, padding, groups): tiny, grouped, strided, many filters
            ((2, 3, 13, 11), (5, 3, 3, 3), 1, 1, 1),
            ((1, 4, 9, 9), (6, 2, 3, 3), 2, 0, 2),
            ((2, 8, 7, 7), (130, 8, 3, 3), 1, 1, 1),
        ]
        from convnet.ops._conv_tiles import WIDE_TILES
        cases = list(zip(shapes * len(conv.CONV_TILES), conv.CONV_TILES * 2))
        # a filter past the tap masks' 15 x 16 taps and a padding past backward filter's edge
        # words' 7 rows: the *_wide kernels, on their tiles
        cases += [(((1, 2, 19, 6), (3, 2, 17, 3), 1, (8, 1), 1), tile) for tile in WIDE_TILES]
        for (xs, ws, stride, padding, groups), tile in cases:
            x, w, b = self.data(*xs), self.data(*ws) * 0.1, self.data(ws[0])
            g = conv.geometry(xs, ws, stride, padding, groups)
            name = f"conv x{xs} w{ws} tile {tuple(tile)}"
            want = conv.forward(c, g, x, w, b, relu=True)
            self.check(f"{name} forward",
                       conv.forward(d, g, self.on(x), self.on(w), self.on(b), relu=True, tile=tile),
                       want, rtol=1e-3, atol=1e-3)
            dy = self.data(*want.shape)
            self.check(f"{name} backward data",
                       conv.backward_data(d, g, self.on(dy), self.on(w), tile=tile),
                       conv.backward_data(c, g, dy, w), rtol=1e-3, atol=1e-3)
            self.check(f"{name} backward filter",
                       conv.backward_filter(d, g, self.on(x), self.on(dy), tile=tile),
                       conv.backward_filter(c, g, x, dy), rtol=1e-3, atol=1e-3)
        g = conv.geometry((2, 3, 7, 8), (7, 3, 3, 3))  # dy (2, 7, 5, 6)
        dy = self.data(*g.y_shape)
        self.check("conv bias gradient", conv.backward_bias(d, g, self.on(dy)),
                   conv.backward_bias(c, g, dy), rtol=1e-3, atol=1e-3)
        self.check("conv bias gradient, two levels (3 splits of 2 images)",
                   conv.backward_bias(d, g, self.on(dy), splits=3),
                   conv.backward_bias(c, g, dy), rtol=1e-3, atol=1e-3)

    def tensor_cores(self):
        """conv_tc's three passes in TF32 and BF16 (cp.async pipeline, mma.sync; wgmma where
        the device runs it) against the cpu references of the rounded operands: partial
        tiles, groups, a stride, 3 splits; the NCHW kernels (2 channels a group), the channels-last ones (16 channels: the
        layouts, forward, backward data as a forward, backward filter) and their small
        forms (3 channels padded)."""
        d, c = self.device, self.cpu
        shapes = (((2, 3, 13, 11), (5, 3, 3, 3), 1, 1, 1), ((1, 4, 9, 9), (70, 2, 3, 3), 2, 0, 2),
                  ((2, 16, 6, 5), (16, 16, 3, 3), 1, 1, 1))
        alternate = lambda index, n: (("tf32", "bf16") * 2)[index % 2:index % 2 + n]
        # every tile, each precision, every shape, all three passes; then the warpgroup
        # engine (wgmma, sm_90a: emu, or an sm_90 GPU) on its tiles: forward (the small
        # form and 16 channels) and backward data as a forward (backward filter has none)
        plans = [(tile, shapes, alternate(index, 3), True) for index, tile in enumerate(conv_tc.TILES)]
        if d.kind == "emu" or getattr(d, "arch", None) == conv_tc.FORWARD_WGMMA.base_arch:
            plans += [(tile, shapes[::2], alternate(index, 2), False)
                      for index, tile in enumerate(conv_tc.WGMMA_TILES)]
        for tile, cases, precisions, with_filter in plans:
            for (xs, ws, stride, padding, groups), precision in zip(cases, precisions):
                x, w, b = self.data(*xs), self.data(*ws) * 0.1, self.data(ws[0])
                g = conv.geometry(xs, ws, stride, padding, groups)
                name = f"conv_tc {precision} x{xs} w{ws} tile {tile}"
                want = conv_tc.forward(c, g, x, w, b, True, precision)
                self.check(f"{name} forward", conv_tc.forward(
                    d, g, self.on(x), self.on(w), self.on(b), True, precision, tile=tile),
                    want, rtol=1e-3, atol=1e-3)
                dy = self.data(*want.shape)
                self.check(f"{name} backward data", conv_tc.backward_data(
                    d, g, self.on(dy), self.on(w), precision, tile=tile),
                    conv_tc.backward_data(c, g, dy, w, precision), rtol=1e-3, atol=1e-3)
                if with_filter:
                    self.check(f"{name} backward filter (3 splits)", conv_tc.backward_filter(
                        d, g, self.on(x), self.on(dy), precision, splits=3, tile=tile),
                        conv_tc.backward_filter(c, g, x, dy, precision), rtol=1e-3, atol=1e-3)

    def layouts(self):
        """conv_layout's channels-last transpose on conv2's input (two images: 96 x 729,
        neither a multiple of the 32 x 32 tile), the forward's filter of conv2 (256, 48,
        5, 5) and of conv1 (channels padded), and backward data's flipped filter of conv3
        (384, 256, 3, 3) and of a grouped one."""
        d, c = self.device, self.cpu
        for shape, precision, rows in (((256, 48, 5, 5), "tf32", None), ((96, 3, 11, 11), "bf16", 8)):
            w = self.data(*shape)
            self.check(f"conv_layout filter to channels-last {shape} {precision} {rows}",
                       conv_layout.filter_to_channels_last(d, self.on(w), precision, rows),
                       conv_layout.filter_to_channels_last(c, w, precision, rows), rtol=0, atol=0)
        for shape, precision, rows in (((2, 96, 27 * 27), None, None), ((2, 3, 45), "bf16", 8),
                                       ((2, 3, 45), "tf32", 4)):
            a = self.data(*shape)   # rows: a few channels padded, a thread per pixel
            self.check(f"conv_layout to channels-last {shape} {precision} {rows}",
                       conv_layout.to_channels_last(d, self.on(a), precision, rows),
                       conv_layout.to_channels_last(c, a, precision, rows), rtol=0, atol=0)
        for shape, groups, precision in (((384, 256, 3, 3), 1, "bf16"), ((6, 2, 5, 3), 2, None)):
            w = self.data(*shape)
            self.check(f"conv_layout filter for backward data {shape} groups {groups} {precision}",
                       conv_layout.filter_for_data(d, self.on(w), groups, precision),
                       conv_layout.filter_for_data(c, w, groups, precision), rtol=0, atol=0)

    # ---------------------------------------------------------------- LRN and max-pool
    def normalization(self):
        d, c = self.device, self.cpu
        x, params = self.data(2, 12, 9, 7), lrn.make_params(5, 1e-4, 0.75, 2.0, groups=2)
        y, s = lrn.forward(d, self.on(x), params, with_scale=True)
        y_ref, s_ref = lrn.forward(c, x, params, with_scale=True)
        self.check("lrn forward", y, y_ref)
        dy = self.data(*x.shape)
        want = lrn.backward(c, x, dy, params)
        self.check("lrn backward (saved scale)", lrn.backward(d, self.on(x), self.on(dy), params, scale=s), want)
        self.check("lrn backward (recomputed scale)", lrn.backward(d, self.on(x), self.on(dy), params), want)
        pool = max_pool.make_params(3, 2, 0)
        for fuse in (False, True):
            y, argmax = lrn_max_pool.forward(d, self.on(x), params, pool, fuse=fuse)
            y_ref, argmax_ref = lrn_max_pool.forward(c, x, params, pool)
            self.check(f"lrn + max-pool ({'fused' if fuse else 'separate'})", y, y_ref)
            dy = self.data(*y_ref.shape)
            self.check(f"lrn + max-pool backward ({'fused' if fuse else 'separate'})",
                       lrn_max_pool.backward(d, self.on(x), self.on(dy), argmax, params, pool,
                                             fuse=fuse),
                       lrn_max_pool.backward(c, x, dy, argmax_ref, params, pool))
        # awkward: 1e-20..1e20 in every window, beta off the rsqrt path, rings (size 4)
        x = (10.0 ** self.rng.uniform(-20, 20, (1, 7, 5, 3))).astype(np.float32)
        wide = lrn.make_params(4, 1e-4, 1.3, 2.0)
        self.check("lrn forward (1e-20..1e20, beta 1.3, size 4)", lrn.forward(d, self.on(x), wide),
                   lrn.forward(c, x, wide), rtol=1e-5)
        for padding in (0, 1):
            pool = max_pool.make_params(3, 2, padding)
            y, argmax = max_pool.forward(d, self.on(x), pool)
            y_ref, argmax_ref = max_pool.forward(c, x, pool)
            self.check(f"max-pool forward (padding {padding})", y, y_ref)
            dy = self.data(*y_ref.shape)
            want = max_pool.backward(c, dy, argmax_ref, pool, x.shape)
            self.check(f"max-pool backward (padding {padding})",
                       max_pool.backward(d, self.on(dy), argmax, pool, x.shape), want)
            self.check(f"max-pool backward, recomputed argmax (padding {padding})",
                       max_pool.backward_recompute(d, self.on(x), self.on(dy), pool), want)
        # the GPU's launch shape (every plane in one group, warps across plane ends) on 16
        # odd 7x9 planes (4x5 outputs): two full chunks of 128 outputs (uchar4 argmax
        # stores, float4 dx) and a partial one (byte by byte)
        pool, gpu = max_pool.make_params(3, 2, 1), SimpleNamespace(kind="cuda", parallel_units=132)
        x = self.data(2, 8, 7, 9)
        y_ref, argmax_ref = max_pool.forward(c, x, pool)
        dy = self.data(*y_ref.shape)
        y, argmax = d.xp.empty(y_ref.shape, np.float32), d.xp.empty(y_ref.shape, np.uint8)
        dx = d.xp.empty(x.shape, np.float32)
        d.launch(max_pool.forward_launch(gpu, self.on(x), y, pool, argmax))
        d.launch(max_pool.backward_launch(gpu, self.on(dy), argmax, dx, pool))
        self.check("max-pool forward (one group of planes)", y, y_ref)
        self.check("max-pool backward (one group of planes)", dx,
                   max_pool.backward(c, dy, argmax_ref, pool, x.shape))

    # ---------------------------------------------------------------- classifier and update
    def classifier(self):
        d, c = self.device, self.cpu
        x, w, b = self.data(6, 20), self.data(9, 20), self.data(9)
        y = linear.forward(d, self.on(x), self.on(w), self.on(b), relu=True)
        y_ref = linear.forward(c, x, w, b, relu=True)
        self.check("linear + bias + relu", y, y_ref, rtol=1e-3, atol=1e-3)
        dy = self.data(*y_ref.shape)
        for got, want, what in zip(linear.backward(d, self.on(x), self.on(w), y, self.on(dy), relu=True),
                                   linear.backward(c, x, w, y_ref, dy, relu=True), ("x", "w", "b")):
            self.check(f"linear backward d{what}", got, want, rtol=1e-3, atol=1e-3)
        logits, labels = self.data(6, 11), self.rng.integers(0, 11, 6)
        loss, saved = cross_entropy.forward(d, self.on(logits), self.on(labels))
        loss_ref, saved_ref = cross_entropy.forward(c, logits, labels)
        self.check("cross-entropy forward", loss, loss_ref)
        self.check("cross-entropy backward",
                   cross_entropy.backward(d, self.on(logits), saved, np.float32(1.0)),
                   cross_entropy.backward(c, logits, saved_ref, np.float32(1.0)))
        w, v, g = self.data(300), self.data(300), self.data(300)
        wd, vd = self.on(w), self.on(v)
        sgd.update(d, wd, vd, self.on(g), 0.01, 0.9, 0.0005)
        sgd.update(c, w, v, g, 0.01, 0.9, 0.0005)
        self.check("sgd update (w)", wd, w)
        self.check("sgd update (v)", vd, v)
        sizes = (300, 5, 1, 64)
        ws, vs, gs = ([self.data(k) for k in sizes] for _ in range(3))
        wds, vds = [self.on(a) for a in ws], [self.on(a) for a in vs]
        sgd.update_many(d, wds, vds, [self.on(a) for a in gs], [0.01, 0.02, 0.0, 0.01], 0.9,
                        [0.0005, 0.0, 0.1, 0.0005])
        sgd.update_many(c, ws, vs, gs, [0.01, 0.02, 0.0, 0.01], 0.9, [0.0005, 0.0, 0.1, 0.0005])
        for k in range(len(sizes)):
            self.check(f"sgd update_many (w{k})", wds[k], ws[k])
            self.check(f"sgd update_many (v{k})", vds[k], vs[k])
        drop = dropout.plan(0.5, seed=13)
        z, b, dy = self.data(7, 13), self.data(13), self.data(7, 13)
        y = linear.epilogue(d, self.on(z.copy()), self.on(b), True, drop)
        self.check("linear+dropout forward", y, linear.epilogue_dropout_reference(z, b, True, drop))
        dz, db = linear.epilogue_backward(d, y, self.on(dy), True, True, drop)
        dz_ref, db_ref = linear.epilogue_dropout_backward_reference(
            self.device.to_numpy(y), dy, True, True, drop)
        self.check("linear+dropout backward dz", dz, dz_ref)
        self.check("linear+dropout backward db", db, db_ref, rtol=1e-5, atol=1e-5)

    # ---------------------------------------------------------------- data augmentation
    def augmentation(self):
        images = self.rng.integers(0, 256, (3, 40, 44, 3), dtype=np.uint8)
        mean = self.rng.random((40, 44, 3)).astype(np.float32) * 255
        values, vectors = np.array([300.0, 30.0, 3.0]), np.linalg.qr(self.data(3, 3).astype(np.float64))[0]
        for mode in ("train", "center", "ten_crop"):
            a = augment.Augmentation(mode, mean, values, vectors, crop=32, image_size=(40, 44), seed=5)
            self.check(f"augment {mode}", a(self.device, self.on(images)), a(self.cpu, images),
                       rtol=1e-4, atol=1e-3)

    def run(self):
        for part in (self.elementwise, self.convolution, self.tensor_cores, self.layouts,
                     self.normalization, self.classifier, self.augmentation):
            part()
        print(f"kernel tour on {self.device.name}: {self.cases} checks passed")


def default_device() -> str:
    return "cuda:0" if "cuda:0" in convnet.devices() else "emu"


if __name__ == "__main__":
    Tour(sys.argv[1] if len(sys.argv) > 1 else default_device()).run()
