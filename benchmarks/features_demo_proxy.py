"""The features demo's proxy: settings scored on digits 0-4 only, never on 5-9.

`kvgg demo features` trains nets on digits 0-4 and scores their descriptors on digits 5-9.
Its setting (`demos.FeaturesSetting`: crop, epochs, seeds, scales Q, layer, ReLU tap,
per-scale norm) is chosen here, on the same function, `demos.run_features_demo`, with the
classes moved inside 0-4: in each fold the nets train on three digits and the SVMs are
scored on the other two (every image of them), with 2, 3 and 5 training images per class
and 10 seeded splits. The five folds hold out the pairs 3-4, 0-1, 1-2, 2-3, 0-4 (each digit
twice). A setting's score per N is the mean over the folds; its margin is the trained
nets' score minus the better of the two baselines (the same nets untrained, raw pixels);
the rule: the largest minimum over N of the margin, ties to the larger mean. Settings that
share training (recipe, epochs, seeds) share the runs.

    python benchmarks/features_demo_proxy.py --settings '2 nets;3 nets + fc1' --folds 5 -o proxy.jsonl

Prints a Markdown row per setting (per-N means, trained / untrained / pixels, and the
margins) and appends every fold's table to `-o` as JSON lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess

import numpy as np

from keras_vgg import demos

#: The setting the candidates change: two nets, fc2 after its ReLU, Q = 64 and 96, crop 64,
#: one epoch (absolute, so the names keep their meaning whatever the demo's constants are).
BASE = demos.FeaturesSetting(
    recipe=demos.FEATURES_DEMO_RECIPE,
    epochs=1,
    seeds=(0, 1),
    scales=(64, 96),
    layer="fc2",
    relu=True,
    per_scale_norm=False,
)
#: The candidates, by name: their changes to `BASE`.
THREE_PRE = {"seeds": (0, 1, 2), "relu": False}
THREE_QS = {"seeds": (0, 1, 2), "scales": (64, 80, 96)}
SETTINGS: dict[str, dict] = {
    "2 nets": {},
    "2 nets + fc2 before ReLU": {"relu": False},
    "3 nets": {"seeds": (0, 1, 2)},
    "3 nets + fc2 before ReLU": THREE_PRE,
    "4 nets": {"seeds": (0, 1, 2, 3)},
    "3 nets + fc1": {"seeds": (0, 1, 2), "layer": "fc1"},
    "3 nets + Q 64/80/96": THREE_QS,
    "3 nets + per-scale norm": {"seeds": (0, 1, 2), "per_scale_norm": True},
    "3 nets + fc2 before ReLU + 2 epochs": {**THREE_PRE, "epochs": 2},
    "3 nets + fc2 before ReLU + lr 1e-3": {
        **THREE_PRE,
        "recipe": (*demos.FEATURES_DEMO_RECIPE, "optimizer.lr=0.001"),
    },
    "3 nets + Q 64/80/96 + S 64-96": {
        **THREE_QS,
        "recipe": (*demos.FEATURES_DEMO_RECIPE, "data.train_scale=[64, 96]"),
    },
    "3 nets + Q 64/96/128 + S 64-128": {
        "seeds": (0, 1, 2),
        "scales": (64, 96, 128),
        "recipe": (*demos.FEATURES_DEMO_RECIPE, "data.train_scale=[64, 128]"),
    },
}
#: The held-out pairs of the folds (the nets train on the other three digits of 0-4).
FOLDS: tuple[tuple[str, str], ...] = (("3", "4"), ("0", "1"), ("1", "2"), ("2", "3"), ("0", "4"))


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line]
    return names[0] if names else "unknown CPU"


def setting_of(name: str) -> demos.FeaturesSetting:
    """The named candidate as a `demos.FeaturesSetting`."""
    return dataclasses.replace(BASE, **SETTINGS[name])


def run_name(setting: demos.FeaturesSetting, seen: tuple[str, ...]) -> str:
    """Runs are shared by the settings that train alike (recipe, epochs; seeds add runs)."""
    key = json.dumps([setting.recipe, setting.epochs])
    return f"proxy_{hashlib.sha1(key.encode()).hexdigest()[:8]}_{''.join(seen)}"


def score(name: str, folds: int, shots, splits: int, recipe: str, data: str, out: str | None):
    """Per N: each column's mean over the folds."""
    setting = setting_of(name)
    tables = []
    for held in FOLDS[:folds]:
        seen = tuple(c for c in "01234" if c not in held)
        result = demos.run_features_demo(
            recipe,
            data,
            setting=setting,
            classes=(seen, held),
            shots=shots,
            splits=splits,
            run_name=run_name(setting, seen),
            print_fn=lambda line: None,
        )
        tables.append(result.table)
        if out:
            with open(out, "a") as f:
                row = {"setting": name, "held_out": held, "table": result.table}
                f.write(json.dumps(row) + "\n")
    return {
        n: {c: float(np.mean([t[n][c] for t in tables])) for c in demos.FEATURES_DEMO_COLUMNS}
        for n in shots
    }


def margins(table: dict[int, dict[str, float]]) -> dict[int, float]:
    """Per N: the trained nets' score minus the better of the other columns (points)."""
    ours, others = demos.FEATURES_DEMO_COLUMNS[0], demos.FEATURES_DEMO_COLUMNS[1:]
    return {n: row[ours] - max(row[c] for c in others) for n, row in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--settings", default=";".join(SETTINGS), help="names of SETTINGS, separated by ;"
    )
    parser.add_argument("--folds", type=int, default=len(FOLDS))
    parser.add_argument("--shots", default="2,3,5")
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--recipe", default="recipes/demos.toml")
    parser.add_argument("--data", default="runs/digits72", help="digits at 72 px (written once)")
    parser.add_argument("-o", "--output", help="append each fold's table here (JSON lines)")
    args = parser.parse_args()
    shots = tuple(int(n) for n in args.shots.split(","))
    print(f"{_cpu()}, load average {os.getloadavg()[0]:.1f}; folds: {args.folds}")
    print("| setting | trained | untrained | pixels | margins | min |")
    print("|---|---|---|---|---|---|")
    for name in args.settings.split(";"):
        table = score(name, args.folds, shots, args.splits, args.recipe, args.data, args.output)
        cols = [
            " / ".join(f"{row[c]:.2f}" for row in table.values())
            for c in demos.FEATURES_DEMO_COLUMNS
        ]
        by_n = margins(table)
        spread = " / ".join(f"{m:+.2f}" for m in by_n.values())
        print(f"| {name} | {' | '.join(cols)} | {spread} | {min(by_n.values()):+.2f} |", flush=True)


if __name__ == "__main__":
    main()
