"""The `kvgg` command: parses, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import functools
import importlib
import os
import re
import signal
import sys
import tempfile
import threading

import click

from keras_vgg import __version__, limits
from keras_vgg import progress as progress_lib

# ERROR lines of TensorFlow's C++ runtime too: its decoders log what a failed decode (which
# the command reports in its own words) met, e.g. "Premature end of JPEG data".
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: TensorFlow's oneDNN kernels, which TensorFlow turns on by itself only on Intel CPUs: on,
#: so that a command takes the same numerical path on every x86 CPU (the demo's errors would
#: otherwise differ by a few images between an Intel and an AMD machine) and channels-first
#: convolutions run on any CPU. Set TF_ENABLE_ONEDNN_OPTS=0 to turn them off.
ONEDNN_DEFAULT = "1"
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", ONEDNN_DEFAULT)

# Lines TensorFlow's C++ runtime prints while it starts, before absl logging is initialised
# (so no environment variable silences them): informational on a command line.
_STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog"
    r"|[IW]\d{4} .*\] "
    r"|E\d{4} .*(cuInit|cuda_platform|cuda_dnn|cuda_fft|cuda_blas)"
    r"|To enable the following instructions:)"
)


def _start_tensorflow_quietly() -> None:
    """Imports TensorFlow and Keras with fd 2 captured, re-emitting all but start-up noise."""
    if "keras" in sys.modules or os.environ.get("KVGG_VERBOSE"):
        return
    try:
        captured_file = tempfile.TemporaryFile(mode="w+b")
    except OSError:  # no room for the capture (a full disk): start unfiltered
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with captured_file as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        for line in captured.read().decode(errors="replace").splitlines():
            if line.strip() and not _STARTUP_NOISE.match(line):
                print(line, file=sys.stderr)


def heavy(*names: str):
    """Imports the keras_vgg modules NAMES (those that need Keras), starting TensorFlow quietly.

    Each command first checks what needs no TensorFlow (its options, the files, recipes and
    data folders it was given) and only then calls this, so a mistyped path or key is
    answered in a fraction of a second instead of after TensorFlow's start-up (~4 s).

    Returns:
        The module, or a tuple of modules when several names are given.
    """
    _start_tensorflow_quietly()
    modules = tuple(importlib.import_module(f"keras_vgg.{name}") for name in names)
    return modules[0] if len(modules) == 1 else modules


class UserError(click.ClickException):
    """A one-line error about the user's input: exit code 2, no traceback."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"kvgg: error: {self.format_message()}", err=True, file=file)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def user_errors(func):
    """Turns the library's errors into one line, no traceback (TensorFlow starts in `heavy`).

    Exit code 2 (the user's input): ValueError, FileNotFoundError, `runs.RunInUse` (another
    process holds the run directory). Exit code 1 (the machine): any other OSError, such as
    `files.WriteError` from a full disk, a read-only folder or a missing permission; its
    line names the file and says what was kept.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ValueError, OSError, RuntimeError) as exc:
            # Raised only once their modules are imported; importing here could fail again.
            runs = sys.modules.get("keras_vgg.runs")
            files = sys.modules.get("keras_vgg.files")
            if isinstance(exc, (ValueError, FileNotFoundError)) or (
                runs is not None and isinstance(exc, runs.RunInUse)
            ):
                raise UserError(_first_line(exc)) from None
            if files is not None and isinstance(exc, files.WriteError):
                raise RunFailed(_first_line(exc)) from None
            if isinstance(exc, OSError):
                where = f"{exc.filename}: " if exc.filename else ""
                raise RunFailed(f"{where}{exc.strerror or _first_line(exc)}") from None
            raise

    return wrapper


def exit_interrupted(message: str = "interrupted"):
    """Ctrl-C: one line `kvgg: MESSAGE` on stderr, exit code 130, at once.

    `os._exit`, not `sys.exit`: the interpreter's shutdown would wait for TensorFlow's and
    tf.data's threads (tens of seconds). What must be on disk is written before this is
    called (every file is written atomically), and the kernel releases the run lock.
    """
    sys.stdout.flush()
    click.echo(f"kvgg: {message}", err=True)
    sys.stderr.flush()
    os._exit(130)


def _on_ctrl_c(signum, frame):
    """Ctrl-C: KeyboardInterrupt, marked in `progress.INTERRUPTED` (where TensorFlow swallows
    it, the next progress report or training step raises it again). A second Ctrl-C exits
    at once."""
    if progress_lib.INTERRUPTED.is_set():
        exit_interrupted()
    progress_lib.INTERRUPTED.set()
    raise KeyboardInterrupt


class _Commands(click.Group):
    """The `kvgg` group: Ctrl-C in any command exits at once (`exit_interrupted`)."""

    def invoke(self, ctx):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, _on_ctrl_c)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            exit_interrupted()


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kvgg")
def main():
    """keras-vgg: the VGG paper's networks, training and testing protocols."""


def _parse_input_shape(value: str | None):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected H,W,C (e.g. 224,224,3), got {value!r}") from None


