"""viser wiring of :class:`~simharmony_viewer.app.ViewerApp`: GUI controls in, rendered frames out.

Works with viser 0.2.7 (the version nerfstudio 1.1.5 pins) and newer releases; only calls present in both
are used: ``gui.add_checkbox / add_dropdown / add_button / add_slider / add_markdown`` and
``scene.set_background_image``.

The frame is shown twice: as the 3D canvas background (fills the window in a normal browser) and as an
image in the control panel (a markdown image with a data URL: plain DOM, so it also shows where the
browser has no WebGL, e.g. headless test browsers).

Rendering runs on one worker thread: GUI callbacks only change the app's state and ask for a refresh;
the worker renders the newest state, so dragging a slider never queues up stale renders.
"""

from __future__ import annotations

import base64
import logging
import numbers
import socket
import threading
from pathlib import Path

import numpy as np

from simharmony.errors import BackendUnavailableError, InvalidInputError, SimHarmonyError
from simharmony_viewer.app import ViewerApp, ViewerFrame

log = logging.getLogger("simharmony_viewer")

_HERE = Path(__file__).resolve().parent
PANEL_IMAGE_ALT = "simharmony frame"  # alt text of the panel image (browser tests look it up by this)


def _png_data_url(image: np.ndarray) -> str:
    """uint8 [H, W, 3] -> 'data:image/png;base64,...' (OpenCV encodes; it expects BGR)."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:  # pragma: no cover - cv2 fails only on bad arrays, which render() never returns
        raise SimHarmonyError("PNG encoding of the frame failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def frame_markdown(frame: ViewerFrame, warning: str | None = None) -> str:
    """Markdown of the control-panel image plus its status line (and a warning line when given)."""
    mode = "harmonized" if frame.harmonized is not None else "raw"
    lines = [f"![{PANEL_IMAGE_ALT}]({_png_data_url(frame.shown)})", "", f"**{mode}** - {frame.status}"]
    if warning:
        lines += ["", f"**Warning:** {warning}"]
    return "\n".join(lines)


def check_port(host: str, port: int) -> int:
    """``port`` as an int if the viewer can listen on ``host:port``, else InvalidInputError saying why.

    The port must be an integer in 1..65535 and free: it is bound once (with SO_REUSEADDR, as the server
    binds it) and released. viser would otherwise fail in its server thread on an invalid port (a traceback,
    then a hang) and silently move on to the next port when this one is taken.
    """
    if isinstance(port, bool) or not isinstance(port, numbers.Integral) or not 1 <= port <= 65535:
        raise InvalidInputError(f"port must be an integer in 1..65535, got {port!r}")
    port = int(port)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise InvalidInputError(f"cannot listen on host {host!r}: {e}") from e
    for family, kind, proto, _, addr in infos:  # every address, as asyncio's create_server binds them
        try:
            s = socket.socket(family, kind, proto)
        except OSError:  # an address family this machine lacks: the server skips it too
            continue
        with s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(addr)
            except OSError as e:
                raise InvalidInputError(f"cannot listen on {host}:{port} ({e.strerror or e}); is another server "
                                        "using the port? pick another one (simharmony view --port N)") from e
    return port


class ViewerServer:
    """A viser server showing ``app``; ``url`` to open, :meth:`stop` to shut down.

    host / port: where to listen; the port must be in 1..65535 and free (:func:`check_port`), else
    InvalidInputError before anything starts (port 0 is not supported by viser 0.2.7: pick a free port).
    """

    def __init__(self, app: ViewerApp, host: str = "127.0.0.1", port: int = 8080, verbose: bool = False) -> None:
        try:
            import viser
        except ImportError as e:
            raise BackendUnavailableError(
                "the viewer needs viser: pip install 'simharmony[viewer]' (or viser==0.2.7 next to nerfstudio)"
            ) from e
        self.host, self.port = host, check_port(host, port)
        self.app = app
        self.server = viser.ViserServer(host=host, port=self.port, verbose=verbose)
        get_port = getattr(self.server, "get_port", None)
        if get_port is not None:  # viser moves on to the next port if this one was taken in the meantime
            self.port = int(get_port())
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._shown_count = 0
        self._shown_cond = threading.Condition()
        self._build_gui()
        self._worker = threading.Thread(target=self._loop, name="simharmony-viewer-render", daemon=True)
        self._worker.start()
        self.request_refresh()

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "127.0.0.1", "") else self.host
        return f"http://{host}:{self.port}"

    # ------------------------------------------------------------------ GUI
    def _build_gui(self) -> None:
        gui, app = self.server.gui, self.app
        self.image_md = gui.add_markdown("rendering ...", image_root=_HERE)  # root silences viser's path warning
        self.harmonize_cb = gui.add_checkbox("Harmonizer", initial_value=app.harmonize, disabled=not app.has_harmonizer,
                                             hint=f"enhancer: {app.harmonizer_note}")
        self.frame_slider = gui.add_slider("Frame", min=0, max=max(app.num_frames - 1, 1), step=1,
                                           initial_value=app.frame_index, disabled=app.num_frames < 2)
        m = app.config.max_shift_m
        self.shift_slider = gui.add_slider("Lateral shift (m)", min=-m, max=m, step=0.1, initial_value=app.lateral_shift_m)
        ids = app.asset_ids
        self.asset_dd = gui.add_dropdown("Asset", options=ids or ["(no asset bank)"], initial_value=ids[0] if ids else None,
                                         disabled=not ids)
        self.insert_btn = gui.add_button("Insert", disabled=not ids,
                                         hint=f"drive the asset {app.config.insert_lateral_m:+.1f} m beside the ego path")
        self.remove_btn = gui.add_button("Remove inserted", disabled=True)
        self.warning_md = gui.add_markdown(f"**Warning:** {app.warning}" if app.warning else "", visible=bool(app.warning))

        @self.harmonize_cb.on_update
        def _(_event) -> None:
            self._apply(lambda: app.set_harmonize(self.harmonize_cb.value))

        @self.frame_slider.on_update
        def _(_event) -> None:
            self._apply(lambda: app.set_frame(round(self.frame_slider.value)))

        @self.shift_slider.on_update
        def _(_event) -> None:
            self._apply(lambda: app.set_lateral_shift(float(self.shift_slider.value)))

        @self.insert_btn.on_click
        def _(_event) -> None:
            self._apply(lambda: app.insert_asset(str(self.asset_dd.value)))
            self.remove_btn.disabled = not app.inserted

        @self.remove_btn.on_click
        def _(_event) -> None:
            self._apply(app.remove_inserted)
            self.remove_btn.disabled = not app.inserted

    def _apply(self, change) -> None:
        try:
            change()
        except SimHarmonyError as e:  # bad input from the GUI: say so, keep serving
            log.warning("viewer: %s", e)
            self.warning_md.content = f"**Error:** {e}"
            self.warning_md.visible = True
            return
        self.request_refresh()

    # ------------------------------------------------------------------ rendering
    def request_refresh(self) -> None:
        """Ask the worker to render the current state (coalesces with pending requests)."""
        self._wake.set()

    def wait_for_frames(self, count: int, timeout: float = 30.0) -> bool:
        """Block until at least ``count`` frames were pushed to the browser; False on timeout."""
        with self._shown_cond:
            return self._shown_cond.wait_for(lambda: self._shown_count >= count, timeout=timeout)

    @property
    def frames_shown(self) -> int:
        return self._shown_count

    def _loop(self) -> None:
        while not self._stopping.is_set():
            if not self._wake.wait(timeout=0.2):
                continue
            self._wake.clear()
            try:
                frame = self.app.render()
                self._publish(frame)
            except Exception as e:  # a broken frame must not kill the worker: show the error
                log.exception("viewer render failed")
                self.warning_md.content = f"**Error:** render failed: {type(e).__name__}: {e}"
                self.warning_md.visible = True
            with self._shown_cond:
                self._shown_count += 1
                self._shown_cond.notify_all()

    def _publish(self, frame: ViewerFrame) -> None:
        self.server.scene.set_background_image(frame.shown, format="jpeg", jpeg_quality=90)
        self.image_md.content = frame_markdown(frame)

    def stop(self) -> None:
        """Stop the worker and the server."""
        self._stopping.set()
        self._wake.set()
        self._worker.join(timeout=5.0)
        self.server.stop()


def serve(app: ViewerApp, host: str = "127.0.0.1", port: int = 8080, verbose: bool = False) -> None:
    """Run the viewer until Ctrl-C."""
    import time

    srv = ViewerServer(app, host=host, port=port, verbose=verbose)
    print(f"simharmony viewer at {srv.url} (Ctrl-C to stop); enhancer: {app.harmonizer_note}")
    if app.warning:
        print(f"warning: {app.warning}")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


__all__ = ["PANEL_IMAGE_ALT", "ViewerServer", "check_port", "frame_markdown", "serve"]
