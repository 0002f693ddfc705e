"""Recipes: parsing, validation (one line naming file and key), --set, and every shipped recipe."""

import dataclasses
import os
import pathlib
import re

import pytest
from conftest import kvgg_batch

from keras_vgg import recipe as recipe_lib
from keras_vgg.scales import TrainScale

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))

# Table 3 of the paper: recipe -> (config, train (Smin, Smax), test Q, top-1, top-5, from_run,
# mode, lr).
TABLE_3 = {
    "a_256": ("A", (256, 256), 256, "29.6", "10.4", None, None, 1e-2),
    "a_lrn_256": ("A-LRN", (256, 256), 256, "29.7", "10.5", None, None, 1e-2),
    "b_256": ("B", (256, 256), 256, "28.7", "9.9", "a_256", "a_layers", 1e-2),
    "c_256": ("C", (256, 256), 256, "28.1", "9.4", "a_256", "a_layers", 1e-2),
    "c_384": ("C", (384, 384), 384, "28.1", "9.3", "c_256", "all", 1e-3),
    "c_jitter": ("C", (256, 512), 384, "27.3", "8.8", "c_384", "all", 1e-3),
    "d_256": ("D", (256, 256), 256, "27.0", "8.8", "a_256", "a_layers", 1e-2),
    "d_384": ("D", (384, 384), 384, "26.8", "8.7", "d_256", "all", 1e-3),
    "d_jitter": ("D", (256, 512), 384, "25.6", "8.1", "d_384", "all", 1e-3),
    "e_256": ("E", (256, 256), 256, "27.3", "9.0", "a_256", "a_layers", 1e-2),
    "e_384": ("E", (384, 384), 384, "26.9", "8.7", "e_256", "all", 1e-3),
    "e_jitter": ("E", (256, 512), 384, "25.5", "8.0", "e_384", "all", 1e-3),
}

GOOD = """
[model]
config = "vgg16"
width = 0.5

[data]
root = "/data/train"
train_scale = [256, 512]

[run]
batch_size = 128
"""


