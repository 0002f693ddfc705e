"""`kvgg serve`: one real server process for the module (a tiny classifier and an SCR
localisation net), its JSON API against `kvgg predict` and `kvgg explain` run as real
processes on the same photograph, bad uploads, 32 concurrent requests, the page in a real
headless Chromium, and Ctrl-C."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.request
import zlib

import keras
import numpy as np
import pytest
from conftest import ROOT, kvgg_batch
from PIL import Image

import keras_vgg
from keras_vgg import limits
from keras_vgg.localization.network import localizer_from_classifier
from keras_vgg.serve import post_images, served_url

NAMES = ("ant", "bee", "cow")
# The server's upload limit in these tests: above the photograph, below `BIG`.
UPLOAD_LIMIT = 200_000
BIG = 300_000


def png_declaring(width: int, height: int) -> bytes:
    """A 60-byte PNG whose header declares width x height (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The models and the photograph (scikit-image's cat, a real JPEG)."""
    data = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("serve")
    keras.utils.set_random_seed(5)
    model = keras_vgg.build("A", width=1 / 16, fc_units=16, classes=3, input_shape=(32, 32, 3))
    model.record = model.record.replace(class_names=NAMES)
    model.save(root / "tiny.keras")
    localizer_from_classifier(model, "scr", seed=1).save(root / "scr.keras")
    Image.fromarray(data.chelsea()).save(root / "cat.jpg", quality=90)
    (root / "notes.jpg").write_bytes(b"these are notes, not a photograph\n")
    return root


@pytest.fixture(scope="module")
def started(files):
    """`kvgg serve` started as a real process on a free port (it loads while `cli` runs)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_vgg.cli", "serve", str(files / "tiny.keras"),
         "--localizer", str(files / "scr.keras"), "--port", "0"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "KVGG_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=files,
    )  # fmt: skip
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def server(started, cli):
    """The server once it listens: (its Popen, its URL, its stderr lines so far)."""
    process = started
    url, lines = served_url(process, timeout=180)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), url
    return process, url, lines


@pytest.fixture(scope="module")
def cli(files, started):
    """`kvgg predict --json` (centre, dense), `kvgg explain` (dense, Grad-CAM) and `kvgg serve
    --dry-run` on the same files, in one real process."""
    photo, model = files / "cat.jpg", files / "tiny.keras"
    done = kvgg_batch(
        ["predict", photo, "--model", model, "--json", "--top", 3],
        ["predict", photo, "--model", model, "--json", "--top", 3, "--dense"],
        [
            "explain",
            photo,
            "--model",
            model,
            "--method",
            "dense",
            "--class",
            "cow",
            "-o",
            files / "dense",
        ],
        ["explain", photo, "--model", model, "--class", "cow", "-o", files / "gradcam"],
        ["serve", model, "--localizer", files / "scr.keras", "--dry-run"],
        cwd=files,
        timeout=600,
        env={**os.environ, "KVGG_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)},
    )
    for result in done:
        assert result.returncode == 0, result.stderr[-2000:]
    return done


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def png_pixels(data_url: str) -> np.ndarray:
    head = "data:image/png;base64,"
    assert data_url.startswith(head)
    import base64

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url[len(head) :]))))


def test_model_record(server, cli):
    _, url, _ = server
    record = get_json(url + "api/model")
    assert record == json.loads(cli[4].stdout)  # --dry-run prints what the page shows
    assert record["classes"] == list(NAMES) and record["convention"] == "paper"
    assert record["config"] == "A" and record["crop_size"] == 32
    assert record["localizer"]["box_mode"] == "scr" and record["maps"] == ["dense", "gradcam"]
    assert record["limits"]["upload_bytes"] == UPLOAD_LIMIT


@pytest.mark.parametrize("protocol,run", [("center", 0), ("dense", 1)])
def test_parity_with_kvgg_predict(server, cli, files, protocol, run):
    _, url, _ = server
    status, answer = post_images(
        url, [("cat.jpg", (files / "cat.jpg").read_bytes())], protocol=protocol, maps="none"
    )
    assert status == 200, answer
    (entry,) = answer["images"]
    (expected,) = json.loads(cli[run].stdout)
    assert [p["name"] for p in entry["predictions"]] == [p["name"] for p in expected["predictions"]]
    np.testing.assert_allclose(
        [p["probability"] for p in entry["predictions"]],
        [p["probability"] for p in expected["predictions"]],
        rtol=1e-6,
        atol=1e-7,
    )
    assert entry["maps"] is None and entry["boxes"] is None


def test_maps_equal_kvgg_explain(server, cli, files):
    """The overlays are `kvgg explain`'s pictures of a class, pixel for pixel; by default
    the top class's; the boxes lie on the image."""
    _, url, _ = server
    photo = [("cat.jpg", (files / "cat.jpg").read_bytes())]
    status, answer = post_images(url, photo, **{"class": "cow"})
    assert status == 200, answer
    (entry,) = answer["images"]
    maps = entry["maps"]
    assert maps["class"] == "cow"
    assert (maps["width"], maps["height"]) == (entry["width"], entry["height"]) == (451, 300)
    for key, folder in (("dense", "dense/cat_dense.png"), ("gradcam", "gradcam/cat_gradcam.png")):
        got = png_pixels(maps[key]).astype(int)
        expected = np.asarray(Image.open(files / folder)).astype(int)
        assert got.shape == expected.shape == (300, 451, 3)
        assert np.abs(got - expected).max() <= 1, key
    assert len(entry["boxes"]) == 3
    for guess in entry["boxes"]:
        x0, y0, x1, y1 = guess["box"]
        assert guess["name"] in NAMES and 0 <= x0 <= x1 <= 451 and 0 <= y0 <= y1 <= 300
    status, answer = post_images(url, photo)
    top1 = answer["images"][0]["predictions"][0]["name"]
    assert answer["images"][0]["maps"]["class"] == top1


def test_bad_uploads(server, files):
    """One line per bad image, the good one answered; request-level errors; then the
    server still answers."""
    _, url, _ = server
    photo = (files / "cat.jpg").read_bytes()
    uploads = [
        ("notes.jpg", (files / "notes.jpg").read_bytes()),
        ("cut.jpg", photo[: len(photo) // 2]),
        ("bomb.png", png_declaring(20000, 20000)),
        ("huge.jpg", photo + bytes(BIG)),
        ("empty.png", b""),
        ("cat.jpg", photo),
    ]
    status, answer = post_images(url, uploads, maps="none")
    assert status == 200
    errors = {e["name"]: e["error"] for e in answer["images"]}
    assert errors["notes.jpg"].startswith("not an image (starts with b'these ar')")
    assert errors["cut.jpg"] == "truncated JPEG (no end-of-image marker)"
    assert errors["bomb.png"] == (
        "too large: 20000 x 20000 = 400000000 pixels, over the limit of 40000000 (raise it "
        "with KVGG_MAX_UPLOAD_PIXELS=N)"
    )
    assert errors["huge.jpg"].startswith(f"too big: {len(photo) + BIG} bytes, over the limit")
    assert errors["empty.png"] == "empty file (0 bytes)"
    assert errors["cat.jpg"] is None
    status, answer = post_images(url, uploads[:1])
    assert status == 400 and answer["images"][0]["error"].startswith("not an image")
    status, answer = post_images(url, [], protocol="center")
    assert status == 400 and answer["error"].startswith("no image")
    status, answer = post_images(url, [("cat.jpg", photo)], protocol="sideways")
    assert status == 400 and "protocol" in answer["error"]
    status, answer = post_images(url, [("cat.jpg", photo)], top="0")
    assert status == 400 and answer["error"].startswith("top:")
    status, answer = post_images(url, [("cat.jpg", photo)], **{"class": "yak"})
    assert status == 400 and answer["error"].startswith("class 'yak': not one of")
    many = limits.MAX_UPLOAD_FILES.value() + 1
    status, answer = post_images(url, [("cat.jpg", photo)] * many, maps="none")
    assert status == 413 and answer["error"] == (
        f"too many images in one request: at most {many - 1} (KVGG_MAX_UPLOAD_FILES raises it)"
    )
    status, answer = post_images(url, [("cat.jpg", photo)], maps="none")
    assert status == 200 and answer["images"][0]["error"] is None


def test_concurrent_requests_share_model_calls(server, files):
    """32 clients at once: every answer is the lone answer; the model ran in batches, never
    two calls at once."""
    _, url, _ = server
    photo = (files / "cat.jpg").read_bytes()
    _, alone = post_images(url, [("cat.jpg", photo)], maps="none")
    before = get_json(url + "api/stats")
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(
            pool.map(lambda _: post_images(url, [("cat.jpg", photo)], maps="none"), range(32))
        )
    after = get_json(url + "api/stats")
    for status, answer in answers:
        assert status == 200
        np.testing.assert_allclose(
            [p["probability"] for p in answer["images"][0]["predictions"]],
            [p["probability"] for p in alone["images"][0]["predictions"]],
            rtol=1e-6,
        )
    assert after["images"] - before["images"] == 32
    assert after["batches"] - before["batches"] < 32  # batched
    assert after["most_running_at_once"] == 1 and after["largest_batch"] <= 8


def _browser_or_skip():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip(
            "no chromium / chromedriver (Debian's chromium and chromium-driver: `make browser` "
            "installs them as root)"
        )
    pytest.importorskip("selenium", reason="selenium is in the test extra")
    return chromium, driver


def test_page_in_a_real_browser(server, cli, files, tmp_path):
    """Upload the photograph: the shown top-1 is `kvgg predict`'s, the overlays are images
    of the photograph's size; upload notes: their message; a screenshot for the docs."""
    chromium, driver = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, url, _ = server
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,900",
    ):  # fmt: skip
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        browser.set_page_load_timeout(30)
        browser.get(url)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.execute_script("return document.body.dataset.ready === 'true'"))
        assert "tiny" in browser.find_element(By.ID, "model-name").text
        assert "convention paper" in browser.find_element(By.ID, "model-facts").text
        chooser = browser.find_element(By.ID, "files")
        chooser.send_keys(str(files / "cat.jpg"))
        card = 'section.card[data-file="cat.jpg"]'
        wait.until(
            lambda b: b.find_element(By.CSS_SELECTOR, card).get_attribute("data-state") == "done"
        )
        expected = json.loads(cli[0].stdout)[0]["predictions"][0]["name"]
        shown = browser.find_element(By.CSS_SELECTOR, f"{card} .top1").text
        assert shown == expected
        sizes = browser.execute_script(
            "return [...document.querySelectorAll(arguments[0] + ' img.map')]"
            ".map(i => [i.dataset.map, i.complete, i.naturalWidth, i.naturalHeight])",
            card,
        )
        assert sizes == [["dense", True, 451, 300], ["gradcam", True, 451, 300]]
        assert browser.find_elements(By.CSS_SELECTOR, f"{card} svg.boxes rect")
        chooser.send_keys(str(files / "notes.jpg"))
        bad = 'section.card[data-file="notes.jpg"]'
        wait.until(
            lambda b: b.find_element(By.CSS_SELECTOR, bad).get_attribute("data-state") == "error"
        )
        message = browser.find_element(By.CSS_SELECTOR, f"{bad} .error").text
        assert message.startswith("notes.jpg: not an image (starts with")
        browser.save_screenshot(str(tmp_path / "serve_page.png"))
        assert Image.open(tmp_path / "serve_page.png").size[0] > 0
    finally:
        browser.quit()


def test_ctrl_c_stops_cleanly(server):
    """SIGINT: the server answers what it holds, says so, exits 0 within seconds."""
    process, _, lines = server
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=30)
    took = time.monotonic() - started
    time.sleep(0.2)
    assert code == 0, "".join(lines)[-2000:]
    assert any(line.startswith("kvgg: stopped after") for line in lines), lines
    assert took < 15, took
