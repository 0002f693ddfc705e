"""Every transform of keras_vgg.data.transforms, eagerly AND inside Dataset.map."""

import io

import numpy as np
import pytest
import tensorflow as tf
from data_images import encode, jpeg, photo, truncated_jpeg
from PIL import Image

from keras_vgg.data import transforms as T
from keras_vgg.data.stats import IMAGENET_STATS
from keras_vgg.scales import TrainScale

MODES = ["eager", "map"]


def run(mode, fn, *args):
    """fn(*args) eagerly, or as the map function of a one-element dataset."""
    args = tuple(tf.convert_to_tensor(a) for a in args)
    if mode == "eager":
        out = fn(*args)
    elif not args:
        out = next(iter(tf.data.Dataset.range(1).map(lambda _: fn())))
    else:
        out = next(iter(tf.data.Dataset.from_tensors(args).map(fn)))
    return tf.nest.map_structure(lambda t: t.numpy(), out)


def pil_rgb(data: bytes, frame: int = 0) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.seek(frame)
    return np.asarray(image.convert("RGB"))


# === decode_image ===


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "kind",
    ["jpeg", "png", "png_grey", "png_rgba", "png_palette", "bmp", "gif", "jpeg_grey", "jpeg_cmyk"],
)
def test_decode_image_matches_pillow(mode, kind):
    pic = photo(40, 52, 3)
    data = {
        "jpeg": jpeg(40, 52, 3),
        "png": encode(pic, "PNG"),
        "png_grey": encode(pic, "PNG", mode="L"),
        "png_rgba": encode(
            np.dstack([pic, (np.arange(40 * 52) % 256).reshape(40, 52).astype(np.uint8)]), "PNG"
        ),
        "png_palette": encode(pic, "PNG", mode="P"),
        "bmp": encode(pic, "BMP"),
        "gif": encode(pic, "GIF"),
        "jpeg_grey": encode(pic, "JPEG", mode="L", quality=90),
        "jpeg_cmyk": encode(pic, "JPEG", mode="CMYK", quality=90),
    }[kind]
    out = run(mode, T.decode_image, data)
    assert out.dtype == np.uint8 and out.shape == (40, 52, 3)
    ref = pil_rgb(data).astype(int)
    # Lossless formats decode bit-exactly; JPEG decoders agree to a few levels (chroma
    # upsampling and the CMYK -> RGB conversion differ between TensorFlow and Pillow).
    tolerance = {"jpeg": 8, "jpeg_grey": 2, "jpeg_cmyk": 12}.get(kind, 0)
    assert np.abs(out.astype(int) - ref).max() <= tolerance
    assert np.abs(out.astype(int) - ref).mean() < 1.5
    if kind in ("png_grey", "jpeg_grey"):
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


