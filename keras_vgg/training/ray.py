"""Several machines through Ray Train: `ray_fit(recipe, workers=N)`, `kvgg fit --workers N`.

Ray Train's `TensorflowTrainer` starts N worker processes (on this machine, or on a Ray
cluster when `RAY_ADDRESS` names one), sets `TF_CONFIG` in each, and runs `fit` there: the
same code path as a worker started by hand with `TF_CONFIG` (`MultiWorkerMirroredStrategy`,
Sec. 3.3). Worker 0 is the chief and writes the run directory, so the workers must see the
same files at the same paths: on one machine they do; on a cluster the data and
`run.runs_dir` must be on storage every node mounts at the same path.

Ray is an optional dependency (the `ray` extra); this module imports it only when called.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable

from keras_vgg import distribute
from keras_vgg import recipe as recipe_lib
from keras_vgg.training.fit import fit

__all__ = ["RAY_MISSING", "ray_fit"]

#: The error when the `ray` extra is not installed.
RAY_MISSING = "kvgg fit --workers needs the ray extra: pip install 'keras-vgg[ray]'"

# Set before Ray is imported, in this process and (through the job's runtime environment) in
# its workers: no usage report is sent over the network; Ray Train's metrics export stays
# off; a worker's `print` goes to its stdout once (not also through Ray Train's logger), and
# its lines reach this process without Ray's "(RayTrainWorker pid=...)" prefix or colours.
RAY_ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_DISABLE_WORKER_LOG_PREFIX": "1",
    "RAY_COLOR_PREFIX": "0",
}

#: Lines of Ray's own processes that are not shown: the placement-group cleaner's notice,
#: each second, that the state API (part of Ray's dashboard, not started) is unavailable,
#: and the controller's note on how it passes arguments to its preemption watcher.
RAY_NOISE = (
    r"Failed to query Ray Train Controller actor state"
    r"|has constructor arguments in the object store"
)

# The driver's settings the workers inherit on a cluster too: the numerical path (oneDNN on
# or off, as `kvgg` sets it) and how much TensorFlow's runtime logs.
PASSED_ON = ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")


def _import_ray():
    try:
        import ray
        from ray import train
        from ray.train.tensorflow import TensorflowTrainer
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(RAY_MISSING, name="ray") from exc
    return ray, train, TensorflowTrainer


def _worker_loop(config: dict) -> None:
    """One Ray worker: `fit` under the TF_CONFIG that Ray Train has set in this process."""
    from ray import train

    # Ray's TensorFlow backend asks `tf.keras` for Keras 2 (tf_keras); this package is Keras 3.
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    # Ray Train starts each worker in a folder of its own; the recipe's relative paths are
    # relative to where the command was given (on a cluster: the same path on every node).
    if os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])
    # Ray Train logs everything at INFO in its workers; TensorFlow's notices stay hidden.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    chief = train.get_context().get_world_rank() == 0
    fit(
        config["recipe"],
        overwrite=config["overwrite"],
        verbose=0,
        print_fn=print if chief else lambda line: None,
    )


def _worker_error(exc: BaseException) -> BaseException:
    """The error of `fit` on a worker (the lowest rank's) as it raised it; Ray's otherwise.

    `fit`'s errors about the recipe, the data and the run directory are `ValueError`,
    `OSError` or `RuntimeError`; any other error stays in Ray Train's wrapper, whose text
    holds each worker's traceback.
    """
    failures = getattr(exc, "worker_failures", None) or {}
    for rank in sorted(failures):
        error = failures[rank]
        cause = getattr(error, "cause", None)  # a ray.exceptions.RayTaskError's
        error = cause if isinstance(cause, BaseException) else error
        if isinstance(error, (ValueError, OSError, RuntimeError)):
            return error
    return exc


def _in_a_thread(function: Callable[[], object]) -> object:
    """`function()` in another thread, this one waiting: Ctrl-C raises KeyboardInterrupt here.

    (Ray Train installs its own SIGINT handler when `fit` runs in the main thread: it ends
    the run with exit code 0 or 1 and stays installed.)
    """
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = function()
        except BaseException as exc:  # noqa: BLE001 - raised again in the waiting thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="kvgg-ray-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def ray_fit(
    recipe: recipe_lib.Recipe | str | os.PathLike,
    *,
    workers: int,
    overrides: Iterable[str] = (),
    overwrite: bool = False,
    use_gpu: bool | None = None,
    print_fn: Callable[[str], None] = print,
) -> str:
    """Trains a recipe on `workers` Ray Train workers, one `MultiWorkerMirroredStrategy`.

    Without `RAY_ADDRESS` in the environment, Ray starts on this machine for the run and
    stops after it; with it, the workers run on that cluster (every node needs keras-vgg
    and the recipe's files at the same paths). A Ray already started in this process by
    `ray.init` is used as it is. The weights and history are those of one process on the
    same global batches (`run.batch_size` is split over the workers).

    Args:
        recipe: A `Recipe`, or the path of its TOML file.
        workers: Number of worker processes (replicas); at least 1.
        overrides: `KEY=VALUE` recipe overrides, when `recipe` is a path.
        overwrite: Replace a finished run, or one with another recipe (as `fit`).
        use_gpu: One GPU per worker; default: when Ray has a GPU for every worker.
        print_fn: Where the plan line and the chief's epoch summaries go.

    Returns:
        The run directory.

    Raises:
        ModuleNotFoundError: without the `ray` extra (`RAY_MISSING`).
        ValueError: for a bad recipe, `workers` below 1, a global batch that does not
            split over the workers, or `TF_CONFIG` already set (Ray Train sets it).
        Any error of `fit` on a worker (the chief's first), as that worker raised it.
    """
    if not isinstance(recipe, recipe_lib.Recipe):
        recipe = recipe_lib.load_recipe(recipe, overrides)
    if workers < 1:
        raise ValueError(f"--workers: at least 1 worker, got {workers}")
    # The global batch must split over the workers (one replica each), as each will check.
    cluster = {"cluster": {"worker": [""] * workers}, "task": {"type": "worker", "index": 0}}
    distribute.plan_distribution(
        recipe.run.batch_size, devices=["/cpu:0"], environ={"TF_CONFIG": json.dumps(cluster)}
    )
    if os.environ.get("TF_CONFIG"):
        raise ValueError(
            "--workers: TF_CONFIG is set already; Ray Train sets it in each worker "
            "(unset it, or run `kvgg fit` without --workers in each TF_CONFIG process)"
        )
    if "ray" not in sys.modules:  # Ray reads these when it is imported
        for key, value in RAY_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
        skip = os.environ.get("RAY_DEDUP_LOGS_SKIP_REGEX")
        os.environ["RAY_DEDUP_LOGS_SKIP_REGEX"] = f"{RAY_NOISE}|{skip}" if skip else RAY_NOISE
    ray, train, TensorflowTrainer = _import_ray()

    with contextlib.ExitStack() as stack:
        address = os.environ.get("RAY_ADDRESS")
        owned = not ray.is_initialized()
        if owned:
            passed_on = [*RAY_ENVIRONMENT, *PASSED_ON]
            # Inside a Ray job (`ray job submit`) the job's own variables are in this
            # environment too: passing them again with the same values is no conflict.
            os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
            ray.init(
                # "local": a Ray of its own, never one found running on this machine.
                address=address or "local",
                # Locally each worker is one logical CPU; more workers than cores still run.
                num_cpus=None if address else max(os.cpu_count() or 1, workers),
                include_dashboard=False,
                logging_level=logging.ERROR,
                # No idle workers started ahead for tasks: this job runs actors only, and on a
                # small machine the spares' start-up takes the CPU the workers need.
                _system_config=None
                if address
                else {"enable_worker_prestart": False, "prestart_worker_first_driver": False},
                runtime_env={"env_vars": {k: os.environ[k] for k in passed_on if k in os.environ}},
            )
            stack.callback(ray.shutdown)
        if use_gpu is None:
            use_gpu = ray.cluster_resources().get("GPU", 0) >= workers
        where = f"the Ray cluster at {address}" if address else "this machine"
        print_fn(
            f"ray: {workers} worker{'s' * (workers > 1)} on {where}, "
            f"{'one GPU' if use_gpu else 'one CPU'} each"
        )
        # Ray Train's own files (its run's marker); the run's are in the run directory.
        storage = tempfile.mkdtemp(prefix="kvgg-ray-")
        stack.callback(shutil.rmtree, storage, ignore_errors=True)
        trainer = TensorflowTrainer(
            _worker_loop,
            train_loop_config={"recipe": recipe, "overwrite": overwrite, "cwd": os.getcwd()},
            scaling_config=train.ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=train.RunConfig(
                name=recipe.run.name,
                storage_path=storage,
                # Ray Train's notices (of each step in starting the workers, of a worker's
                # error with its traceback) go only to Ray's log files, not to the console:
                # the error reaches the caller as the worker raised it.
                logging_config=train.LoggingConfig(log_level="CRITICAL"),
            ),
        )
        try:
            # In a Ray of its own, Ctrl-C is a KeyboardInterrupt here, and leaving stops Ray
            # and the workers; in the caller's Ray, Ray Train's own Ctrl-C handler ends the run.
            _in_a_thread(trainer.fit) if owned else trainer.fit()
        except train.TrainingFailedError as exc:
            raise _worker_error(exc) from None
    return recipe.run_dir