@main.command()
@click.argument("config", required=False)
@click.option("--all", "all_configs", is_flag=True, help="Table 2: every configuration's size.")
@click.option("--batch-norm", is_flag=True, help="The VGG-BN variant.")
@click.option("--width", type=float, default=1.0, show_default=True, help="Conv width factor.")
@click.option("--classes", type=int, default=1000, show_default=True)
@click.option("--no-top", is_flag=True, help="Without the three FC layers.")
@click.option("--input-shape", default=None, help="H,W,C (default 224,224,3).")
@user_errors
def summary(config, all_configs, batch_norm, width, classes, no_top, input_shape):
    """Print the layer table and parameter count of CONFIG (A, A-LRN, B, C, D, E, vgg16...)."""
    from keras_vgg import configs

    if all_configs == (config is not None):
        raise UserError("give either a CONFIG or --all")
    shape = _parse_input_shape(input_shape)
    models = heavy("models")
    # Only shapes and counts are printed: zero kernels cost no random draws (full-size D
    # builds in ~0.2 s of CPU instead of ~1.2 s with Glorot's).
    kwargs = dict(
        include_top=not no_top,
        batch_norm=batch_norm,
        width=width,
        classes=classes,
        input_shape=shape,
        kernel_initializer="zeros",
    )
    if all_configs:
        click.echo(
            f"{'config':<7} {'weight layers':>13} {'parameters':>13} {'paper (Table 2)':>16}"
        )
        for name in configs.CONFIGS:
            model = models.build(name, **kwargs)
            click.echo(
                f"{name:<7} {configs.weight_layers(name):>13} {model.count_params():>13,} "
                f"{configs.PAPER_PARAMS_M[name]:>14} M"
            )
            del model
        return
    model = models.build(config, **kwargs)
    rows = models.layer_table(model)
    click.echo(f"Model: {model.name}")
    click.echo(f"{'layer':<24} {'type':<28} {'output shape':<24} {'params':>12}")
    for name, kind, shape_text, count in rows:
        click.echo(f"{name:<24} {kind:<28} {shape_text:<24} {count:>12,}")
    key = configs.canonical_name(config)
    click.echo(f"Total parameters: {model.count_params():,}")
    click.echo(
        f"Weight layers: {configs.weight_layers(key)}; paper (Table 2): "
        f"{configs.PAPER_PARAMS_M[key]} M"
    )


_PREPROCESSING_CHOICES = ("paper", "keras_caffe", "torchvision")

# The input convention of a model that records none (keras.applications' VGG16, a plain
# Keras file): the model door (`keras_vgg.handle.open_model`) refuses such a model without it.
_model_preprocessing_option = click.option(
    "--preprocessing",
    "model_preprocessing",
    type=click.Choice(["paper", "caffe", "torchvision"]),
    default=None,
    help="What a model without a record expects (paper, caffe: keras.applications, "
    "torchvision). Models made by keras_vgg record it.",
)
_overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace existing output files (never an input)."
)


def _check_outputs(outputs, inputs, overwrite, folder=False):
    """The output door (`keras_vgg.outputs.check_outputs`), before any model is loaded.

    Returns:
        The outputs, for `_make_folders` once the inputs are open.
    """
    from keras_vgg import outputs as outputs_lib

    outputs = [o for o in outputs if o is not None]
    outputs_lib.check_outputs(outputs, inputs, overwrite=overwrite, folder=folder)
    return outputs


def _make_folders(outputs):
    from keras_vgg import outputs as outputs_lib

    outputs_lib.make_folders(outputs)


@main.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--config", required=True, help="Configuration of SRC: A, B, D, E, vgg16...")
@click.option(
    "--preprocessing",
    type=click.Choice(_PREPROCESSING_CHOICES),
    default=None,
    help="What the weights expect (default: keras_caffe for .h5, torchvision for .pth, "
    "paper for .npz).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing DEST.")
@user_errors
def convert(src, dest, config, preprocessing, overwrite):
    """Write a Keras 2 .h5, torchvision .pth or .npz weights file SRC as DEST (.weights.h5)."""
    from keras_vgg import imagenet

    chosen = None if preprocessing is None else getattr(imagenet, preprocessing.upper())
    _check_outputs([dest], [src], overwrite)
    models = heavy("models")
    try:
        result = models.convert(src, dest, config, preprocessing=chosen, overwrite=overwrite)
    except ImportError as exc:  # a .pth without the optional torch
        raise UserError(str(exc)) from None
    kept = result.pop("preprocessing")
    key = result.pop("config")
    args = ", ".join(f"{name}={value!r}" for name, value in result.items())
    click.echo(f"Wrote {dest}")
    click.echo(f"Load it with: keras_vgg.build({key!r}, {args}, weights={dest!r})")
    click.echo(
        f"Preprocessing the weights expect: channel order {kept.channel_order}, scale "
        f"{kept.scale:g}, mean {kept.mean}, std {kept.std}"
    )


def _parse_log_every(ctx, param, value):
    from keras_vgg.recipe import parse_duration

    try:
        return parse_duration(value, "--log-every")
    except ValueError as exc:
        raise UserError(str(exc)) from None


_log_every_option = click.option(
    "--log-every",
    default="60s",
    show_default=True,
    callback=_parse_log_every,
    help="Where stderr is not a terminal: seconds (or 90s, 2m) between progress lines; "
    "0: after every step.",
)


class _CountingProgress:
    """Progress on stderr, so stdout carries only the report: a click bar labelled `label` on
    a terminal, else a line `command  unit done/total ...` every `every` seconds
    (`keras_vgg.progress.Progress`). `update(n)` counts n more."""

    def __init__(self, length: int, label: str, command: str, every: float, unit: str, rate: str):
        from keras_vgg.progress import Progress

        self.lines = Progress.unless_terminal(
            sys.stderr,
            label=command,
            every=every,
            unit=unit,
            rate_unit=rate,
            total=length or None,
        )
        self.bar = None
        if self.lines is None:
            self.bar = click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True)

    def update(self, count: int) -> None:
        progress_lib.raise_if_interrupted()
        if self.lines is not None:
            self.lines.add(count)
        else:
            self.bar.update(count)

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc_info):
        if self.bar is not None:
            self.bar.__exit__(*exc_info)


_labels_option = click.option(
    "--labels",
    "labels_file",
    default=None,
    help="Labels file for a flat folder ('imagenet-val': the bundled ILSVRC val labels).",
)


@main.group()
def data():
    """Inspect and pack datasets."""