def write(tmp_path, text, name="exp.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_are_the_papers(tmp_path):
    r = recipe_lib.load_recipe(write(tmp_path, '[data]\nroot = "/x"\n'))
    assert (r.model.config, r.model.dropout, r.model.init, r.model.fc_units) == (
        "A",
        0.5,
        "normal",
        4096,
    )
    assert (r.optimizer.lr, r.optimizer.momentum, r.optimizer.weight_decay) == (1e-2, 0.9, 5e-4)
    assert r.optimizer.weight_decay_mode == "l2"
    assert (r.schedule.epochs, r.schedule.factor, r.schedule.max_reductions) == (74, 0.1, 3)
    assert (r.run.batch_size, r.data.train_scale, r.data.crop_size) == (
        256,
        TrainScale(256, 256),
        224,
    )
    assert r.run.name == "exp" and r.run_dir == os.path.join("runs", "exp")


def test_parse_canonicalises_and_freezes(tmp_path):
    r = recipe_lib.load_recipe(write(tmp_path, GOOD))
    assert r.model.config == "D"
    assert r.data.train_scale == TrainScale(256, 512) and r.data.scale_jitter
    assert r.data.resolved_val_scale == 384
    assert isinstance(r.model.width, float) and r.model.width == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.model.width = 1.0


def test_set_overrides_any_key_with_toml_or_bare_values(tmp_path):
    r = recipe_lib.load_recipe(
        write(tmp_path, GOOD),
        [
            "data.root=/data/imagenet",
            "optimizer.lr=0.001",
            "data.train_scale=384",
            "data.flip=false",
            'run.name="other"',
            "schedule.epochs=3",
            "init.from_run=runs/x",
        ],
    )
    assert r.data.root == "/data/imagenet"
    assert r.optimizer.lr == 0.001
    assert r.data.train_scale == TrainScale(384, 384) and not r.data.scale_jitter
    assert r.data.flip is False
    assert r.run.name == "other" and r.schedule.epochs == 3
    assert r.init.from_run == "runs/x"
    # A text key keeps its text where TOML would read a float or a bool.
    named = recipe_lib.load_recipe(write(tmp_path, GOOD), ["run.name=nan", "data.root=true"])
    assert (named.run.name, named.data.root) == ("nan", "true")


def test_checkpoint_every_is_steps_or_a_duration(tmp_path):
    path = write(tmp_path, GOOD)
    assert recipe_lib.load_recipe(path).run.checkpoint_every is None
    steps = recipe_lib.load_recipe(path, ["run.checkpoint_every=500"]).run
    assert (steps.checkpoint_every, steps.checkpoint_steps, steps.checkpoint_seconds) == (
        500,
        500,
        None,
    )
    timed = recipe_lib.load_recipe(path, ["run.checkpoint_every=1h30m"]).run
    assert (timed.checkpoint_every, timed.checkpoint_steps, timed.checkpoint_seconds) == (
        "1h30m",
        None,
        5400.0,
    )
    again = recipe_lib.load_recipe(
        write(
            tmp_path,
            recipe_lib.recipe_to_toml(recipe_lib.load_recipe(path, ["run.checkpoint_every=90s"])),
            "b.toml",
        )
    )
    assert again.run.checkpoint_every == "90s"
    assert "run.checkpoint_every" in recipe_lib.OBSERVATION_KEYS


def test_resolved_toml_round_trips(tmp_path):
    r = recipe_lib.load_recipe(write(tmp_path, GOOD), ['data.val_root=/v "q"'])
    text = recipe_lib.recipe_to_toml(r)
    assert "\ntrain_scale = [256, 512]\n" in text
    again = recipe_lib.load_recipe(write(tmp_path, text, "exp.toml"))
    assert recipe_lib.recipe_to_dict(again) == recipe_lib.recipe_to_dict(r)
    assert again.data.train_scale == TrainScale(256, 512)
    fixed = recipe_lib.load_recipe(write(tmp_path, GOOD), ["data.train_scale=384"])
    assert recipe_lib.recipe_to_dict(fixed)["data"]["train_scale"] == 384
    assert "\ntrain_scale = 384\n" in recipe_lib.recipe_to_toml(fixed)
    assert again.data.val_root == '/v "q"'


BAD = [
    # (section text, overrides, expected key in message, expected words)
    ('[model]\nconfg = "A"\n', [], "model.confg", "unknown key"),
    ('[modle]\nconfig = "A"\n', [], "[modle]", "unknown section"),
    ('[model]\nconfig = "Z"\n', [], "model.config", "unknown configuration 'Z'"),
    ("[model]\nwidth = true\n", [], "model.width", "expected a number, got true"),
    ('[optimizer]\nlr = "fast"\n', [], "optimizer.lr", "expected a number, got 'fast'"),
    ("[run]\nbatch_size = 2.5\n", [], "run.batch_size", "expected an integer, got 2.5"),
    ("[data]\ntrain_scale = [512, 256]\n", [], "data.train_scale", "needs Smin <= Smax"),
    ("[data]\ntrain_scale = [256]\n", [], "data.train_scale", "an integer S or a range [Smin"),
    ("[data]\ntrain_scale = 0\n", [], "data.train_scale", "must be positive integers"),
    ("", ["data.train_scale=big"], "data.train_scale", "Received: train_scale='big'"),
    ("[data]\ncrop_size = 300\n", [], "data.crop_size", "larger than the smallest training"),
    ("[data]\ntrain_scale = [200, 512]\n", [], "data.crop_size", "S = 200"),
    ("", ["data.root="], "data.root", "missing"),
    ("[optimizer]\nweight_decay_mode = 'adamw'\n", [], "optimizer.weight_decay_mode", "'adamw'"),
    ("[optimizer]\nname = 'rmsprop'\n", [], "optimizer.name", "'rmsprop'"),
    ("[run]\nprecision = 'half'\n", [], "run.precision", "'half'"),
    ("[schedule]\nfactor = 1.5\n", [], "schedule.factor", "(0, 1)"),
    ("[init]\nmode = 'some'\n", [], "init.mode", "'some'"),
    ("[data]\nthreads = 0\n", [], "data.threads", "must be >= 1, got 0"),
    ("", ["data.threads=all"], "data.threads", "expected an integer, got 'all'"),
    ("[init]\nfrom_run = 'a_256'\n[model]\nweights = 'x.keras'\n", [], "init.from_run", "not both"),
    ("", ["optimizer.lrr=1"], "optimizer.lrr", "unknown key"),
    ("", ["run.checkpoint_every=0"], "run.checkpoint_every", "must be >= 1 steps, got 0"),
    (
        "",
        ["run.checkpoint_every=30min"],
        "run.checkpoint_every",
        "or an integer number of steps, got '30min'",
    ),
    ("[run]\ncheckpoint_every = '30'\n", [], "run.checkpoint_every", "with its unit"),
    ("[run]\ncheckpoint_every = '0s'\n", [], "run.checkpoint_every", "above 0"),
    ("[run]\ncheckpoint_every = 1.5\n", [], "run.checkpoint_every", "an integer or a string"),
    ("", ["lr=1"], "--set lr", "section.key"),
    ("[run]\nlog_every = 'soon'\n", [], "run.log_every", 'like "90s", "2m", "1h30m", got \'soon\''),
    ("", ["run.log_every=-5"], "run.log_every", "expected seconds >= 0"),
    ("[run]\nlog_every = true\n", [], "run.log_every", "got true"),
]


@pytest.mark.parametrize("text, overrides, key, words", BAD)
def test_errors_name_file_and_key_in_one_line(tmp_path, text, overrides, key, words):
    base = '[data]\nroot = "/x"\n' if "[data]" not in text else ""
    if "[data]" in text:
        text = text.replace("[data]\n", '[data]\nroot = "/x"\n')
    path = write(tmp_path, base + text)
    with pytest.raises(ValueError) as info:
        recipe_lib.load_recipe(path, overrides)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert key in message and words in message
    assert "\n" not in message


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Every `kvgg fit` command line of this file in ONE real `kvgg` process (`kvgg_batch`),
    run from the repository root (recipes are named relative to it, as in the README).

    Returns (runs, tmp): the CompletedProcess of each command by its name here, and the
    folder its inputs are in.
    """
    tmp = tmp_path_factory.mktemp("recipe_cli")
    (tmp / "bad").mkdir()
    bad = write(tmp / "bad", '[data]\nroot = "/x"\ntrain_scale = [512, 256]\n')
    (tmp / "absent").mkdir()
    absent = write(
        tmp / "absent", f'[data]\nroot = "{tmp}/absent/x"\n[run]\nruns_dir = "{tmp}/absent"\n'
    )
    commands = {
        "bad": ("fit", bad, "--dry-run"),
        "nope": ("fit", tmp / "nope.toml", "--dry-run"),
        "absent": ("fit", absent),
        "all": ("fit", "--dry-run", *[str(p.relative_to(ROOT)) for p in RECIPES]),
        "from_run": ("fit", "recipes/d_256.toml", "--set", f"run.runs_dir={tmp / 'runs'}"),
    }
    done = kvgg_batch(*commands.values(), cwd=ROOT)
    return dict(zip(commands, done, strict=True)), tmp


def test_cli_error_is_one_line_exit_2_no_traceback(cli):
    runs, tmp = cli
    path, result = str(tmp / "bad" / "exp.toml"), runs["bad"]
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"kvgg: error: {path}: data.train_scale: The training scale needs Smin <= Smax. "
        "Received: train_scale=[512, 256]"
    ), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    missing = runs["nope"]
    assert missing.returncode == 2 and "recipe file not found" in missing.stderr


def test_missing_data_root_at_fit_time_names_the_key(cli):
    runs, tmp = cli
    path, result = str(tmp / "absent" / "exp.toml"), runs["absent"]
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"kvgg: error: {path}: data.root: folder not found: {tmp}/absent/x"
    )


def test_every_recipe_passes_dry_run(cli):
    """`kvgg fit --dry-run` on every recipe of recipes/, in one command.

    Every recipe resolves and is planned; the checks fail only on what this checkout lacks
    (the data folders, the runs a recipe starts from), one line per recipe, exit code 2.
    """
    assert len(RECIPES) == 18
    result = cli[0]["all"]
    assert result.returncode == 2, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(RECIPES), result.stderr
    for path, error in zip(RECIPES, errors, strict=True):
        rel = str(path.relative_to(ROOT))
        assert error.startswith(f"kvgg: error: {rel}: ")
        assert "data.root: folder not found" in error or "init.from_run" in error, error
        assert f"# resolved recipe ({rel})" in result.stdout
        plan = result.stdout.split(f"# plan ({rel})")[1].split("# resolved")[0]
        assert f"checks:             {error.removeprefix('kvgg: error: ')}" in plan
        for field in (
            "strategy:",
            "replicas:",
            "per-replica batch:",
            "steps per epoch:",
            "input threads:",
        ):
            assert field in plan
        assert re.search(r"precision: +(float32|mixed_bfloat16|mixed_float16) \(", plan)


@pytest.mark.parametrize("name", sorted(TABLE_3))
def test_table_3_recipes(name):
    config, scale, q, top1, top5, from_run, mode, lr = TABLE_3[name]
    path = ROOT / "recipes" / f"{name}.toml"
    r = recipe_lib.load_recipe(path)
    assert r.run.name == name
    assert r.model.config == config and r.data.train_scale.bounds == scale
    assert r.data.resolved_val_scale == q and r.data.crop_size == 224
    assert r.init.from_run == from_run
    if mode is not None:
        assert r.init.mode == mode
    assert r.optimizer.lr == lr
    assert (r.optimizer.momentum, r.optimizer.weight_decay, r.model.dropout) == (0.9, 5e-4, 0.5)
    assert r.optimizer.weight_decay_mode == "l2" and r.run.batch_size == 256
    assert (r.schedule.epochs, r.schedule.max_reductions, r.schedule.factor) == (74, 3, 0.1)
    header = "".join(line for line in path.read_text().splitlines(True) if line.startswith("#"))
    assert f"kvgg fit recipes/{name}.toml" in header
    assert f"top-1 error {top1} %, top-5 error {top5} %" in header


def test_demo_and_finetune_recipes():
    demo = recipe_lib.load_recipe(ROOT / "recipes" / "demo.toml")
    assert demo.run.name == "demo" and demo.data.root == "runs/digits/train"
    assert demo.data.crop_size <= demo.data.train_scale.smin
    fine = recipe_lib.load_recipe(ROOT / "recipes" / "finetune_folder.toml")
    assert (fine.model.config, fine.init.mode, fine.model.weights) == (
        "D",
        "all_but_head",
        "imagenet",
    )


def test_missing_initial_run_is_named(cli):
    runs, tmp = cli
    result = runs["from_run"]
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"kvgg: error: recipes/d_256.toml: init.from_run: {tmp}/runs/a_256/best.keras is not "
        "there yet: train run 'a_256' first (kvgg fit recipes/a_256.toml)"
    )
    assert not (tmp / "runs" / "d_256").exists()
