"""What a dataset of ImageNet's shape costs the commands before they do any work.

Writes an ImageNet-shaped tree: 1,000 class folders named by the bundled WordNet ids
holding N training JPEGs in all, and one flat folder of 50,000 validation JPEGs for the
bundled validation labels ("imagenet-val"). The images are tiny real JPEGs (`--side` px,
random pixels): `--distinct` different files, every other file a hard link to one of them,
so a million files cost inodes and directory entries but little disk. Every command reads
each file's own path, so the file list, the per-epoch order and the reads are what a tree
of distinct files gives; only the page cache is kinder.

Then runs, as real processes, for each size N (`--sizes`, default 12,000, 128,000 and
1,281,000 training files):

- `kvgg fit RECIPE --dry-run` (recipe A at width 1/16, batch 64, by default): wall time.
- `kvgg fit RECIPE`, on a pseudo-terminal so that Keras prints its progress bar: the time
  until the bar shows the first finished step ("1/STEPS"); the process is then stopped
  (SIGKILL, after `--after-first` seconds more of training).
- `kvgg evaluate MODEL --data TRAIN --limit 64 --center-crop`: wall time (the model is a
  random configuration A of the same width, written once).
- `kvgg data check TRAIN`: wall time (it reads every file).
- `kvgg data stats TRAIN --sample 1000`: wall time.

For each: the peak resident set of the process (`wait4`'s `ru_maxrss`) and the resident
bytes per file, (peak at N - peak at the smallest N) / (N - smallest N).

    python benchmarks/scale.py                                  # 12k, 128k, 1.28M
    python benchmarks/scale.py --sizes 12000,128000 --tree /tmp/scale --keep

Prints a table with the CPU's name.
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import cpu_name  # noqa: E402

from keras_vgg import imagenet  # noqa: E402

VAL_FILES = 50_000
COMMANDS = ("fit --dry-run", "fit", "evaluate --limit", "data check", "data stats --sample")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_distinct(folder: str, count: int, side: int, seed: int = 0) -> list[str]:
    """`count` different `side` x `side` JPEGs of random pixels."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = os.path.join(folder, f"{index:04d}.jpg")
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def write_tree(tree: str, train_files: int, distinct: list[str]) -> str:
    """`tree/train_<N>/<wnid>/<wnid>_<k>.JPEG`, N files over the 1,000 classes; its root."""
    root = os.path.join(tree, f"train_{train_files}")
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    wnids = [wnid for wnid, _ in imagenet.class_index()]
    per_class = np.full(len(wnids), train_files // len(wnids))
    per_class[: train_files % len(wnids)] += 1
    link = 0
    for wnid, count in zip(wnids, per_class, strict=True):
        folder = os.path.join(root, wnid)
        os.makedirs(folder, exist_ok=True)
        for k in range(count):
            path = os.path.join(folder, f"{wnid}_{k}.JPEG")
            if not os.path.exists(path):
                os.link(distinct[link % len(distinct)], path)
            link += 1
    open(done, "w").close()
    return root


def write_val(tree: str, distinct: list[str]) -> str:
    """`tree/val/ILSVRC2012_val_%08d.JPEG`, the 50,000 files of the bundled labels."""
    root = os.path.join(tree, "val")
    done = os.path.join(tree, ".val_complete")
    if os.path.exists(done):
        return root
    os.makedirs(root, exist_ok=True)
    for index in range(1, VAL_FILES + 1):
        path = os.path.join(root, f"ILSVRC2012_val_{index:08d}.JPEG")
        if not os.path.exists(path):
            os.link(distinct[index % len(distinct)], path)
    open(done, "w").close()
    return root


def write_model(path: str, width: float) -> None:
    from keras_vgg import models

    if not os.path.exists(path):
        models.build("A", width=width, classes=1000, fc_units=128).save(path)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def kvgg() -> list[str]:
    return [sys.executable, "-m", "keras_vgg.cli"]


def run_process(args: list[str], cwd: str) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, output) of a process run to its end."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        args, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = proc.stdout.read().decode("utf-8", "replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{output[-3000:]}")
    return wall, usage.ru_maxrss * 1024, output


# The bar after the first step: "1/STEPS ━━━..." (not "Epoch 1/74").
_FIRST_STEP = re.compile(rb"(?<![0-9])1/\d+ \xe2\x94\x81")
_STYLE = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")  # the bar's colours and cursor moves


def run_until_first_step(args: list[str], cwd: str, after: float, limit: float):
    """(seconds to the first step, peak RSS bytes) of `kvgg fit` on a pseudo-terminal."""
    leader, follower = pty.openpty()
    start = time.perf_counter()
    proc = subprocess.Popen(
        args, cwd=cwd, env=_env(), stdin=subprocess.DEVNULL, stdout=follower, stderr=follower
    )
    os.close(follower)
    seen, first = b"", None
    deadline = start + limit
    while time.perf_counter() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            if first is None and _FIRST_STEP.search(_STYLE.sub(b"", seen)):
                first = time.perf_counter() - start
                deadline = time.perf_counter() + after
        if proc.poll() is not None:
            break
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    _, _, usage = os.wait4(proc.pid, 0)
    os.close(leader)
    if first is None:
        raise RuntimeError(f"{' '.join(args)}: no first step seen:\n{seen[-3000:].decode()}")
    return first, usage.ru_maxrss * 1024


