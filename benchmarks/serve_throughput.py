"""`kvgg serve` under 32 concurrent clients on loopback against calling the model directly.

Direct: the server's own model side (`keras_vgg.serve.Viewer`) scoring batches of 8 decoded
photographs in this process (`score_images`, the centre protocol at the model's test
scale), best of `--repeats`. Served: `kvgg serve` as a real process on a free port, 32
client threads each posting `--requests` single-image requests (JPEG bytes, `maps=none`)
one after another through `keras_vgg.serve.post_images`; every request's latency, the
whole run's images per second. Both in the same run, on the same model and photograph.
Goal: served >= 0.8x direct at batch 8.

    python benchmarks/serve_throughput.py                     # D at width 1/4, 112 crop
    python benchmarks/serve_throughput.py --config A --width 0.125 --crop 32
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import tempfile
import time
import urllib.request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from timing import best_times, cpu_name  # noqa: E402

from keras_vgg import build  # noqa: E402
from keras_vgg.evaluation import score_images  # noqa: E402
from keras_vgg.serve import Viewer, decode_upload, post_images, start_server  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="D")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=6, help="Per client, in turn.")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import skimage.data
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    with tempfile.TemporaryDirectory() as folder:
        model = build(
            args.config,
            width=args.width,
            fc_units=256,
            classes=1000,
            input_shape=(args.crop, args.crop, 3),
        )
        path = os.path.join(folder, "model.keras")
        model.save(path)
        try:
            process, url = start_server(
                path, "--batch-size", str(args.batch), env={**os.environ, "PYTHONPATH": ROOT}
            )
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        try:
            viewer = Viewer(path, batch_size=args.batch)
            pixels = decode_upload(jpeg, "chelsea.jpg")
            batch = [pixels] * args.batch

            net, scales = viewer.net, list(viewer.scales)

            def direct():
                score_images([net], batch, protocol="center", scales=scales)

            direct()  # compiled once
            direct_rate = args.batch / best_times({"direct": direct}, args.repeats)["direct"]

            post_images(url, [("chelsea.jpg", jpeg)], maps="none")  # the server's first call

            def client(_):
                latencies = []
                for _ in range(args.requests):
                    start = time.perf_counter()
                    status, answer = post_images(url, [("chelsea.jpg", jpeg)], maps="none")
                    latencies.append(time.perf_counter() - start)
                    if status != 200 or answer["images"][0]["error"]:
                        raise SystemExit(f"request failed: {status} {answer}")
                return latencies

            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                latencies = np.concatenate(list(pool.map(client, range(args.clients))))
            wall = time.perf_counter() - start
            with urllib.request.urlopen(url + "api/stats", timeout=30) as response:
                counted = json.loads(response.read())
        finally:
            process.send_signal(2)
            process.wait(timeout=60)
    served_rate = len(latencies) / wall
    print(f"CPU: {cpu_name()}")
    print(
        f"model: {args.config} at width {args.width}, {args.crop}x{args.crop} crop, 1000 classes; "
        f"photograph 451x300 (JPEG {len(jpeg)} bytes), centre protocol at Q = {scales}"
    )
    print(f"direct, batch {args.batch}: {direct_rate:.1f} images/s")
    print(
        f"served, {args.clients} clients x {args.requests} requests: {served_rate:.1f} images/s, "
        f"latency p50 {1000 * np.percentile(latencies, 50):.0f} ms, "
        f"p99 {1000 * np.percentile(latencies, 99):.0f} ms; "
        f"{counted['batches']} model calls, largest batch {counted['largest_batch']}"
    )
    print(f"ratio served / direct: {served_rate / direct_rate:.2f} (goal >= 0.8)")


if __name__ == "__main__":
    main()
