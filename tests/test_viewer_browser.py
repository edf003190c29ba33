"""The standalone viewer in a real browser: Debian's chromium, headless, driven by selenium + chromedriver.

Loads the page from localhost, clicks the "Harmonizer" checkbox and checks from screenshots of the frame
panel that the displayed frame changed (a colour-shift model: red up, blue down) and changes back when
switched off. Skips with the reason when chromium, chromedriver, selenium or viser is missing
(.ci/run installs them). Set SIMHARMONY_SCREENSHOT_DIR to keep the screenshots.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1200,800"]

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(f"no browser: needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); "
                "apt-get install chromium chromium-driver", allow_module_level=True)
pytest.importorskip("selenium", reason="selenium not installed (pip install 'simharmony[viewer]')")
pytest.importorskip("viser", reason="viser not installed (pip install 'simharmony[viewer]')")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from test_viewer import colour_shift_model, free_port  # noqa: E402

from simharmony.harmonizer import Harmonizer  # noqa: E402
from simharmony.paths import DEMO_ASSETS_DIR, DEMO_SCENE_DIR  # noqa: E402
from simharmony.viewer import ViewerApp, ViewerConfig  # noqa: E402
from simharmony.viewer.server import PANEL_IMAGE_ALT, ViewerServer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def server():
    app = ViewerApp.from_paths(DEMO_SCENE_DIR, DEMO_ASSETS_DIR, None, config=ViewerConfig(scale=0.5))
    app.harmonizer = Harmonizer(colour_shift_model())  # visibly different output: red +0.3, blue -0.3
    app.harmonizer_note = "colour-shift test model"
    app.set_frame(10)
    srv = ViewerServer(app, port=free_port())
    yield srv
    srv.stop()


@pytest.fixture()
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    try:
        drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except WebDriverException as e:  # a broken install is a skip with the reason, not a viewer failure
        pytest.skip(f"chromium did not start headless: {e.msg}")
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def wait_for(predicate, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def panel_image(drv):
    imgs = drv.find_elements(By.CSS_SELECTOR, f"img[alt='{PANEL_IMAGE_ALT}']")
    return imgs[0] if imgs else None


def screenshot_rgb(element) -> np.ndarray:
    """Screenshot of one element as RGB uint8, trimmed by 15% on each side (rounded corners, borders)."""
    img = cv2.imdecode(np.frombuffer(element.screenshot_as_png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    h, w = img.shape[:2]
    return img[int(0.15 * h):int(0.85 * h), int(0.15 * w):int(0.85 * w)].astype(np.float32)


def keep(drv, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    drv.save_screenshot(str(path))
    out = os.environ.get("SIMHARMONY_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / name)


def test_harmonizer_checkbox_changes_the_displayed_frame(server, browser, tmp_path):
    drv = browser
    drv.get(server.url)
    wait_for(lambda: panel_image(drv) is not None and panel_image(drv).size["width"] > 50, what="the frame panel")
    wait_for(lambda: "**raw**" in server.image_md.content, what="the first frame")
    src_raw = wait_for(lambda: (panel_image(drv).get_attribute("src") or "").startswith("data:image/png") and
                       panel_image(drv).get_attribute("src"), what="the frame image to load")
    time.sleep(0.5)  # let the image decode and paint
    before = screenshot_rgb(panel_image(drv))
    keep(drv, "viewer_raw.png", tmp_path)

    # the Harmonizer checkbox: <label for=ID>Harmonizer</label> ... <input id=ID type=checkbox>
    label = wait_for(lambda: drv.find_elements(By.XPATH, "//label[normalize-space()='Harmonizer']"),
                     what="the Harmonizer checkbox")[0]
    box = drv.find_element(By.ID, label.get_attribute("for"))
    assert box.get_attribute("type") == "checkbox" and not box.is_selected()
    label.click()
    wait_for(lambda: server.app.harmonize, what="the server to see the checkbox")
    wait_for(lambda: panel_image(drv) is not None and panel_image(drv).get_attribute("src") != src_raw,
             what="a new frame in the page")
    time.sleep(0.5)
    after = screenshot_rgb(panel_image(drv))
    keep(drv, "viewer_harmonized.png", tmp_path)
    assert drv.find_element(By.ID, label.get_attribute("for")).is_selected()

    # The displayed frame changed the way the model changes frames: red up, blue down (screenshot space).
    d = (after - before).reshape(-1, 3).mean(0)
    assert np.abs(after - before).mean() > 15, f"frame barely changed: mean |diff| {np.abs(after - before).mean():.1f}"
    assert d[0] > 30 and d[2] < -30 and abs(d[1]) < 15, f"mean RGB change {d}"

    # and back: switching off shows the raw frame again
    src_h = panel_image(drv).get_attribute("src")
    drv.find_elements(By.XPATH, "//label[normalize-space()='Harmonizer']")[0].click()
    wait_for(lambda: not server.app.harmonize, what="the checkbox to switch off")
    wait_for(lambda: panel_image(drv).get_attribute("src") != src_h, what="the raw frame again")
    time.sleep(0.5)
    again = screenshot_rgb(panel_image(drv))
    assert np.abs(again - before).mean() < 3, "switching off did not restore the raw frame"