@data.command("stats")
@click.argument("root")
@_labels_option
@click.option("--sample", type=int, default=None, help="Use a seeded sample of N images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample.")
@click.option("-o", "--output", default=None, help="Write the statistics as JSON here.")
@_overwrite_option
@_log_every_option
@user_errors
def data_stats(root, labels_file, sample, seed, output, overwrite, log_every):
    """Mean RGB and RGB covariance PCA of the images under ROOT (Sec. 2.1, 3.1).

    The eigenvalues are on the 0-1 pixel scale, like AlexNet's published ImageNet values.
    """
    from keras_vgg.data import sources

    if sample is not None and sample < 1:
        raise UserError(f"--sample must be a positive integer, got {sample}")
    _make_folders(_check_outputs([output], [root, labels_file], overwrite))
    source = sources.as_source(root, labels_file)
    stats_lib = heavy("data.stats")
    try:
        total = len(source)
    except TypeError:  # TFRecord shards without a known record count
        total = 0
    total = min(sample, total) if sample and total else (sample or total)
    with _CountingProgress(total, "images", "data stats", log_every, "image", "img") as bar:
        result = stats_lib.compute_stats(source, sample=sample, seed=seed, progress=bar.update)
    click.echo(f"images: {result.images}")
    click.echo("mean (0-255): " + " ".join(f"{v:.3f}" for v in result.mean))
    click.echo("eigenvalues (0-1 scale): " + " ".join(f"{v:.5f}" for v in result.eigenvalues))
    click.echo("eigenvectors (columns):")
    for row in result.eigenvectors:
        click.echo("  " + " ".join(f"{v:+.4f}" for v in row))
    if output:
        result.to_json(output)
        click.echo(f"wrote {output}", err=True)


# The old spelling `kvgg stats`: the same command under its old name, out of `kvgg --help`.
main.add_command(
    click.Command(
        "stats",
        callback=data_stats.callback,
        params=data_stats.params,
        help="Old name of `kvgg data stats` (same options, same output).",
        short_help="Old name of `kvgg data stats`.",
        hidden=True,
    )
)


@data.command("check")
@click.argument("root")
@_labels_option
@click.option("--workers", type=int, default=None, help="Parallel threads (default: CPUs).")
@click.option(
    "--min-side",
    type=int,
    default=0,
    show_default=True,
    help="Also report images whose smaller side is below this.",
)
@click.option("--output", default=None, help="Also write the report to this file.")
@_overwrite_option
@_log_every_option
@user_errors
def data_check(root, labels_file, workers, min_side, output, overwrite, log_every):
    """Scan ROOT for unreadable and unusual images; exit 1 if any is unreadable."""
    from keras_vgg.data import sources

    _make_folders(_check_outputs([output], [root, labels_file], overwrite))
    source = sources.open_source(root, labels_file)
    check = heavy("data.check")
    with _CountingProgress(len(source), "files", "data check", log_every, "file", "files") as bar:
        report = check.check_source(source, workers=workers, min_side=min_side, progress=bar.update)
    click.echo(report.to_text())
    if output:
        report.write(output)
    if report.unreadable:
        sys.exit(1)


@data.command("pack")
@click.argument("root")
@click.argument("out")
@_labels_option
@click.option("--shards", type=int, default=16, show_default=True, help="Number of shard files.")
@click.option(
    "--prefix", default="train", show_default=True, help="Shard names: PREFIX-00000-of-00016."
)
@click.option("--workers", type=int, default=None, help="Shards written at once (default: CPUs).")
@click.option("--overwrite", is_flag=True, help="Write anew over what OUT holds (never an input).")
@_log_every_option
@user_errors
def data_pack(root, out, labels_file, shards, prefix, workers, overwrite, log_every):
    """Pack the images under ROOT into TFRecord shards in OUT, with a manifest.

    The files' own bytes (never re-encoded), their labels, class names and file names; an
    interrupted pack, run again, continues. OUT then serves as data for fit, evaluate and
    data stats (as a folder, or "tfrecord:OUT/PREFIX-*").
    """
    from keras_vgg import outputs
    from keras_vgg.data import manifest, sources

    if workers is not None and workers < 1:
        raise UserError(f"--workers must be a positive integer, got {workers}")
    source = sources.open_source(root, labels_file)
    plan = manifest.plan_pack(source, root, labels_file, shards, prefix)
    outputs.check_pack_folder(out, plan.settings, [root, labels_file], overwrite=overwrite)
    pack_lib = heavy("pack")
    lock = threading.Lock()
    with _CountingProgress(len(source), "files", "data pack", log_every, "file", "files") as bar:

        def progress(n):
            with lock:
                bar.update(n)

        result = pack_lib.pack(
            root,
            out,
            labels_file=labels_file,
            shards=shards,
            prefix=prefix,
            workers=workers,
            overwrite=overwrite,
            progress=progress,
        )
    skipped = len(result.skipped)
    click.echo(
        f"packed {result.records} images of {len(result.class_names)} classes into "
        f"{len(result.shards)} shards in {out}"
        + (f" ({skipped} unreadable skipped)" if skipped else "")
    )


def _parse_scales(value: str | None):
    if value is None:
        return None
    try:
        parsed = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--scales: expected integers like 256,384,512, got {value!r}") from None
    from keras_vgg.scales import check_scales

    return check_scales(parsed, None, "--scales")  # the crop size is the model's: checked later


class _RateProgress:
    """A progress bar on stderr with images per second, opened at the first report (so
    that an error before any image is the only line printed); where stderr is not a
    terminal, a line every `every` seconds instead (`keras_vgg.progress.Progress`)."""

    def __init__(self, label: str, every: float, command: str):
        from keras_vgg.progress import Progress

        self.label = label
        self.bar = None
        self.done = 0
        self.start = None
        self.lines = Progress.unless_terminal(sys.stderr, label=command, every=every, unit="image")

    def __call__(self, done: int, total: int | None, top1_err: float | None = None) -> None:
        import time

        progress_lib.raise_if_interrupted()
        if self.lines is not None:
            figures = {} if top1_err is None else {"top1_err": top1_err}
            self.lines.update(done, total, **figures)
            return
        if self.bar is None:
            self.bar = click.progressbar(
                length=total or 0,
                label=self.label,
                file=sys.stderr,
                show_pos=True,
                item_show_func=lambda text: text,
            )
            self.bar.__enter__()
            self.start = time.perf_counter()
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        self.bar.update(done - self.done, f"{rate:.1f} images/s")
        self.done = done

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.bar is not None:
            self.bar.__exit__(*exc_info)


