"""Nothing lost, ever: the hostile catalogue of issue 14 as tests.

One process per run directory (a real second process), every file written atomically (a
real file-size limit from the kernel stands in for a full disk: writes past it fail with
EFBIG, as they fail with ENOSPC on a full disk), strange files in image folders, labels out
of range, corrupt state, and one-line messages that name the file. The CLI's messages and
exit codes are checked in-process with click's runner; the lock and the full disk with real
`kvgg fit` processes.
"""

import contextlib
import json
import os
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ROOT, kvgg_batch
from data_images import jpeg, photo, truncated_jpeg, write, write_class_folders
from hostile import Case, check_outcome, snapshot
from PIL import Image

import keras_vgg
from keras_vgg import artifacts, evaluation, features, files, runs, training
from keras_vgg import recipe as recipe_lib
from keras_vgg.cli import main
from keras_vgg.data import check, decoding, sources
from keras_vgg.data import stats as stats_lib
from keras_vgg.record import ModelRecord, attach_record
from keras_vgg.weights.load import read_keras_model

RECIPE = """
[model]
config = "A"
width = 0.0625
fc_units = 16
init = "glorot"

[data]
root = "{root}/train"
val_root = "{root}/val"
train_scale = 36
crop_size = 32

[schedule]
epochs = {epochs}

[run]
name = "{name}"
seed = 0
precision = "float32"
batch_size = 8
runs_dir = "{root}/runs"
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    write_class_folders(root / "train", per_class=8)
    write_class_folders(root / "val", per_class=2)
    return root


def recipe_file(workdir, name, epochs=2, **data):
    """A tiny recipe; `data` replaces keys of its [data] section."""
    text = RECIPE.format(root=workdir, name=name, epochs=epochs)
    for key, value in data.items():
        line = f"{key} = {json.dumps(value)}"
        if f"\n{key} = " in text:
            text = "\n".join(line if t.startswith(f"{key} = ") else t for t in text.split("\n"))
        else:
            text = text.replace("[data]\n", f"[data]\n{line}\n")
    path = workdir / f"{name}.toml"
    path.write_text(text)
    return path


def invoke(*args):
    """`kvgg ARGS` in this process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@contextlib.contextmanager
