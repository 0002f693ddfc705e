"""Run by `conftest.kvgg_batch` as `python kvgg_batch.py REQUEST.json RESULT.json`.

Several `kvgg` command lines in ONE fresh Python, one after another, each through `kvgg`'s
own entry point (`keras_vgg.cli.main`, as `python -m keras_vgg.cli` calls it): TensorFlow
starts once instead of once per command. Each command gets its own stdout and stderr
(file descriptors 1 and 2 redirected to files, so what C++ code or a library's logging
writes is caught as in a real process) and its exit code: click's `SystemExit`, 0 when a
command returns, 1 with the traceback on stderr when an exception escapes (what the
interpreter would do). RESULT.json gets them in order, and the top-level packages
(tensorflow, keras, jax, torch) imported by the end. Not collected by pytest.
"""

import json
import os
import sys
import tempfile
import traceback

from keras_vgg.cli import main

HEAVY_PACKAGES = ("tensorflow", "keras", "jax", "torch")


def run_one(args: list[str]) -> dict:
    """One `kvgg ARGS` with fds 1 and 2 captured: {"returncode", "stdout", "stderr"}."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            main(args, prog_name="kvgg")
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
            if not isinstance(exit.code, (int, type(None))):
                print(exit.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - reported as the interpreter would
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        texts = []
        for captured in (out, err):
            captured.seek(0)
            texts.append(captured.read().decode(errors="replace"))
    return {"returncode": code, "stdout": texts[0], "stderr": texts[1]}


if __name__ == "__main__":
    request, result = sys.argv[1], sys.argv[2]
    with open(request, encoding="utf-8") as f:
        invocations = json.load(f)
    outcomes = [run_one(args) for args in invocations]
    imported = sorted(name for name in HEAVY_PACKAGES if name in sys.modules)
    with open(result, "w", encoding="utf-8") as f:
        json.dump({"results": outcomes, "imported": imported}, f)