@main.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--data", "data_root", required=True, help="Class-per-folder root (or flat folder).")
@click.option(
    "--labels",
    "labels_file",
    default=None,
    help="Labels file for a flat folder ('imagenet-val': the bundled ILSVRC val labels).",
)
@click.option("--scales", default=None, help="Test scales Q, e.g. 256,384,512 (default: recipe's).")
@click.option("--dense", is_flag=True, help="Dense evaluation (the default protocol).")
@click.option("--multi-crop", is_flag=True, help="50 crops per scale (5x5 grid and flips).")
@click.option("--center-crop", is_flag=True, help="Central 224 crop (keras.applications).")
@click.option("--no-flip", is_flag=True, help="Do not average with horizontal flips.")
@click.option(
    "--dense-average",
    type=click.Choice(["logits", "softmax"]),
    default="logits",
    show_default=True,
    help="Average the dense score map before or after the per-location soft-max.",
)
@click.option(
    "--ties",
    type=click.Choice(["pessimistic", "expected", "optimistic"]),
    default="pessimistic",
    show_default=True,
    help="How top-k error counts a true class tied with the k-th score.",
)
@click.option("--batch-size", type=int, default=32, show_default=True, help="Crops per pass.")
@click.option("--limit", type=int, default=None, help="Only the first N images (a quick look).")
@click.option("-o", "--output", default=None, help="Write the results as JSON here.")
@click.option("--markdown", default=None, help="Write the Markdown table here.")
@_model_preprocessing_option
@_overwrite_option
@_log_every_option
@user_errors
def evaluate(
    models, data_root, labels_file, scales, dense, multi_crop, center_crop, no_flip,
    dense_average, ties, batch_size, limit, output, markdown, model_preprocessing, overwrite,
    log_every,
):  # fmt: skip
    """Top-1 / top-5 error of MODELS on --data with the protocols of Sec. 3.2 (Tables 3-6).

    MODELS are .keras files or run directories; several are also fused (Table 6). Both
    --dense and --multi-crop also give their combination (Table 5). The Markdown table is
    also written to evaluation.md (and the JSON to evaluation.json) in each run directory.
    """
    limits.check_count(batch_size, "--batch-size", limits.MAX_BATCH_SIZE)
    if limit is not None:
        limits.check_count(limit, "--limit", limits.MAX_IMAGES)
    parsed_scales = _parse_scales(scales)
    written = _check_outputs([output, markdown], [*models, data_root, labels_file], overwrite)
    evaluation = heavy("evaluation")
    protocols = [
        p for p, on in (("center", center_crop), ("dense", dense), ("multi_crop", multi_crop)) if on
    ]
    loaded = evaluation.load_models(
        models, preprocessing=model_preprocessing, command="kvgg evaluate"
    )
    _make_folders(written)
    with _RateProgress("evaluating", log_every, "evaluate") as callback:
        result = evaluation.evaluate(
            loaded,
            data_root,
            labels_file=labels_file,
            protocols=protocols or ["dense"],
            scales=parsed_scales,
            flip=not no_flip,
            dense_average=dense_average,
            batch_size=batch_size,
            ties=ties,
            limit=limit,
            progress=callback,
        )
    click.echo(result.format_table(), nl=False)
    rate = result.images / result.seconds if result.seconds else float("nan")
    click.echo(f"{result.images} images in {result.seconds:.1f} s ({rate:.2f} images/s)")
    if result.skipped:  # each was reported by the data pipeline as it was met
        click.echo(f"{len(result.skipped)} unreadable images skipped", err=True)
    for path in evaluation.write_results(result, loaded, output=output, markdown=markdown):
        click.echo(f"wrote {path}", err=True)


