"""Screenshot of the `simdex serve` page with results, for the README (headless Debian Chromium via Selenium).

    .venv/bin/python scripts/serve_screenshot.py --catalog catalogs/fmnist --image boot.png --out docs/serve_page.png

Starts `simdex serve` on a free port, opens the page, sets k, uploads the image, waits for the
results and their thumbnails, opens the "why" of the second answer, and saves the window as PNG.
Needs the test extra (selenium) and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/serve_page.png"))
    parser.add_argument("-k", type=int, default=12)
    parser.add_argument("--where", default="")
    parser.add_argument("--size", default="1280,820")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("simdex")), "serve", "--catalog", str(args.catalog),
                               "--port", str(port)])
    try:
        deadline = time.time() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/api/info")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("simdex serve did not start") from None
                time.sleep(0.3)
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    f"--window-size={args.size}", "--hide-scrollbars"):
            options.add_argument(arg)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
        try:
            wait = WebDriverWait(driver, 60)
            driver.get(f"http://127.0.0.1:{port}/")
            wait.until(lambda d: "objects" in d.find_element(By.ID, "catalog-info").text)
            k = driver.find_element(By.ID, "k")
            k.clear()
            k.send_keys(str(args.k))
            if args.where:
                driver.find_element(By.ID, "where").send_keys(args.where)
            driver.find_element(By.ID, "file").send_keys(str(args.image.resolve()))
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .card")) == args.k)
            wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                                     for i in d.find_elements(By.CSS_SELECTOR, "#results .card img")))
            details = driver.find_elements(By.CSS_SELECTOR, "#results .card details")[1]
            driver.execute_script("arguments[0].open = true", details)  # the second answer's per-layer parts
            time.sleep(0.3)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
            print(f"screenshot: {args.out}")
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