def file_size_limit(size):
    """Files written by this process cannot grow past `size` bytes (RLIMIT_FSIZE).

    The kernel fails such a write with EFBIG (Python ignores SIGXFSZ), just as a full disk
    fails it with ENOSPC: the same OSError path, without root or a small file system.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def tree(folder):
    return sorted(p.name for p in folder.iterdir())


# === Atomic writes ===


def test_every_writer_keeps_the_previous_file_when_the_disk_is_full(tmp_path):
    """Each writer: a full write, then one that fails: the old bytes stay, no partial file."""
    stats = stats_lib.IMAGENET_STATS
    report = check.CheckReport(3, (check.FileReport("a.png", "unreadable", ("x" * 2000,)),))
    writers = {
        "stats.json": lambda p: stats.to_json(p),
        "report.txt": lambda p: report.write(p),
        "metrics.json": lambda p: runs.write_metrics(p.parent, {"x": "y" * 3000}),
    }
    for name, write_file in writers.items():
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        path = folder / name
        write_file(path)
        before = path.read_bytes()
        with file_size_limit(len(before) // 2), pytest.raises(files.WriteError) as info:
            write_file(path)
        message = str(info.value)
        assert message == f"could not write {path}: File too large; the previous file is kept"
        assert info.value.filename == str(path)
        assert path.read_bytes() == before, name
        assert tree(folder) == [name], name


def test_weights_files_are_written_through_a_partial_file(tmp_path):
    """`.weights.h5` writers (HDF5 crashes on a write that fails mid-file, so the failure
    here is the partial file's creation: a name that fits, whose partial name is longer
    than a file name may be): the old file stays, the error names it."""
    model = keras_vgg.build("A", width=1 / 16, fc_units=8, classes=3, input_shape=(32, 32, 3))
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    attach_record(plain, ModelRecord())
    names = []
    for name, write_file in {
        "vgg.weights.h5": model.save_weights,
        "plain.weights.h5": lambda p: keras_vgg.weights.save_weights(plain, p),
    }.items():
        path = tmp_path / ("w" * (250 - len(name)) + name)
        write_file(tmp_path / name)
        os.rename(tmp_path / name, path)
        before = path.read_bytes()
        with pytest.raises(files.WriteError, match=f"^could not write {path}: .*; the previous"):
            write_file(path)
        assert path.read_bytes() == before
        names.append(path.name)
    assert tree(tmp_path) == sorted(names)


def test_write_error_is_the_same_after_pickling(tmp_path):
    """A Ray worker's `WriteError` reaches the driver pickled, where the file may not exist:
    its message, file, number and reason are the ones the worker made."""
    import pickle

    (tmp_path / "kept.npz").write_bytes(b"x")
    for name, kept in (("kept.npz", "the previous file is kept"), ("new.npz", "nothing")):
        error = files.WriteError(str(tmp_path / name), "No space left on device", 28)
        (tmp_path / "kept.npz").unlink(missing_ok=True)  # gone on the receiving side
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is files.WriteError and isinstance(copy, OSError)
        assert str(copy) == str(error) and kept in str(copy)
        assert (copy.filename, copy.errno, copy.reason) == (str(tmp_path / name), 28, error.reason)


def test_partial_names_keep_every_suffix_and_name_their_owner():
    owner = rf"{os.getpid()}-[0-9a-f]{{6}}\.[0-9a-f]{{8}}"
    weights = files.partial_path("a/x.weights.h5")
    assert re.fullmatch(rf"a/\.x\.{owner}\.partial\.weights\.h5", weights), weights
    assert re.fullmatch(rf"\.last\.{owner}\.partial\.keras", files.partial_path("last.keras"))
    assert re.fullmatch(rf"\.served\.{owner}\.partial", files.partial_path(".served"))
    # Unique to each call, so two threads of one process never share one either.
    assert len({files.partial_path("last.keras") for _ in range(100)}) == 100


# === One process per run directory; a full disk during fit ===


def test_one_process_per_run_and_a_full_disk_during_fit_is_one_line(workdir):
    """A real `kvgg fit` whose disk fills at its first checkpoint: while it trains, a second
    fit on its run directory is refused in one line; it then stops in one line, exit 1, no
    partial file, no traceback; the lock it leaves is free."""
    path = recipe_file(workdir, "full")
    run_dir = workdir / "runs" / "full"

    def full_disk():  # last.keras (about 60 kB at this width) cannot be written
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, resource.RLIM_INFINITY))

    first = subprocess.Popen(
        [sys.executable, "-m", "keras_vgg.cli", "fit", str(path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=full_disk,
    )
    try:
        deadline = time.monotonic() + 240
        holder = None
        while holder is None or holder.get("pid") != first.pid:
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
            with contextlib.suppress(OSError, ValueError):
                holder = json.loads((run_dir / runs.LOCK).read_text())
        code, out, err = invoke("fit", path, "--set", "run.seed=1")
        assert code == 2, err
        assert err == (
            f"kvgg: error: {run_dir}: in use by process {first.pid} on {socket.gethostname()} "
            f"({holder['command']}); wait for it to end, or pick another run with "
            "--set run.name=NEW\n"
        )
        with pytest.raises(runs.RunInUse):
            training.fit(recipe_lib.load_recipe(path, ["run.seed=1"]))
        _, stderr = first.communicate(timeout=240)
    finally:
        first.kill()
    assert first.returncode == 1, stderr
    assert "Traceback" not in stderr and "During handling" not in stderr
    (line,) = [t for t in stderr.splitlines() if t.startswith("kvgg: error:")]
    assert line.startswith(f"kvgg: error: could not write the files of epoch 1 ({run_dir}/")
    assert "File too large" in line and "no epoch's state had been written yet" in line
    assert not [name for name in tree(run_dir) if ".partial" in name]
    assert not (run_dir / runs.STATE).exists()
    # The lock file still names the process that ended, and is free.
    assert json.loads((run_dir / runs.LOCK).read_text())["pid"] == first.pid
    with runs.lock_run(run_dir):
        assert json.loads((run_dir / runs.LOCK).read_text())["pid"] == os.getpid()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # only os-level calls between fork and the kill
        with runs.lock_run(run_dir):
            os.write(ready_w, b"locked")
            time.sleep(120)
        os._exit(0)
    try:
        # Never wait forever on the child (a fork of a threaded process could hang).
        assert select.select([ready_r], [], [], 60)[0], "the child did not take the lock"
        assert os.read(ready_r, 6) == b"locked"
        with pytest.raises(runs.RunInUse, match=f"in use by process {child} on "):
            with runs.lock_run(run_dir):
                pass
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    assert json.loads((run_dir / runs.LOCK).read_text())["pid"] == child  # a stale note
    with runs.lock_run(run_dir):
        assert json.loads((run_dir / runs.LOCK).read_text())["pid"] == os.getpid()
        with pytest.raises(runs.RunInUse, match=f"in use by process {os.getpid()} "):
            with runs.lock_run(run_dir):
                pass
    with runs.lock_run(run_dir):  # released on exit
        pass


# === Strange files in image folders ===


@pytest.fixture
def strange_folder(tmp_path):
    """A class tree whose class folder holds every kind of entry that is not an image file."""
    folder = tmp_path / "data" / "cat"
    good = write(folder / "good.jpg", jpeg(40, 48))
    os.symlink("loop.png", folder / "loop.png")  # points to itself
    os.symlink("nowhere.png", folder / "dangling.png")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(folder / "socket.png"))
    os.mkfifo(folder / "fifo.png")  # reading it would block: never listed
    write(folder / ".good.partial.jpg", jpeg(40, 48))  # an interrupted write's leftover
    write(folder / "._good.jpg", b"AppleDouble")
    return tmp_path / "data", good


def test_image_folders_skip_and_name_what_is_not_a_readable_file(strange_folder):
    root, good = strange_folder
    source = sources.open_source(root)
    folder = os.path.join(root, "cat")
    listed = ["dangling.png", "good.jpg", "loop.png", "socket.png"]
    assert source.files == tuple(os.path.join(folder, n) for n in listed)

    bad = decoding.BadFileLog()
    images = list(decoding.decoded_images(source, bad_files=bad).as_numpy_iterator())
    assert len(images) == 1 and images[0].shape == (40, 48, 3)
    assert sorted(bad.names) == [os.path.join(folder, n) for n in listed if n != "good.jpg"]

    report = check.check_source(source)
    reasons = {os.path.basename(r.path): (r.status, r.problems) for r in report.reports}
    assert reasons == {
        "dangling.png": ("unreadable", ("cannot read file: No such file or directory",)),
        "loop.png": ("unreadable", ("cannot read file: Too many levels of symbolic links",)),
        "socket.png": ("unreadable", ("cannot read file: No such device or address",)),
    }


def test_cli_names_strange_files_and_refuses_an_empty_predict_folder(strange_folder, tmp_path):
    root, good = strange_folder
    code, out, err = invoke("data", "check", root)
    assert code == 1, err
    assert "Traceback" not in out + err
    assert f"unreadable: {root}/cat/loop.png: cannot read file: Too many levels" in out
    assert out.strip().endswith("4 files: 1 ok, 0 unusual, 3 unreadable")
    # The report cannot be written (a full disk): one line, exit 1, the old report kept.
    report = tmp_path / "report.txt"
    report.write_text("the report of yesterday\n")
    code, out, err = invoke("data", "check", root, "--output", report)
    assert code == 2 and "already exists" in err  # replaced only when asked
    with file_size_limit(20):
        code, out, err = invoke("data", "check", root, "--output", report, "--overwrite")
    assert code == 1
    assert err.splitlines()[-1] == (
        f"kvgg: error: could not write {report}: File too large; the previous file is kept"
    )
    assert report.read_text() == "the report of yesterday\n"

    model = keras_vgg.build("A", width=1 / 16, fc_units=8, classes=3, input_shape=(32, 32, 3))
    model_path = tmp_path / "m.keras"
    model.save(model_path)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images")
    code, out, err = invoke("predict", "--model", model_path, empty)
    assert code == 2 and out == ""
    assert err == (
        f"kvgg: error: {empty}: no image files (.jpg/.jpeg/.png/.bmp/.gif) in this folder or "
        "below\n"
    )
    code, out, err = invoke("predict", "--model", model_path, root)
    assert code == 1, err  # the three unreadable files are named, the good one predicted
    assert out.startswith(f"{good}\n")
    assert f"kvgg: skipped unreadable image: {root}/cat/loop.png: cannot read file" in err


# === Labels, data and state checked before the first step (also by --dry-run) ===


def test_dry_run_makes_every_check_the_run_makes(workdir, tmp_path):
    flat = tmp_path / "flat"
    for i in range(3):
        write(flat / f"{i:02d}.png", b"")
    labels = tmp_path / "labels.txt"
    labels.write_text("0\n17\n2\n")
    bad_label = recipe_file(workdir, "bad_label", val_root=str(flat), labels_file=str(labels))
    no_root = recipe_file(workdir, "no_root", root=str(tmp_path / "absent"))
    no_stats = recipe_file(workdir, "no_stats", stats=str(tmp_path / "stats.json"))
    more_classes = tmp_path / "val3"
    write_class_folders(more_classes, classes=4, per_class=1)
    other_val = recipe_file(workdir, "other_val", val_root=str(more_classes))
    good = recipe_file(workdir, "good")
    state_dir = workdir / "runs" / "corrupt"
    state_dir.mkdir(parents=True)
    runs.write_state(state_dir / runs.STATE, {"model/0": np.zeros(1000)}, {"epoch": 1})
    data = (state_dir / runs.STATE).read_bytes()
    (state_dir / runs.STATE).write_bytes(data[: len(data) // 2])
    corrupt = recipe_file(workdir, "corrupt")

    expected = {
        bad_label: f"{bad_label}: data.labels_file: {labels}: label 17 of 01.png is out of "
        f"range for the 3 classes of {workdir}/train (0 to 2)",
        no_root: f"{no_root}: data.root: folder not found: {tmp_path}/absent",
        no_stats: f"{no_stats}: data.stats: file not found: {tmp_path}/stats.json",
        other_val: f"{other_val}: data.val_root: {more_classes} has 4 class folders, "
        f"{workdir}/train has 3, and they differ (class3): validation labels would be wrong",
        good: None,
    }
    for path, problem in expected.items():
        assert training.plan_fit(recipe_lib.load_recipe(path)).problem == problem
    with pytest.raises(ValueError, match="label 17 of 01.png is out of range"):
        training.fit(recipe_lib.load_recipe(bad_label))
    assert not (workdir / "runs" / "bad_label" / runs.STATE).exists()

    code, out, err = invoke("fit", "--dry-run", *expected)
    assert code == 2
    assert err.splitlines() == [f"kvgg: error: {p}" for p in expected.values() if p]
    assert out.count("checks:             passed") == 1
    # A truncated state.npz: the file is named, nothing is trained or overwritten.
    code, out, err = invoke("fit", "--dry-run", corrupt)
    assert code == 2 and out == ""
    assert err.startswith(f"kvgg: error: {state_dir / runs.STATE}: not a readable run state (")
    assert err.rstrip().endswith("pass --overwrite to start again") and err.count("\n") == 1
    assert (state_dir / runs.STATE).read_bytes() == data[: len(data) // 2]


# === Messages that name the file ===


class _Code:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_files_that_hold_code_or_are_not_what_they_say_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = tmp_path / "text.keras"
    text.write_text("not a model")
    inp = keras.Input((4,))
    lam = tmp_path / "lambda.keras"
    keras.Model(inp, keras.layers.Lambda(lambda x: x * 2)(inp)).save(lam)
    recipe = tmp_path / "latin1.toml"
    recipe.write_bytes('[data]\nroot = "caf\xe9"\n'.encode("latin-1"))

    with pytest.raises(ValueError) as info:
        read_keras_model(str(text))
    assert str(info.value) == (
        f"{text}: not a .keras model (not a zip archive: truncated, or another kind of file)"
    )
    with pytest.raises(ValueError) as info:
        evaluation.load_model(lam)
    assert str(info.value) == (
        f"{lam}: holds Python code (a Lambda layer's function); refused: a model file must "
        "not run code when it is loaded"
    )
    with pytest.raises(ValueError) as info:
        recipe_lib.load_recipe(recipe)
    assert (
        str(info.value) == f"{recipe}: not UTF-8 text (byte 18: b'\\xe9'); a TOML recipe is UTF-8"
    )

    torch = pytest.importorskip("torch")
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.weight": _Code()}, evil)
    with pytest.raises(ValueError) as info:
        keras_vgg.model_from_weights(str(evil), "A")
    assert str(info.value) == (
        f"{evil}: holds code or objects that are not plain tensors; refused: a weights file "
        "must not run code when it is loaded"
    )
    assert not (tmp_path / "pwned").exists()


def test_data_check_speaks_of_files_not_tensorflow_nodes(tmp_path):
    png = tmp_path / "ok.png"
    Image.fromarray(photo(40, 40)).save(png)
    data = bytearray(png.read_bytes())
    data[100:160] = b"x" * 60  # a real PNG, damaged in its image data
    corrupt = write(tmp_path / "corrupt.png", bytes(data))
    report = check.inspect_file(corrupt)
    assert report.status == "unreadable"
    assert report.problems == (f"corrupt PNG: Invalid PNG data, size {len(data)}",)

    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, "rotate 90 degrees clockwise to view"
    sideways = tmp_path / "sideways.jpg"
    Image.fromarray(photo(30, 50)).save(sideways, exif=exif.tobytes())
    report = check.inspect_file(sideways)
    assert report.status == "unusual"
    assert report.problems == ("EXIF orientation 6 ignored (pixels used as stored)",)
    assert check.inspect_file(write(tmp_path / "t.jpg", truncated_jpeg())).status == "unreadable"


# === The hostile catalogue (docs/safety.md lists every row) ===
#
# One row per hostile file or command (tests/hostile.py: `Case`). Each section below adds
# its rows to CATALOGUE; the rows without `alone` / `max_rss_gb` run in one real `kvgg`
# process (`kvgg_batch`), the others each in a fresh process of their own.

CATALOGUE: list[Case] = []


@pytest.fixture(scope="module")
def catalogue_run(tmp_path_factory):
    """Builds every batched row in its own folder, runs them in one process, snapshots."""
    root = tmp_path_factory.mktemp("catalogue")
    rows = [c for c in CATALOGUE if not c.alone and c.max_rss_gb is None]
    prepared = []
    for case in rows:
        folder = root / case.id
        folder.mkdir()
        args = [str(a) for a in case.build(folder)]
        prepared.append((case, folder, args, snapshot(folder, case.kept)))
    done = (
        kvgg_batch(*[args for _, _, args, _ in prepared], timeout=1200, cwd=root)
        if prepared
        else []
    )
    return {
        case.id: (folder, before, r)
        for (case, folder, _, before), r in zip(prepared, done, strict=True)
    }


def _run_alone(case, folder):
    """The row's command in a fresh process; its peak resident memory in GiB."""
    args = [str(a) for a in case.build(folder)]
    before = snapshot(folder, case.kept)
    code = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-m', 'keras_vgg.cli', *sys.argv[1:]], "
        "capture_output=True, text=True)\n"
        "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr)\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "sys.stderr.write(f'\\nRSS_KB {rss}\\n'); sys.exit(p.returncode)\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=folder,
    )
    stderr, _, rss = process.stderr.rpartition("RSS_KB ")
    return before, process.returncode, stderr, int(rss) / 2**20


