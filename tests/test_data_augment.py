"""The fused augmentation kernel (emu, cuda) against the NumPy reference (cpu): crops and
mirrors bit for bit, mean subtraction and PCA lighting within float tolerance (and
bit for bit on emu); ten-crop positions; the host-side random draws; errors."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

import convnet
from convnet.data import Augmentation, AugmentError, ten_crop_average
from convnet.data import augment as aug
from convnet.ops import augment as augment_op

from conftest import HAVE_NVRTC, forbid_launches, require_device, run_clean_under_asan

CPU = convnet.get_device("cpu")


def _batch(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _stats(seed=1):
    rng = np.random.default_rng(seed)
    vectors, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    return np.array([4000.0, 300.0, 40.0]), vectors


def _run(device, augmentation, images, indices=None, epoch=0):
    out = augmentation(device, device.asarray(images), indices, epoch)
    return device.to_numpy(out)


def _position_image(n, h, w):
    """Pixel (y, x) of image k holds (y, x, k): every output value says where it came from."""
    y, x = np.mgrid[0:h, 0:w]
    images = np.empty((n, h, w, 3), np.uint8)
    images[..., 0], images[..., 1] = y, x
    images[..., 2] = np.arange(n)[:, None, None]
    return images


# --------------------------------------------------------------------------- kernel vs reference

@pytest.mark.parametrize("n,h,w,crop", [(3, 40, 48, 31), (2, 17, 23, 17), (4, 9, 9, 1),
                                        (1, 33, 70, 32), (5, 64, 64, 57)], ids=str)
def test_crop_and_mirror_bit_for_bit(kernel_device, n, h, w, crop):
    """No mean, no lighting: every value is a source byte, so the crop and mirror are exact."""
    images = _batch(n, h, w, seed=n * h)
    augmentation = Augmentation("train", None, crop=crop, image_size=(h, w), seed=n, alpha_std=0)
    indices = np.arange(n) * 7 + 3
    out = _run(kernel_device, augmentation, images, indices, epoch=2)
    expected = _run(CPU, augmentation, images, indices, epoch=2)
    assert out.shape == (n, 3, crop, crop) and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    params, _ = augmentation.params(indices, 2)
    for m, (src, y0, x0, flip) in enumerate(params):
        patch = images[src, y0:y0 + crop, x0:x0 + crop].transpose(2, 0, 1)
        np.testing.assert_array_equal(out[m], patch[:, :, ::-1] if flip else patch)


@pytest.mark.parametrize("mode", ["train", "center", "ten_crop"])
def test_mean_and_lighting_match_reference(kernel_device, mode):
    h, w, crop = 36, 44, 29
    images = _batch(6, h, w, seed=3)
    mean = np.random.default_rng(4).uniform(0, 255, (h, w, 3)).astype(np.float32)
    values, vectors = _stats()
    augmentation = Augmentation(mode, mean, values, vectors, crop=crop, seed=11, scale=1 / 58.0)
    out = _run(kernel_device, augmentation, images, np.arange(100, 106), epoch=5)
    expected = _run(CPU, augmentation, images, np.arange(100, 106), epoch=5)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-5)
    if kernel_device.kind == "emu":  # the same float32 operations in the same order
        np.testing.assert_array_equal(out, expected)
    params, offsets = augmentation.params(np.arange(100, 106), 5)
    src, y0, x0, flip = params[0]
    patch = images[src, y0:y0 + crop, x0:x0 + crop].astype(np.float64) - mean[y0:y0 + crop, x0:x0 + crop]
    patch = (patch + offsets[0]) / 58.0
    if flip:
        patch = patch[:, ::-1]
    np.testing.assert_allclose(out[0], patch.transpose(2, 0, 1), rtol=1e-5, atol=1e-4)


def _offset_copy(a, offset):
    """A C-contiguous copy of ``a`` whose data starts ``offset`` bytes past a 64-byte boundary."""
    buffer = np.zeros(a.nbytes + 64 + offset, np.uint8)
    start = (-buffer.__array_interface__["data"][0]) % 64 + offset
    out = buffer[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


CHECK_MODES = [dict(), dict(check="bounds", schedule="reverse", fill_shared=True),
               dict(check="race", schedule="random", seed=5), dict(check="init", fill_empty=True),
               dict(check="align"), dict(schedule="random", seed=2)]


@pytest.mark.parametrize("mode", CHECK_MODES, ids=lambda m: ",".join(f"{k}={v}" for k, v in m.items()) or "plain")
def test_vector_and_scalar_paths_bit_for_bit_under_every_check(mode):
    """Every crop offset mod 4, both mirrors, crops of every width mod 4, images and mean
    not 16-byte aligned (and images at every byte offset), crops at the array's last
    bytes: the word loads, float4 mean loads and float4 stores give the reference's bits."""
    from convnet.backend import emu
    device = require_device("emu")
    n, h, w = 3, 9, 13
    rng = np.random.default_rng(7)
    images0 = _batch(n, h, w, seed=9)
    mean0 = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    for crop in (4, 5, 6, 7, 8):
        rows = [(src, y0, x0, flip) for src in (0, n - 1) for y0 in (0, h - crop)
                for x0 in range(0, w - crop + 1) for flip in (0, 1)]
        params = np.array(rows, np.int32)
        offsets = rng.standard_normal((len(rows), 3)).astype(np.float32)
        for offset in (0, 1, 2, 3, 4) if crop == 5 else (1,):
            images, mean = _offset_copy(images0, offset), _offset_copy(mean0, 4 * (offset % 2))
            out = np.empty((len(rows), 3, crop, crop), np.float32)
            with emu.debug(**mode):
                device.launch(augment_op.apply_launch(images, mean, params, offsets, out, crop,
                                                      0.5, "emu"))
            expected = augment_op.apply_reference(images0, mean0, params, offsets, crop, 0.5)
            np.testing.assert_array_equal(out, expected, err_msg=f"crop {crop}, offset {offset}")


