"""VGG-D on an accelerator: images/s and model FLOP utilisation, ours against PyTorch's VGG16.

Runs with Keras 3 on the JAX or PyTorch backend, without TensorFlow (the GPU machines here
have torch and JAX only). In one process:

- the accelerator's bf16 matrix rate, measured with a large bf16 matrix product (random
  data): the peak that model FLOP utilisation (MFU) is counted against;
- `keras_vgg.build("D")` under `mixed_bfloat16` with the paper's recipe
  (`recipes/d_256.toml`: N(0, 0.01) initialisation, dropout, SGD with momentum, weight
  decay as `kernel_regularizer`, as `kvgg fit` builds it): inference (`predict_on_batch`)
  and a full training step (`train_on_batch`: forward, loss with the decay terms,
  backward, update), under Keras's default compilation (XLA on JAX, eager on torch) and,
  on the torch backend, also `jit_compile=True` (`torch.compile`);
- the same for a PyTorch VGG16 (torchvision's at full size when installed, else the same
  layers from `keras_vgg.configs`) with channels_last and bf16 autocast, eager and
  `torch.compile`d: SGD with the same momentum and the same decay on the weights.

MFU = FLOPs per image (`keras_vgg.network.forward_flops`; three times that for a training
step) x images/s / the measured matrix rate. The last column is images/s over
`torch.compile`'s at the same kind and batch.

    python benchmarks/gpu_step.py --json gpu_step.json                 # full size, on a GPU
    python benchmarks/gpu_step.py --image-size 32 --width 0.0625 --batch-sizes 2 --steps 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# JAX takes 75 % of the GPU's memory at start by default: the torch section needs its share.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_vgg  # noqa: E402
from keras_vgg.configs import CONFIGS, scaled_filters  # noqa: E402
from keras_vgg.files import atomic_text  # noqa: E402
from keras_vgg.network import forward_flops  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "d_256.toml"
CLASSES = 1000
KINDS = ("inference", "training")
REFERENCE = "torch VGG16 torch.compile"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="64,128,256", help="comma-separated")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0, help="filters x width")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument(
        "--backend-only", action="store_true", help="only the Keras model, no PyTorch VGG16"
    )
    parser.add_argument(
        "--no-torch-compile",
        action="store_true",
        help="skip the torch.compile variants (minutes of compiling on a CPU): quick checks",
    )
    parser.add_argument("--json", metavar="OUT", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes: comma-separated integers. Received: {args.batch_sizes}")
    if min(args.batch_sizes) < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--batch-sizes and --steps must be positive, --warmup at least 0")
    return args


# === The accelerator ===


def _torch():
    """torch, or None where it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _jax_accelerator():
    import jax

    device = jax.devices()[0]
    return None if device.platform == "cpu" else device.device_kind


def device_name() -> str:
    """The accelerator the Keras backend runs on, or the CPU's model name."""
    if keras.backend.backend() == "jax":
        name = _jax_accelerator()
    else:
        torch = _torch()
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return name or f"CPU: {cpu_model()}"


def cpu_model() -> str:
    """The CPU's model name, as lscpu prints it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def on_accelerator() -> bool:
    return not device_name().startswith("CPU:")


def matmul_rate(size: int, repeats: int = 10) -> float:
    """bf16 FLOP/s of a size x size x size matrix product on the Keras backend's device.

    Random data (a product of zeros runs faster than real work), three products to warm
    up, then the mean of `repeats`.
    """
    flops = 2 * size**3
    if keras.backend.backend() == "jax":
        import jax
        import jax.numpy as jnp

        a, b = (jax.random.normal(jax.random.key(i), (size, size), jnp.bfloat16) for i in (0, 1))
        product = jax.jit(jnp.matmul)
        for _ in range(3):
            product(a, b).block_until_ready()
        start = time.perf_counter()
        for _ in range(repeats):
            c = product(a, b)
        c.block_until_ready()
    else:
        torch = _torch()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in (0, 1))
        for _ in range(3):
            torch.matmul(a, b)
        synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b)
        synchronize()
    return flops * repeats / (time.perf_counter() - start)


def synchronize() -> None:
    """Waits for torch's queued GPU work (a no-op on the CPU or without torch)."""
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


