"""Pure TensorFlow image transforms (no state; randomness only from explicit seeds).

Every function here works eagerly and inside `tf.data.Dataset.map`. Images are channels
last; pixel values are on the 0-255 scale unless a docstring says otherwise. Random ops take
a `seed`: an int32/int64 tensor of shape [2], as for `tf.random.stateless_*`.

Training (Sec. 3.1) has one path: `random_draws` draws the random choices of a block of
images at once (from `draws_seed`), and `training_crop` turns one encoded image and its
choices into its uint8 crop (`crop_window`, `decode_window`, `resize_crop`, `to_uint8`); the
flip and colour shift of the same draws are applied on the device
(`keras_vgg.augment`). Testing (Sec. 3.2) reads each image at a test scale as a uint8
`rescaled_view` (`rescale_isotropic`, then `to_uint8`: the rounding of the training crops),
and takes `center_crop` and `multi_crops` of it; the model's preprocessing follows on the
device, inside the compiled network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import tensorflow as tf

from keras_vgg import limits
from keras_vgg.scales import TrainScale

__all__ = [
    "ALPHA_STD",
    "add_per_channel",
    "center_crop",
    "crop_window",
    "decode_image",
    "decode_window",
    "draws_seed",
    "grid_crop_offsets",
    "isotropic_size",
    "multi_crops",
    "random_draws",
    "resize_crop",
    "rescale_isotropic",
    "rescaled_view",
    "subtract_mean",
    "to_uint8",
    "training_crop",
]

# AlexNet's lighting noise: alpha_i ~ N(0, 0.1) (Krizhevsky et al. 2012, Sec. 4.1).
ALPHA_STD = 0.1


def isotropic_size(height: tf.Tensor, width: tf.Tensor, smallest_side: tf.Tensor) -> tf.Tensor:
    """Size (height, width) after isotropic rescaling so the smaller side is `smallest_side`.

    Sec. 3.1: S (training) and Q (testing) are the smallest side of the isotropically
    rescaled image. The larger side is rounded to the nearest pixel and is never smaller
    than `smallest_side`.

    Args:
        height: Image height (scalar int tensor or int).
        width: Image width.
        smallest_side: Target smallest side S or Q.

    Returns:
        An int32 tensor [new_height, new_width].
    """
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    side = tf.cast(smallest_side, tf.float32)
    ratio = side / tf.minimum(height, width)
    new_h = tf.maximum(tf.round(height * ratio), side)
    new_w = tf.maximum(tf.round(width * ratio), side)
    return tf.cast(tf.stack([new_h, new_w]), tf.int32)


def rescale_isotropic(image: tf.Tensor, smallest_side, method: str = "bilinear") -> tf.Tensor:
    """Rescales an image (H, W, C) so its smaller side is `smallest_side`, keeping its aspect.

    Args:
        image: A 3-D image tensor, any numeric dtype.
        smallest_side: Target smallest side (S or Q).
        method: A `tf.image.resize` method.

    Returns:
        A float32 image with the smaller side equal to `smallest_side`.
    """
    shape = tf.shape(image)
    size = isotropic_size(shape[0], shape[1], smallest_side)
    return tf.image.resize(tf.cast(image, tf.float32), size, method=method, antialias=False)


# === Decoding ===


def decode_image(contents: tf.Tensor, max_pixels: int | None = None) -> tf.Tensor:
    """Decodes an encoded image of any common format to uint8 RGB (H, W, 3).

    The format is read from the bytes, not the file name, so ImageNet's PNG named `.JPEG`
    decodes. CMYK and greyscale JPEGs, greyscale and RGBA PNGs (alpha dropped), BMPs, GIFs
    (first frame) and WebPs all become 3-channel RGB. An image whose header declares more
    pixels than `max_pixels` is never decoded (`limits.pixel_check`): a 1 MB PNG can declare
    20000 x 20000 pixels, 1.2 GB of RGB.

    Args:
        contents: A scalar string tensor holding the encoded file.
        max_pixels: The pixel limit (default: `limits.max_pixels()`, read when traced).

    Returns:
        A uint8 tensor (H, W, 3).

    Raises:
        tf.errors.InvalidArgumentError: if the bytes are not a decodable image or declare
            too many pixels (when run eagerly; inside `Dataset.map` the error surfaces when
            the element is produced; `check.inspect_file` says why in words).
    """
    contents = limits.pixel_check(contents, max_pixels)
    image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


# === Deterministic crops (Sec. 3.2) ===


def center_crop(image: tf.Tensor, size: int = 224) -> tf.Tensor:
    """The central `size` x `size` crop of an image at least that large on both sides.

    Sec. 3.2: single-crop evaluation of a rescaled test image uses its central crop.

    Args:
        image: A 3-D image (H, W, C), H >= size and W >= size.
        size: Side of the square crop.

    Returns:
        The crop (size, size, C), same dtype.
    """
    shape = tf.shape(image)
    top = (shape[0] - size) // 2
    left = (shape[1] - size) // 2
    return image[top : top + size, left : left + size, :]


def grid_crop_offsets(height, width, size: int = 224, grid: int = 5) -> tf.Tensor:
    """Top-left corners of a regular `grid` x `grid` grid of square crops, row-major.

    Sec. 3.2: multi-crop evaluation uses a 5x5 regular grid of 224 crops. Tops are evenly
    spaced from 0 to H - size inclusive, lefts from 0 to W - size inclusive, rounded half to
    even (as `tf.round` and `np.round`). With grid=1 the single crop is the central one.

    Args:
        height: Image height (int or scalar tensor), >= size.
        width: Image width, >= size.
        size: Crop side.
        grid: Crops per side.

    Returns:
        An int32 tensor (grid * grid, 2) of (top, left).
    """
    if grid < 1:
        raise ValueError(f"`grid` must be at least 1. Received: grid={grid!r}")
    span_h = tf.cast(height, tf.float32) - size
    span_w = tf.cast(width, tf.float32) - size
    if grid == 1:
        tops = tf.floor(span_h / 2.0)[None]
        lefts = tf.floor(span_w / 2.0)[None]
    else:
        steps = tf.range(grid, dtype=tf.float32) / float(grid - 1)
        tops = tf.round(steps * span_h)
        lefts = tf.round(steps * span_w)
    rows, cols = tf.meshgrid(tops, lefts, indexing="ij")
    offsets = tf.stack([tf.reshape(rows, [-1]), tf.reshape(cols, [-1])], axis=1)
    return tf.cast(offsets, tf.int32)


def multi_crops(image: tf.Tensor, size: int = 224, grid: int = 5, flip: bool = True) -> tf.Tensor:
    """The `grid` x `grid` crops of an image, then the same crops flipped horizontally.

    Sec. 3.2: 50 crops per scale (a 5x5 grid, each also flipped) for multi-crop evaluation.

    Args:
        image: A 3-D image (H, W, C) with H, W >= size.
        size: Crop side.
        grid: Crops per side.
        flip: Whether to append the horizontally flipped crops.

    Returns:
        A tensor (grid * grid * (2 if flip else 1), size, size, C): the crops in
        `grid_crop_offsets` order, then (if `flip`) their mirror images in the same order.
    """
    shape = tf.shape(image)
    offsets = grid_crop_offsets(shape[0], shape[1], size, grid)
    crops = [
        image[offsets[i, 0] : offsets[i, 0] + size, offsets[i, 1] : offsets[i, 1] + size, :]
        for i in range(grid * grid)
    ]
    crops = tf.stack(crops)
    if flip:
        crops = tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)
    return crops


# === Training (Sec. 3.1): the random choices (all stateless) and the crop ===


def draws_seed(seed, epoch, block) -> tf.Tensor:
    """The seed of one block of training elements, from the run seed, epoch and block index.

    The training pipeline draws the random choices of `block_size` consecutive positions
    of an epoch at once (`random_draws`); this seed makes them a function of (seed, epoch,
    position) alone: the same seed gives the same augmentations, each epoch gets different
    ones, and a run resumed at epoch k repeats what an uninterrupted run does there.

    Args:
        seed: The run's integer seed.
        epoch: Epoch number (int or scalar tensor).
        block: Index of the block of positions (int or scalar tensor).

    Returns:
        An int64 tensor of shape [2] for `tf.random.stateless_*`.
    """
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(0x5667, tf.int64)])
    base = tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))
    return tf.random.experimental.stateless_fold_in(base, tf.cast(block, tf.int64))


def random_draws(
    seed: tf.Tensor,
    count: int,
    train_scale: TrainScale | int | tuple[int, int],
    *,
    flip: bool = True,
    eigenvalues: Sequence[float] | None = None,
    eigenvectors: Sequence[Sequence[float]] | None = None,
    alpha_std: float = ALPHA_STD,
    eigen_scale: float = 255.0,
) -> dict[str, tf.Tensor]:
    """Sec. 3.1's random choices for `count` images at once, in a few vectorised ops.

    Drawing them together costs next to nothing per image, where drawing them image by
    image inside `Dataset.map` costs several small ops each. Each image gets:

    - its scale S: the fixed S, or ("scale jittering") drawn uniformly from [Smin, Smax],
      both ends included (Sec. 3.1: 256 or 384; [256, 512]);
    - where its crop sits: two fractions uniform in [0, 1) (see `crop_window`);
    - whether it is flipped horizontally, with probability 1/2;
    - AlexNet's PCA colour shift ("lighting" noise), one RGB offset for the whole image:
      `eigenvectors @ (alpha * eigenvalues) * eigen_scale`, alpha ~ N(0, alpha_std). The
      product alpha_i * l_i is taken on the pixel scale the eigenvalues were computed on (the
      0-1 scale for AlexNet's published values and for `kvgg stats`); `eigen_scale` (255)
      makes it an offset for 0-255 pixels. It is not clipped, as in AlexNet.

    Args:
        seed: Shape [2] stateless seed (e.g. `draws_seed`).
        count: Number of images.
        train_scale: The training scale, a `TrainScale` (or an int S or a pair (Smin, Smax),
            read by `TrainScale.parse`).
        flip: Whether flips are drawn (else "flip" is all False).
        eigenvalues: The 3 PCA eigenvalues for the colour shift (0-1 scale), or None for
            none.
        eigenvectors: 3x3 PCA eigenvectors (the columns).
        alpha_std: Standard deviation of AlexNet's alpha.
        eigen_scale: Size of one unit of the eigenvalues' scale in image units.

    Returns:
        A dict of tensors with first dimension `count`: "scale" (int32), "top" and "left"
        (float32 in [0, 1)), "flip" (bool) and "color" (float32 (count, 3), the colour
        shift on the 0-255 scale; zeros without eigenvalues).
    """
    train_scale = TrainScale.parse(train_scale)
    scale_seed, position_seed, flip_seed, color_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4)
    )
    if train_scale.jittered:
        smin, smax = train_scale.bounds
        scale = tf.random.stateless_uniform(
            [count], seed=scale_seed, minval=smin, maxval=smax + 1, dtype=tf.int32
        )
    else:
        scale = tf.fill([count], tf.constant(train_scale.smin, tf.int32))
    fractions = tf.random.stateless_uniform([count, 2], seed=position_seed)
    if flip:
        flips = tf.random.stateless_uniform([count], seed=flip_seed) < 0.5
    else:
        flips = tf.zeros([count], tf.bool)
    if eigenvalues is None:
        color = tf.zeros([count, 3], tf.float32)
    else:
        alpha = tf.random.stateless_normal([count, 3], seed=color_seed, stddev=alpha_std)
        vectors = tf.constant(eigenvectors, tf.float32)
        values = tf.constant(eigenvalues, tf.float32)
        color = tf.linalg.matvec(vectors, alpha * values) * eigen_scale
    return {
        "scale": scale,
        "top": fractions[:, 0],
        "left": fractions[:, 1],
        "flip": flips,
        "color": color,
    }


def crop_window(height, width, scale, crop_size: int, top_frac, left_frac) -> tf.Tensor:
    """The window of the ORIGINAL image that becomes a crop of the image rescaled to S.

    Rescaling isotropically so the smaller side is S and then cropping `crop_size` pixels
    is the same, up to sub-pixel rounding, as cropping a square of
    `crop_size * min(H, W) / S` original pixels and resizing it to `crop_size`. Working in
    original coordinates lets a JPEG decode only that window.

    Args:
        height: Original height.
        width: Original width.
        scale: The smaller side S of the rescaled image (S >= crop_size).
        crop_size: Crop side in the rescaled image.
        top_frac: Where the crop sits vertically, in [0, 1] (0 top, 1 bottom).
        left_frac: Where the crop sits horizontally, in [0, 1].

    Returns:
        An int32 tensor [top, left, side, side] in original pixels.
    """
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    short = tf.cast(tf.minimum(height, width), tf.float32)
    side = tf.cast(tf.round(crop_size * short / tf.cast(scale, tf.float32)), tf.int32)
    side = tf.clip_by_value(side, 1, tf.minimum(height, width))
    top = tf.cast(tf.round(top_frac * tf.cast(height - side, tf.float32)), tf.int32)
    left = tf.cast(tf.round(left_frac * tf.cast(width - side, tf.float32)), tf.int32)
    return tf.stack([top, left, side, side])


def resize_crop(window: tf.Tensor, crop_size: int = 224) -> tf.Tensor:
    """Resizes a decoded window (bilinear, no antialiasing) to the float32 crop.

    The window is cast to float32 first: the same numbers as resizing the uint8 window
    (the kernel converts each pixel to float either way), about 30% faster on CPU.

    Args:
        window: A 3-D image (h, w, C), any numeric dtype (the output of `decode_window`).
        crop_size: Output side.

    Returns:
        A float32 tensor (crop_size, crop_size, C).
    """
    image = tf.image.resize(tf.cast(window, tf.float32), [crop_size, crop_size], antialias=False)
    image.set_shape([crop_size, crop_size, window.shape[-1]])
    return image


def decode_window(
    contents: tf.Tensor,
    window_fn: Callable,
    *,
    with_window: bool = False,
    max_pixels: int | None = None,
):
    """Decodes the window `window_fn(height, width)` of an image, as uint8 RGB.

    For JPEGs only the window is decoded (`tf.image.extract_jpeg_shape` +
    `tf.image.decode_and_crop_jpeg`). A JPEG that does not end with its end-of-image
    marker (truncated, or with trailing bytes) is decoded whole instead, so a truncated file
    fails the same way whatever its window. Other formats (PNG, BMP, GIF, also when named
    .JPEG) are decoded whole with `decode_image` and cropped.

    Args:
        contents: Scalar string tensor, the encoded image.
        window_fn: (height, width) of the original image -> int32 [top, left, h, w].
        with_window: Also return the window itself.
        max_pixels: The pixel limit of the whole image (`decode_image`); over it, nothing is
            decoded.

    Returns:
        The uint8 window (h, w, 3); with `with_window`, (that, the int32 window [top, left,
        h, w] of the original image).
    """
    complete_jpeg = tf.logical_and(
        tf.io.is_jpeg(contents), tf.equal(tf.strings.substr(contents, -2, 2), b"\xff\xd9")
    )

    def jpeg_window():
        shape = tf.image.extract_jpeg_shape(contents)
        window = window_fn(shape[0], shape[1])
        with tf.control_dependencies([limits.pixel_assert(shape[1], shape[0], max_pixels)]):
            return tf.image.decode_and_crop_jpeg(contents, window, channels=3), window

    def whole():
        image = decode_image(contents, max_pixels)
        shape = tf.shape(image)
        window = window_fn(shape[0], shape[1])
        patch = image[window[0] : window[0] + window[2], window[1] : window[1] + window[3], :]
        return patch, window

    patch, window = tf.cond(complete_jpeg, jpeg_window, whole)
    patch.set_shape([None, None, 3])
    return (patch, window) if with_window else patch


def to_uint8(image: tf.Tensor, *, in_range: bool = False) -> tf.Tensor:
    """A float image on the 0-255 scale rounded to the nearest uint8 (clipped to 0-255).

    What the CPU hands the device: a quarter of float32's bytes, and within half a grey
    level of the float crop. Rounding is half to even (`tf.round`).

    Args:
        image: The float image.
        in_range: The caller guarantees every value is within [0, 255] up to float
            rounding, as a bilinear resize of uint8 pixels is (its weights are
            non-negative and sum to one): the clip is skipped, the same numbers at about
            60 % of the cost (the training crops' hot path).
    """
    if in_range:
        return tf.cast(tf.round(image), tf.uint8)
    return tf.saturate_cast(tf.round(image), tf.uint8)


def rescaled_view(image: tf.Tensor, scale) -> tf.Tensor:
    """An image as testing reads it at test scale Q: rescaled isotropically, as uint8.

    Sec. 3.2: the smaller side becomes Q (`rescale_isotropic`, bilinear), and the pixels
    are rounded to uint8 as the training crops are (`to_uint8`): every protocol, the
    validation crops and Appendix B's descriptors take their crops or whole images from
    this view, and the model's preprocessing runs on the device.

    Args:
        image: A 3-D image (H, W, 3), any numeric dtype, on the 0-255 scale.
        scale: The test scale Q (the smaller side of the view).

    Returns:
        A uint8 tensor whose smaller side is `scale`.
    """
    return to_uint8(rescale_isotropic(image, scale))


def training_crop(
    contents: tf.Tensor,
    draw: Mapping[str, tf.Tensor],
    crop_size: int = 224,
    *,
    with_window: bool = False,
    max_pixels: int | None = None,
):
    """The CPU part of Sec. 3.1's training input: one image's random crop, as uint8.

    One random `crop_size` crop of the image isotropically rescaled to S. The crop is taken
    as the equivalent window of the original image (`crop_window`; for a JPEG only that
    window is decoded, `decode_window`), resized to `crop_size` (`resize_crop`) and rounded
    (`to_uint8`). The flip, the colour shift, the mean and the cast to the compute dtype
    follow on the device, a whole batch at once (`keras_vgg.augment.device_batch`), from
    the same row of draws.

    Args:
        contents: Scalar string tensor, the encoded image.
        draw: One image's random choices: "scale", "top" and "left" as one row of
            `random_draws`.
        crop_size: Output side.
        with_window: Also return the window of the original image the crop shows, so
            that what is attached to the image (its boxes) moves with it.
        max_pixels: The pixel limit (`decode_image`).

    Returns:
        A uint8 tensor (crop_size, crop_size, 3); with `with_window`, (that, the int32
        window [top, left, h, w] of the original image, before any flip).

    Raises:
        tf.errors.InvalidArgumentError: if the bytes are not a decodable image (a truncated
            JPEG fails whatever its window; see `decode_window`).
    """
    patch, window = decode_window(
        contents,
        lambda height, width: crop_window(
            height, width, draw["scale"], crop_size, draw["top"], draw["left"]
        ),
        with_window=True,
        max_pixels=max_pixels,
    )
    image = to_uint8(resize_crop(patch, crop_size), in_range=True)
    return (image, window) if with_window else image


def subtract_mean(image: tf.Tensor, mean: Sequence[float]) -> tf.Tensor:
    """Subtracts the mean RGB from each pixel (Sec. 2.1: the only pre-processing).

    Args:
        image: RGB image(s) (..., 3) on the 0-255 scale.
        mean: Mean RGB on the 0-255 scale.

    Returns:
        The float32 image minus the mean.
    """
    return add_per_channel(image, -tf.constant(mean, tf.float32))


def add_per_channel(image: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
    """`image + offset` per channel, as float32, at near memory speed.

    A plain broadcast over a last dimension of 3 runs element by element on CPU (about six
    times slower than an add of equal shapes); adding the offset tiled along each row of
    pixels, (..., H, W * C) + (..., 1, W * C), gives the same numbers much faster.

    Args:
        image: Image(s) (..., H, W, C), any numeric dtype.
        offset: (..., C): one offset per image, the leading dimensions those of `image`
            before H (e.g. (C,) for one image, (N, C) for a batch of N).

    Returns:
        The float32 sum, shaped like `image`.
    """
    image = tf.cast(image, tf.float32)
    offset = tf.cast(offset, tf.float32)
    static = image.shape
    if static.is_fully_defined() and offset.shape.rank is not None:
        # Known sizes (one training crop): no shape arithmetic at run time, which in a
        # per-image map costs more than the add itself.
        rows = tf.reshape(image, [*static[:-2], static[-2] * static[-1]])
        tiled = tf.tile(offset, [*([1] * (offset.shape.rank - 1)), static[-2]])
        return tf.reshape(rows + tf.expand_dims(tiled, -2), static)
    shape = tf.shape(image)
    rows = tf.reshape(image, tf.concat([shape[:-2], [shape[-2] * shape[-1]]], axis=0))
    multiples = tf.concat([tf.ones([tf.rank(offset) - 1], tf.int32), shape[-2:-1]], axis=0)
    tiled = tf.expand_dims(tf.tile(offset, multiples), -2)
    return tf.reshape(rows + tiled, shape)
