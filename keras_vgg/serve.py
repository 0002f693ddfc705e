"""`kvgg serve`: a local web page (and its JSON API) to look through a classifier.

The model side (`Viewer`) is the package's own: the model comes through the one door
(`keras_vgg.handle.open_model`, a classifier, or an exported artifact), its posteriors are
`kvgg predict`'s (`score_nets` / `ExportedNet`, `score_images`, `top_classes`: the same
protocol, scales and flips), its maps `kvgg explain`'s (`keras_vgg.explain.image_map`: the
dense class score map of Sec. 3.2 and Grad-CAM), its boxes `kvgg localize predict`'s
(`keras_vgg.localization.Localizer`, protocol 2).

One worker thread owns the model (`Batcher`): requests put their decoded images on a
queue; the worker takes up to `batch_size` waiting images and scores them in one call, so
concurrent requests never run the model concurrently. Uploads are bounded before they are
decoded (`keras_vgg.limits`: `MAX_UPLOAD_BYTES`, `MAX_UPLOAD_PIXELS` from the header,
`MAX_UPLOAD_FILES`, `MAX_WAITING_IMAGES`); a bad upload is one line in its image's `error`,
and the server keeps serving.

The web side is Starlette on uvicorn (the `serve` extra), imported only by `make_app` and
`serve`: the page (`keras_vgg/_data/serve.html`) and `GET /api/model`, `GET /api/stats`,
`POST /api/predict` (docs/serve.md).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import functools
import io
import os
import queue
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_vgg import limits
from keras_vgg.data import check, transforms
from keras_vgg.drawing import overlay
from keras_vgg.evaluation.exported import ExportedNet
from keras_vgg.evaluation.prediction import check_top, top_classes
from keras_vgg.evaluation.protocols import (
    PROTOCOLS,
    check_protocol,
    combined_protocols,
    predict_scale,
    resolve_scales,
    score_images,
)
from keras_vgg.evaluation.scoring import score_nets
from keras_vgg.explain import CamNet, class_named, image_map
from keras_vgg.handle import PREPROCESSING_NAMES, convention_name, open_model
from keras_vgg.localization.evaluate import Localizer

__all__ = [
    "MAP_SIDE",
    "MAPS",
    "Batcher",
    "Busy",
    "Job",
    "Viewer",
    "decode_upload",
    "make_app",
    "page",
    "post_images",
    "serve",
    "served_url",
    "start_server",
]

#: The longer side of the overlays a response carries (larger images are shown smaller).
MAP_SIDE = 512
#: The maps of a Keras classifier, as the page and `/api/predict` name them.
MAPS = ("dense", "gradcam")
#: What the page reads the JSON from, as a data URL.
_PNG_URL = "data:image/png;base64,"


#: The line `serve` prints once it listens; `served_url` reads the URL back from it.
_URL_LINE = "kvgg: serving {name} on {url} (Ctrl-C stops)"


def served_url(process, timeout: float = 300.0) -> tuple[str, list[str]]:
    """The URL a `kvgg serve` process prints once it listens, read from its stderr.

    Args:
        process: A `subprocess.Popen` of `kvgg serve ...` with `stderr=subprocess.PIPE`
            and `text=True`; its stderr is read by a daemon thread from now on.
        timeout: Seconds to wait for the line.

    Returns:
        (the URL, the list of stderr lines read so far: it keeps growing).

    Raises:
        RuntimeError: with the last of stderr, if the process ends or `timeout` passes first.
    """
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    prefix, suffix = _URL_LINE.split("{url}")
    prefix = prefix.split("{name}")[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        for line in list(lines):
            if line.startswith("kvgg: serving ") and prefix in line:
                return line.split(prefix, 1)[1].split(suffix.rstrip())[0].strip(), lines
        time.sleep(0.1)
    raise RuntimeError(f"kvgg serve did not start: {''.join(lines)[-2000:]}")


def start_server(
    model: str, *options: str, env: dict[str, str] | None = None, timeout: float = 300.0
):
    """`kvgg serve MODEL --port 0 OPTIONS...` as a real process, once it listens.

    Returns:
        (its `subprocess.Popen`, stderr piped; the URL it serves on).

    Raises:
        RuntimeError: with the last of its stderr, if it ends or `timeout` passes before it
            listens (the process is killed).
    """
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "keras_vgg.cli", "serve", model, "--port", "0", *options],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        return process, served_url(process, timeout)[0]
    except RuntimeError:
        process.kill()
        raise


class Busy(RuntimeError):
    """More images wait for the model than `limits.MAX_WAITING_IMAGES` (HTTP 503)."""


@dataclasses.dataclass
class Job:
    """One decoded image waiting for the model, and what its request asks of it.

    Attributes:
        name: The upload's file name.
        pixels: uint8 RGB (H, W, 3).
        protocol: The testing protocol of its posteriors.
        top: How many classes.
        maps: Whether to draw the maps (and boxes).
        class_index: The class of the maps (default: the image's top class).
    """

    name: str
    pixels: np.ndarray
    protocol: str = "center"
    top: int = 5
    maps: bool = True
    class_index: int | None = None


class Viewer:
    """A classifier (and optionally a localisation net) ready to answer for raw images.

    Args:
        model: A classifier for the door (a `.keras` file, run directory, weights file, a
            `keras.Model` or `ModelHandle`) or an exported artifact (posteriors only: it
            holds neither a dense score map nor gradients).
        localizer: A localisation net (Appendix A) whose boxes the classifier rates
            (protocol 2, `Localizer`), or None.
        preprocessing: The input convention of a model that records none.
        batch_size: The most images per model call.

    Raises:
        ValueError: the door's refusals (one line naming the model), or a localiser with an
            artifact.
    """

    def __init__(
        self,
        model: Any,
        *,
        localizer: Any = None,
        preprocessing: Any = None,
        batch_size: int = 8,
    ):
        limits.check_count(batch_size, "--batch-size", limits.MAX_BATCH_SIZE)
        self.batch_size = batch_size
        self.handle = open_model(
            model, needs="classifier", preprocessing=preprocessing, command="kvgg serve"
        )
        self.record = self.handle.info
        self.cam = self.score_net = self.localizer = None
        if self.handle.kind == "artifact":
            if localizer is not None:
                raise ValueError(
                    f"{self.handle.source}: {self.handle.describe()}; --localizer needs a Keras "
                    "classifier (it rates the boxes densely): give the .keras file or run "
                    "directory it was exported from"
                )
            net = ExportedNet(self.handle.source, batch_size=batch_size)
            self.net: Any = net
            self.protocols: tuple[str, ...] = (net.info.protocol,)
            self.flip = bool(net.info.flip) if net.info.protocol == "dense" else True
            self.scales: tuple[int, ...] = (predict_scale(self.record.train_scale),)
        else:
            # As `kvgg predict`: the net of `score_nets`, the default test scale.
            self.score_net = self.net = score_nets([self.handle], batch_size, "logits")[0]
            self.protocols = combined_protocols(PROTOCOLS)
            self.flip = True
            self.scales = resolve_scales((predict_scale(self.record.train_scale),), [self.handle])
            self.cam = CamNet(self.handle, command="kvgg serve")
            if localizer is not None:
                self.localizer = Localizer([localizer], [self.handle], top=5, batch_size=batch_size)
        self.classes = int(self.net.classes)
        # Each class's name as `kvgg predict` prints it (the top class of a one-hot row).
        one_hot = top_classes(np.eye(self.classes), self.record, self.classes, 1)
        self.class_names = tuple(row[0][1] for row in one_hot)

    @property
    def convention(self) -> str:
        """The input convention's `--preprocessing` name, or "custom" (the record holds it)."""
        name = convention_name(self.record.preprocessing)
        return name if name in PREPROCESSING_NAMES else "custom"

    @property
    def maps(self) -> tuple[str, ...]:
        """The maps this model draws (none for an artifact)."""
        return () if self.cam is None else MAPS

    def describe(self) -> dict[str, Any]:
        """What the page shows of the model: `GET /api/model` (and `kvgg serve --dry-run`)."""
        h = self.handle
        loc = None
        if self.localizer is not None:
            box_net = self.localizer.localizers[0]
            loc = {
                "name": box_net.name,
                "source": box_net.source,
                "box_mode": box_net.box_mode,
                "scales": list(self.localizer.scales),
            }
        return {
            "name": h.name,
            "source": h.source,
            "kind": h.kind,
            "label": h.label,
            "description": h.describe(),
            "config": h.config,
            "convention": self.convention,
            "record": self.record.to_dict(),
            "classes": list(self.class_names),
            "crop_size": int(self.net.crop_size),
            "protocols": list(self.protocols),
            "protocol": self.protocols[0],
            "scales": list(self.scales),
            "flip": self.flip,
            "maps": list(self.maps),
            "localizer": loc,
            "batch_size": self.batch_size,
            "limits": {
                "upload_bytes": limits.MAX_UPLOAD_BYTES.value(),
                "upload_pixels": limits.MAX_UPLOAD_PIXELS.value(),
                "images_per_request": limits.MAX_UPLOAD_FILES.value(),
                "waiting_images": limits.MAX_WAITING_IMAGES.value(),
            },
        }

    def options(
        self, protocol: str | None, top: Any, maps: str | None, class_name: str | None
    ) -> dict[str, Any]:
        """A request's options, checked: the `Job` fields other than the image.

        Raises:
            ValueError: one line naming the field.
        """
        protocol = protocol or self.protocols[0]
        check_protocol(protocol)
        if protocol not in self.protocols:
            raise ValueError(
                f"protocol: {self.handle.describe()} runs only {', '.join(self.protocols)}. "
                f"Received: {protocol!r}"
            )
        try:
            top = check_top(int(top)) if top not in (None, "") else 5
        except (TypeError, ValueError):
            raise ValueError(f"top: must be a positive integer. Received: {top!r}") from None
        if maps not in (None, "", "png", "none"):
            raise ValueError(f"maps: must be png or none. Received: {maps!r}")
        try:
            index = class_named(class_name or None, self.class_names)
        except ValueError as exc:
            raise ValueError(str(exc).replace("--class", "class", 1)) from None
        return {
            "protocol": protocol,
            "top": min(top, self.classes),
            "maps": maps != "none",
            "class_index": index,
        }

    def run(self, jobs: Sequence[Job]) -> list[dict[str, Any] | BaseException]:
        """Answers a batch of jobs: one model call per protocol, then each image's maps.

        Returns:
            Per job, its JSON-ready answer (`/api/predict`'s image entry) or the exception
            that stopped it.
        """
        out: list[Any] = [None] * len(jobs)
        by_protocol: dict[str, list[int]] = {}
        for k, job in enumerate(jobs):
            by_protocol.setdefault(job.protocol, []).append(k)
        for protocol, members in by_protocol.items():
            try:
                posteriors = score_images(
                    [self.net],
                    [jobs[k].pixels for k in members],
                    protocol=protocol,
                    scales=self.scales,
                    flip=self.flip,
                )
            except Exception as exc:  # noqa: BLE001 - each image gets the reason
                for k in members:
                    out[k] = exc
                continue
            for k, posterior in zip(members, posteriors, strict=True):
                try:
                    out[k] = self._answer(jobs[k], posterior)
                except Exception as exc:  # noqa: BLE001 - this image's reason
                    out[k] = exc
        return out

    def _answer(self, job: Job, posterior: np.ndarray) -> dict[str, Any]:
        (top,) = top_classes(posterior[None], self.record, self.classes, job.top)
        height, width = job.pixels.shape[:2]
        entry: dict[str, Any] = {
            "name": job.name,
            "width": int(width),
            "height": int(height),
            "predictions": [
                {"class_id": cid, "name": name, "probability": float(p)} for cid, name, p in top
            ],
            "error": None,
            "maps": None,
            "boxes": None,
        }
        if not job.maps:
            return entry
        label = int(np.argmax(posterior)) if job.class_index is None else job.class_index
        if self.cam is not None:
            entry["maps"] = self.draw_maps(job.pixels, label)
        if self.localizer is not None:
            entry["boxes"] = [g.to_dict() for g in self.localizer.localize(job.pixels)]
        return entry

    def draw_maps(self, pixels: np.ndarray, label: int) -> dict[str, Any]:
        """The dense score map and Grad-CAM of class `label` as overlays (PNG data URLs)
        at `MAP_SIDE` on the longer side at most (`kvgg explain`'s pictures)."""
        height, width = pixels.shape[:2]
        shrink = min(1.0, MAP_SIDE / max(height, width))
        size = (max(1, round(height * shrink)), max(1, round(width * shrink)))
        shown = pixels
        if size != (height, width):
            resized = Image.fromarray(pixels).resize(size[::-1], Image.BILINEAR)
            shown = np.asarray(resized, np.uint8)
        found: dict[str, Any] = {"class": self.class_names[label], "width": size[1]}
        found["height"] = size[0]
        for method, net in (("dense", self.score_net), ("gradcam", self.cam)):
            heat, _, posterior = image_map(net, pixels, label, scale=self.scales[0], size=size)
            text = f"{self.class_names[label]} {posterior[label]:.2f}"
            buffer = io.BytesIO()
            overlay(shown, heat, text).save(buffer, format="PNG")
            found[method] = _PNG_URL + base64.b64encode(buffer.getvalue()).decode("ascii")
        return found


def decode_upload(data: bytes, name: str) -> np.ndarray:
    """An uploaded image file as uint8 RGB (H, W, 3), decoded as `kvgg predict` decodes.

    Refused before decoding: more bytes than `limits.MAX_UPLOAD_BYTES`, no bytes, a header
    declaring more pixels than `limits.MAX_UPLOAD_PIXELS` (a decompression bomb). A file
    that does not decode is named with the data checker's reason
    (`keras_vgg.data.check.inspect_file`: not an image, truncated JPEG, ...).

    Raises:
        ValueError: one line, the reason (without the name: the answer names the image).
    """
    limit = limits.MAX_UPLOAD_BYTES.value()
    if len(data) > limit:
        raise ValueError(
            f"too big: {len(data)} bytes, over the limit of {limit} "
            f"({limits.MAX_UPLOAD_BYTES.how_to_raise()})"
        )
    if not data:
        raise ValueError("empty file (0 bytes)")
    header = limits.image_header(data)
    pixels = limits.MAX_UPLOAD_PIXELS.value()
    if header is not None:
        problem = limits.too_many_pixels(header[1], header[2], bound=limits.MAX_UPLOAD_PIXELS)
        if problem:
            raise ValueError(f"too large: {problem}")
    try:
        return _decoder(pixels)(tf.constant(data)).numpy()
    except tf.errors.OpError:
        pass
    with tempfile.TemporaryDirectory() as folder:  # the checker reads files
        path = os.path.join(folder, "upload")
        with open(path, "wb") as f:
            f.write(data)
        problems = check.inspect_file(path, max_pixels=pixels).problems
    raise ValueError("; ".join(problems) if problems else "cannot be decoded")


@functools.cache
def _decoder(max_pixels: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """`transforms.decode_image` compiled once: its header checks are some sixty small ops,
    ~0.2 s a file eagerly on a busy 2-core machine, ~10 ms as one graph."""
    return tf.function(
        lambda contents: transforms.decode_image(contents, max_pixels),
        input_signature=[tf.TensorSpec([], tf.string)],
    )


class Batcher:
    """One worker thread that owns the model: jobs queue up, up to `batch_size` run at once.

    Args:
        viewer: The model side.
        max_waiting: The most images queued (default `limits.MAX_WAITING_IMAGES`).
    """

    def __init__(self, viewer: Viewer, max_waiting: int | None = None):
        self.viewer = viewer
        self.max_waiting = limits.MAX_WAITING_IMAGES.value(max_waiting)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self.batches = 0
        self.images = 0
        self.largest = 0
        self.running = 0
        self.most_running = 0
        self._thread = threading.Thread(target=self._loop, name="kvgg-serve-model", daemon=True)
        self._thread.start()

    def submit(self, jobs: Sequence[Job]) -> list[concurrent.futures.Future]:
        """Queues jobs; each future gets its answer (or exception).

        Raises:
            Busy: when the queue would hold more than `max_waiting` images.
        """
        with self._lock:
            if self._waiting + len(jobs) > self.max_waiting:
                raise Busy(
                    f"busy: {self._waiting} images wait for the model, the limit is "
                    f"{self.max_waiting} ({limits.MAX_WAITING_IMAGES.how_to_raise()}); try again"
                )
            self._waiting += len(jobs)
        futures = []
        for job in jobs:
            future: concurrent.futures.Future = concurrent.futures.Future()
            self._queue.put((job, future))
            futures.append(future)
        return futures

    def stats(self) -> dict[str, int]:
        """Model calls so far: `GET /api/stats`."""
        return {
            "batches": self.batches,
            "images": self.images,
            "largest_batch": self.largest,
            "most_running_at_once": self.most_running,
            "waiting": self._waiting,
        }

    def close(self) -> None:
        """Stops the worker once the queued jobs are answered."""
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.viewer.batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._run(batch)
            if stop:
                return

    def _run(self, batch) -> None:
        with self._lock:
            self._waiting -= len(batch)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            answers = self.viewer.run([job for job, _ in batch])
        except BaseException as exc:  # noqa: BLE001 - every waiting request is answered
            answers = [exc] * len(batch)
        finally:
            with self._lock:
                self.running -= 1
                self.batches += 1
                self.images += len(batch)
                self.largest = max(self.largest, len(batch))
        for (_, future), answer in zip(batch, answers, strict=True):
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)


def page() -> str:
    """The page's HTML (package data: `keras_vgg/_data/serve.html`)."""
    return resources.files("keras_vgg").joinpath("_data/serve.html").read_text(encoding="utf-8")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _error_name(name: str | None, k: int) -> str:
    name = os.path.basename(str(name or "")).strip()[:200]
    return name or f"image {k + 1}"


def make_app(viewer: Viewer, batcher: Batcher):
    """The Starlette application: the page, `/api/model`, `/api/stats`, `/api/predict`.

    Raises:
        ModuleNotFoundError: without the `serve` extra (starlette, python-multipart).
    """
    from starlette.applications import Starlette
    from starlette.datastructures import UploadFile
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    files_limit = limits.MAX_UPLOAD_FILES.value()
    bytes_limit = limits.MAX_UPLOAD_BYTES.value()
    # The whole body: every file at its limit, and the form's small fields.
    body_limit = files_limit * bytes_limit + 2**20
    html = page()

    def refuse(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message, "images": []}, status_code=status)

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(html)

    async def model(request: Request) -> JSONResponse:
        return JSONResponse(viewer.describe())

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(batcher.stats())

    async def predict(request: Request) -> JSONResponse:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > body_limit:
            return refuse(f"request too large: {length} bytes, over {body_limit}", 413)
        try:
            form = await request.form(
                max_files=files_limit, max_fields=16, max_part_size=64 * 2**10
            )
        except Exception as exc:  # noqa: BLE001 - the parser's reason, in one line
            if "too many files" in str(exc).lower():
                return refuse(
                    f"too many images in one request: at most {files_limit} "
                    "(KVGG_MAX_UPLOAD_FILES raises it)",
                    413,
                )
            return refuse(f"not a multipart/form-data request with image files: {_one_line(exc)}")
        try:
            fields = {k: form.get(k) for k in ("protocol", "top", "maps", "class")}
            fields = {**fields, **{k: v for k, v in request.query_params.items() if k in fields}}
            if any(not isinstance(v, (str, type(None))) for v in fields.values()):
                raise ValueError("protocol, top, maps and class are text fields, not files")
            options = viewer.options(
                fields["protocol"], fields["top"], fields["maps"], fields["class"]
            )
            uploads = form.getlist("image")
            if not uploads:
                raise ValueError("no image: send the files as multipart/form-data fields 'image'")
            if not all(isinstance(u, UploadFile) for u in uploads):
                raise ValueError("image: must be files (multipart/form-data), not text")
            entries: list[dict[str, Any]] = []
            jobs = []
            for k, upload in enumerate(uploads):
                name = _error_name(upload.filename, k)
                data = await upload.read(bytes_limit + 1)
                size = upload.size if upload.size is not None else len(data)
                try:
                    if size > bytes_limit:
                        raise ValueError(
                            f"too big: {size} bytes, over the limit of {bytes_limit} "
                            f"({limits.MAX_UPLOAD_BYTES.how_to_raise()})"
                        )
                    pixels = await asyncio.to_thread(decode_upload, data, name)
                except ValueError as exc:
                    entries.append({"name": name, "error": _one_line(exc)})
                    continue
                entries.append({"name": name})
                jobs.append((len(entries) - 1, Job(name, pixels, **options)))
        except ValueError as exc:
            return refuse(_one_line(exc))
        finally:
            await form.close()
        try:
            futures = batcher.submit([job for _, job in jobs])
        except Busy as exc:
            return refuse(str(exc), 503)
        for (k, job), future in zip(jobs, futures, strict=True):
            try:
                entries[k] = await asyncio.wrap_future(future)
            except Exception as exc:  # noqa: BLE001 - this image's reason; the server goes on
                entries[k] = {"name": job.name, "error": _one_line(exc)}
        body = {
            "model": viewer.handle.name,
            "protocol": options["protocol"],
            "scales": list(viewer.scales),
            "images": entries,
        }
        return JSONResponse(body, status_code=200 if jobs else 400)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/model", model),
            Route("/api/stats", stats),
            Route("/api/predict", predict, methods=["POST"]),
        ]
    )