@pytest.mark.parametrize("mode", MODES)
def test_decode_image_animated_gif_first_frame(mode):
    frames = [Image.fromarray(photo(30, 34, s)) for s in (1, 2, 3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    data = buffer.getvalue()
    out = run(mode, T.decode_image, data)
    assert out.shape == (30, 34, 3)
    np.testing.assert_array_equal(out, pil_rgb(data, 0))
    assert np.abs(out.astype(int) - pil_rgb(data, 1)).max() > 20


@pytest.mark.parametrize("data", [b"", b"just text", truncated_jpeg(64, 64)])
def test_decode_image_rejects_undecodable(data):
    with pytest.raises(tf.errors.InvalidArgumentError):
        T.decode_image(tf.constant(data))


# === Deterministic crops ===


@pytest.mark.parametrize("mode", MODES)
def test_center_crop(mode):
    image = np.arange(41 * 50 * 3, dtype=np.int32).reshape(41, 50, 3)
    out = run(mode, lambda x: T.center_crop(x, 32), image)
    np.testing.assert_array_equal(out, image[4:36, 9:41])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("grid", [1, 2, 5])
def test_grid_crop_offsets_against_numpy(mode, grid):
    out = run(mode, lambda h, w: T.grid_crop_offsets(h, w, 32, grid), 45, 70)
    if grid == 1:
        expected = [[(45 - 32) // 2, (70 - 32) // 2]]
    else:
        tops = np.round(np.linspace(0, 45 - 32, grid))
        lefts = np.round(np.linspace(0, 70 - 32, grid))
        expected = [[t, left] for t in tops for left in lefts]
    np.testing.assert_array_equal(out, np.asarray(expected, np.int32))
    assert out.dtype == np.int32


def test_grid_crop_offsets_paper_grid_exact():
    # 5x5 grid on a 256x341 image: tops 0, 8, 16, 24, 32; lefts 0..117 (29.25 steps).
    out = T.grid_crop_offsets(256, 341, 224, 5).numpy()
    assert out[:5].tolist() == [[0, 0], [0, 29], [0, 58], [0, 88], [0, 117]]
    assert out[::5, 0].tolist() == [0, 8, 16, 24, 32]
    assert out[-1].tolist() == [32, 117]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("flip", [True, False])
def test_multi_crops_against_numpy(mode, flip):
    image = photo(45, 60, 5)
    out = run(mode, lambda x: T.multi_crops(x, 32, grid=3, flip=flip), image)
    offsets = [(t, c) for t in (0, 6, 13) for c in (0, 14, 28)]  # round(6.5) = 6 (half even)
    crops = np.stack([image[t : t + 32, c : c + 32] for t, c in offsets])
    expected = np.concatenate([crops, crops[:, :, ::-1]]) if flip else crops
    np.testing.assert_array_equal(out, expected)


def test_multi_crops_fifty_per_scale():
    assert T.multi_crops(tf.zeros([256, 300, 3]), 224).shape == (50, 224, 224, 3)


# === Training (Sec. 3.1): the random choices ===


def one_draw(scale, top, left):
    """One image's random choices, as `training_crop` takes them."""
    return {
        "scale": tf.constant(scale, tf.int32),
        "top": tf.constant(top, tf.float32),
        "left": tf.constant(left, tf.float32),
    }


def rounded(image):
    """NumPy's uint8 of a float image: round half to even, clip to 0-255."""
    return np.clip(np.round(np.asarray(image)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", MODES)
def test_draws_seed_deterministic_and_distinct(mode):
    seeds = {
        (s, e, b): tuple(run(mode, lambda e_, b_, s=s: T.draws_seed(s, e_, b_), e, b))
        for s in (0, 1)
        for e in (0, 1, 2)
        for b in (0, 1, 7)
    }
    assert len(set(seeds.values())) == len(seeds)
    assert tuple(T.draws_seed(1, 2, 7).numpy()) == seeds[(1, 2, 7)]  # eager == map


@pytest.mark.parametrize("mode", MODES)
def test_random_draws_ranges_and_distributions(mode):
    stats = IMAGENET_STATS

    def draw(seed):
        return T.random_draws(
            seed,
            4000,
            TrainScale(36, 48),
            eigenvalues=stats.eigenvalues,
            eigenvectors=stats.eigenvectors,
        )

    d = run(mode, draw, tf.constant([3, 1], tf.int64))
    assert d["scale"].dtype == np.int32 and d["scale"].min() == 36 and d["scale"].max() == 48
    assert len(set(d["scale"].tolist())) == 13  # uniform over Smin..Smax, both included
    for key in ("top", "left"):
        assert 0 <= d[key].min() < 0.01 and 0.99 < d[key].max() < 1
    assert 0.45 < d["flip"].mean() < 0.55
    # The colour shift: vectors @ (alpha * values) * 255 with alpha ~ N(0, 0.1), so
    # alpha = (vectors^T @ color) / (values * 255) (orthonormal eigenvectors).
    vectors = np.asarray(stats.eigenvectors, np.float64)
    alpha = d["color"] @ vectors / (np.asarray(stats.eigenvalues) * 255.0)
    assert alpha.shape == (4000, 3)
    np.testing.assert_allclose(alpha.std(axis=0), 0.1, rtol=0.1)
    np.testing.assert_allclose(alpha.mean(axis=0), 0.0, atol=0.01)
    again = draw(tf.constant([3, 1], tf.int64))
    for key, value in again.items():
        np.testing.assert_array_equal(value.numpy(), d[key])  # eager == map, seeded
    other = draw(tf.constant([3, 2], tf.int64))
    assert not np.array_equal(other["scale"].numpy(), d["scale"])


@pytest.mark.parametrize("train_scale", [TrainScale(40, 40), 40, (40, 40), "40"])
def test_random_draws_fixed_scale_no_flip_no_colour(train_scale):
    d = T.random_draws(tf.constant([0, 0], tf.int64), 5, train_scale, flip=False)
    assert d["scale"].numpy().tolist() == [40] * 5
    assert not d["flip"].numpy().any()
    np.testing.assert_array_equal(d["color"].numpy(), np.zeros((5, 3), np.float32))


@pytest.mark.parametrize("mode", MODES)
def test_random_draws_jittered_scale_seeded_and_anything_parse_reads(mode):
    seed = tf.constant([1, 3], tf.int64)
    scales = run(mode, lambda s: T.random_draws(s, 400, TrainScale(36, 48))["scale"], seed)
    assert min(scales) == 36 and max(scales) == 48  # both ends included
    for same in [(36, 48), [36, 48], "36,48"]:
        np.testing.assert_array_equal(T.random_draws(seed, 400, same)["scale"].numpy(), scales)
    other = T.random_draws(tf.constant([2, 3], tf.int64), 400, TrainScale(36, 48))["scale"]
    assert not np.array_equal(other.numpy(), scales)


@pytest.mark.parametrize("mode", MODES)
def test_random_draws_colour_shift_against_numpy(mode):
    seed = tf.constant([7, 8], tf.int64)
    stats = IMAGENET_STATS
    color = run(
        mode,
        lambda s: T.random_draws(
            s, 6, 40, eigenvalues=stats.eigenvalues, eigenvectors=stats.eigenvectors
        )["color"],
        seed,
    )
    # alpha is drawn from the fourth of the four seeds split from `seed` (scale, position,
    # flip, colour): the same numbers for the same seed in every release.
    color_seed = tf.random.experimental.stateless_split(seed, 4)[3]
    alpha = tf.random.stateless_normal([6, 3], seed=color_seed, stddev=0.1).numpy()
    # AlexNet: I += [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T on the 0-1 scale, times 255 here.
    shift = (alpha * np.asarray(stats.eigenvalues)) @ np.asarray(stats.eigenvectors).T * 255.0
    np.testing.assert_allclose(color, shift, rtol=1e-5, atol=1e-3)
    assert np.abs(shift).max() > 0.1  # the shift is visible on the 0-255 scale


def test_random_draws_colour_shift_magnitude_is_on_the_0_255_scale():
    # The largest eigenvalue 0.2175 on the 0-1 scale with alpha ~ N(0, 0.1): the shift along
    # p1 has std 0.02175 * 255 = 5.5 levels on 0-255 pixels.
    shifts = T.random_draws(
        tf.constant([0, 0]), 400, 40, eigenvalues=(0.2175, 0.0, 0.0), eigenvectors=np.eye(3)
    )["color"].numpy()
    assert np.abs(shifts[:, 1:]).max() == 0
    assert 4.5 < shifts[:, 0].std() < 6.5


# === Training (Sec. 3.1): the crop ===


@pytest.mark.parametrize("mode", MODES)
def test_crop_window_exact(mode):
    def window(*args):
        return run(mode, lambda: T.crop_window(*args)).tolist()

    # 60x80 image, S = 40, crop 32: the window is 32 * 60 / 40 = 48 original pixels.
    assert window(60, 80, 40, 32, 0.5, 1.0) == [6, 32, 48, 48]
    assert window(60, 80, 40, 32, 0.0, 0.0) == [0, 0, 48, 48]
    # S = crop: the whole short side.
    assert window(60, 80, 32, 32, 1.0, 0.5) == [0, 10, 60, 60]


@pytest.mark.parametrize("mode", MODES)
def test_random_windows_in_bounds_and_seeded(mode):
    def windows(seed):
        d = T.random_draws(seed, 30, TrainScale(36, 48))
        return tf.transpose(T.crop_window(50, 70, d["scale"], 32, d["top"], d["left"]))

    out = run(mode, windows, tf.constant([0, 9], tf.int64))
    for top, left, h, w in out:
        assert h == w and round(32 * 50 / 48) <= h <= round(32 * 50 / 36)
        assert 0 <= top <= 50 - h and 0 <= left <= 70 - w
    assert len({tuple(w) for w in out}) > 20
    np.testing.assert_array_equal(windows(tf.constant([0, 9], tf.int64)).numpy(), out)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("place", [(0.0, 0.0), (0.3, 0.8), (1.0, 0.5)])
def test_training_crop_is_the_resized_window(mode, place):
    data = jpeg(60, 76, 4)
    top_frac, left_frac = place
    out = run(mode, lambda c: T.training_crop(c, one_draw(40, *place), 32), data)
    top, left, h, w = T.crop_window(60, 76, 40, 32, top_frac, left_frac).numpy()
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8

    def resized(window):
        return tf.image.resize(tf.cast(window, tf.float32), [32, 32], antialias=False).numpy()

    # Only the window of the JPEG is decoded: exactly its pixels, resized, rounded to uint8.
    window = tf.image.decode_and_crop_jpeg(data, [top, left, h, w], channels=3)
    np.testing.assert_array_equal(out, rounded(resized(window)))
    # The same crop as decoding the whole file (chroma upsampling at the window's edges may
    # differ by a few levels).
    full = tf.io.decode_jpeg(data, channels=3)[top : top + h, left : left + w]
    assert np.abs(out - resized(full)).max() <= 8.5
    assert np.abs(out - resized(full)).mean() < 0.6


@pytest.mark.parametrize("mode", MODES)
def test_training_crop_png_same_window_as_jpeg_path(mode):
    pic = photo(50, 66, 8)
    out = run(mode, lambda c: T.training_crop(c, one_draw(40, 0.7, 0.2), 32), encode(pic, "PNG"))
    top, left, h, w = T.crop_window(50, 66, 40, 32, 0.7, 0.2).numpy()
    ref = tf.image.resize(pic[top : top + h, left : left + w].astype(np.float32), [32, 32])
    np.testing.assert_array_equal(out, rounded(ref))


def test_training_crop_scale_equal_crop_is_rescale():
    # S = crop on a square image: the crop is the whole image rescaled to S.
    pic = photo(48, 48, 2)
    out = T.training_crop(tf.constant(encode(pic, "PNG")), one_draw(32, 0.4, 0.9), 32)
    np.testing.assert_array_equal(out.numpy(), rounded(T.rescale_isotropic(pic, 32)))


def test_training_crop_truncated_jpeg_fails_whatever_the_window():
    data = tf.constant(truncated_jpeg(256, 256))
    # Small windows (S = 256) near the top would decode from a window-only read.
    for scale, top in [(256, 0.0), (256, 0.2), (40, 0.0), (40, 1.0)]:
        with pytest.raises(tf.errors.InvalidArgumentError):
            T.training_crop(data, one_draw(scale, top, 0.5), 32)


# === Mean, rescale, resize, windows, per-channel add ===


@pytest.mark.parametrize("mode", MODES)
def test_subtract_mean(mode):
    image = photo(8, 9, 2)
    out = run(mode, lambda x: T.subtract_mean(x, (123.68, 116.779, 103.939)), image)
    np.testing.assert_array_equal(
        out, image.astype(np.float32) - np.float32([123.68, 116.779, 103.939])
    )
    assert out.dtype == np.float32


@pytest.mark.parametrize("mode", MODES)
def test_rescale_isotropic_in_map(mode):
    out = run(mode, lambda x: T.rescale_isotropic(x, 32), photo(40, 60, 1))
    assert out.shape == (32, 48, 3)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(45, 45), (20, 31), (64, 50)])
def test_resize_crop_equals_resizing_the_uint8_window(mode, size):
    # resize_crop casts to float32 before resizing (faster on CPU); the numbers must be
    # exactly those of resizing the uint8 window, downscaling and upscaling alike.
    window = photo(*size, 3)
    out = run(mode, lambda w: T.resize_crop(w, 32), window)
    expected = tf.image.resize(window, [32, 32], antialias=False).numpy()
    assert out.dtype == np.float32 and out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("mode", MODES)
def test_decode_window_jpeg_png_and_truncated(mode):
    pic = photo(50, 64, 2)

    def window(height, width):
        # Depends on the size, as the training windows do.
        return tf.stack([height // 5, width // 4, height // 2, width // 2])

    data = jpeg(50, 64, 2)
    out = run(mode, lambda c: T.decode_window(c, window), data)
    # Only the window is decoded (chroma upsampling at its edges may differ by a few levels).
    np.testing.assert_array_equal(out, tf.image.decode_and_crop_jpeg(data, [10, 16, 25, 32]))
    full = tf.io.decode_jpeg(data)[10:35, 16:48].numpy().astype(int)
    assert np.abs(out.astype(int) - full).max() <= 8
    out = run(mode, lambda c: T.decode_window(c, window), encode(pic, "PNG"))
    np.testing.assert_array_equal(out, pic[10:35, 16:48])
    with pytest.raises(tf.errors.InvalidArgumentError):
        run(mode, lambda c: T.decode_window(c, window), truncated_jpeg(50, 64))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(5, 7, 3), (4, 5, 7, 3), (2, 3, 5, 7, 3)])
def test_add_per_channel_equals_broadcast(mode, shape):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, shape).astype(np.float32)
    offset = rng.normal(size=shape[:-3] + (3,)).astype(np.float32)
    out = run(mode, T.add_per_channel, image, offset)
    expected = image + offset[..., None, None, :]
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_array_equal(out, expected)
    uint8 = run(mode, T.add_per_channel, image.astype(np.uint8), offset)
    np.testing.assert_array_equal(uint8, image.astype(np.uint8) + offset[..., None, None, :])
    # Sizes unknown when traced (a whole-image pipeline) take the other path.
    unknown = tf.function(
        T.add_per_channel,
        input_signature=[
            tf.TensorSpec([None] * len(shape), tf.float32),
            tf.TensorSpec([None] * (len(shape) - 2), tf.float32),
        ],
    )
    np.testing.assert_array_equal(unknown(image, offset).numpy(), expected)


@pytest.mark.parametrize("mode", MODES)
def test_to_uint8_rounds_half_to_even_and_in_range_skips_only_the_clip(mode):
    # Bilinear resizes of uint8 windows at the extremes (0/255 checkerboards, flat 255,
    # up- and downscaled): values at the bounds and exact halves between two levels.
    board = (np.indices((7, 9)).sum(0) % 2 * 255).astype(np.uint8)
    windows = [np.stack([board, 255 - board, board], -1), np.full((5, 6, 3), 255, np.uint8)]
    windows.append(photo(40, 30, 1))
    for window in windows:
        for size in (4, 16, 33):
            resized = T.resize_crop(tf.constant(window), size).numpy()
            fast = run(mode, lambda x: T.to_uint8(x, in_range=True), resized)
            np.testing.assert_array_equal(fast, rounded(resized))
            np.testing.assert_array_equal(run(mode, T.to_uint8, resized), rounded(resized))
    halves = np.array([0.5, 1.5, 2.5, 253.5, 254.5, 254.49], np.float32)
    np.testing.assert_array_equal(
        run(mode, lambda x: T.to_uint8(x, in_range=True), halves), [0, 2, 2, 254, 254, 254]
    )
    # Out of range, only the default clips.
    wild = np.array([-3.0, -0.4, 255.4, 300.0], np.float32)
    np.testing.assert_array_equal(run(mode, T.to_uint8, wild), [0, 0, 255, 255])