@main.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--data", "data_root", required=True, help="A VOC year folder or class-folder tree.")
@click.option("--scales", default="256,384,512", show_default=True, help="The scales Q.")
@click.option(
    "--aggregate",
    type=click.Choice(["stack", "average"]),
    default="stack",
    show_default=True,
    help="Combine the scales' descriptors by concatenating or averaging them.",
)
@click.option(
    "--layer", default="fc2", show_default=True, help="fc2 (Appendix B) or fc1 (one layer earlier)."
)
@click.option("--before-relu", is_flag=True, help="The layer before its ReLU (default: after).")
@click.option("--per-scale-norm", is_flag=True, help="L2-normalise each scale first.")
@click.option("--no-flip", is_flag=True, help="Do not average with horizontal flips.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Images per pass.")
@click.option("-o", "--output", required=True, help="The .npz file to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
@_model_preprocessing_option
@_log_every_option
@user_errors
def features(
    models,
    data_root,
    scales,
    aggregate,
    layer,
    before_relu,
    per_scale_norm,
    no_flip,
    batch_size,
    output,
    overwrite,
    model_preprocessing,
    log_every,
):
    """Appendix B descriptors of every image of --data, by MODELS (stacked), into a .npz.

    The penultimate FC layer of each net, dense over the image rescaled to each Q, pooled,
    averaged with the flip, combined over the scales, L2-normalised.
    """
    limits.check_count(batch_size, "--batch-size", limits.MAX_BATCH_SIZE)
    parsed_scales = _parse_scales(scales)
    _make_folders(_check_outputs([output], [*models, data_root], overwrite))
    features_lib = heavy("features")
    with _RateProgress("describing", log_every, "features") as callback:
        result = features_lib.extract_features(
            list(models),
            data_root,
            output,
            scales=parsed_scales,
            aggregate=aggregate,
            flip=not no_flip,
            relu=not before_relu,
            per_scale_norm=per_scale_norm,
            batch_size=batch_size,
            progress=callback,
            layer=layer,
            overwrite=overwrite,
            preprocessing=model_preprocessing,
        )
    rows, size = result.descriptors.shape
    if result.meta["skipped"]:
        click.echo(f"{len(result.meta['skipped'])} unreadable images skipped", err=True)
    click.echo(f"wrote {output}: {rows} images, {size}-D descriptors", err=True)


@main.command()
@click.argument("features_file", metavar="FEATURES.npz")
@click.option(
    "--train-per-class", type=int, default=30, show_default=True, help="Folder trees only."
)
@click.option("--test-per-class", type=int, default=None, help="Folder trees: at most M tests.")
@click.option("--splits", type=int, default=3, show_default=True, help="Random splits.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--C", "cs", default=None, help="SVM C values to choose from, e.g. 0.1,1,10.")
@click.option("-o", "--output", default=None, help="Write the result as JSON here.")
@_overwrite_option
@user_errors
def transfer(features_file, train_per_class, test_per_class, splits, seed, cs, output, overwrite):
    """Linear SVMs on a `kvgg features` file: VOC mAP or mean class recall (Table 11)."""
    import json

    from keras_vgg import files as files_lib

    try:
        candidates = None if cs is None else tuple(map(float, cs.split(",")))
    except ValueError:
        raise UserError(f"--C: expected numbers like 0.1,1,10, got {cs!r}") from None
    _make_folders(_check_outputs([output], [features_file], overwrite))
    transfer_lib = heavy("features.svm")
    candidates = transfer_lib.DEFAULT_CS if candidates is None else candidates
    try:
        result = transfer_lib.transfer(
            features_file,
            train_per_class=train_per_class,
            test_per_class=test_per_class,
            splits=splits,
            seed=seed,
            Cs=candidates,
        )
    except ModuleNotFoundError as exc:  # scikit-learn, an optional dependency
        raise UserError(str(exc)) from None
    click.echo(result.to_table())
    click.echo(f"C chosen on held-out training images: {list(result.chosen_c)}")
    if output:
        files_lib.atomic_text(output, json.dumps(result.to_dict(), indent=2) + "\n")
        click.echo(f"wrote {output}", err=True)


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--model",
    "model_path",
    default=None,
    help="A .keras file, run directory or artifact of `kvgg export`.",
)
@click.option("--config", default=None, help="Configuration (A..E, vgg16) of --weights.")
@click.option(
    "--weights",
    default=None,
    help="Weights for --config: a pretrained name (imagenet, torchvision, torchvision_bn) or a "
    "file (.weights.h5, .keras, Keras 2 .h5, .pth, .npz); the model is the one it fits.",
)
@click.option("--top", type=int, default=5, show_default=True, help="Classes per image.")
@click.option("--dense", is_flag=True, help="Dense evaluation instead of the central crop.")
@click.option("--multi-crop", is_flag=True, help="50 crops per scale instead of one.")
@click.option("--scales", default=None, help="Test scales Q (default: Table 3's single Q, or 256).")
@click.option("--no-flip", is_flag=True, help="Do not average with horizontal flips.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Crops per pass.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option(
    "--heatmap",
    default=None,
    metavar="OUT/",
    help="Also write OUT/<image>_heatmap.png (sub-folders of the inputs mirrored): the dense "
    "class score map of the top 3 classes "
    "over the image.",
)
@_model_preprocessing_option
@_overwrite_option
@user_errors
def predict(
    images, model_path, config, weights, top, dense, multi_crop, scales, no_flip, batch_size,
    as_json, heatmap, model_preprocessing, overwrite,
):  # fmt: skip
    """Top-k classes of IMAGES (files or folders).

    Images are preprocessed as the model's record says (the convention its weights
    expect). Names come from the record's class names (the class folders a model was
    trained on), else from the bundled ImageNet class index. Unreadable images are reported
    and skipped; the exit code is 1 if any was.
    """
    import json

    if (model_path is None) == (config is None):
        raise UserError("give either --model FILE or --config NAME with --weights")
    if config is not None and weights is None:
        raise UserError(
            "--config needs --weights (a pretrained name or a file): a model with random "
            "weights predicts nothing"
        )
    if model_path is not None and weights is not None:
        raise UserError("--weights goes with --config; --model files hold their own weights")
    parsed_scales = _parse_scales(scales)
    evaluation, handle_lib, outputs_lib = heavy("evaluation", "handle", "outputs")
    files = evaluation.image_files(images)
    # The output door: one heat map per image, none over an input, before any model loads.
    heat_paths = outputs_lib.per_image_outputs(files, heatmap, "_heatmap.png") if heatmap else {}
    _check_outputs(heat_paths.values(), [*files, model_path, weights], overwrite)
    try:
        model = handle_lib.open_model(
            model_path if config is None else weights,
            config=config,
            needs="classifier",
            preprocessing=model_preprocessing,
            command="kvgg predict",
        )
    except ImportError as exc:  # a .pth without the optional torch
        raise UserError(str(exc)) from None
    if dense and multi_crop:
        protocol = "dense+multi_crop"
    else:
        protocol = "dense" if dense else "multi_crop" if multi_crop else "center"
    options = dict(
        top=top, protocol=protocol, scales=parsed_scales, flip=not no_flip, batch_size=batch_size
    )
    # `images` as given: `files` lists what folders hold, dangling links included. The
    # heat maps' folders are made once the model is accepted.
    if heatmap is None:
        results, written = evaluation.predict(model, images, **options), []
    else:
        results, written = heavy("drawing").predict_with_heatmaps(
            model, images, heat_paths, **options
        )
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            if r.error is None:
                click.echo(r.path)
                for class_id, name, probability in r.top:
                    label = name if class_id == name else f"{class_id} {name}"
                    click.echo(f"  {probability:.4f}  {label}")
    failed = [r for r in results if r.error is not None]
    for out in written:
        click.echo(f"wrote {out}", err=True)
    for r in failed:
        click.echo(f"kvgg: skipped unreadable image: {r.path}: {r.error}", err=True)
    if failed:
        sys.exit(1)


