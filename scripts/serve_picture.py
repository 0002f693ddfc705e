"""docs/images/serve_page.png: the page of `kvgg serve` in headless Chromium.

    kvgg demo                              # runs/demo (the classifier), runs/digits
    python scripts/serve_picture.py        # writes docs/images/serve_page.png

`kvgg serve MODEL --port 0` as a real process; Debian's chromium through chromedriver
(Selenium, nothing downloaded) opens the page, uploads held-out digits of `kvgg demo` (one
per class, the first `--count` classes) and one file that is not an image, waits for every
card, and saves the whole page. Paths are relative to the working folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile

from keras_vgg.serve import start_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo")
    parser.add_argument("--digits", default="runs/digits/test")
    parser.add_argument("--count", type=int, default=2, help="Digits to upload.")
    parser.add_argument("-o", "--output", default="docs/images/serve_page.png")
    args = parser.parse_args()
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        raise SystemExit("needs Debian's chromium and chromium-driver (make browser)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    classes = sorted(os.listdir(args.digits))[: args.count]
    images = [
        os.path.abspath(
            os.path.join(args.digits, c, sorted(os.listdir(os.path.join(args.digits, c)))[0])
        )
        for c in classes
    ]
    with tempfile.TemporaryDirectory() as folder:
        notes = os.path.join(folder, "notes.jpg")
        with open(notes, "w", encoding="utf-8") as f:
            f.write("these are notes, not a photograph\n")
        try:
            process, url = start_server(args.model)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={os.path.join(folder, 'profile')}",
            "--window-size=1100,800", "--hide-scrollbars",
        ):  # fmt: skip
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service(driver), options=options)
        try:
            browser.get(url)
            wait = WebDriverWait(browser, 120)
            wait.until(lambda b: b.execute_script("return document.body.dataset.ready === 'true'"))
            chooser = browser.find_element(By.ID, "files")
            for path in [notes, *reversed(images)]:  # newest card first: the digits on top
                chooser.send_keys(path)
                wait.until(
                    lambda b: all(
                        card.get_attribute("data-state") in ("done", "error")
                        for card in b.find_elements(By.CSS_SELECTOR, "section.card")
                    )
                )
            # The whole page: the window as tall as the page (headless: no browser frame).
            inner = browser.execute_script("return window.innerHeight")
            outer = browser.get_window_size()["height"]
            height = browser.execute_script("return document.documentElement.scrollHeight")
            browser.set_window_size(1100, height + outer - inner)
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            browser.save_screenshot(args.output)
        finally:
            browser.quit()
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
