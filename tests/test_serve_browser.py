"""The `simdex serve` page in a real browser: Debian's Chromium, headless, driven by Selenium over a real
uvicorn server on localhost. Loads the page, uploads an image, sees k results with P, clicks one.

Needs `chromium` and `chromedriver` (Debian packages chromium, chromium-driver; `make test` installs them
when it can); skipped, saying so, where there is no browser. Set SIMDEX_SCREENSHOT=FILE.png to keep a
screenshot of the page with results."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'simdex[serve]')")
pytest.importorskip("selenium", reason="selenium (the test extra) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra is not installed")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from test_serve import make_image_catalog  # noqa: E402

from simdex.engine.searcher import Searcher  # noqa: E402
from simdex.serve import CatalogService, create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="no browser: install Debian's chromium and chromium-driver (make test does, as root)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(app) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    return server, thread, f"http://127.0.0.1:{port}"


def chromium(width: int = 1280, height: int = 900) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    cat = make_image_catalog(tmp_path_factory.mktemp("browser"))
    server, thread, url = start_server(create_app(CatalogService.open(cat)))
    driver = chromium()
    try:
        yield cat, driver, url
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)


def cards(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#results .card")


def test_upload_an_image_see_k_results_with_p_click_one(page):
    cat, driver, url = page
    wait = WebDriverWait(driver, 30)
    driver.get(url + "/")
    wait.until(lambda d: "objects" in d.find_element(By.ID, "catalog-info").text)
    assert "24 objects" in driver.find_element(By.ID, "catalog-info").text
    k = driver.find_element(By.ID, "k")
    k.clear()
    k.send_keys("5")

    target = Searcher.open(cat).metadata([7], ["source"]).to_pylist()[0]["source"]  # one of the rectangles
    driver.find_element(By.ID, "file").send_keys(target)
    wait.until(lambda d: len(cards(d)) == 5)
    got = cards(driver)
    ps = [float(c.find_element(By.CSS_SELECTOR, ".p").text.removeprefix("P ")) for c in got]
    assert ps[0] == pytest.approx(1.0, abs=1e-4) and all(0 <= p <= 1 for p in ps) and ps == sorted(ps, reverse=True)
    assert got[0].get_attribute("data-object-id") == "7"
    assert "results" in driver.find_element(By.ID, "status").text
    # thumbnails loaded (naturalWidth > 0), and the per-layer parts of P are drawn
    wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
                             for img in d.find_elements(By.CSS_SELECTOR, "#results .card img")))
    assert got[0].find_elements(By.CSS_SELECTOR, ".layers span")
    assert "parts of P by layer" in driver.find_element(By.ID, "legend").text
    if os.environ.get("SIMDEX_SCREENSHOT"):
        driver.save_screenshot(os.environ["SIMDEX_SCREENSHOT"])

    # click a result: the page searches from that object; it comes first with P = 1
    clicked = got[2].get_attribute("data-object-id")
    got[2].find_element(By.TAG_NAME, "img").click()
    wait.until(lambda d: f"object {clicked}" in d.find_element(By.ID, "query-strip").text
               and cards(d) and cards(d)[0].get_attribute("data-object-id") == clicked)
    first = cards(driver)[0]
    assert first.find_element(By.CSS_SELECTOR, ".p").text == "P 1.0000"
    assert len(cards(driver)) == 5


def test_filter_and_errors_on_the_page(page):
    _, driver, url = page
    wait = WebDriverWait(driver, 30)
    driver.get(url + "/")
    wait.until(lambda d: "objects" in d.find_element(By.ID, "catalog-info").text)
    driver.find_element(By.ID, "where").send_keys("label = 'tall'")
    ids = driver.find_element(By.ID, "ids")
    ids.send_keys("0")
    driver.find_element(By.CSS_SELECTOR, "#id-form button").click()
    wait.until(lambda d: len(cards(d)) > 0)
    assert {c.find_element(By.CSS_SELECTOR, ".meta").text.split()[-1] for c in cards(driver)} == {"tall"}
    where = driver.find_element(By.ID, "where")
    where.clear()
    where.send_keys("nosuchcolumn = 1")
    ids.clear()
    ids.send_keys("1")
    driver.find_element(By.CSS_SELECTOR, "#id-form button").click()
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "nosuchcolumn" in driver.find_element(By.ID, "error").text and not cards(driver)


def test_api_docs_render_without_a_cdn(page):
    _, driver, url = page
    driver.get(url + "/docs")
    WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 6)
    text = driver.find_element(By.TAG_NAME, "body").text
    assert "/api/search/image" in text and "/api/sql" in text