class _Reported(dict):
    def __init__(self, size):
        super().__init__()
        self.size = size

    def __setitem__(self, name, value):
        _report(self.size, name, *value)
        super().__setitem__(name, value)


def measure(size, train, val, model, work, args) -> dict[str, tuple[float, int]]:
    sets = [
        f"--set=data.root={train}",
        f"--set=data.val_root={val}",
        "--set=data.labels_file=imagenet-val",
        f"--set=model.width={args.width}",
        "--set=model.fc_units=128",
        f"--set=run.batch_size={args.batch}",
        f"--set=run.name=scale_{size}",
        "--set=run.precision=float32",
    ]
    recipe = os.path.join(REPO, args.recipe)
    out = _Reported(size)
    wall, rss, _ = run_process([*kvgg(), "fit", recipe, *sets, "--dry-run"], work)
    out["fit --dry-run"] = (wall, rss)
    shutil.rmtree(os.path.join(work, "runs"), ignore_errors=True)
    out["fit"] = run_until_first_step(
        [*kvgg(), "fit", recipe, *sets, "--overwrite"], work, args.after_first, args.limit_s
    )
    shutil.rmtree(os.path.join(work, "runs"), ignore_errors=True)
    wall, rss, _ = run_process(
        [*kvgg(), "evaluate", model, "--data", train, "--limit", "64", "--center-crop",
         "--scales", "256"],
        work,
    )  # fmt: skip
    out["evaluate --limit"] = (wall, rss)
    if size <= args.check_max:
        wall, rss, _ = run_process([*kvgg(), "data", "check", train], work)
        out["data check"] = (wall, rss)
    wall, rss, _ = run_process([*kvgg(), "data", "stats", train, "--sample", "1000"], work)
    out["data stats --sample"] = (wall, rss)
    return out


def _report(size: int, name: str, seconds: float, rss: int) -> None:
    print(
        f"{size} files, {name}: {seconds:.1f} s, {rss / 2**20:.0f} MiB", file=sys.stderr, flush=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="12000,128000,1281000", help="Training files.")
    parser.add_argument("--tree", default=None, help="Where to write the trees (kept).")
    parser.add_argument("--keep", action="store_true", help="Keep the trees afterwards.")
    parser.add_argument("--side", type=int, default=16, help="Side of the JPEGs in pixels.")
    parser.add_argument("--distinct", type=int, default=256, help="Different JPEG files.")
    parser.add_argument("--recipe", default="recipes/a_256.toml")
    parser.add_argument("--width", type=float, default=0.0625)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--after-first", type=float, default=5.0, help="Seconds after step 1.")
    parser.add_argument("--limit-s", type=float, default=900.0, help="Give up on a first step.")
    parser.add_argument(
        "--check-max", type=int, default=2_000_000, help="Skip `data check` above this size."
    )
    parser.add_argument("--write-only", action="store_true", help="Write the trees and stop.")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    tree = args.tree or tempfile.mkdtemp(prefix="kvgg-scale-")
    os.makedirs(tree, exist_ok=True)
    distinct = write_distinct(os.path.join(tree, "distinct"), args.distinct, args.side)
    val = write_val(tree, distinct)
    trains = {}
    for size in sizes:
        start = time.perf_counter()
        trains[size] = write_tree(tree, size, distinct)
        print(f"tree of {size} files: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.write_only:
        return
    model = os.path.join(tree, f"a_w{args.width}.keras")
    write_model(model, args.width)
    work = os.path.join(tree, "work")
    os.makedirs(work, exist_ok=True)
    results = {}
    try:
        for size in sizes:
            results[size] = measure(size, trains[size], val, model, work, args)
            print(f"measured {size} files: {results[size]}", file=sys.stderr, flush=True)
    finally:
        if not args.keep and args.tree is None:
            shutil.rmtree(tree, ignore_errors=True)
    base = sizes[0]
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); {args.recipe} at width {args.width}, "
          f"batch {args.batch}; {VAL_FILES} validation files")  # fmt: skip
    print("| command | training files | seconds | peak RSS (MiB) | RSS per file (B) |")
    print("|---|---:|---:|---:|---:|")
    for name in COMMANDS:
        for size in sizes:
            if name not in results[size]:
                continue
            seconds, rss = results[size][name]
            per_file = ""
            if size != base and name in results[base]:
                per_file = f"{(rss - results[base][name][1]) / (size - base):.0f}"
            label = f"{name} (to step 1)" if name == "fit" else name
            print(f"| {label} | {size:,} | {seconds:.1f} | {rss / 2**20:.0f} | {per_file} |")


if __name__ == "__main__":
    main()
