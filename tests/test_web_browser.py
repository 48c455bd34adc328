"""`sr4 serve` in a real headless browser (Debian's Chromium driven by Selenium through the system chromedriver,
so nothing is downloaded): upload, run two candidates, slider, zoom and pan, grid, scores, download, drag and
drop, an error, a second tab. Screenshots are kept under test-artifacts/web/ (or $SR4_TEST_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="sr4 serve needs the web extra: pip install 'sr4[web]'")
pytest.importorskip("uvicorn", reason="sr4 serve needs the web extra: pip install 'sr4[web]'")
pytest.importorskip("selenium", reason="the browser test drives Chromium with selenium (pip install -e '.[dev]')")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from web_fixtures import serve  # noqa: E402

from sr4.cli import main  # noqa: E402
from sr4.image.convert import to_rgb8  # noqa: E402
from sr4.image.io import read_image  # noqa: E402
from sr4.metrics.niqe import niqe  # noqa: E402
from sr4.pipeline.factory import ProcessorOptions  # noqa: E402
from sr4.web.candidates import list_candidates  # noqa: E402
from sr4.web.jobs import WebConfig  # noqa: E402

# Optional for the skip guard: a machine where apt cannot install the browser still runs the rest.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread"), pytest.mark.optional,
              pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="Chromium and its driver are not installed "
                                 "(Debian: apt-get install chromium chromium-driver, as .ci/run does)")]
REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "examples" / "astronaut_lr.png"  # 128x128 NASA photograph (public domain)
ARTIFACTS = Path(os.environ.get("SR4_TEST_ARTIFACTS", REPO / "test-artifacts")) / "web"
SEED = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("web_browser")
    (root / "no_weights").mkdir()
    config = WebConfig(candidates=tuple(list_candidates()), processor=ProcessorOptions(device="cpu", tile=32,
                                                                                       tile_overlap=4),
                       weights_dir=str(root / "no_weights"), temp_parent=str(root))
    served = serve(config)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A 64x64 crop of the example photo (the face and the suit's collar): quick to upscale on a CPU."""
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.open(SOURCE).crop((40, 24, 104, 88)).save(path)
    return path


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900", "--force-device-scale-factor=1", "--no-first-run"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float = 90, message: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(lambda d: condition(d), message)


def _screenshot(driver, name: str, element_id: str = "compare") -> np.ndarray:
    """Save a screenshot artefact and return the pixels of one element, checked not to be blank."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    shot = np.asarray(Image.open(path).convert("RGB"))
    rect = driver.find_element(By.ID, element_id).rect
    x, y, w, h = (int(rect[k]) for k in ("x", "y", "width", "height"))
    region = shot[y:y + h, x:x + w]
    assert region.size and region.std() > 20, f"{path}: the {element_id} area is blank"
    colours = len(np.unique(region.reshape(-1, 3), axis=0))
    assert colours > 500, f"{path}: only {colours} colours in the {element_id} area"
    return region


def _transforms(driver, selector: str) -> list[str]:
    return [img.value_of_css_property("transform") for img in driver.find_elements(By.CSS_SELECTOR, selector)]


def _results(driver) -> list[dict]:
    """(candidate, NIQE as shown, NIQE as sent) of each row of the scores table, read in one step."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#scores-body tr[data-candidate]')].map(tr => {
          const cell = tr.querySelector('td[data-metric=niqe]');
          return {candidate: tr.dataset.candidate, text: cell.textContent, value: cell.dataset.value};
        });""")


def _drop(driver, url: str) -> None:
    """Drop the body of `url` on the page as a file named dropped.png, as a drag from the desktop does."""
    driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then(r => r.blob()).then(blob => {
          const dt = new DataTransfer();
          dt.items.add(new File([blob], "dropped.png", {type: "image/png"}));
          window.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
          done(true);
        });""", url)


def _sr4_upscale(src: Path, out: Path, *options: str) -> bytes:
    assert main(["upscale", str(src), "-o", str(out), "--ext", "png", "--tile", "32", "--tile-overlap", "4",
                 "--seed", str(SEED), *options]) == 0
    return (out / f"{src.stem}.png").read_bytes()