@main.command("lpips")
@click.argument("first", metavar="A")
@click.argument("second", metavar="B")
@click.option(
    "--model",
    "model_path",
    default="torchvision",
    show_default=True,
    help="The VGG-16 backbone: a pretrained name (torchvision: LPIPS's own) or a file "
    "(.keras, .weights.h5, torchvision .pth) or run directory.",
)
@click.option(
    "--linear-weights",
    default=None,
    help="LPIPS's linear weights (.pth); default: the lpips package's bundled v0.1 file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_model_preprocessing_option
@user_errors
def lpips(first, second, model_path, linear_weights, as_json, model_preprocessing):
    """LPIPS distance of two images, or of the pairs of two folders (same relative names):
    one line per pair, then their mean."""
    import json

    features = heavy("features.lpips")
    try:
        rows = features.lpips_distances(
            first,
            second,
            model=model_path,
            linear_weights=linear_weights,
            preprocessing=model_preprocessing,
        )
    except ImportError as exc:  # no lpips package, or a .pth without torch
        raise UserError(str(exc)) from None
    done = [r for r in rows if r.error is None]
    failed = [r for r in rows if r.error is not None]
    mean = sum(r.distance for r in done) / len(done) if done else None
    if as_json:
        pairs = [{"name": r.name, "lpips": r.distance} for r in done]
        click.echo(json.dumps({"pairs": pairs, "mean": mean}, indent=2))
    else:
        for r in done:
            click.echo(f"{r.distance:.6f}  {r.name}")
        if len(done) > 1:
            click.echo(f"{mean:.6f}  mean of {len(done)} pairs")
    # As kvgg predict: every pair compared, then each skipped one, exit 1.
    for r in failed:
        click.echo(f"kvgg: skipped pair {r.name}: {r.error}", err=True)
    if failed:
        sys.exit(1)


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--model", "model_path", required=True, help="A .keras file or run directory.")
@click.option(
    "--method",
    type=click.Choice(["gradcam", "gradcam++", "dense"]),
    default="gradcam",
    show_default=True,
    help="Grad-CAM, Grad-CAM++, or the dense class score map (Sec. 3.2).",
)
@click.option("--class", "class_name", default=None, help="The class to explain (default: top).")
@click.option("--layer", default=None, help="The conv layer (default: the last conv's).")
@click.option("-o", "--output", required=True, metavar="OUT/", help="Folder of the overlays.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_model_preprocessing_option
@_overwrite_option
@user_errors
def explain(
    images, model_path, method, class_name, layer, output, as_json, model_preprocessing,
    overwrite,
):  # fmt: skip
    """Where a classifier looks: a map of each of IMAGES (files or folders) over the image.

    Writes OUT/<image>_<method>.png (sub-folders of the inputs mirrored): the map in red
    over the grey image, with the class's name and probability; prints each map's peak
    (x, y) and value. Unreadable images are reported and skipped; the exit code is 1 if
    any was.
    """
    import json

    evaluation, outputs_lib = heavy("evaluation", "outputs")
    files = evaluation.image_files(images)
    paths = outputs_lib.per_image_outputs(files, output, f"_{method}.png")
    _check_outputs(paths.values(), [*files, model_path], overwrite)
    found = heavy("explain").explain_images(
        model_path, files, paths, method=method, class_name=class_name, layer=layer,
        preprocessing=model_preprocessing,
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in found], indent=2))
    for e in found:
        if e.error is None:
            if not as_json:
                click.echo(
                    f"{e.path}: {e.class_name} {e.probability:.4f} peak {e.peak} {e.value:.3f}"
                )
            click.echo(f"wrote {e.picture}", err=True)
    failed = [e for e in found if e.error is not None]
    for e in failed:
        click.echo(f"kvgg: skipped unreadable image: {e.path}: {e.error}", err=True)
    if failed:
        sys.exit(1)


def _or(names) -> str:
    names = list(names)
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


class _LibraryHelp(click.Option):
    """An option whose help text is read from the library when `--help` shows it (so that
    the command line itself starts without Keras)."""

    def __init__(self, *args, library_help, **kwargs):
        super().__init__(*args, **kwargs)
        self._library_help = library_help

    def get_help_record(self, ctx):
        self.help = self._library_help()
        return super().get_help_record(ctx)


def _format_help() -> str:
    """`--format`'s help: the rows of the table of formats (`artifacts.EXPORT_FORMATS`)."""
    formats = heavy("artifacts").EXPORT_FORMATS
    return _or(f"{name} ({row.description})" for name, row in formats.items()) + "."


def _quantize_help() -> str:
    """`--quantize`'s help: each quantisation and the formats that take it."""
    artifacts = heavy("artifacts")
    takers = {
        q: [n for n, row in artifacts.EXPORT_FORMATS.items() if q in row.quantizations]
        for q in artifacts.QUANTIZATIONS
    }
    return (
        _or(
            q if len(names) == len(artifacts.EXPORT_FORMATS) else f"{q} ({', '.join(names)})"
            for q, names in takers.items()
        )
        + "."
    )


@main.command("export")
@click.argument("model")
@click.argument("out")
@click.option(
    "--format",
    "format_",
    default="savedmodel",
    show_default=True,
    cls=_LibraryHelp,
    library_help=_format_help,
)
@click.option(
    "--protocol",
    default="center",
    show_default=True,
    help="center (the crop) or dense (any size, Sec. 3.2).",
)
@click.option(
    "--input",
    "input_",
    default="uint8",
    show_default=True,
    help="uint8 (preprocessing inside) or float (bare network).",
)
@click.option(
    "--quantize",
    default="none",
    show_default=True,
    cls=_LibraryHelp,
    library_help=_quantize_help,
)
@click.option(
    "--calibration", default=None, help="Folder of images: int8 calibration and the check."
)
@click.option(
    "--scale",
    type=int,
    default=None,
    help="Test scale Q of the calibration images (default: as predict).",
)
@click.option("--no-flip", is_flag=True, help="Dense: do not average with horizontal flips.")
@_model_preprocessing_option
@user_errors
def export_command(
    model, out, format_, protocol, input_, quantize, calibration, scale, no_flip,
    model_preprocessing,
):  # fmt: skip
    """Export MODEL (.keras file or run directory) to the folder OUT for serving.

    The artifact takes uint8 RGB images (batch, height, width, 3), the model's
    preprocessing inside, and returns class posteriors; its class names and record go
    with it. It is checked in its own runtime against the Keras model before it is
    written; the size and the agreement are printed.
    """
    _check_outputs([out], [model, calibration], False, folder=True)
    report = heavy("export").export_model(
        model,
        out,
        format=format_,
        protocol=protocol,
        input=input_,
        quantize=quantize,
        calibration=calibration,
        scale=scale,
        flip=not no_flip,
        preprocessing=model_preprocessing,
    )
    click.echo(report.summary())


@main.group()
def localize():
    """Localisation nets (Appendix A): evaluate them, predict and draw boxes."""


def _localizer_classes(paths):
    return (
        heavy("evaluation")
        .load_model(paths[0], needs="localizer", command="kvgg localize")
        .info.class_names
    )