# === Ours: keras_vgg.build("D") as the paper trains it ===


def keras_model(image_size: int, width: float, jit_compile) -> keras.Model:
    """`build("D")` in mixed_bfloat16 with the D recipe's init, dropout, decay and SGD."""
    recipe = keras_vgg.load_recipe(str(RECIPE))
    m, o = recipe.model, recipe.optimizer
    model = keras_vgg.build(
        m.config,
        input_shape=(image_size, image_size, 3),
        classes=CLASSES,
        dropout=m.dropout,
        width=width,
        fc_units=m.fc_units,
        kernel_initializer=keras.initializers.RandomNormal(stddev=1e-2),
        # Caffe's decay d is the loss term 0.5 * d * ||w||^2 (keras_vgg.training.setup).
        kernel_regularizer=keras.regularizers.L2(o.weight_decay / 2),
        dtype="mixed_bfloat16",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=o.lr, momentum=o.momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        jit_compile=jit_compile,
    )
    return model


def time_steps(step, steps: int, warmup: int) -> float:
    """Seconds per step: `warmup` untimed calls, then the mean of `steps` timed ones.

    The device's queued work is waited for after the warm-up and before the clock stops
    (`wait`): a JAX step's output is waited for, torch's queue is synchronised; Keras's
    calls return host values, so each of its steps waits for the device anyway.
    """
    out = None
    for _ in range(warmup):
        out = step()
    wait(out)
    start = time.perf_counter()
    for _ in range(steps):
        out = step()
    wait(out)
    return (time.perf_counter() - start) / steps


def wait(out) -> None:
    """Waits until `out` (a step's output, e.g. a JAX array) and torch's queued GPU work are done."""
    if hasattr(out, "block_until_ready"):
        out.block_until_ready()
    synchronize()


def measure_keras(model, batch: int, image_size: int, args) -> dict[str, float]:
    """Images/s of `predict_on_batch` and `train_on_batch`, inputs already on the device."""
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(
        rng.uniform(-128, 128, (batch, image_size, image_size, 3)).astype("float32")
    )
    y = keras.ops.convert_to_tensor(rng.integers(0, CLASSES, (batch,)).astype("int32"))
    # Both return host values, so each step waits for the device: no queue builds up.
    infer = time_steps(lambda: model.predict_on_batch(x), args.steps, args.warmup + 1)
    train = time_steps(lambda: model.train_on_batch(x, y), args.steps, args.warmup + 1)
    return {"inference": batch / infer, "training": batch / train}


def measure_stateless(model, batch: int, image_size: int, args) -> dict[str, float]:
    """Images/s of one jitted JAX function per step over the model's state (Keras's stateless
    API: `stateless_call`, `optimizer.stateless_apply`), as a hand-written JAX loop runs it.

    The state stays on the device from one step to the next; `train_on_batch`
    instead writes it back into the Keras variables and returns the loss to the host at
    every step.
    """
    import jax

    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(
        rng.uniform(-128, 128, (batch, image_size, image_size, 3)).astype("float32")
    )
    y = jax.numpy.asarray(rng.integers(0, CLASSES, (batch,)).astype("int32"))
    loss_fn, optimizer = model.loss, model.optimizer
    state = [
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    ]

    def loss_of(trainable, non_trainable):
        pred, non_trainable, losses = model.stateless_call(
            trainable, non_trainable, x, training=True, return_losses=True
        )
        return loss_fn(y, pred) + sum(losses), non_trainable

    @jax.jit
    def infer(trainable, non_trainable):
        return model.stateless_call(trainable, non_trainable, x)[0]

    @jax.jit
    def train(trainable, non_trainable, optimizer_state):
        (loss, non_trainable), grads = jax.value_and_grad(loss_of, has_aux=True)(
            trainable, non_trainable
        )
        trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, grads, trainable)
        return trainable, non_trainable, optimizer_state, loss

    def train_step():
        *state[:], loss = train(*state)
        return loss

    rates = {
        kind: batch / time_steps(step, args.steps, args.warmup + 1)
        for kind, step in (
            ("inference", lambda: infer(state[0], state[1])),
            ("training", train_step),
        )
    }
    return rates


