#!/usr/bin/env python3
"""Make README's screenshot of `sr4 serve`'s compare view (docs/figures/web_compare.png).

    python scripts/web_screenshot.py [--out docs/figures/web_compare.png] [--image examples/astronaut_lr.png]

Starts `sr4 serve` on a free loopback port, opens it in headless Chromium (Debian's chromium and
chromium-driver, driven by selenium through the system chromedriver), uploads the image, runs bicubic
and sr4's default model, zooms to 2:1 with the slider in the middle and saves the window, then stops
the server (which removes its temporary files).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "web_compare.png")
    parser.add_argument("--image", type=Path, default=REPO / "examples" / "astronaut_lr.png")
    parser.add_argument("--size", default="1400,860", help="browser window, W,H (default 1400,860)")
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        print("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)", file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, "-m", "sr4", "serve", "--port", "0", "--device", "cpu"],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = server.stdout.readline().split()[2]
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--window-size={args.size}", "--force-device-scale-factor=1", "--hide-scrollbars"):
            options.add_argument(arg)
        d = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            wait = WebDriverWait(d, 300, poll_frequency=0.2)
            wait.until(lambda d: _ready(d, url))
            d.find_element(By.ID, "file").send_keys(str(args.image.resolve()))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#images li.current"))
            d.find_element(By.ID, "run").click()
            scored = "#scores-body td[data-metric=niqe]:not([data-value=''])"
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, scored)) == 2)
            wait.until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('#compare img')].every(i => i.complete && i.naturalWidth)"))
            d.find_element(By.ID, "zoom-2").click()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            d.save_screenshot(str(args.out))
        finally:
            d.quit()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    print(f"wrote {args.out}")
    return 0


def _ready(driver, url: str) -> bool:
    try:
        driver.get(url)
    except Exception:  # the server may still be starting
        return False
    return bool(driver.find_elements("css selector", "#candidates input"))


if __name__ == "__main__":
    sys.exit(main())