@localize.command("evaluate")
@click.argument("locnets", nargs=-1, required=True)
@click.option("--classifier", "classifiers", multiple=True, help="Classification net (protocol 2).")
@click.option("--data", "data_root", required=True, help="Images: class folders or a flat folder.")
@click.option(
    "--annotations", required=True, help="Folder of VOC / ImageNet XML files, or a CSV manifest."
)
@click.option("--scales", default=None, help="Test scales Q, e.g. 256,384 (default: the net's).")
@click.option("--protocol", type=click.Choice(["1", "2"]), default="2", show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("-o", "--output", default=None, help="Write the results as JSON here.")
@_model_preprocessing_option
@_overwrite_option
@user_errors
def localize_evaluate(
    locnets, classifiers, data_root, annotations, scales, protocol, batch_size, output,
    model_preprocessing, overwrite,
):  # fmt: skip
    """Localisation error of LOCNET... (Tables 8 and 9): protocol 1 or 2."""
    if protocol == "2" and not classifiers:
        raise UserError("--protocol 2 needs --classifier CLSNET (it rates the boxes)")
    parsed_scales = _parse_scales(scales)
    _make_folders(
        _check_outputs([output], [*locnets, *classifiers, data_root, annotations], overwrite)
    )
    annotations_lib, evaluate_lib = heavy("localization.annotations", "localization.evaluate")
    box_set = annotations_lib.read_boxes(
        data_root, annotations, class_names=_localizer_classes(locnets)
    )
    if box_set.bad.skipped:
        click.echo(f"{box_set.bad.skipped} annotations skipped (unusable), e.g.:", err=True)
        for name in box_set.bad.names[:3]:
            click.echo(f"  {box_set.bad.reasons[name]}", err=True)
    result = evaluate_lib.evaluate_localization(
        locnets,
        box_set,
        classifiers=classifiers,
        scales=parsed_scales,
        protocol=int(protocol),
        batch_size=batch_size,
        preprocessing=model_preprocessing,
    )
    click.echo(result.to_markdown())
    if output is not None:
        result.write(output)
        click.echo(f"wrote {output}", err=True)


@localize.command("predict")
@click.argument("images", nargs=-1, required=True)
@click.option("--model", "models", multiple=True, required=True, help="Localisation net(s).")
@click.option("--classifier", "classifiers", multiple=True, required=True, help="Classifier(s).")
@click.option("--scales", default=None, help="Test scales Q (default: the net's single Q).")
@click.option("--top", type=int, default=5, show_default=True, help="(class, box) guesses.")
@click.option(
    "--draw",
    default=None,
    metavar="OUT/",
    help="Write OUT/<image>_boxes.png (sub-folders of the inputs mirrored).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_model_preprocessing_option
@_overwrite_option
@user_errors
def localize_predict(
    images, models, classifiers, scales, top, draw, as_json, model_preprocessing, overwrite
):
    """Top (class, box, score) guesses for IMAGES (protocol 2), optionally drawn."""
    import json

    parsed = _parse_scales(scales)
    evaluation, evaluate_lib, outputs_lib = heavy("evaluation", "localization.evaluate", "outputs")
    files = evaluation.image_files(images)
    drawn = outputs_lib.per_image_outputs(files, draw, "_boxes.png") if draw else {}
    _check_outputs(drawn.values(), [*files, *models, *classifiers], overwrite)
    localizer = evaluate_lib.Localizer(
        models, classifiers, scales=parsed, top=top, preprocessing=model_preprocessing
    )
    _make_folders(drawn.values())
    found = evaluate_lib.predict_boxes(localizer, files, draw=draw)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in found], indent=2))
    else:
        for r in found:
            if r.error is None:
                click.echo(r.path)
                for g in r.guesses:
                    box = ", ".join(f"{v:.1f}" for v in g.box)
                    click.echo(f"  {g.score:.4f}  {g.name}  box ({box})")
    for r in found:
        if r.drawn is not None:
            click.echo(f"wrote {r.drawn}", err=True)
    # As kvgg predict: every readable image's guesses, then each unreadable one, exit 1.
    failed = [r for r in found if r.error is not None]
    for r in failed:
        click.echo(f"kvgg: skipped unreadable image: {r.path}: {r.error}", err=True)
    if failed:
        sys.exit(1)


@main.command()
@click.argument("model")
@click.option(
    "--localizer",
    default=None,
    help="A localisation net (Appendix A): its boxes (protocol 2), rated by MODEL.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address to listen on (0.0.0.0: every interface, anyone who reaches it).",
)
@click.option("--port", type=int, default=8000, show_default=True, help="The port (0: a free one).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Images per model call.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Open the models, print the record the page shows (GET /api/model) and exit.",
)
@_model_preprocessing_option
@user_errors
def serve(model, localizer, host, port, batch_size, dry_run, model_preprocessing):
    """A local web page to look through MODEL: drop photographs, see the top-5 classes,
    the dense class score map and Grad-CAM of a class, and the boxes of --localizer.

    MODEL is a .keras file, run directory, weights file or an artifact of `kvgg export`
    (top-5 only). The same answers as JSON: POST /api/predict (docs/serve.md). Ctrl-C stops.
    """
    import json

    if not 0 <= port <= 65535:
        raise UserError(f"--port must be from 0 to 65535. Received: {port}")
    limits.check_count(batch_size, "--batch-size", limits.MAX_BATCH_SIZE)
    if not dry_run:
        missing = [m for m in ("starlette", "uvicorn", "multipart") if not _importable(m)]
        if missing:
            raise UserError(
                f"kvgg serve needs the serve extra ({', '.join(missing)} missing): "
                "pip install 'keras-vgg[serve]'"
            )
    serve_lib = heavy("serve")
    viewer = serve_lib.Viewer(
        model, localizer=localizer, preprocessing=model_preprocessing, batch_size=batch_size
    )
    if dry_run:
        click.echo(json.dumps(viewer.describe(), indent=2))
        return
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            f"kvgg: listening on {host}: anyone who reaches this machine can upload images",
            err=True,
        )
    serve_lib.serve(viewer, host=host, port=port, print_fn=lambda line: click.echo(line, err=True))


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