def pytest_generate_tests(metafunc):
    # At collection, once the whole module (every section's rows) has been read.
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", CATALOGUE, ids=[c.id for c in CATALOGUE])


def test_hostile_catalogue(case, catalogue_run, tmp_path):
    if case.alone or case.max_rss_gb is not None:
        before, returncode, stderr, rss_gb = _run_alone(case, tmp_path)
        check_outcome(case, tmp_path, before, returncode, stderr)
        if case.max_rss_gb is not None:
            assert rss_gb < case.max_rss_gb, (case.id, f"peak memory {rss_gb:.2f} GiB")
        return
    folder, before, result = catalogue_run[case.id]
    check_outcome(case, folder, before, result.returncode, result.stderr)


# --- A first row: the catalogue's own check (an unknown model file is one line) ---


def _missing_model(folder):
    (folder / "x.png").write_bytes(b"an image name: checked for existence before the model")
    return ["predict", "--model", folder / "nothing.keras", folder / "x.png"]


CATALOGUE.append(Case("missing-model", _missing_model, 2, r"^kvgg: error: .*nothing\.keras"))


# --- Two processes, one output (unique temporary names, leftovers of dead writers) ---
#
# Real processes aimed at one output at the same time. Every temporary file or folder is
# named for its process (`files.partial_path`): the later rename wins whole, no run mixes
# another's rows or deletes another's folder.

_WRITER = """
import os, sys, time
from keras_vgg import files
target, tag, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
while not os.path.exists(go):
    time.sleep(0.001)
failed = 0
for i in range(count):
    try:
        files.atomic_text(target, f"{tag} {i}\\n" + tag * 65536)
    except OSError as exc:
        failed += 1
        print(exc, file=sys.stderr)
sys.exit(1 if failed else 0)
"""


def _python(code, *args, **kwargs):
    """A real Python process on this checkout's code, running `code` with `args`."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _start_kvgg(*args, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "keras_vgg.cli", *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def _kvgg_at_once(*invocations, cwd):
    """Starts one real `kvgg` process per invocation, all at once; waits for them all."""
    processes = [_start_kvgg(*args, cwd=cwd) for args in invocations]
    try:
        return [(p, *p.communicate(timeout=300)) for p in processes]
    finally:
        for p in processes:
            p.kill()


def _first_to_map(processes, suffix, timeout=300):
    """The first of `processes` to memory-map a file whose name ends with `suffix`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in processes:
            with contextlib.suppress(OSError):
                with open(f"/proc/{p.pid}/maps") as maps:
                    if any(line.rstrip().endswith(suffix) for line in maps):
                        return p
        assert all(p.poll() is None for p in processes), [p.stderr.read() for p in processes]
        time.sleep(0.01)
    raise AssertionError(f"no process mapped a *{suffix} file in {timeout} s")


def _one_line_error(stderr):
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("kvgg: error:")]
    return len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in stderr


def test_two_processes_write_one_file_200_times_each(tmp_path):
    """Two writers, 200 atomic writes each of 64 KiB on one file, and a reader reading all
    the while: never a failed write; every read is one writer's whole content."""
    target, go = tmp_path / "shared.txt", tmp_path / "go"
    writers = [_python(_WRITER, target, tag, 200, go) for tag in "AB"]
    seen = set()
    try:
        go.touch()
        while any(w.poll() is None for w in writers) or not seen:
            try:
                text = target.read_text()
            except FileNotFoundError:
                assert not seen, "the file vanished between two writes"
                continue
            head, _, body = text.partition("\n")
            tag, _, index = head.partition(" ")
            assert tag in ("A", "B") and body == tag * 65536, (head, len(body), body[:20])
            seen.add((tag, int(index)))
        errors = [w.communicate(timeout=60)[1] for w in writers]
    finally:
        for w in writers:
            w.kill()
    assert [w.returncode for w in writers] == [0, 0], errors
    assert len(seen) > 10  # the reader did read while they wrote
    assert tree(tmp_path) == ["go", "shared.txt"]  # no partial file left


_OWNER = """
import os, sys
from keras_vgg import files
target, served = sys.argv[1], sys.argv[2]
partial = files.partial_path(target)
open(partial, "w").close()
folder = files.partial_path(served)
os.mkdir(folder)
open(os.path.join(folder, "saved_model.pb"), "w").close()
print(partial, folder, sep="\\n", flush=True)
sys.stdin.read()  # lives until its stdin closes
"""