def test_compare_two_candidates_in_a_real_browser(server, browser, downloads, photo, tmp_path):
    d = browser
    d.get(server.url + "/")
    _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#candidates input")) == 2, 30, "candidates listed")
    checked = [i.get_attribute("value") for i in d.find_elements(By.CSS_SELECTOR, "#candidates input:checked")]
    assert checked == ["bicubic", "default"]

    # Open a photo, set the seed, run both candidates.
    d.find_element(By.ID, "file").send_keys(str(photo))
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#images li.current"), 30, "image listed")
    assert "astronaut.png" in d.find_element(By.CSS_SELECTOR, "#images li.current").text
    seed = d.find_element(By.ID, "seed")
    seed.clear()
    seed.send_keys(str(SEED))
    d.find_element(By.ID, "run").click()
    _wait(d, lambda d: len([r for r in _results(d) if r["value"]]) == 2, 120, "both results scored")
    jobs = d.find_elements(By.CSS_SELECTOR, "#jobs li")
    assert [j.get_attribute("data-state") for j in jobs] == ["done", "done"]
    assert all("seed 5" in j.text for j in jobs)

    # The compare view: bicubic on the left, the model on the right, each drawn at the 4x size.
    left, right = (d.find_element(By.ID, side) for side in ("left", "right"))
    assert left.find_element(By.CSS_SELECTOR, "option:checked").text == "bicubic"
    assert right.find_element(By.CSS_SELECTOR, "option:checked").text.startswith("sr4 default")
    _wait(d, lambda d: d.execute_script("return [...document.querySelectorAll('#compare img')]"
                                        ".every(i => i.complete && i.naturalWidth === 256)"), 30, "images loaded")
    fit = _screenshot(d, "1_compare_fit")

    # Move the slider by dragging its handle: the right image is clipped at the new split.
    divider = d.find_element(By.ID, "divider")
    ActionChains(d).click_and_hold(divider).move_by_offset(-150, 0).release().perform()
    split = d.execute_script("return window.sr4App.view.split")
    view_width = d.find_element(By.ID, "compare").rect["width"]
    assert split == pytest.approx(50 - 100 * 150 / view_width, abs=1.5)
    clip = d.execute_script("return getComputedStyle(document.getElementById('layer-right')).clipPath")
    match = re.fullmatch(r"inset\(0px 0px 0px ([\d.]+)%\)", clip)
    assert match and float(match.group(1)) == pytest.approx(split, abs=1e-3), clip
    assert float(d.find_element(By.ID, "slider").get_attribute("value")) == pytest.approx(split, abs=0.2)
    moved = _screenshot(d, "2_compare_slider_moved")
    assert np.abs(moved.astype(int) - fit.astype(int)).mean() > 0.5, "moving the slider changed nothing on screen"

    # Zoom 2:1, then pan: both sides keep the same transform (synced).
    d.find_element(By.ID, "zoom-2").click()
    both = _transforms(d, "#compare img")
    assert len(both) == 2 and both[0] == both[1] and both[0].startswith("matrix(2, 0, 0, 2,")
    assert d.find_element(By.ID, "zoom-label").text == "2:1 (200%)"
    ActionChains(d).move_to_element_with_offset(d.find_element(By.ID, "compare"), 100, 40).click_and_hold() \
        .move_by_offset(120, 60).release().perform()
    panned = _transforms(d, "#compare img")
    assert panned[0] == panned[1] and panned[0] != both[0]
    _screenshot(d, "3_compare_zoom_2x_panned")
    d.find_element(By.ID, "zoom-4").click()
    assert _transforms(d, "#compare img")[0].startswith("matrix(4, 0, 0, 4,")
    d.find_element(By.ID, "zoom-fit").click()

    # Scores: the page shows sr4's NIQE of each downloaded file.
    rows = {r["candidate"]: r for r in _results(d)}
    assert set(rows) == {"bicubic", "default"}
    note = d.find_element(By.ID, "metrics-note").text
    assert "CLIP-IQA unavailable: RN50.pt is missing; put it in" in note and "need an HR reference" in note

    # Download the model's result: the same bytes as `sr4 upscale` with the same options.
    row = d.find_element(By.CSS_SELECTOR, "#scores-body tr[data-candidate=default]")
    row.find_element(By.CSS_SELECTOR, "a.download").click()
    target = downloads / "astronaut_default_seed5.png"
    _wait(d, lambda d: target.exists() and not list(downloads.glob("*.crdownload")), 30, "download finished")
    expected = _sr4_upscale(photo, tmp_path / "cli")
    assert target.read_bytes() == expected
    shown = float(rows["default"]["text"])
    assert shown == pytest.approx(niqe(to_rgb8(read_image(target).pixels)), abs=5e-5)
    assert float(rows["default"]["value"]) == pytest.approx(niqe(to_rgb8(read_image(target).pixels)), abs=1e-9)
    zip_link = d.find_element(By.ID, "zip-all").get_attribute("href")
    assert zip_link.endswith("/results.zip")

    # Grid view: nearest-upscaled LR and both results, all with the same transform.
    d.find_element(By.ID, "mode-grid").click()
    _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .cell")) == 3, 10, "grid cells")
    d.find_element(By.ID, "zoom-2").click()
    grid = _transforms(d, "#grid img")
    assert len(set(grid)) == 1 and grid[0].startswith("matrix(2, 0, 0, 2,")
    _wait(d, lambda d: d.execute_script("return [...document.querySelectorAll('#grid img')].every(i => i.complete)"))
    _screenshot(d, "4_grid_zoom_2x", "grid")
    d.find_element(By.ID, "mode-compare").click()

    # A file that is no image: one sentence in the page, and the page goes on working.
    bogus = tmp_path / "notes.png"
    bogus.write_text("not a picture")
    d.find_element(By.ID, "file").send_keys(str(bogus))
    _wait(d, lambda d: d.find_element(By.ID, "error").is_displayed(), 10, "error shown")
    assert d.find_element(By.ID, "error-text").text.startswith("notes.png: not an image sr4 reads")
    d.find_element(By.ID, "error-close").click()

    # Drag and drop: a dropped file is uploaded like a chosen one.
    _drop(d, server.url + "/api/config")  # JSON: refused by its content, whatever its name says
    _wait(d, lambda d: d.find_element(By.ID, "error").is_displayed(), 10, "dropped non-image refused")
    assert d.find_element(By.ID, "error-text").text.startswith("dropped.png: not an image")
    d.find_element(By.ID, "error-close").click()
    _drop(d, d.find_element(By.CSS_SELECTOR, "#images li img").get_attribute("src"))
    _wait(d, lambda d: any("dropped.png" in li.text for li in d.find_elements(By.CSS_SELECTOR, "#images li")), 20)

    # A second tab has its own workspace and works while the first keeps its images.
    first = d.current_window_handle
    d.switch_to.new_window("tab")
    d.get(server.url + "/")
    _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#candidates input")) == 2, 30)
    time.sleep(0.3)
    assert d.find_elements(By.CSS_SELECTOR, "#images li") == []
    d.find_element(By.ID, "file").send_keys(str(photo))
    for box in d.find_elements(By.CSS_SELECTOR, "#candidates input:checked"):
        if box.get_attribute("value") != "bicubic":
            box.click()
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#images li.current"), 30)
    d.find_element(By.ID, "run").click()
    _wait(d, lambda d: len([r for r in _results(d) if r["value"]]) == 1, 60, "second tab result")
    d.close()
    d.switch_to.window(first)
    names = [li.find_element(By.CSS_SELECTOR, ".name").text for li in d.find_elements(By.CSS_SELECTOR, "#images li")]
    assert names == ["astronaut.png", "dropped.png"]

    errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]
    assert not errors, json.dumps(errors, indent=1)
