"""The pretrained registry: published ImageNet weights, and fetching them.

`REGISTRY` lists the files Keras (VGG16 / VGG19) and torchvision (VGG11 to VGG19, with and
without batch normalisation) publish, each a `PretrainedWeights` entry with its URL, hash,
accuracy, parameter count and the preprocessing it expects. `fetch_pretrained` downloads
an entry's file into the Keras cache once and checks it against the published hash
(MD5 for Keras's files, a SHA-256 prefix for torchvision's). Reading the file is
`readers`' job, putting it into a model `load`'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import keras

from keras_vgg.imagenet import KERAS_CAFFE, TORCHVISION, Preprocessing

__all__ = ["REGISTRY", "PretrainedWeights", "WeightsFile", "fetch_pretrained"]


# === Entries ===


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """One published file.

    Attributes:
        url: Where it is published.
        file_hash: Its published hash: an MD5 (32 hex digits, Keras's files), a SHA-256
            (64) or the leading hex digits of the SHA-256 (torchvision's file names carry
            the first 8).
    """

    url: str
    file_hash: str

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """A published set of ImageNet weights for one configuration.

    Attributes:
        config: The configuration letter of Table 1 ("A", "B", "D", "E").
        name: The entry name users pass as `weights=` ("imagenet", "torchvision", ...).
        layout: "keras2_h5" or "torchvision", the reader for the file.
        top: The file with the three FC layers.
        notop: A file without them, if one is published (else `top` fills both).
        batch_norm: Whether the weights are for `build(..., batch_norm=True)`.
        preprocessing: What the weights expect of their input.
        top1_accuracy: Published ImageNet validation top-1 accuracy, percent.
        top5_accuracy: Published ImageNet validation top-5 accuracy, percent.
        num_params: Published number of trainable parameters of the model with the FC
            layers (torchvision's `num_params`, which leaves out the batch-normalisation
            statistics; for Keras's files, the count of keras.applications' model).
        reference: Where the file, hash and accuracy are published.
    """

    config: str
    name: str
    layout: str
    top: WeightsFile
    notop: WeightsFile | None
    batch_norm: bool
    preprocessing: Preprocessing
    top1_accuracy: float
    top5_accuracy: float
    num_params: int
    reference: str


def _keras_entry(config, depth, top_md5, notop_md5, top1, top5, num_params) -> PretrainedWeights:
    base = f"https://storage.googleapis.com/tensorflow/keras-applications/vgg{depth}/"
    stem = f"vgg{depth}_weights_tf_dim_ordering_tf_kernels"
    return PretrainedWeights(
        config=config,
        name="imagenet",
        layout="keras2_h5",
        top=WeightsFile(base + stem + ".h5", top_md5),
        notop=WeightsFile(base + stem + "_notop.h5", notop_md5),
        batch_norm=False,
        preprocessing=KERAS_CAFFE,
        top1_accuracy=top1,
        top5_accuracy=top5,
        num_params=num_params,
        reference=(
            f"keras/src/applications/vgg{depth}.py (files, MD5); "
            "https://keras.io/api/applications/ (accuracy, parameters)"
        ),
    )


def _torchvision_entry(config, file_name, top1, top5, num_params) -> PretrainedWeights:
    batch_norm = "_bn" in file_name
    return PretrainedWeights(
        config=config,
        name="torchvision_bn" if batch_norm else "torchvision",
        layout="torchvision",
        top=WeightsFile(
            "https://download.pytorch.org/models/" + file_name,
            file_name.rsplit("-", 1)[1].split(".")[0],
        ),
        notop=None,
        batch_norm=batch_norm,
        preprocessing=TORCHVISION,
        top1_accuracy=top1,
        top5_accuracy=top5,
        num_params=num_params,
        reference="torchvision/models/vgg.py (files, SHA-256 prefix, accuracy, parameters)",
    )


_ENTRIES = (
    _keras_entry(
        "D",
        16,
        "64373286793e3c8b2b4e3219cbf3544b",
        "6d6bbae143d832006294945121d1f1fc",
        71.3,
        90.1,
        138357544,
    ),
    _keras_entry(
        "E",
        19,
        "cbe5617147190e668d6c5d5026f83318",
        "253f8cb515780f3b799900260a226db6",
        71.3,
        90.0,
        143667240,
    ),
    _torchvision_entry("A", "vgg11-8a719046.pth", 69.020, 88.628, 132863336),
    _torchvision_entry("A", "vgg11_bn-6002323d.pth", 70.370, 89.810, 132868840),
    _torchvision_entry("B", "vgg13-19584684.pth", 69.928, 89.246, 133047848),
    _torchvision_entry("B", "vgg13_bn-abd245e5.pth", 71.586, 90.374, 133053736),
    _torchvision_entry("D", "vgg16-397923af.pth", 71.592, 90.382, 138357544),
    _torchvision_entry("D", "vgg16_bn-6c64b313.pth", 73.360, 91.516, 138365992),
    _torchvision_entry("E", "vgg19-dcbb9e9d.pth", 72.376, 90.876, 143667240),
    _torchvision_entry("E", "vgg19_bn-c79401a0.pth", 74.218, 91.842, 143678248),
)


#: Published ImageNet weights, keyed by (configuration letter, entry name): Keras's VGG16 /
#: VGG19 files as "imagenet" (D, E), torchvision's as "torchvision" and "torchvision_bn"
#: (A, B, D, E). `build("D", weights="imagenet")` looks entries up here.
REGISTRY: dict[tuple[str, str], PretrainedWeights] = {(e.config, e.name): e for e in _ENTRIES}


# === Fetching ===


def fetch_pretrained(
    entry: PretrainedWeights, *, include_top: bool = True, cache_dir: str | None = None
) -> str:
    """Returns the local path of an entry's file, downloading it into the Keras cache once.

    The file goes through `keras.utils.get_file` into `<cache>/models/` under its published
    name (Keras's own names for Keras's files), so a file Keras or an earlier run already
    downloaded is used offline. It is checked against the published hash every time: a
    cached file that does not match is downloaded again, once.

    Args:
        entry: A `REGISTRY` entry.
        include_top: Whether the file must hold the FC layers (else the smaller "notop"
            file is fetched where one is published).
        cache_dir: The cache root (default: `$KERAS_HOME` as it is set now, else Keras's
            own default, `~/.keras`; Keras alone reads `$KERAS_HOME` once, at import).

    Returns:
        The path of the verified file.

    Raises:
        ValueError: if the download fails, or the file does not have the published hash
            (the file is then deleted from the cache). A cached file with another hash is
            deleted before the download, and the error names it.
    """
    published = entry.top if include_top or entry.notop is None else entry.notop
    if cache_dir is None:
        cache_dir = os.environ.get("KERAS_HOME") or None
    stale = ""  # what became of a cached file with another hash, for the error below
    for force_download in (False, True):
        try:
            path = keras.utils.get_file(
                published.file_name,
                published.url,
                cache_subdir="models",
                cache_dir=cache_dir,
                force_download=force_download,
            )
        except Exception as exc:  # noqa: BLE001 - Keras raises a bare Exception on URL errors
            raise ValueError(
                f"cannot download {published.url} ({exc}){stale}; offline, put the file at "
                f"<KERAS_HOME or ~/.keras>/models/{published.file_name}"
            ) from None
        digest = _file_digest(path, published.file_hash)
        if digest.startswith(published.file_hash.lower()):
            return path
        os.remove(path)
        stale = (
            f" after deleting the cached {path}, whose hash {digest} is not the published "
            f"{published.file_hash}"
        )
    raise ValueError(
        f"{published.url}: the downloaded file has hash {digest}, not the published "
        f"{published.file_hash}; deleted it from the cache ({path})"
    )


def _file_digest(path: str, published_hash: str) -> str:
    # 32 hex digits: Keras's MD5s; otherwise SHA-256, whole or (torchvision) its prefix.
    hasher = hashlib.md5() if len(published_hash) == 32 else hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()