def test_emu_schedules_and_shared_fill_agree():
    from convnet.backend import emu
    device = require_device("emu")
    images = _batch(3, 30, 30, seed=8)
    augmentation = Augmentation("train", None, *_stats(), crop=25, image_size=(30, 30), seed=2)
    forward = _run(device, augmentation, images)
    with emu.debug(schedule="reverse", fill_shared=True):
        reverse = _run(device, augmentation, images)
    np.testing.assert_array_equal(forward, reverse)


def test_launch_shape():
    images = np.zeros((4, 256, 256, 3), np.uint8)
    mean = np.zeros((256, 256, 3), np.float32)
    params = np.zeros((40, 4), np.int32)
    offsets = np.zeros((40, 3), np.float32)
    out = np.zeros((40, 3, 227, 227), np.float32)
    gpu = augment_op.apply_launch(images, mean, params, offsets, out, 227, 1.0, "cuda")
    assert gpu.grid == (40, 29, 1) and gpu.block == (32, 8, 1)
    assert augment_op.apply_launch(images, mean, params, offsets, out, 227, 1.0, "emu").grid == (40, 1, 1)
    assert isinstance(gpu.args[-2], np.float32) and isinstance(gpu.args[-1], np.int32)
    assert gpu.args[-1] == 4  # the images in the array: the word loads stay inside it


def test_empty_batch_launches_nothing(kernel_device, monkeypatch):
    forbid_launches(monkeypatch, kernel_device, "an empty batch must not launch")
    augmentation = Augmentation("center", None, crop=5, image_size=(8, 8))
    out = augmentation(kernel_device, kernel_device.asarray(np.zeros((0, 8, 8, 3), np.uint8)))
    assert out.shape == (0, 3, 5, 5)


# --------------------------------------------------------------------------- evaluation crops