def test_a_dead_writers_leftovers_are_removed_and_a_live_ones_kept(tmp_path):
    target, served = tmp_path / "x.keras", tmp_path / "served"
    owners = [
        _python(_OWNER, target, served, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    dead, live = owners
    try:
        dead_file, dead_folder = (dead.stdout.readline().strip() for _ in range(2))
        live_file, live_folder = (live.stdout.readline().strip() for _ in range(2))
        dead.kill()  # SIGKILL before its rename
        dead.wait(timeout=60)
        # Not leftovers of this file's dead writers: another host's (its pid means nothing
        # here), a name that only looks alike, other files, a dead writer's of another file.
        name = os.path.basename(dead_file)
        host = re.search(r"-([0-9a-f]{6})\.", name)[1]
        other_host = name.replace(f"-{host}.", f"-{'0' if host[0] != '0' else '1'}{host[1:]}.")
        others = [other_host, ".x.partial.keras", "x.keras.bak", name.replace(".x.", ".y.", 1)]
        for other in others:
            (tmp_path / other).touch()
        files.atomic_text(target, "new")
        assert target.read_text() == "new"
        assert not os.path.exists(dead_file)
        assert os.path.exists(live_file) and all((tmp_path / p).exists() for p in others)
        # Folders (exported artifacts) likewise, whole.
        assert files.remove_leftovers(served) == [dead_folder]
        assert os.path.isdir(live_folder) and not os.path.exists(dead_folder)
        # Once its owner is gone, the live writer's leftovers go too.
        live.communicate(timeout=60)
        files.atomic_text(target, "newer")
        assert files.remove_leftovers(served) == [live_folder]
    finally:
        for owner in owners:
            owner.kill()
    assert tree(tmp_path) == sorted([*others, "x.keras"])


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two tiny nets of different weights as `.keras` files, and 30 small images."""
    folder = tmp_path_factory.mktemp("two_models")
    for seed, name in enumerate("ab"):
        keras.utils.set_random_seed(seed)
        model = keras_vgg.build("A", width=0.125, fc_units=16, classes=3, input_shape=(32, 32, 3))
        model.save(folder / f"{name}.keras")
    # Enough images that a run is still streaming its rows when it is stopped.
    write_class_folders(folder / "images", classes=3, per_class=10, size=32)
    return folder


# The two runs of `kvgg features`: other models, other descriptor sizes (other scratch
# file sizes: a shared one would be cut under the other run, its "Bus error").
_FEATURE_RUNS = {"a": (32, 40), "b": (40,)}


def test_two_kvgg_features_to_one_output(two_models, tmp_path):
    """Two real `kvgg features --overwrite` runs to one `-o`: the first to stream its rows
    is stopped (SIGSTOP) while the other runs whole, then goes on. The file holds exactly
    the later run's rows; never a Bus error, never a scratch file left."""
    out = tmp_path / "f.npz"
    processes = {
        name: _start_kvgg(
            *("features", two_models / f"{name}.keras", "--data", two_models / "images"),
            *("--scales", ",".join(map(str, scales)), "--batch-size", "1", "-o", out),
            "--overwrite",
            cwd=tmp_path,
        )
        for name, scales in _FEATURE_RUNS.items()
    }
    try:
        first = _first_to_map(list(processes.values()), "descriptors.npy")
        first.send_signal(signal.SIGSTOP)
        (other,) = [p for p in processes.values() if p is not first]
        other_err = other.communicate(timeout=300)[1]
        first.send_signal(signal.SIGCONT)
        first_err = first.communicate(timeout=300)[1]
    finally:
        for p in processes.values():
            p.kill()
    assert (first.returncode, other.returncode) == (0, 0), (first_err[-3000:], other_err[-3000:])
    stored = features.FeatureSet.load(out)
    (later,) = [name for name, p in processes.items() if p is first]
    assert stored.meta["models"] == [later]
    alone = features.extract_features(
        two_models / f"{later}.keras",
        two_models / "images",
        tmp_path / "alone.npz",
        scales=_FEATURE_RUNS[later],
        batch_size=1,
    )
    assert stored.meta == alone.meta
    np.testing.assert_allclose(stored.descriptors, alone.descriptors, rtol=1e-5, atol=1e-6)
    assert tree(tmp_path) == ["alone.npz", "f.npz"]


def test_two_kvgg_exports_to_one_destination(two_models, tmp_path):
    """Two real `kvgg export` runs to one destination: the first is stopped (SIGSTOP) once
    its temporary folder exists, the second runs whole, then the first goes on. The second's
    artifact stays, whole; the first exits 2 in one line saying the destination now exists
    and leaves nothing."""
    out = tmp_path / "served"
    args = ("export", two_models / "a.keras", out, "--format", "savedmodel")
    first = _start_kvgg(*args, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not [n for n in os.listdir(tmp_path) if n.startswith(".served.")]:
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)
        second = _start_kvgg(*args, cwd=tmp_path)
        second_err = second.communicate(timeout=300)[1]
        first.send_signal(signal.SIGCONT)
        first_err = first.communicate(timeout=300)[1]
    finally:
        first.kill()
    assert second.returncode == 0, second_err[-3000:]
    assert first.returncode == 2 and _one_line_error(first_err), first_err[-3000:]
    assert f"{out}: already exists (written by another process while this export" in first_err
    assert tree(tmp_path) == ["served"]
    info = artifacts.read_export_info(out)
    assert info.format == "savedmodel" and info.class_names == ("0", "1", "2")
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    posteriors = artifacts.open_runner(out)(images)
    np.testing.assert_allclose(np.sum(posteriors, axis=-1), 1, rtol=1e-5)


# --- Bounded memory (keras_vgg/limits.py: pixels, scales, counts, .npz and JSON sizes) ---
#
# Hostile files made cheaply with real bytes: a PNG whose IHDR declares 20000 x 20000 pixels
# (1-bit rows of zeros, 49 kB; decoded as RGB it is 1.2 GB), a .npz whose deflated member
# declares 4000 MiB of float32 (4 MB on disk), JSON nested 200,000 deep. The memory rows run
# alone, their peak resident memory bounded (issue 31: no command over 2 GB at width 1/8).

_BOMB_SIDE = 20000


def png_bomb(path, width=_BOMB_SIDE, height=_BOMB_SIDE, rows=True):
    """A 1-bit greyscale PNG of zeros declaring `width` x `height`, written by hand (its
    IDAT holds every row, deflated: a valid image; or, with `rows=False`, none)."""
    import struct
    import zlib

    def chunk(kind, data):
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    idat = b""
    if rows:
        block = row * 1000
        idat = b"".join(compressor.compress(block) for _ in range(height // 1000))
        idat += compressor.compress(row * (height % 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
    return write(path, png + chunk(b"IEND", b""))


def npz_bomb(path, name="descriptors", mib=4000, **arrays):
    """A .npz whose member `name`.npy declares `mib` MiB of float32 zeros, written by hand:
    one deflated MiB of zeros repeated (a valid stream), 1 kB per MiB on disk; then
    `arrays`, appended by numpy. The bomb's CRC is not computed (a reader that trusts the
    headers has spent the memory before it gets there)."""
    import io
    import struct
    import zipfile
    import zlib

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (mib, 2**18)}
    )
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = compressor.compress(header.getvalue()) + compressor.flush(zlib.Z_FULL_FLUSH)
    unit = compressor.compress(bytes(2**20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    data = start + unit * mib + compressor.flush()
    size, member = len(header.getvalue()) + mib * 2**20, f"{name}.npy".encode()
    fields = (8, 0, 0, 0, len(data), size, len(member))  # deflate, no time, CRC 0
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, *fields, 0) + member
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, *fields, 0, 0, 0, 0, 0, 0)
    central += member
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local + data), 0)
    write(path, local + data + central + end)
    with zipfile.ZipFile(path, "a") as archive:
        for key, value in arrays.items():
            with archive.open(f"{key}.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(value))
    return str(path)


def json_bomb(path, depth=200_000):
    return write(path, b"[" * depth + b"]" * depth)


_TINY_MODEL: dict[str, bytes] = {}


def _tiny_model(folder):
    """A width-1/8 configuration A for 32-pixel crops (3 classes) as `folder`/m.keras; built
    once per test session, copied."""
    if not _TINY_MODEL:
        keras.utils.set_random_seed(0)
        model = keras_vgg.build("A", width=0.125, fc_units=16, classes=3, input_shape=(32, 32, 3))
        model.save(folder / "built.keras")
        _TINY_MODEL["bytes"] = (folder / "built.keras").read_bytes()
        (folder / "built.keras").unlink()
    path = folder / "m.keras"
    path.write_bytes(_TINY_MODEL["bytes"])
    return path


def _tree_with_bomb(folder):
    """3 classes of 4 images (40 pixels) and the PNG bomb in class0."""
    write_class_folders(folder / "images", classes=3, per_class=4, size=40)
    png_bomb(folder / "images" / "class0" / "bomb.png")
    return folder / "images"


_TOO_LARGE = (
    rf"too large: {_BOMB_SIDE} x {_BOMB_SIDE} = {_BOMB_SIDE**2} pixels, over the limit of "
    r"100000000 \(raise it with KVGG_MAX_PIXELS=N or data\.max_pixels in a recipe\)"
)


def _bomb_predict(folder):
    images = _tree_with_bomb(folder)
    return ["predict", "--model", _tiny_model(folder), images / "class0" / "bomb.png", images]


def _bomb_evaluate(folder):
    return ["evaluate", _tiny_model(folder), "--data", _tree_with_bomb(folder), "--scales", 32]


def _bomb_features(folder):
    data = _tree_with_bomb(folder)
    return ["features", _tiny_model(folder), "--data", data, "--scales", "32,40", "-o", "f.npz"]


def _bomb_fit(folder):
    _tree_with_bomb(folder)
    write_class_folders(folder / "val", classes=3, per_class=1, size=40)
    text = RECIPE.format(root=folder, name="bomb", epochs=1).replace("0.0625", "0.125")
    (folder / "bomb.toml").write_text(text.replace(f"{folder}/train", f"{folder}/images"))
    return ["fit", folder / "bomb.toml"]


def _bomb_data_check(folder):
    return ["data", "check", _tree_with_bomb(folder), "--output", "report.txt"]


_MEMORY = dict(max_rss_gb=2.0, kept=("images",))
CATALOGUE += [
    Case(
        "png-bomb-predict",
        _bomb_predict,
        1,
        rf"^kvgg: skipped unreadable image: .*bomb\.png: {_TOO_LARGE}$",
        **_MEMORY,
    ),
    Case("png-bomb-evaluate", _bomb_evaluate, 0, r"^1 unreadable images skipped$", **_MEMORY),
    Case("png-bomb-features", _bomb_features, 0, r"^wrote f\.npz: 12 images, ", **_MEMORY),
    Case(
        "png-bomb-fit",
        _bomb_fit,
        0,
        rf"^skipped unreadable image .*bomb\.png \({_TOO_LARGE}\)$",
        **_MEMORY,
    ),
    Case("png-bomb-data-check", _bomb_data_check, 1, r"", **_MEMORY),
]


def _predict_scales(q):
    def build(folder):
        image = write(folder / "x.jpg", jpeg(40, 40))
        return ["predict", "--model", _tiny_model(folder), image, "--scales", q]

    return build


def _export_scale(q):
    def build(folder):
        return ["export", _tiny_model(folder), folder / "served", "--scale", q]

    return build


def _features_scales(folder):
    data = _tree_with_bomb(folder)
    return ["features", _tiny_model(folder), "--data", data, "--scales", 3000, "-o", "f.npz"]


def _features_file(folder):
    """A real features file of 12 images in 3 classes."""
    rng = np.random.default_rng(0)
    descriptors = rng.normal(size=(12, 8)).astype(np.float32)
    features.FeatureSet(
        descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True),
        tuple(f"c{i % 3}/{i}.png" for i in range(12)),
        np.arange(12) % 3,
        ("a", "b", "c"),
        {"models": ["m"]},
    ).save(folder / "f.npz")
    return folder / "f.npz"


def _transfer_splits(folder):
    return ["transfer", _features_file(folder), "--splits", 10**9, "--train-per-class", 2]


def _evaluate_option(option, value):
    def build(folder):
        data = _tree_with_bomb(folder)
        return ["evaluate", _tiny_model(folder), "--data", data, "--scales", 32, option, value]

    return build


_SCALE_OVER = r"is over the largest scale, 2048 \(raise it with KVGG_MAX_SCALE=N\)"
CATALOGUE += [
    Case("predict-scales-100000", _predict_scales(100000), 2, rf"--scales: 100000 {_SCALE_OVER}"),
    Case("predict-scales-20000", _predict_scales(20000), 2, rf"--scales: 20000 {_SCALE_OVER}"),
    Case(
        "export-scale-20000",
        _export_scale(20000),
        2,
        rf"scale: 20000 {_SCALE_OVER}",
        absent=("served",),
    ),
    Case(
        "export-scale-10",
        _export_scale(10),
        2,
        r"^kvgg: error: scale: 10 is below the model's crop size 32 ",
        absent=("served",),
    ),
    Case(
        "features-scales-3000",
        _features_scales,
        2,
        rf"--scales: 3000 {_SCALE_OVER}",
        absent=("f.npz",),
    ),
    Case(
        "transfer-splits-1e9",
        _transfer_splits,
        2,
        r"^kvgg: error: splits must be from 1 to 1000\. Received: 1000000000$",
        kept=("f.npz",),
    ),
    Case(
        "evaluate-batch-size-1e8",
        _evaluate_option("--batch-size", 10**8),
        2,
        r"^kvgg: error: --batch-size must be from 1 to 4096 \(raise it with KVGG_MAX_BATCH_SIZE",
    ),
    Case(
        "evaluate-limit-1e30",
        _evaluate_option("--limit", 10**30),
        2,
        r"^kvgg: error: --limit must be from 1 to 2147483647\. Received: 10{30}$",
    ),
]


def _npz_transfer(folder):
    """The bomb as the descriptors of a features file whose other fields are all there."""
    fields = dict(files=np.array(["a.png"] * 4), labels=np.arange(4) % 2)
    fields |= dict(class_names=np.array(["a", "b"]), meta=np.array(json.dumps({"models": []})))
    return ["transfer", npz_bomb(folder / "bomb.npz", **fields)]


def _npz_convert(folder):
    source = npz_bomb(folder / "bomb.npz", name="block1_conv1/kernel")
    return ["convert", source, folder / "out.weights.h5", "--config", "A"]


def _garbage_transfer(folder):
    return ["transfer", write(folder / "garbage.npz", b"not an archive, a note " * 40)]


def _objects_transfer(folder):
    np.savez(folder / "objects.npz", descriptors=np.array([{"a": 1}], dtype=object))
    return ["transfer", folder / "objects.npz"]


_NPZ_BOMB = (
    r"bomb\.npz: its arrays declare 4194304\d{3} bytes in a file of \d+, over 100 times its "
    r"size \(a compression bomb; raise it with KVGG_MAX_NPZ_RATIO=N\)$"
)
CATALOGUE += [
    Case("npz-bomb-transfer", _npz_transfer, 2, _NPZ_BOMB, kept=("bomb.npz",), max_rss_gb=2.0),
    Case("npz-bomb-convert", _npz_convert, 2, _NPZ_BOMB, absent=("out.weights.h5",)),
    Case(
        "npz-garbage-transfer",
        _garbage_transfer,
        2,
        r"^(?!.*allow_pickle)kvgg: error: .*garbage\.npz: not a \.npz archive \(truncated, or not a zip",
    ),
    Case(
        "npz-objects-transfer",
        _objects_transfer,
        2,
        r"objects\.npz: array 'descriptors' holds Python objects \(dtype object\); refused",
    ),
]


def _json_stats(folder):
    write_class_folders(folder / "train", classes=3, per_class=2, size=40)
    write_class_folders(folder / "val", classes=3, per_class=1, size=40)
    json_bomb(folder / "stats.json")
    text = RECIPE.format(root=folder, name="deep", epochs=1)
    stats = f"[data]\nstats = {json.dumps(str(folder / 'stats.json'))}\n"
    (folder / "deep.toml").write_text(text.replace("[data]\n", stats))
    return ["fit", folder / "deep.toml", "--dry-run"]


def _json_model_info(folder):
    """A Keras model without a record beside a `model_info.json` nested 200,000 deep (the
    model door reads it for the record)."""
    plain = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    plain.save(folder / "plain.keras")
    json_bomb(folder / "model_info.json")
    image = write(folder / "x.jpg", jpeg(40, 40))
    return ["predict", "--model", folder / "plain.keras", image]


_DEEP = r"JSON nested 200000 deep, over the limit of 64"
CATALOGUE += [
    Case("json-bomb-stats", _json_stats, 2, rf"stats\.json: {_DEEP}"),
    Case("json-bomb-model-info", _json_model_info, 2, rf"model_info\.json: {_DEEP}"),
]


def _encoded(height, width):
    """One real file per format the decoders read, `height` x `width`, by Pillow."""
    from data_images import encode

    pixels = photo(height, width)
    return {
        "png": encode(pixels, "PNG"),
        "jpeg": jpeg(height, width),
        "progressive.jpg": jpeg(height, width, progressive=True),
        "gif": encode(pixels, "GIF"),
        "bmp": encode(pixels, "BMP"),
        "webp": encode(pixels, "WEBP"),
        "lossless.webp": encode(pixels, "WEBP", lossless=True),
        "alpha.webp": encode(pixels, "WEBP", mode="RGBA", exif=b"Exif\0\0MM\0*\0\0\0\x08\0\0"),
    }


def _declaring(data, width, height):
    """The same file with its header patched to declare `width` x `height` (the rest kept)."""
    import struct

    data = bytearray(data)
    if data.startswith(b"\x89PNG"):
        data[16:24] = struct.pack(">II", width, height)
    elif data.startswith(b"\xff\xd8"):
        at = next(i for i in range(2, len(data)) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
        data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    elif data.startswith(b"GIF"):
        data[6:10] = struct.pack("<HH", width, height)
    elif data.startswith(b"BM"):
        data[18:26] = struct.pack("<ii", width, -height)  # top-down
    else:
        assert data[12:16] == b"VP8X", data[12:16]
        data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


def test_image_headers_read_alike_in_python_graphs_and_decoders():
    """The size each format's header declares, read by `limits.image_header` (Python) and
    `limits.header_size` (graph ops, eagerly and inside tf.data), is what the decoder
    gives; a top-down BMP's negative height counts; other bytes are unknown (-1)."""
    import tensorflow as tf

    from keras_vgg import limits
    from keras_vgg.data import transforms

    files_ = {f"{h}x{w}.{k}": v for h, w in [(37, 53), (61, 29)] for k, v in _encoded(h, w).items()}
    files_["top-down.bmp"] = _declaring(files_["37x53.bmp"], 53, 37)
    names = sorted(files_)
    graph = (
        tf.data.Dataset.from_tensor_slices([files_[n] for n in names])
        .map(lambda c: tf.stack(limits.header_size(c)))
        .batch(len(names))
    )
    in_graph = next(iter(graph)).numpy().tolist()
    for name, sizes in zip(names, in_graph, strict=True):
        data = files_[name]
        height, width = transforms.decode_image(tf.constant(data)).shape[:2]
        kind = limits.image_header(data)
        assert kind[1:] == (width, height) and sizes == [width, height], (name, kind, sizes)
        eager = [int(v) for v in limits.header_size(tf.constant(data))]
        assert eager == sizes, name
        assert kind[0] in name.upper() or (kind[0] == "JPEG" and name.endswith("jpg")), name
    for junk in (b"", b"\x89PNG", b"GIF8", b"RIFF", b"text, not an image"):
        assert limits.image_header(junk) is None
        assert [int(v) for v in limits.header_size(tf.constant(junk))] == [-1, -1]


def test_the_pixel_limit_holds_on_every_path_and_can_be_raised(tmp_path):
    """40 x 40 = 1600 pixels pass a limit of 1600, 40 x 41 do not, on every path that decodes
    images: decoding in graphs (evaluation, training), the data checker, the recipe key; the
    too large image is skipped and named with its size, never decoded."""
    import tensorflow as tf

    from keras_vgg import limits
    from keras_vgg.data import pipelines, transforms

    write_class_folders(tmp_path / "images", classes=2, per_class=4, size=40)
    tall = write(tmp_path / "images" / "class1" / "tall.png", encode_png(photo(41, 40)))
    why = (
        "too large: 40 x 41 = 1640 pixels, over the limit of 1600 (raise it with "
        "KVGG_MAX_PIXELS=N or data.max_pixels in a recipe)"
    )
    assert check.inspect_file(tall, max_pixels=1600) == check.FileReport(tall, "unreadable", (why,))
    assert check.inspect_file(tall, max_pixels=1640).status == "ok"
    with pytest.raises(tf.errors.InvalidArgumentError, match="41 pixels, over the limit of 1600"):
        transforms.decode_image(tf.io.read_file(tall), 1600)
    log = decoding.BadFileLog(max_pixels=1600)
    images = list(decoding.decoded_images(tmp_path / "images", bad_files=log))
    assert len(images) == 8 and log.names == [tall] and log.reasons[tall] == why
    trained = decoding.BadFileLog(max_pixels=1600)
    batch = pipelines.training_dataset(
        tmp_path / "images", batch_size=4, train_scale=36, crop_size=32, bad_files=trained
    )
    sizes = [inputs["image"].shape[0] for inputs, _ in batch.take(3)]  # a whole epoch read
    assert sizes == [4, 4, 4] and trained.reasons == {tall: why}
    with pytest.raises(ValueError, match="`max_pixels` differs from the limit of `bad_files`"):
        decoding.decoded_images(tmp_path / "images", bad_files=log, max_pixels=99)
    # The recipe key reaches the training and validation pipelines.
    path = recipe_file(tmp_path, "limited", root=str(tmp_path / "images"))
    path.write_text(path.read_text().replace(f'val_root = "{tmp_path}/val"\n', ""))
    recipe = recipe_lib.load_recipe(path, ["data.max_pixels=1600", "data.val_split=0.0"])
    assert recipe.data.max_pixels == 1600
    bad_path = tmp_path / "bad_files.txt"
    data = training.recipe_data(recipe, bad_files_path=str(bad_path))
    list(data.train(start_epoch=0, batch_size=4).take(3))
    assert bad_path.read_text() == f"{tall}\t{why}\n"
    with pytest.raises(ValueError, match=r"limited\.toml: data\.max_pixels: must be >= 1, got 0"):
        recipe_lib.load_recipe(path, ["data.max_pixels=0"])
    # The variable, for every command; a bad value is one line.
    os.environ[limits.MAX_PIXELS.env] = "1_640"
    try:
        assert limits.max_pixels() == 1640 and check.inspect_file(tall).status == "ok"
        os.environ[limits.MAX_PIXELS.env] = "lots"
        with pytest.raises(ValueError, match="^KVGG_MAX_PIXELS: must be a positive integer"):
            check.inspect_file(tall)
    finally:
        del os.environ[limits.MAX_PIXELS.env]


def encode_png(pixels):
    from data_images import encode

    return encode(pixels, "PNG")


def test_data_check_names_every_format_over_the_limit(tmp_path):
    """A real `kvgg data check`: an image of each format declaring more pixels than the
    limit (a 50000 x 50000 PNG too, which Pillow calls a decompression bomb) is reported by
    name and size, never decoded; exit 1."""
    folder = tmp_path / "images"
    write_class_folders(folder, classes=1, per_class=2, size=40)
    sizes = {"png": (30000, 20000), "jpeg": (30000, 30000), "gif": (65535, 65535)}
    sizes["bmp"] = (20000, 20000)  # (WebP files are not listed by image folders)
    for name, data in _encoded(40, 40).items():
        if name in sizes:
            write(folder / "class0" / f"big.{name}", _declaring(data, *sizes[name]))
    png_bomb(folder / "class0" / "huge.png", 50000, 50000, rows=False)
    sizes["huge.png"] = (50000, 50000)
    (strict,) = kvgg_batch(["data", "check", folder], cwd=tmp_path)
    assert strict.returncode == 1, strict.stderr[-2000:]
    for name, (width, height) in sizes.items():
        path = folder / "class0" / (name if name == "huge.png" else f"big.{name}")
        line = (
            f"unreadable: {path}: too large: {width} x {height} = {width * height} pixels, "
            "over the limit of 100000000 (raise it with KVGG_MAX_PIXELS=N or data.max_pixels"
        )
        assert line in strict.stdout, (name, strict.stdout)
    assert strict.stdout.endswith(
        f"{len(sizes) + 2} files: 2 ok, 0 unusual, {len(sizes)} unreadable\n"
    )


# --- Artifacts are checked before they run; annotation files and --top in one line ---
#
# Each artifact row starts from a real tiny `kvgg export` (made once per session, copied):
# the metadata is what the exporter writes, the graph beside it hostile or at odds with it.

_NETS: dict[str, bytes] = {}
from keras_vgg.artifacts import METADATA_FILE  # noqa: E402 - this section's own import


def _tiny_export(folder, format):
    """A real center export of the tiny classifier (`_loc_nets`) as `folder`/served; made
    once per session and format, copied."""
    import shutil

    from keras_vgg.export import export_model

    store = folder.parent / f".export-{format}"
    if not store.exists():
        export_model(_loc_nets(folder)[1], store, format=format)
    shutil.copytree(store, folder / "served")
    return folder / "served"


def _image(folder):
    return write(folder / "x.jpg", jpeg(40, 40))


def _evil_savedmodel(folder):
    """A SavedModel whose serving function reads a file outside its folder and writes
    another, with the metadata of a real export beside it."""
    import shutil

    import tensorflow as tf

    secret, marker = folder / "secret.txt", folder / "marker.txt"
    secret.write_text("outside the artifact\n")

    class Evil(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8)])
        def serve(self, images):
            tf.io.write_file(str(marker), tf.io.read_file(str(secret)))
            # Otherwise only allowed ops: with the check off, it would run and predict.
            means = tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2])
            return {"output_0": tf.nn.softmax(means)}

    evil = Evil()
    tf.saved_model.save(evil, str(folder / "evil"), signatures={"serving_default": evil.serve})
    meta = _tiny_export(folder, "savedmodel") / "assets" / METADATA_FILE
    (folder / "evil" / "assets").mkdir(exist_ok=True)
    shutil.copy(meta, folder / "evil" / "assets" / METADATA_FILE)
    return ["predict", "--model", folder / "evil", _image(folder)]


