"""Screenshot of the viewer in a headless browser (Debian's chromium + chromedriver, WebGL through SwiftShader):
the README's picture of the viewer with a real capture loaded.

    python benchmarks/viewer_screenshot.py --scene outputs/bench/real-capture/reconstruction \\
        --trajectory outputs/bench/real-capture/capture --ground-height 1.5 --frame 60 --split 0.5 \\
        --out docs/images/viewer_real_capture.jpg

(``simharmony bench-capture`` makes that reconstruction and capture.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", required=True)
    p.add_argument("--trajectory", default=None)
    p.add_argument("--ground-height", type=float, default=None)
    p.add_argument("--frame", type=int, default=0)
    p.add_argument("--split", type=float, default=0.5)
    p.add_argument("--out", required=True)
    p.add_argument("--port", type=int, default=8765)
    args = p.parse_args()
    torch.set_num_threads(2)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from simharmony_viewer import ViewerApp
    from simharmony_viewer.server import ViewerServer

    app = ViewerApp.from_paths(args.scene, None, "default", trajectory_from=args.trajectory,
                               ground_camera_height_m=args.ground_height)
    app.set_frame(args.frame)
    app.set_harmonize(True)
    app.set_split(args.split)
    srv = ViewerServer(app, port=args.port, camera="trajectory")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--ignore-gpu-blocklist", "--window-size=1280,720", f"--user-data-dir={tempfile.mkdtemp()}"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        drv.get(srv.url)
        deadline = time.monotonic() + 120
        while (not srv._clients or srv.last_frame is None) and time.monotonic() < deadline:
            time.sleep(0.5)
        srv.camera_dd.value = "trajectory"
        srv.request_refresh()
        time.sleep(8.0)  # the frame renders, is sent and painted
        # close the "software WebGL" notice if present, so it does not cover the picture
        for button in drv.find_elements("css selector", "button.mantine-Notification-closeButton"):
            button.click()
        time.sleep(1.0)
        png = drv.get_screenshot_as_png()
    finally:
        drv.quit()
        srv.stop()
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {args.out} ({img.shape[1]}x{img.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
