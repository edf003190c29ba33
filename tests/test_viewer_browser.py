"""The standalone viewer in a real browser: Debian's chromium, headless, driven by selenium + chromedriver.

Loads the page from localhost, clicks the "Harmonizer" checkbox and checks from screenshots of the frame
panel that the displayed frame changed (a colour-shift model: red up, blue down) and changes back when
switched off. Skips with the reason when chromium, chromedriver, selenium or viser is missing
(.ci/run installs them). Set SIMHARMONY_SCREENSHOT_DIR to keep the screenshots.
"""

from __future__ import annotations

import math
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
# WebGL through SwiftShader (software), so the 3D viewport and its background image render headless
FLAGS = ["--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--ignore-gpu-blocklist", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1200,800"]

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(f"no browser: needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); "
                "apt-get install chromium chromium-driver", allow_module_level=True)
pytest.importorskip("selenium", reason="selenium not installed (pip install 'simharmony[viewer]')")
pytest.importorskip("viser", reason="viser not installed (pip install 'simharmony[viewer]')")

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from test_viewer import colour_shift_model, free_port

from simharmony.harmonizer import Harmonizer
from simharmony.paths import DEMO_ASSETS_DIR, DEMO_SCENE_DIR
from simharmony_viewer import ViewerApp, ViewerConfig
from simharmony_viewer.server import PANEL_IMAGE_ALT, ViewerServer, matrix_to_wxyz, wxyz_to_matrix

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def server():
    app = ViewerApp.from_paths(DEMO_SCENE_DIR, DEMO_ASSETS_DIR, None, config=ViewerConfig(scale=0.5))
    app.harmonizer = Harmonizer(colour_shift_model())  # visibly different output: red +0.3, blue -0.3
    app.harmonizer_note = "colour-shift test model"
    app.set_frame(10)
    srv = ViewerServer(app, port=free_port(), camera="trajectory")
    yield srv
    srv.stop()


@pytest.fixture()
def free_server():
    app = ViewerApp.from_paths(DEMO_SCENE_DIR, DEMO_ASSETS_DIR, None, config=ViewerConfig(scale=0.5))
    app.harmonizer = Harmonizer(colour_shift_model())
    app.harmonizer_note = "colour-shift test model"
    app.set_frame(10)
    srv = ViewerServer(app, port=free_port(), camera="free")
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
    """Poll ``predicate`` until truthy; React re-renders may swap elements under us (stale: try again)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = predicate()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def panel_image(drv):
    imgs = drv.find_elements(By.CSS_SELECTOR, f"img[alt='{PANEL_IMAGE_ALT}']")
    return imgs[0] if imgs else None


def panel_src(drv) -> str:
    img = panel_image(drv)
    return (img.get_attribute("src") or "") if img is not None else ""


def screenshot_rgb(drv) -> np.ndarray:
    """Screenshot of the frame panel as RGB float, trimmed by 15% on each side (rounded corners, borders)."""
    png = wait_for(lambda: panel_image(drv).screenshot_as_png, what="a screenshot of the frame panel")
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    h, w = img.shape[:2]
    return img[int(0.15 * h):int(0.85 * h), int(0.15 * w):int(0.85 * w)].astype(np.float32)


def click_harmonizer(drv):
    """Click the label of the Harmonizer checkbox (<label for=ID>Harmonizer</label> ... <input id=ID>)."""
    def click():
        labels = drv.find_elements(By.XPATH, "//label[normalize-space()='Harmonizer']")
        if not labels:
            return None
        labels[0].click()
        return labels[0].get_attribute("for") or True
    return wait_for(click, what="the Harmonizer checkbox")


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
    src_raw = wait_for(lambda: panel_src(drv).startswith("data:image/png") and panel_src(drv), what="the frame image")
    time.sleep(0.5)  # let the image decode and paint
    before = screenshot_rgb(drv)
    keep(drv, "viewer_raw.png", tmp_path)

    box_id = wait_for(lambda: drv.find_elements(By.XPATH, "//label[normalize-space()='Harmonizer']")[0]
                      .get_attribute("for"), what="the Harmonizer checkbox")
    box = drv.find_element(By.ID, box_id)
    assert box.get_attribute("type") == "checkbox" and not box.is_selected()
    click_harmonizer(drv)
    wait_for(lambda: server.app.harmonize, what="the server to see the checkbox")
    wait_for(lambda: panel_src(drv) not in ("", src_raw), what="a new frame in the page")
    time.sleep(0.5)
    after = screenshot_rgb(drv)
    keep(drv, "viewer_harmonized.png", tmp_path)
    assert wait_for(lambda: drv.find_element(By.ID, box_id).is_selected(), what="the checkbox to show as ticked")

    # The displayed frame changed the way the model changes frames: red up, blue down (screenshot space).
    d = (after - before).reshape(-1, 3).mean(0)
    assert np.abs(after - before).mean() > 15, f"frame barely changed: mean |diff| {np.abs(after - before).mean():.1f}"
    assert d[0] > 30 and d[2] < -30 and abs(d[1]) < 15, f"mean RGB change {d}"

    # and back: switching off shows the raw frame again
    src_h = panel_src(drv)
    click_harmonizer(drv)
    wait_for(lambda: not server.app.harmonize, what="the checkbox to switch off")
    wait_for(lambda: panel_src(drv) not in ("", src_h), what="the raw frame again")
    time.sleep(0.5)
    again = screenshot_rgb(drv)
    assert np.abs(again - before).mean() < 3, "switching off did not restore the raw frame"


def viewport_rgb(drv) -> np.ndarray:
    """Screenshot of the 3D viewport left of the control panel, without the corner notices: RGB float."""
    img = cv2.imdecode(np.frombuffer(drv.get_screenshot_as_png(), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    h, w = img.shape[:2]
    return img[int(0.3 * h):int(0.9 * h), int(0.1 * w):int(0.65 * w)].astype(np.float32)


def settled_frame(server, count_before: int, what: str):
    """Wait for a full-resolution frame of the free camera rendered after frame number ``count_before``."""
    wait_for(lambda: server.frames_shown > count_before, what=what)
    for _ in range(30):  # the browser may echo camera updates: wait until no new frame comes for a second
        wait_for(lambda: all(c.full_done and not c.dirty for c in server._clients.values()), what=f"{what} at full size")
        n = server.frames_shown
        time.sleep(1.0)  # the browser decodes and paints the background
        last = server.last_frame
        if server.frames_shown == n and last is not None and last.raw.shape[1] == server.full_width(
                next(iter(server._clients.values()))):
            return last
    raise AssertionError(f"{what}: the frames never settled")


def test_free_camera_fills_the_viewport_follows_the_client_camera_and_toggles(free_server, browser, tmp_path):
    drv, srv = browser, free_server
    drv.get(srv.url)
    wait_for(lambda: len(srv._clients) == 1, what="the browser to connect")
    first = settled_frame(srv, 0, "the first frame")
    assert first.raw.shape[1] > 100, "the free camera renders at the canvas size, not the scene's 128 px"
    before = viewport_rgb(drv)
    keep(drv, "viewer_free_first.png", tmp_path)
    # the frame fills the viewport: viser's empty canvas is near white; the street is not
    assert (before.mean(-1) < 235).mean() > 0.9, "the viewport is not filled by the rendered frame"
    client = next(iter(srv._clients.values())).handle
    n = srv.frames_shown
    with client.atomic():  # what dragging the mouse does: the client camera moves and turns
        client.camera.position = np.asarray(client.camera.position) + np.array([0.0, 2.5, 0.5])
        client.camera.wxyz = matrix_to_wxyz(wxyz_to_matrix(client.camera.wxyz) @ _yaw(0.35))
    moved = settled_frame(srv, n, "a frame of the moved camera")
    after = viewport_rgb(drv)
    keep(drv, "viewer_free_moved.png", tmp_path)
    assert np.abs(after - before).mean() > 10, "the viewport did not follow the camera"
    assert np.abs(moved.raw.astype(int) - first.raw.astype(int)).mean() > 5
    # harmonizer on: the model's colour shift shows in the viewport (red up, blue down)
    n = srv.frames_shown
    click_harmonizer(drv)
    wait_for(lambda: srv.app.harmonize, what="the server to see the checkbox")
    settled_frame(srv, n, "a harmonized frame")
    harmonized = viewport_rgb(drv)
    d = (harmonized - after).reshape(-1, 3).mean(0)
    assert d[0] > 20 and d[2] < -20, f"mean RGB change {d}"
    # split view: the left half raw again, the right half still harmonized
    n = srv.frames_shown
    srv.split_slider.value = 0.5
    settled_frame(srv, n, "a split frame")
    split = viewport_rgb(drv)
    keep(drv, "viewer_free_split.png", tmp_path)
    w = split.shape[1]  # the viewport crop spans 10-65 % of the window: its first half is the frame's left
    left, right = slice(0, int(0.45 * w)), slice(int(0.8 * w), w)
    assert np.abs(split[:, left] - after[:, left]).mean() < np.abs(harmonized[:, left] - after[:, left]).mean() / 2
    assert np.abs(split[:, right] - harmonized[:, right]).mean() < 8


def _yaw(angle: float) -> np.ndarray:
    """Rotation about the camera's vertical (OpenCV y, down) axis: a turn to the side."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