def post_images(
    url: str,
    images: Sequence[tuple[str, bytes]],
    *,
    timeout: float = 60,
    **fields: Any,
) -> tuple[int, dict[str, Any]]:
    """A client of `POST /api/predict` (standard library only): scripts, tests, benchmarks.

    Args:
        url: The server's address (`http://127.0.0.1:8000/`) or its `/api/predict`.
        images: (file name, encoded bytes) pairs, sent as the form's `image` files.
        timeout: Seconds to wait for the answer.
        **fields: The form's text fields: protocol, top, maps ("none": no maps), class.

    Returns:
        (the HTTP status, the JSON answer).
    """
    import json
    import urllib.error
    import urllib.request
    import uuid

    boundary = uuid.uuid4().hex
    parts = []
    for key, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, data in images:
        safe = name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{safe}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + bytes(data)
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    target = url if url.rstrip("/").endswith("/api/predict") else url.rstrip("/") + "/api/predict"
    request = urllib.request.Request(
        target,
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one).

    Raises:
        OSError: naming host:port when it cannot be bound.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise OSError(f"{host}:{port}: cannot listen ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def serve(
    viewer: Viewer,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    print_fn: Callable[[str], None] = print,
) -> None:
    """Serves the page and the API until Ctrl-C (SIGINT) or SIGTERM, then stops cleanly.

    Prints one line `kvgg: serving NAME on http://HOST:PORT/ (Ctrl-C stops)` once the
    socket listens (with port 0, the port the system chose), and `kvgg: stopped` at the end.

    Raises:
        OSError: when host:port cannot be bound.
        ModuleNotFoundError: without the `serve` extra.
    """
    import uvicorn

    sock = _listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    batcher = Batcher(viewer)
    app = make_app(viewer, batcher)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    print_fn(_URL_LINE.format(name=viewer.handle.name, url=f"http://{shown}:{bound_port}/"))
    started = time.monotonic()
    # uvicorn stops on SIGINT and SIGTERM, then hands the signal on to the handler found
    # before it: SIGINT's raises KeyboardInterrupt (caught below), SIGTERM's would end the
    # process without the clean stop; this one lets it return.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: None) if main else None
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn hands the signal on once it has shut down
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        batcher.close()
        sock.close()
    print_fn(
        f"kvgg: stopped after {time.monotonic() - started:.0f} s, {batcher.images} images in "
        f"{batcher.batches} model calls"
    )