def _litert_flex(folder):
    """A LiteRT model with a TensorFlow op (cumprod has no built-in: SELECT_TF_OPS keeps it)."""
    import tensorflow as tf

    class Flex(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8)])
        def serve(self, images):
            means = tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2])
            return {"output_0": tf.nn.softmax(tf.math.cumprod(means, axis=1))}

    flex = Flex()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [flex.serve.get_concrete_function()], flex
    )
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    served = _tiny_export(folder, "litert")
    (served / "model.tflite").write_bytes(converter.convert())
    return ["predict", "--model", served, _image(folder)]


def _onnx_outside(folder):
    """An ONNX model whose weight's external data lies outside the artifact's folder."""
    import onnx
    from onnx import TensorProto, helper

    served = _tiny_export(folder, "onnx")
    meta = onnx.load(str(served / "model.onnx")).metadata_props
    (folder / "outside.bin").write_bytes(np.ones(3, np.float32).tobytes())
    gain = TensorProto(name="gain", data_type=TensorProto.FLOAT, dims=[3])
    gain.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../outside.bin"), ("offset", "0"), ("length", "12")):
        entry = gain.external_data.add()
        entry.key, entry.value = key, value
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["mean", "gain"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["posteriors"]),
    ]
    graph = helper.make_graph(
        nodes,
        "outside",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, [None, 32, 32, 3])],
        [helper.make_tensor_value_info("posteriors", TensorProto.FLOAT, [None, 3])],
        [gain],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.metadata_props.extend(meta)
    (served / "model.onnx").write_bytes(model.SerializeToString())
    return ["predict", "--model", served, _image(folder)]