def test_ten_crop_positions_and_mirrors(device):
    n, h, w, crop = 2, 20, 26, 13
    images = _position_image(n, h, w)
    out = _run(device, Augmentation("ten_crop", None, crop=crop, image_size=(h, w)), images)
    assert out.shape == (10 * n, 3, crop, crop)
    corners = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop),
               ((h - crop) // 2, (w - crop) // 2)]
    assert aug.ten_crop_corners(h, w, crop) == corners
    for k in range(n):
        for j in range(10):
            y0, x0 = corners[j % 5]
            patch = out[10 * k + j]
            assert (patch[2] == k).all()
            np.testing.assert_array_equal(patch[0], np.broadcast_to(np.arange(y0, y0 + crop)[:, None],
                                                                    (crop, crop)))
            xs = np.arange(x0, x0 + crop)
            np.testing.assert_array_equal(patch[1, 0], xs[::-1] if j >= 5 else xs)


def test_center_crop(device):
    images = _position_image(1, 256, 256)
    out = _run(device, Augmentation("center", None, crop=227), images)
    assert out[0, 0, 0, 0] == 14 and out[0, 1, 0, 0] == 14 and out[0, 1, 0, -1] == 240


def test_ten_crop_average():
    probs = np.arange(60, dtype=np.float32).reshape(20, 3)
    avg = ten_crop_average(probs)
    np.testing.assert_allclose(avg, probs.reshape(2, 10, 3).mean(axis=1))
    np.testing.assert_allclose(ten_crop_average(probs.reshape(2, 10, 3)), avg)
    t = convnet.tensor(probs)
    np.testing.assert_allclose(ten_crop_average(t), avg)
    with pytest.raises(AugmentError, match=r"\(N \* 10, K\)"):
        ten_crop_average(np.zeros((15, 3)))


# --------------------------------------------------------------------------- random draws

def test_draws_reproducible_and_per_image():
    augmentation = Augmentation("train", None, *_stats(), crop=227, seed=42)
    params, offsets = augmentation.params([5, 9, 13], epoch=3)
    again, again_offsets = augmentation.params([13, 5], epoch=3)  # another batch, another order
    np.testing.assert_array_equal(again[:, 1:], params[[2, 0], 1:])
    np.testing.assert_array_equal(again_offsets, offsets[[2, 0]])
    other_epoch, other_offsets = augmentation.params([5, 9, 13], epoch=4)
    assert not np.array_equal(other_offsets, offsets)  # alpha drawn afresh each epoch
    other_seed = Augmentation("train", None, *_stats(), seed=43).params([5, 9, 13], epoch=3)
    assert not np.array_equal(other_seed[1], offsets)
    np.testing.assert_array_equal(params[:, 0], [0, 1, 2])  # batch rows


def test_draw_distributions():
    n = 20_000
    augmentation = Augmentation("train", None, np.array([100.0, 25.0, 4.0]), np.eye(3), seed=7,
                                lighting="std")
    params, offsets = augmentation.params(np.arange(n), epoch=1)
    y0, x0, flip = params[:, 1], params[:, 2], params[:, 3]
    assert y0.min() == 0 and y0.max() == 29 and x0.min() == 0 and x0.max() == 29
    counts = np.bincount(y0, minlength=30)
    assert counts.min() > n / 30 * 0.8
    assert abs(flip.mean() - 0.5) < 0.02
    assert abs(np.corrcoef(y0, x0)[0, 1]) < 0.03
    # "std" lighting: offset_i = alpha_i * sqrt(lambda_i) along p_i = e_i, alpha ~ N(0, 0.1)
    np.testing.assert_allclose(offsets.std(axis=0), 0.1 * np.sqrt([100.0, 25.0, 4.0]), rtol=0.05)
    assert np.abs(offsets.mean(axis=0)).max() < 0.05
    z = aug.standard_normals(7, np.arange(n), 1)
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 0.03
    no_mirror = Augmentation("train", None, alpha_std=0, mirror=False).params(np.arange(100))[0]
    assert (no_mirror[:, 3] == 0).all()


def test_lighting_formula():
    values, vectors = _stats()
    indices = np.arange(50)
    alpha = 0.1 * aug.standard_normals(3, indices, 2)
    std = Augmentation("train", None, values, vectors, seed=3, lighting="std").lighting_offsets(indices, 2)
    np.testing.assert_allclose(std, (vectors @ (alpha * np.sqrt(values)).T).T, rtol=1e-5, atol=1e-5)
    literal = Augmentation("train", None, values, vectors, seed=3)  # the default
    np.testing.assert_allclose(literal.lighting_offsets(indices, 2),
                               255 * (vectors @ (alpha * values / 255**2).T).T, rtol=1e-5, atol=1e-5)
    off = Augmentation("train", None, values, vectors, alpha_std=0).lighting_offsets(indices, 2)
    assert not off.any()
    assert not Augmentation("center", None, values, vectors).params(indices)[1].any()


# --------------------------------------------------------------------------- errors

def test_errors(device):
    good = device.asarray(np.zeros((2, 16, 16, 3), np.uint8))
    augmentation = Augmentation("center", None, crop=8, image_size=(16, 16))
    with pytest.raises(AugmentError, match="uint8"):
        augmentation(device, device.asarray(np.zeros((2, 16, 16, 3), np.float32)))
    with pytest.raises(AugmentError, match=r"\(N, H, W, 3\)"):
        augmentation(device, device.asarray(np.zeros((2, 16, 16), np.uint8)))
    with pytest.raises(AugmentError, match="images of"):
        augmentation(device, device.asarray(np.zeros((2, 20, 16, 3), np.uint8)))
    with pytest.raises(AugmentError, match="2 images but 3 indices"):
        augmentation(device, good, [0, 1, 2])
    mean = device.asarray(np.zeros((16, 16, 3), np.float32))
    bad_params = np.array([[0, 9, 0, 0]], np.int32)  # y0 + crop > 16
    with pytest.raises(AugmentError, match="crop corner"):
        aug.apply(device, good, mean, bad_params, np.zeros((1, 3), np.float32), 8)
    with pytest.raises(AugmentError, match="source image index"):
        aug.apply(device, good, mean, np.array([[2, 0, 0, 0]], np.int32), np.zeros((1, 3), np.float32), 8)
    with pytest.raises(AugmentError, match="flip"):
        aug.apply(device, good, mean, np.array([[0, 0, 0, 2]], np.int32), np.zeros((1, 3), np.float32), 8)
    with pytest.raises(AugmentError, match="mean image"):
        aug.apply(device, good, device.asarray(np.zeros((16, 16, 3), np.float64)),
                  np.zeros((1, 4), np.int32), np.zeros((1, 3), np.float32), 8)
    with pytest.raises(AugmentError, match="crop must be"):
        aug.apply(device, good, mean, np.zeros((1, 4), np.int32), np.zeros((1, 3), np.float32), 17)
    with pytest.raises(AugmentError, match="finite"):
        aug.apply(device, good, mean, np.zeros((1, 4), np.int32), np.zeros((1, 3), np.float32), 8,
                  scale=float("nan"))


def test_construction_errors():
    with pytest.raises(AugmentError, match="mode"):
        Augmentation("random")
    with pytest.raises(AugmentError, match="eigenvalues and eigenvectors"):
        Augmentation("train")
    with pytest.raises(AugmentError, match="crop"):
        Augmentation("center", crop=300)
    with pytest.raises(AugmentError, match="lighting"):
        Augmentation("train", lighting="pca")
    with pytest.raises(AugmentError, match="eigenvalues must be"):
        Augmentation("train", None, [1.0, -1.0, 0.0], np.eye(3))
    with pytest.raises(AugmentError, match="epoch"):
        Augmentation("center").params([0], epoch=-1)
    with pytest.raises(ValueError, match="seed"):
        Augmentation("center", seed=-5)


# --------------------------------------------------------------------------- builds

@pytest.mark.skipif(not HAVE_NVRTC, reason="cuda-bindings is not installed")
def test_kernel_compiles_for_sm80_sm90_without_spills():
    from convnet.toolchain import nvrtc
    rows = nvrtc.compile_report([augment_op.MODULE], archs=("sm_80", "sm_90"))
    assert {(r.kernel, r.arch) for r in rows} == {("augment_crops", "sm_80"), ("augment_crops", "sm_90")}
    assert not [r for r in rows if r.spills] and all(r.registers > 0 for r in rows)


_ASAN_SCRIPT = textwrap.dedent("""
    import numpy as np
    import convnet
    from convnet.backend import emu
    from convnet.data import augment as aug
    from convnet.ops import augment as augment_op
    device = convnet.get_device("emu")
    for n, h, w, crop in ((1, 5, 7, 5), (3, 12, 9, 4), (2, 33, 40, 33)):
        images = np.random.default_rng(n).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
        mean = np.random.default_rng(h).uniform(0, 9, (h, w, 3)).astype(np.float32)
        corners = [(0, 0), (h - crop, w - crop), (0, w - crop), (h - crop, 0)]
        params = np.array([[s, y, x, f] for s in range(n) for y, x in corners for f in (0, 1)], np.int32)
        offsets = np.ones((len(params), 3), np.float32)
        with emu.debug(check="address"):
            out = aug.apply(device, images, mean, params, offsets, crop)
        assert np.array_equal(out, augment_op.apply_reference(images, mean, params, offsets, crop))
    print("CLEAN")
""")


def test_kernel_under_address_sanitizer():
    """Crops at every edge and corner, mirrored or not, read nothing outside the arrays."""
    run_clean_under_asan(_ASAN_SCRIPT)