class RunFailed(click.ClickException):
    """Training stopped on its own (NaN loss): exit code 1, one line, no traceback."""

    exit_code = 1

    def show(self, file=None):
        click.echo(f"kvgg: error: {self.format_message()}", err=True, file=file)


@main.command()
@click.argument("recipe_paths", metavar="RECIPE.toml", nargs=-1, required=True)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key, e.g. --set data.root=/data/imagenet --set optimizer.lr=0.001.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the resolved recipe and the plan, make every check the run makes before its "
    "first step, then exit (2 if a check fails).",
)
@click.option("--overwrite", is_flag=True, help="Replace a finished run of the same name.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Train on N Ray Train workers (MultiWorkerMirroredStrategy): on this machine, or on "
    "the Ray cluster RAY_ADDRESS names. Needs the ray extra.",
)
@user_errors
def fit(recipe_paths, overrides, dry_run, overwrite, workers):
    """Train the recipe RECIPE.toml (Sec. 3.1) in runs/<name>/, resuming a killed run.

    Running the same command again after the process was killed resumes the run where its
    last checkpoint left it. With --dry-run several recipes may be given, and each is checked.
    With --workers N, Ray Train starts N worker processes and sets TF_CONFIG in each; worker
    0 writes the run directory, which every worker must see at the same path.
    """
    from keras_vgg import recipe as recipe_lib

    if len(recipe_paths) > 1 and not dry_run:
        raise UserError("give one RECIPE.toml (several only with --dry-run)")
    if workers is not None and dry_run:
        raise UserError("--dry-run checks the recipe in this process; give it without --workers")
    recipes = [recipe_lib.load_recipe(path, overrides) for path in recipe_paths]
    if workers is not None and not os.environ.get("KVGG_VERBOSE"):
        # The workers' TensorFlow start-up lines are left out, as this process's own are.
        os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", _STARTUP_NOISE.pattern)
    training = heavy("training")
    if dry_run:
        problems = []
        for path, recipe in zip(recipe_paths, recipes, strict=True):
            plan = training.plan_fit(recipe, overwrite=overwrite)
            click.echo(f"# resolved recipe ({path})")
            click.echo(recipe_lib.recipe_to_toml(recipe))
            click.echo(f"# plan ({path})")
            click.echo(plan.describe())
            click.echo()
            if plan.problem:
                problems.append(plan.problem)
        for problem in problems[:-1]:
            click.echo(f"kvgg: error: {problem}", err=True)
        if problems:
            raise UserError(problems[-1])
        return
    recipe = recipes[0]
    try:
        if workers is None:
            training.fit(recipe, overwrite=overwrite, print_fn=click.echo)
        else:
            training.ray_fit(recipe, workers=workers, overwrite=overwrite, print_fn=click.echo)
    except ModuleNotFoundError as exc:
        if workers is None or exc.name != "ray":
            raise
        raise UserError(str(exc)) from None  # training.RAY_MISSING
    except (training.TrainingDiverged, training.CheckpointError) as exc:
        raise RunFailed(str(exc)) from None
    except KeyboardInterrupt:
        exit_interrupted(_kept_after_interrupt(recipe.run_dir))


def _kept_after_interrupt(run_dir: str) -> str:
    """The line of an interrupted `kvgg fit`: which checkpoint is on disk (`state.npz`)."""
    from keras_vgg import runs

    try:
        _, epoch = runs.run_status(run_dir)
    except (ValueError, OSError):
        epoch = 0
    if epoch:
        return (
            f"interrupted; the last checkpoint (after epoch {epoch}) is kept in {run_dir}: run "
            "the same command again to resume from it"
        )
    return (
        f"interrupted before the first epoch finished; no checkpoint in {run_dir}: run the "
        "same command again to start"
    )


@main.command()
@click.argument(
    "which", required=False, type=click.Choice(["digits", "localize", "features"]), default="digits"
)
@click.option("--recipe", "recipe_path", default="recipes/demo.toml", show_default=True)
@click.option(
    "--data",
    "data_root",
    default=None,
    help="Where the images go (runs/digits, runs/loc_digits, runs/digits72).",
)
@click.option("--prepare-only", is_flag=True, help="Only write the images and their statistics.")
@click.option("--overwrite", is_flag=True, help="Train again even if the demo run has finished.")
@user_errors
def demo(which, recipe_path, data_root, prepare_only, overwrite):
    """Train on scikit-learn's digits, then classify held-out images.

    `kvgg demo localize`: the digits pasted onto scikit-image's photographs; a classifier,
    then SCR and PCR localisation nets (recipes/loc_demo_cls.toml, recipes/loc_demo.toml),
    then protocols 1 and 2 on held-out canvases, and one canvas drawn with its boxes.

    `kvgg demo features`: train on digits 0-4 only, then linear SVMs on the nets' fc2
    descriptors of digits 5-9 against the same nets untrained and raw pixels (Appendix B
    in small).
    """
    if which != "digits" and prepare_only:
        raise UserError(f"--prepare-only is for the digits demo, not `kvgg demo {which}`")
    given = click.get_current_context().get_parameter_source("recipe_path")
    if which == "localize" and given != click.core.ParameterSource.DEFAULT:
        raise UserError(
            "--recipe is for the digits and features demos: `kvgg demo localize` trains "
            "recipes/loc_demo_cls.toml and recipes/loc_demo.toml"
        )
    demos, training = heavy("demos", "training")
    try:
        if which == "localize":
            demos.run_localization_demo(
                data_root or "runs/loc_digits", overwrite=overwrite, print_fn=click.echo
            )
        elif which == "features":
            demos.run_features_demo(
                recipe_path,
                data_root or demos.FEATURES_DEMO_DATA,
                overwrite=overwrite,
                print_fn=click.echo,
            )
        else:
            demos.run_demo(
                recipe_path,
                data_root or "runs/digits",
                prepare_only=prepare_only,
                overwrite=overwrite,
                print_fn=click.echo,
            )
    except ModuleNotFoundError as exc:  # scikit-learn or scikit-image, the demos' data
        raise UserError(str(exc)) from None
    except (training.TrainingDiverged, training.CheckpointError) as exc:
        raise RunFailed(str(exc)) from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