def _garbage_tflite(folder):
    served = _tiny_export(folder, "litert")
    (served / "model.tflite").write_bytes(np.random.default_rng(0).bytes(4096))
    return ["predict", "--model", served, _image(folder)]


def _metadata_says(format, field, value):
    """A real export whose metadata's `field` ("model.crop_size": nested) says `value`."""

    def build(folder):
        served = _tiny_export(folder, format)
        if format == "onnx":
            import onnx

            proto = onnx.load(str(served / "model.onnx"))
            (entry,) = [p for p in proto.metadata_props if p.key == "keras_vgg_export"]
            data = json.loads(entry.value)
        else:
            meta = served / ("assets" if format == "savedmodel" else "") / METADATA_FILE
            data = json.loads(meta.read_text())
        *parents, key = field.split(".")
        target = data
        for parent in parents:
            target = target[parent]
        target[key] = value
        if format == "onnx":
            entry.value = json.dumps(data)
            onnx.save(proto, str(served / "model.onnx"))
        else:
            meta.write_text(json.dumps(data))
        return ["predict", "--model", served, _image(folder)]

    return build


_REFUSED = "refused: an exported model must not read or write files"
CATALOGUE += [
    Case(
        "evil-savedmodel",
        _evil_savedmodel,
        2,
        r"evil/saved_model\.pb: op '(ReadFile|WriteFile)' \(node \S+ in function \S+\) is not "
        rf"a pure tensor op; {_REFUSED}$",
        kept=("secret.txt", "evil"),
        absent=("marker.txt",),
    ),
    Case(
        "litert-flex",
        _litert_flex,
        2,
        r"served/model\.tflite: op 'FlexCumprod' is a TensorFlow op \(Flex, SELECT_TF_OPS\), "
        r"not a LiteRT built-in op; refused",
        kept=("served",),
    ),
    Case(
        "onnx-external-data-outside",
        _onnx_outside,
        2,
        r"served/model\.onnx: tensor 'gain' \(the graph\) keeps its data in '\.\./outside\.bin', "
        r"outside the artifact's folder; refused",
        kept=("served", "outside.bin"),
    ),
    Case(
        "garbage-tflite",
        _garbage_tflite,
        2,
        r"served/model\.tflite: not a LiteRT model \(no 'TFL3' flat buffer\)$",
    ),
    Case(
        "metadata-input-kind",
        _metadata_says("savedmodel", "input", "float"),
        2,
        r"served/assets/keras_vgg_export\.json: field 'input' says 'float', but the graph takes "
        r"uint8 images$",
    ),
    Case(
        "metadata-crop-size",
        _metadata_says("litert", "model.crop_size", 40),
        2,
        r"served/keras_vgg_export\.json: field 'model\.crop_size' says 40, but the graph of "
        r"this center artifact takes 32 x 32 images$",
    ),
    Case(
        "metadata-class-count",
        _metadata_says("onnx", "class_names", ["a", "b", "c", "d"]),
        2,
        r"served/model\.onnx: field 'class_names' names 4 classes, but the graph's output has "
        r"shape \? x 3$",
    ),
]