def attempt(failures: list[str], what: str, measure):
    """`measure()`, or None with one line in `failures` (a one-shot GPU run keeps going)."""
    try:
        return measure()
    except Exception as exc:  # e.g. out of memory at one batch, a compiler error
        line = f"{what}: {type(exc).__name__}: {str(exc).strip().splitlines()[:1]}"
        print(f"failed: {line}", file=sys.stderr, flush=True)
        failures.append(line)
        return None


def keras_implementations(args) -> dict:
    """{implementation: measure(batch) -> {kind: images/s}} for ours under each compilation."""
    modes = {f"keras_vgg D ({keras.backend.backend()}, default compile)": "auto"}
    if keras.backend.backend() == "torch" and not args.no_torch_compile:
        modes["keras_vgg D (torch, jit_compile=True)"] = True
    implementations = {}
    for name, jit_compile in modes.items():
        model = keras_model(args.image_size, args.width, jit_compile)
        implementations[name] = lambda b, m=model: measure_keras(m, b, args.image_size, args)
        if keras.backend.backend() == "jax":
            implementations["keras_vgg D (jax, jitted stateless step)"] = lambda b, m=model: (
                measure_stateless(m, b, args.image_size, args)
            )
    return implementations


# === The reference: PyTorch's VGG16 ===


def torch_vgg16(torch, image_size: int, width: float):
    """torchvision's vgg16 at full size when installed, else the same layers by hand.

    The hand-built net takes its layers from `keras_vgg.configs` (Table 1's one home) and
    flattens the last pooled map directly, as ours does at any input size (torchvision's
    adaptive 7x7 average pooling is the identity only at 224x224).
    """
    if width == 1.0 and image_size == 224:
        try:
            import torchvision
        except ImportError:
            pass
        else:
            return torchvision.models.vgg16(weights=None), "torchvision vgg16"
    nn = torch.nn
    layers, channels = [], 3
    for block in CONFIGS["D"]:
        for conv in block:
            filters = scaled_filters(conv.filters, width)
            layers += [nn.Conv2d(channels, filters, conv.kernel_size, padding="same"), nn.ReLU()]
            channels = filters
        layers.append(nn.MaxPool2d(2))
    side = image_size // 2 ** len(CONFIGS["D"])
    units = 4096
    head = [
        nn.Flatten(),
        nn.Linear(channels * side * side, units),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(units, units),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(units, CLASSES),
    ]
    return nn.Sequential(*layers, *head), "hand-built torch VGG16"


def torch_steps(torch, model, optimizer, x, y) -> dict:
    """{kind: step}: bf16-autocast inference, and a training step (loss, backward, SGD)."""
    device = x.device.type
    loss_fn = torch.nn.CrossEntropyLoss()

    def infer():
        model.eval()
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
            model(x)

    def train():
        model.train()
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return {"inference": infer, "training": train}


def torch_implementations(args) -> tuple[dict, str]:
    """({implementation: measure(batch) -> {kind: images/s}}, the net's source).

    PyTorch's VGG16 eager and `torch.compile`d with static shapes (`dynamic=False`: one graph
    per batch size, as a training run of one batch size compiles it).
    """
    torch = _torch()
    recipe = keras_vgg.load_recipe(str(RECIPE))
    o = recipe.optimizer
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    net, source = torch_vgg16(torch, args.image_size, args.width)
    net = net.to(device, memory_format=torch.channels_last)
    weights = [p for p in net.parameters() if p.ndim > 1]
    biases = [p for p in net.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": weights, "weight_decay": o.weight_decay}, {"params": biases}],
        lr=o.lr,
        momentum=o.momentum,
    )
    variants = {"torch VGG16 eager": net}
    if not args.no_torch_compile:
        variants[REFERENCE] = torch.compile(net, dynamic=False)

    def measure(model, batch: int) -> dict[str, float]:
        x = torch.empty(batch, 3, args.image_size, args.image_size, device=device)
        x = x.uniform_(-128, 128).to(memory_format=torch.channels_last)
        y = torch.randint(0, CLASSES, (batch,), device=device)
        rates = {}
        for kind, step in torch_steps(torch, model, optimizer, x, y).items():
            # A first call compiles; the warm-up steps then run the compiled graph.
            rates[kind] = batch / time_steps(step, args.steps, args.warmup + 1)
        return rates

    return {name: lambda b, m=model: measure(m, b) for name, model in variants.items()}, source


