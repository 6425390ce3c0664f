"""Photograph a Label Studio task's labeling page (docs/labelstudio-labeling.png) with headless Chromium.

Run by tests/test_labelstudio_live.py when $CROWDTK_LABEL_STUDIO_SCREENSHOT names the PNG (``make
labelstudio-screenshot``), with the Label Studio virtual environment's Python, which has selenium; Chromium and its
driver come from the system (Debian: ``apt-get install chromium chromium-driver``), so nothing is downloaded.

    python tools/labelstudio_screenshot.py --url http://127.0.0.1:8080 --email E --password P --project 1 --task 7 \\
        -o docs/labelstudio-labeling.png
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import time
from pathlib import Path

# The labeling page draws the image and its regions on canvases once the task's data arrives; a bound only a
# hang reaches.
PAGE_GUARD_S = 300.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="Label Studio's address, e.g. http://127.0.0.1:8080")
    parser.add_argument("--email", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--project", type=int, required=True)
    parser.add_argument("--task", type=int, required=True)
    parser.add_argument("-o", "--output", type=Path, required=True, help="The PNG to write.")
    parser.add_argument("--size", default="1280,900", help="Window size, WIDTH,HEIGHT.")
    parser.add_argument("--colors", type=int, default=128, help="Palette colours of the PNG (keeps it small).")
    args = parser.parse_args(argv)

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        print("labelstudio_screenshot: needs chromium and chromedriver on PATH", file=sys.stderr)
        return 1
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={args.size}")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        wait = WebDriverWait(driver, PAGE_GUARD_S)
        driver.get(f"{args.url}/user/login/")
        wait.until(ready.presence_of_element_located((By.NAME, "email"))).send_keys(args.email)
        driver.find_element(By.NAME, "password").send_keys(args.password)
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit], form input[type=submit]").click()
        wait.until(lambda d: "/user/login" not in d.current_url)
        driver.get(f"{args.url}/projects/{args.project}/data?task={args.task}")
        # The editor's canvases: the image layer and the regions' layer.
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "canvas")) >= 2)
        wait.until(lambda d: d.execute_script("return [...document.images].every(i => i.complete)"))
        time.sleep(3)  # the canvases draw on the next animation frames after the image arrives
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    write_small_png(png, args.output, args.colors)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")
    return 0


def write_small_png(png: bytes, out: Path, colors: int) -> None:
    """The screenshot reduced to a palette of ``colors`` (a flat UI compresses well so), when Pillow is there."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        from PIL import Image
    except ImportError:
        out.write_bytes(png)
        return
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


if __name__ == "__main__":
    sys.exit(main())