def test_a_full_disk_during_export_is_one_line(tmp_path):
    """A real `kvgg export` per format whose files cannot grow past 200 kB (the weights are
    about 600 kB): one line naming the destination, exit 1, nothing left behind."""
    _, model = _loc_nets(tmp_path)
    formats = ("savedmodel", "onnx", "litert")
    with file_size_limit(200_000):  # inherited by the kvgg process
        done = kvgg_batch(
            *[["export", model, tmp_path / f, "--format", f] for f in formats], cwd=tmp_path
        )
    for format, result in zip(formats, done, strict=True):
        assert result.returncode == 1, (format, result.stderr[-3000:])
        assert "Traceback" not in result.stderr, (format, result.stderr[-3000:])
        last = [line for line in result.stderr.splitlines() if line.strip()][-1]
        assert last == (
            f"kvgg: error: could not write {tmp_path / format}: File too large; nothing was written"
        ), format
    assert tree(tmp_path) == ["cls.keras", "loc.keras"]


def _loc_nets(folder):
    """A tiny SCR localisation net and classifier (classes a, b, c; 32-pixel crops) as
    `folder`/loc.keras and `folder`/cls.keras; built once per session, copied."""
    if not _NETS:
        from keras_vgg.localization.network import build_localizer

        record = ModelRecord(crop_size=32, class_names=("a", "b", "c"))
        kwargs = dict(classes=3, input_shape=(32, 32, 3), width=0.125, fc_units=16, record=record)
        keras.utils.set_random_seed(0)
        for name, model in (
            ("loc", build_localizer("A", box_mode="scr", **kwargs)),
            ("cls", keras_vgg.build("A", **kwargs)),
        ):
            model.save(folder / f"{name}.keras")
            _NETS[name] = (folder / f"{name}.keras").read_bytes()
    for name, data in _NETS.items():
        (folder / f"{name}.keras").write_bytes(data)
    return folder / "loc.keras", folder / "cls.keras"


def _localize_evaluate(folder, annotations, *more):
    loc, _ = _loc_nets(folder)
    return [
        "localize", "evaluate", loc, "--data", folder / "images", "--annotations", annotations,
        "--protocol", "1", "--scales", "32", *more,
    ]  # fmt: skip


def _voc_text(width, box):
    """A VOC annotation of a 40-pixel-high image whose size/width and box are these texts."""
    corners = "".join(
        f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
    )
    return (
        f"<annotation><size><width>{width}</width><height>40</height></size><object>"
        f"<name>a</name><bndbox>{corners}</bndbox></object></annotation>"
    )


def _voc(width="40", box=("1", "1", "30", "30")):
    """One image x.jpg with a VOC file whose size/width and box are these texts."""

    def build(folder):
        write(folder / "images" / "x.jpg", jpeg(40, 40))
        (folder / "xml").mkdir()
        (folder / "xml" / "x.xml").write_text(_voc_text(width, box))
        return _localize_evaluate(folder, folder / "xml")

    return build


def _csv(rows: bytes, *more):
    """Images x.jpg and y.jpg with a CSV manifest of these bytes."""

    def build(folder):
        for name in ("x", "y"):
            write(folder / "images" / f"{name}.jpg", jpeg(40, 40))
        (folder / "boxes.csv").write_bytes(rows)
        extra = [m(folder) if callable(m) else m for m in more]
        return _localize_evaluate(folder, folder / "boxes.csv", *extra)

    return build


def _csv_outside(folder):
    """A manifest row naming a file outside the data set (its bytes must never be shown)."""
    (folder / "secret").mkdir()
    (folder / "secret" / "secret.txt").write_text("TOPSECRET\n")
    (folder / "data").mkdir()
    write(folder / "data" / "images" / "x.jpg", jpeg(40, 40))
    (folder / "data" / "boxes.csv").write_text(
        "path,class,xmin,ymin,xmax,ymax\n../secret/secret.txt,a,1,1,4,1\n"
    )
    loc, _ = _loc_nets(folder)
    return [
        "localize", "evaluate", loc, "--data", folder / "data" / "images", "--annotations",
        folder / "data" / "boxes.csv", "--protocol", "1", "--scales", "32",
    ]  # fmt: skip


def _localize_predict_later_unreadable(folder):
    loc, cls = _loc_nets(folder)
    good = write(folder / "good.jpg", jpeg(40, 40))
    bad = write(folder / "bad.jpg", b"not an image")
    return ["localize", "predict", good, bad, "--model", loc, "--classifier", cls,
            "--scales", "32", "--top", "2"]  # fmt: skip


def _top(value, localize=False):
    def build(folder):
        if localize:
            loc, cls = _loc_nets(folder)
            return ["localize", "predict", _image(folder), "--model", loc, "--classifier", cls,
                    "--top", value]  # fmt: skip
        return ["predict", "--model", _loc_nets(folder)[1], _image(folder), "--top", value]

    return build