# === The table ===


def rows_of(sections, flops_per_image: int, peak: float) -> list[dict]:
    """One row per (implementation, kind, batch): images/s, TFLOP/s, MFU, x torch.compile."""
    rows = []
    for name, rates in sections.items():
        for (kind, batch), rate in sorted(rates.items()):
            flops = flops_per_image * (3 if kind == "training" else 1)
            reference = sections.get(REFERENCE, {}).get((kind, batch))
            rows.append(
                {
                    "implementation": name,
                    "kind": kind,
                    "batch": batch,
                    "images_per_s": rate,
                    "tflop_per_s": rate * flops / 1e12,
                    "mfu": rate * flops / peak,
                    "vs_torch_compile": rate / reference if reference else None,
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| implementation | kind | batch | img/s | TFLOP/s | MFU | x torch.compile |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "" if r["vs_torch_compile"] is None else f"{r['vs_torch_compile']:.2f}"
        lines.append(
            f"| {r['implementation']} | {r['kind']} | {r['batch']} | {r['images_per_s']:.1f} "
            f"| {r['tflop_per_s']:.1f} | {100 * r['mfu']:.1f} % | {ratio} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    backend = keras.backend.backend()
    if backend not in ("jax", "torch"):
        sys.exit(f"gpu_step.py: KERAS_BACKEND must be jax or torch. Received: {backend}")
    torch = _torch()
    with_torch = not args.backend_only and torch is not None
    size = 8192 if on_accelerator() else 1024
    peak = matmul_rate(size)
    probe = keras_vgg.build(
        "D", input_shape=(args.image_size, args.image_size, 3), width=args.width
    )
    flops_per_image = forward_flops(probe)
    del probe
    result = {
        "device": device_name(),
        "cpu": cpu_model(),
        "backend": backend,
        "keras": keras.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "image_size": args.image_size,
        "width": args.width,
        "steps": args.steps,
        "warmup": args.warmup,
        "matmul_size": size,
        "peak_bf16_flop_per_s": peak,
        "forward_flops_per_image": flops_per_image,
        "torch_reference": None,
        "rows": [],
        "failures": [],
    }
    print(
        f"device {result['device']}, Keras {keras.__version__} on {backend}, "
        f"torch {result['torch']}"
    )
    print(
        f"bf16 matrix rate ({size}^3): {peak / 1e12:.1f} TFLOP/s; VGG-D at "
        f"{args.image_size}x{args.image_size}, width {args.width}: "
        f"{flops_per_image / 1e9:.4g} GFLOP per image forward, x3 per training image"
    )

    def save(sections) -> None:
        # Written after each measurement: a run stopped at its time limit keeps what it measured.
        result["rows"] = rows_of(sections, flops_per_image, peak)
        if args.json:
            atomic_text(args.json, json.dumps(result, indent=2) + "\n")

    implementations = keras_implementations(args)
    if with_torch:
        torch_rates, result["torch_reference"] = torch_implementations(args)
        implementations.update(torch_rates)
        print(f"PyTorch reference: {result['torch_reference']}")
    elif not args.backend_only:
        print("PyTorch reference: torch is not installed")
    # Batch by batch, every implementation at each: a run stopped at its time limit still
    # holds complete comparisons for the batches it finished.
    sections = {name: {} for name in implementations}
    for batch in args.batch_sizes:
        for name, measure in implementations.items():
            began = time.perf_counter()
            rates = attempt(
                result["failures"], f"{name}, batch {batch}", lambda m=measure, b=batch: m(b)
            )
            for kind, rate in (rates or {}).items():
                sections[name][(kind, batch)] = rate
                print(
                    f"  {name}, {kind}, batch {batch}: {rate:.1f} img/s "
                    f"({time.perf_counter() - began:.0f} s with compiling)",
                    flush=True,
                )
            save(sections)
    print(table(result["rows"]))
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