_HEADER = b"path,class,xmin,ymin,xmax,ymax\n"
_NO_IMAGE = r"no image with a usable annotation \(1 skipped; first: "
CATALOGUE += [
    Case(
        "csv-field-over-the-csv-limit",
        _csv(_HEADER + b"images/x.jpg," + b"a" * 140_000 + b",1,1,30,30\n"),
        2,
        r"boxes\.csv:2: not a readable CSV manifest \(field larger than field limit \(131072\)\)$",
    ),
    Case(
        "voc-width-1e999",
        _voc(width="1e999"),
        2,
        rf"{_NO_IMAGE}\S+/x\.xml: field 'size/width': not a finite number: '1e999'\)$",
    ),
    Case(
        "voc-nan-box",
        _voc(box=("nan", "1", "30", "30")),
        2,
        rf"{_NO_IMAGE}\S+/x\.xml: field 'object\[0\]/bndbox/xmin': not a finite number: 'nan'\)$",
    ),
    Case(
        "voc-box-backwards",
        _voc(box=("30", "1", "10", "30")),
        2,
        rf"{_NO_IMAGE}\S+/x\.xml: field 'object\[0\]/bndbox': xmin/ymin after xmax/ymax",
    ),
    Case(
        "csv-nan-box",
        _csv(_HEADER + b"images/x.jpg,a,NaN,1,30,30\n"),
        2,
        rf"{_NO_IMAGE}\S+/boxes\.csv:2: field 'xmin': not a finite number: 'NaN'\)$",
    ),
    Case(
        "csv-not-utf8",
        _csv(_HEADER + b"images/caf\xe9.jpg,a,1,1,30,30\n"),
        2,
        r"boxes\.csv: not UTF-8 text \(byte 41: b'\\xe9'\); a CSV manifest is UTF-8$",
    ),
    Case(
        "csv-with-bom",
        _csv(
            b"\xef\xbb\xbf" + _HEADER + b"images/x.jpg,a,1,1,30,30\r\n",
            "-o",
            lambda f: f / "o.json",
        ),
        0,
        r"^wrote \S+/o\.json$",
    ),
    Case(
        "csv-path-outside-the-data-set",
        _csv_outside,
        2,
        rf"^(?!.*TOPSECRET).*{_NO_IMAGE}\S+/boxes\.csv:2: field 'path': '\.\./secret/secret\.txt' "
        r"is outside the data set",
        kept=("secret",),
    ),
    Case(
        "localize-predict-later-unreadable",
        _localize_predict_later_unreadable,
        1,
        r"^kvgg: skipped unreadable image: \S+/bad\.jpg: ",
    ),
    Case("predict-top-0", _top("0"), 2, r"`top` must be a positive integer\. Received: top=0$"),
    Case(
        "localize-predict-top-negative",
        _top("-3", localize=True),
        2,
        r"`top` must be a positive integer\. Received: top=-3$",
    ),
]


def test_localize_predict_prints_the_images_before_an_unreadable_one(catalogue_run):
    folder, _, result = catalogue_run["localize-predict-later-unreadable"]
    lines = result.stdout.splitlines()
    assert lines[0] == str(folder / "good.jpg") and len(lines) == 3, result.stdout
    assert all(re.fullmatch(r"  \d\.\d{4}  [abc]  box \(.*\)", line) for line in lines[1:])
    assert "bad.jpg" not in result.stdout


def test_a_bad_annotation_skips_its_image_and_the_rest_is_kept(tmp_path):
    """VOC: NaN, 1e999, a backwards box each skip their image, named with file and field; a
    CSV image with one NaN row is skipped whole (scored only against all its boxes)."""
    from keras_vgg.localization import annotations

    for name in ("good", "nan", "inf", "backwards"):
        write(tmp_path / "images" / f"{name}.jpg", jpeg(40, 40))
    objects = {"good": (1, 1, 30, 30), "nan": ("nan", 1, 30, 30), "backwards": (30, 1, 10, 30)}
    (tmp_path / "xml").mkdir()
    for name, box in {**objects, "inf": (1, 1, 30, 30)}.items():
        width = "1e999" if name == "inf" else "40"
        (tmp_path / "xml" / f"{name}.xml").write_text(_voc_text(width, box))
    boxes = annotations.read_boxes(tmp_path / "images", tmp_path / "xml")
    assert boxes.files == (str(tmp_path / "images" / "good.jpg"),)
    assert sorted(os.path.basename(n) for n in boxes.bad.names) == [
        "backwards.xml", "inf.xml", "nan.xml",
    ]  # fmt: skip
    manifest = tmp_path / "boxes.csv"
    manifest.write_bytes(
        b"\xef\xbb\xbf" + _HEADER + b"images/good.jpg,a,1,1,30,30\r\n"
        b"images/nan.jpg,a,1,1,30,30\r\nimages/nan.jpg,b,nan,1,30,30\r\n"
    )
    boxes = annotations.read_boxes(tmp_path / "images", manifest)
    assert boxes.files == (str(tmp_path / "images" / "good.jpg"),)
    assert list(boxes.bad.reasons.values()) == [
        f"{manifest}:4: field 'xmin': not a finite number: 'nan'"
    ]


# --- Outputs never over inputs (keras_vgg/outputs.py: checked before any model loads) ---


def _bytes(path, data=b"someone's work"):
    return type(path)(write(path, data))  # data_images.write, as a Path


def _out_transfer_same(folder):
    f = _bytes(folder / "f.npz")
    return ["transfer", f, "-o", f, "--overwrite"]


def _out_transfer_existing(folder):
    _bytes(folder / "result.json")
    return ["transfer", _bytes(folder / "f.npz"), "-o", folder / "result.json"]


def _out_transfer_hard_link(folder):
    f = _bytes(folder / "f.npz")
    os.link(f, folder / "link.json")
    return ["transfer", f, "-o", folder / "link.json", "--overwrite"]


def _out_transfer_symlink(folder):
    f = _bytes(folder / "f.npz")
    os.symlink(f, folder / "link.json")
    return ["transfer", f, "-o", folder / "link.json", "--overwrite"]


def _out_evaluate_model(folder):
    _bytes(folder / "run" / "best.keras")
    _bytes(folder / "data" / "a" / "0.png")
    return ["evaluate", folder / "run", "--data", folder / "data", "-o",
            folder / "run" / "best.keras", "--overwrite"]  # fmt: skip


def _out_localize_evaluate(folder):
    loc = _bytes(folder / "loc.keras")
    return ["localize", "evaluate", loc, "--data", _bytes(folder / "d" / "0.png").parent,
            "--annotations", _bytes(folder / "boxes.csv"), "--protocol", "1", "-o", loc,
            "--overwrite"]  # fmt: skip


def _out_features_model(folder):
    m = _bytes(folder / "m.keras")
    return ["features", m, "--data", _bytes(folder / "d" / "a" / "0.png").parent.parent,
            "-o", m, "--overwrite"]  # fmt: skip


def _out_stats_into_data(folder):
    image = _bytes(folder / "d" / "a" / "0.png")
    return ["data", "stats", folder / "d", "-o", image, "--overwrite"]


def _out_check_existing(folder):
    _bytes(folder / "d" / "a" / "0.png")
    return ["data", "check", folder / "d", "--output", _bytes(folder / "report.txt")]


def _out_convert_same(folder):
    src = _bytes(folder / "w.npz")
    return ["convert", src, src, "--config", "A", "--overwrite"]


def _out_heatmap_existing(folder):
    _bytes(folder / "img" / "a" / "0.png")
    _bytes(folder / "img" / "b" / "0.png")
    _bytes(folder / "maps" / "b" / "0_heatmap.png")
    return ["predict", folder / "img", "--model", _bytes(folder / "m.keras"), "--heatmap",
            folder / "maps"]  # fmt: skip


_INPUT = r"is an input of this command"
CATALOGUE += [
    Case("out-transfer-o-is-its-input", _out_transfer_same, 2, _INPUT, kept=("f.npz",)),
    Case("out-transfer-o-exists", _out_transfer_existing, 2,
         r"result\.json: already exists; .*--overwrite", kept=("result.json", "f.npz")),
    Case("out-transfer-o-hard-link-of-input", _out_transfer_hard_link, 2, _INPUT,
         kept=("f.npz", "link.json")),
    Case("out-transfer-o-symlink-to-input", _out_transfer_symlink, 2, _INPUT, kept=("f.npz",)),
    Case("out-evaluate-o-run-model", _out_evaluate_model, 2,
         r"best\.keras: lies inside the input folder .*run", kept=("run",)),
    Case("out-localize-evaluate-o-its-net", _out_localize_evaluate, 2, _INPUT,
         kept=("loc.keras",)),
    Case("out-features-o-its-model", _out_features_model, 2, _INPUT, kept=("m.keras",)),
    Case("out-data-stats-o-an-image", _out_stats_into_data, 2, r"lies inside the input folder",
         kept=("d",)),
    Case("out-data-check-output-exists", _out_check_existing, 2, r"already exists",
         kept=("report.txt",)),
    Case("out-convert-dest-is-src", _out_convert_same, 2, _INPUT, kept=("w.npz",)),
    Case("out-heatmap-exists", _out_heatmap_existing, 2,
         r"maps/b/0_heatmap\.png: already exists", kept=("maps", "img"),
         absent=("maps/a",)),
]  # fmt: skip
