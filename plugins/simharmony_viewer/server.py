"""viser wiring of :class:`~simharmony_viewer.app.ViewerApp`: GUI controls in, rendered frames out.

Works with viser 0.2.7 (the version nerfstudio 1.1.5 pins) and newer releases; only calls present in both
are used: ``gui.add_checkbox / add_dropdown / add_button / add_slider / add_markdown`` and
``scene.set_background_image``.

Each connected browser (client) has its own camera and its own enhancer stream. Its frame fills the 3D
viewport as the scene's background image, rendered at the client's canvas size times the "Resolution"
control (at most ``MAX_RENDER_WIDTH`` wide). Camera "free": the client's viser camera (mouse, keys) drives
the render; while it moves, frames are rendered at half that resolution, and at full resolution once it has
rested for ``REST_S``. Camera "trajectory": the recorded path (frame and lateral-shift sliders), the client's
camera snapped to it. The last frame is also shown as an image in the control panel (plain DOM: it shows
where a browser has no WebGL).

The scene tree shows the recorded trajectory as camera frustums, the inserted assets' tracks as lines and,
optionally, the Gaussians' centres as a point cloud. "Insert at click" places the chosen asset, parked, where
the next click on the ground plane (z = 0) lands.

Rendering runs on one worker thread: GUI and camera callbacks only change state and ask for a refresh;
the worker renders the newest state of each client, so dragging never queues up stale renders. A failed
render shows its error in the panel and never stops the server.
"""

from __future__ import annotations

import base64
import logging
import math
import numbers
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scene_tools.cameras import Intrinsics
from simharmony.errors import BackendUnavailableError, InvalidInputError, SimHarmonyError
from simharmony_viewer.app import ViewerApp, ViewerFrame

log = logging.getLogger("simharmony_viewer")

_HERE = Path(__file__).resolve().parent
PANEL_IMAGE_ALT = "simharmony frame"  # alt text of the panel image (browser tests look it up by this)
MAX_RENDER_WIDTH = 1024  # CPU renders: the free camera's frames are at most this wide
REST_S = 0.3  # a camera that has not moved for this long gets its full-resolution frame
CAMERA_MODES = ("free", "trajectory")
TRACK_COLOUR = (255, 140, 0)


def wxyz_to_matrix(wxyz) -> np.ndarray:
    w, x, y, z = (float(v) for v in wxyz)
    n = math.sqrt(w * w + x * x + y * y + z * z) or 1.0
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_wxyz(r: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (w, x, y, z), Shepperd's method."""
    t = np.trace(r)
    if t > 0:
        s = math.sqrt(t + 1.0) * 2
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = math.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k]) * 2
        q = [0.0] * 4
        q[0] = (r[k, j] - r[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (r[j, i] + r[i, j]) / s
        q[1 + k] = (r[k, i] + r[i, k]) / s
    return np.asarray(q) / np.linalg.norm(q)


def client_view(position, wxyz, fov_y: float, aspect: float, width_px: int) -> tuple[np.ndarray, Intrinsics]:
    """A viser client camera (OpenCV camera frame, vertical fov in radians) -> (camera-to-world [4, 4],
    pinhole intrinsics ``width_px`` wide with the canvas's aspect)."""
    pose = np.eye(4)
    pose[:3, :3] = wxyz_to_matrix(wxyz)
    pose[:3, 3] = np.asarray(position, dtype=np.float64)
    w = max(16, int(width_px))
    h = max(16, int(round(w / max(aspect, 1e-3))))
    fy = 0.5 * h / math.tan(0.5 * fov_y)
    return pose, Intrinsics(fy, fy, w / 2.0, h / 2.0, w, h)


def ground_hit(origin, direction) -> np.ndarray | None:
    """Where a pointer ray meets the ground plane z = 0 (None when it points up or lies in the plane)."""
    o, d = np.asarray(origin, np.float64), np.asarray(direction, np.float64)
    if abs(d[2]) < 1e-9 or (t := -o[2] / d[2]) <= 0:
        return None
    return o + t * d


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


@dataclass
class _Client:
    """One browser: its viser client, render state and its enhancer stream."""

    handle: object
    stream: str
    dirty: bool = True
    moved_at: float = field(default_factory=time.monotonic)
    full_done: bool = False
    last_status: str = ""


class ViewerServer:
    """A viser server showing ``app``; ``url`` to open, :meth:`stop` to shut down.

    host / port: where to listen; the port must be in 1..65535 and free (:func:`check_port`), else
    InvalidInputError before anything starts (port 0 is not supported by viser 0.2.7: pick a free port).
    camera: the initial camera mode of new clients ("free" or "trajectory").
    """

    def __init__(self, app: ViewerApp, host: str = "127.0.0.1", port: int = 8080, verbose: bool = False,
                 camera: str = "free") -> None:
        try:
            import viser
        except ImportError as e:
            raise BackendUnavailableError(
                "the viewer needs viser: pip install 'simharmony[viewer]' (or viser==0.2.7 next to nerfstudio)"
            ) from e
        if camera not in CAMERA_MODES:
            raise InvalidInputError(f"camera must be one of {CAMERA_MODES}, got {camera!r}")
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
        self._clients: dict[int, _Client] = {}
        self._clients_lock = threading.Lock()
        self._trajectory_dirty = True
        self.last_frame: ViewerFrame | None = None
        self.server.scene.set_up_direction("+z")
        self._build_gui(camera)
        self._build_scene_tree()
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)
        self._worker = threading.Thread(target=self._loop, name="simharmony-viewer-render", daemon=True)
        self._worker.start()
        self.request_refresh()

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "127.0.0.1", "") else self.host
        return f"http://{host}:{self.port}"

    # ------------------------------------------------------------------ GUI
    def _build_gui(self, camera: str) -> None:
        gui, app = self.server.gui, self.app
        self.image_md = gui.add_markdown("rendering ...", image_root=_HERE)  # root silences viser's path warning
        self.harmonize_cb = gui.add_checkbox("Harmonizer", initial_value=app.harmonize, disabled=not app.has_harmonizer,
                                             hint=f"enhancer: {app.harmonizer_note}")
        self.split_slider = gui.add_slider("Split raw | harmonized", min=0.0, max=1.0, step=0.05, initial_value=app.split,
                                           hint="the left part of the frame shows the raw render (0: harmonized only)")
        self.camera_dd = gui.add_dropdown("Camera", options=list(CAMERA_MODES), initial_value=camera,
                                          hint="free: fly with the mouse; trajectory: snap to the recorded path")
        self.resolution_slider = gui.add_slider("Resolution", min=0.1, max=1.0, step=0.05, initial_value=0.5,
                                                hint=f"of the browser canvas, at most {MAX_RENDER_WIDTH} px wide")
        self.frame_slider = gui.add_slider("Frame", min=0, max=max(app.num_frames - 1, 1), step=1,
                                           initial_value=app.frame_index, disabled=app.num_frames < 2)
        m = app.config.max_shift_m
        self.shift_slider = gui.add_slider("Lateral shift (m)", min=-m, max=m, step=0.1, initial_value=app.lateral_shift_m)
        self.centres_cb = gui.add_checkbox("Gaussian centres", initial_value=False, hint="show them as a point cloud")
        ids = app.asset_ids
        self.asset_dd = gui.add_dropdown("Asset", options=ids or ["(no asset bank)"], initial_value=ids[0] if ids else None,
                                         disabled=not ids)
        self.insert_btn = gui.add_button("Insert", disabled=not ids,
                                         hint=f"drive the asset {app.config.insert_lateral_m:+.1f} m beside the ego path")
        self.insert_click_btn = gui.add_button("Insert at click", disabled=not ids,
                                               hint="then click the ground: the asset is parked there")
        self.remove_btn = gui.add_button("Remove inserted", disabled=True)
        sun = app.sun
        self.sun_cb = gui.add_checkbox("Sun known", initial_value=sun is not None,
                                       hint="inserted assets get a shadow hint from this sun (enhancers that read it)")
        self.sun_az = gui.add_slider("Sun azimuth (deg)", min=0.0, max=360.0, step=5.0,
                                     initial_value=sun.azimuth_deg if sun else 150.0, disabled=sun is None,
                                     hint="in the ground plane, from +x towards +y")
        self.sun_el = gui.add_slider("Sun elevation (deg)", min=5.0, max=90.0, step=1.0,
                                     initial_value=sun.elevation_deg if sun else 40.0, disabled=sun is None)
        self.warning_md = gui.add_markdown(f"**Warning:** {app.warning}" if app.warning else "", visible=bool(app.warning))

        @self.harmonize_cb.on_update
        def _(_event) -> None:
            self._apply(lambda: app.set_harmonize(self.harmonize_cb.value))

        @self.split_slider.on_update
        def _(_event) -> None:
            self._apply(lambda: app.set_split(float(self.split_slider.value)))

        @self.camera_dd.on_update
        def _(_event) -> None:
            self._apply(self._snap_clients if self.camera_dd.value == "trajectory" else lambda: None)

        @self.resolution_slider.on_update
        def _(_event) -> None:
            self._apply(lambda: None)

        @self.frame_slider.on_update
        def _(_event) -> None:
            self._apply(lambda: (app.set_frame(round(self.frame_slider.value)), self._snap_clients()))

        @self.shift_slider.on_update
        def _(_event) -> None:
            self._apply(lambda: (app.set_lateral_shift(float(self.shift_slider.value)), self._snap_clients()))

        @self.centres_cb.on_update
        def _(_event) -> None:
            self._show_centres(self.centres_cb.value)

        @self.insert_btn.on_click
        def _(_event) -> None:
            self._apply(lambda: app.insert_asset(str(self.asset_dd.value)))
            self._after_scene_change()

        @self.insert_click_btn.on_click
        def _(_event) -> None:
            self._arm_click_insert()

        @self.remove_btn.on_click
        def _(_event) -> None:
            self._apply(app.remove_inserted)
            self._after_scene_change()

        def set_sun(_event) -> None:
            on = bool(self.sun_cb.value)
            self.sun_az.disabled = self.sun_el.disabled = not on
            self._apply(lambda: app.set_sun(float(self.sun_az.value) if on else None, float(self.sun_el.value)))

        for control in (self.sun_cb, self.sun_az, self.sun_el):
            control.on_update(set_sun)

    def _apply(self, change) -> None:
        try:
            change()
        except SimHarmonyError as e:  # bad input from the GUI: say so, keep serving
            self._show_error(str(e))
            return
        self.request_refresh()

    def _show_error(self, message: str) -> None:
        log.warning("viewer: %s", message)
        self.warning_md.content = f"**Error:** {message}"
        self.warning_md.visible = True

    def _after_scene_change(self) -> None:
        self.remove_btn.disabled = not self.app.inserted
        self._draw_tracks()

    def _arm_click_insert(self) -> None:
        """The next click on the ground parks the chosen asset there, facing along the recorded path."""
        @self.server.scene.on_pointer_event(event_type="click")
        def _(event) -> None:
            self.server.scene.remove_pointer_callback()
            hit = ground_hit(event.ray_origin, event.ray_direction)
            if hit is None:
                self._show_error("the click did not hit the ground (z = 0): click on the road")
                return
            self._apply(lambda: self.app.park_asset(str(self.asset_dd.value), float(hit[0]), float(hit[1])))
            self._after_scene_change()

    # ------------------------------------------------------------------ scene tree
    def _build_scene_tree(self) -> None:
        traj = self.app.trajectory
        k = self.app.intrinsics
        step = max(1, len(traj) // 20)
        for i in range(0, len(traj), step):
            pose = traj.poses[i]
            self.server.scene.add_camera_frustum(
                f"/trajectory/frame_{i:04d}", fov=2 * math.atan(0.5 * k.height / k.fy), aspect=k.width / k.height,
                scale=0.3, wxyz=matrix_to_wxyz(pose[:3, :3]), position=pose[:3, 3], color=(60, 120, 255))
        self._draw_tracks()

    def _draw_tracks(self) -> None:
        for iid, obj in self.app.inserted_tracks().items():
            points = np.asarray(obj, dtype=np.float32)
            if len(points) >= 2:
                self.server.scene.add_spline_catmull_rom(f"/tracks/object_{iid}", points, color=TRACK_COLOUR,
                                                         line_width=3.0)
            else:
                self.server.scene.add_point_cloud(f"/tracks/object_{iid}", points, colors=TRACK_COLOUR, point_size=0.3)

    def _show_centres(self, on: bool) -> None:
        if on:
            means = self.app.scene.background.means.detach().cpu().numpy()
            rgb = np.clip(self.app.scene.background.rgb.detach().cpu().numpy(), 0, 1)
            pick = np.random.default_rng(0).permutation(len(means))[:100_000]  # enough to see the layout
            self.server.scene.add_point_cloud("/gaussian_centres", means[pick].astype(np.float32),
                                              colors=(rgb[pick] * 255).astype(np.uint8), point_size=0.03)
        else:
            self.server.scene.add_point_cloud("/gaussian_centres", np.zeros((0, 3), np.float32),
                                              colors=(0, 0, 0), point_size=0.03)

    # ------------------------------------------------------------------ clients and cameras
    def _on_connect(self, client) -> None:
        state = _Client(handle=client, stream=f"client-{client.client_id}")
        with self._clients_lock:
            self._clients[client.client_id] = state
        self._snap(client)  # a free camera starts where the recorded path is

        @client.camera.on_update
        def _(_camera) -> None:
            state.dirty, state.full_done, state.moved_at = True, False, time.monotonic()
            self._wake.set()

        self.request_refresh()

    def _on_disconnect(self, client) -> None:
        with self._clients_lock:
            state = self._clients.pop(client.client_id, None)
        if state is not None and self.app.harmonizer is not None:
            self.app.harmonizer.reset(state.stream)

    def _snap(self, client) -> None:
        """Put the client's camera on the recorded path (current frame and shift)."""
        pose, k = self.app.camera_pose(), self.app.intrinsics
        with client.atomic():
            client.camera.fov = 2 * math.atan(0.5 * k.height / k.fy)
            client.camera.wxyz = matrix_to_wxyz(pose[:3, :3])
            client.camera.position = pose[:3, 3]

    def _snap_clients(self) -> None:
        if self.camera_dd.value != "trajectory":
            return
        with self._clients_lock:
            clients = list(self._clients.values())
        for c in clients:
            self._snap(c.handle)

    # ------------------------------------------------------------------ rendering
    def request_refresh(self) -> None:
        """Ask the worker to render the current state for every client (coalesces with pending requests)."""
        self._trajectory_dirty = True
        with self._clients_lock:
            for c in self._clients.values():
                c.dirty, c.full_done = True, False
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
            if not self._wake.wait(timeout=REST_S / 2):
                self._wake.set() if self._resting_clients() else None
                continue
            self._wake.clear()
            try:
                self._render_pending()
            except Exception as e:  # a broken frame must not kill the worker: show the error
                log.exception("viewer render failed")
                self.warning_md.content = f"**Error:** render failed: {type(e).__name__}: {e}"
                self.warning_md.visible = True
                self._count_frame()

    def _resting_clients(self) -> bool:
        now = time.monotonic()
        with self._clients_lock:
            return any(not c.full_done and now - c.moved_at >= REST_S for c in self._clients.values())

    def _render_pending(self) -> None:
        with self._clients_lock:
            clients = list(self._clients.values())
        free = self.camera_dd.value == "free"
        if not clients or not free:  # the trajectory camera: one frame for every client
            if self._trajectory_dirty or any(c.dirty for c in clients):
                self._trajectory_dirty = False
                for c in clients:
                    c.dirty, c.full_done = False, True
                frame = self.app.render()
                self._publish(frame, [c.handle for c in clients])
            return
        now = time.monotonic()
        for c in clients:
            resting = now - c.moved_at >= REST_S
            if not (c.dirty or (resting and not c.full_done)):
                continue
            c.dirty = False
            cam = c.handle.camera
            width = self.full_width(c)
            if not resting:
                width /= 2  # moving: half resolution, as nerfview does
            else:
                c.full_done = True
            pose, k = client_view(cam.position, cam.wxyz, cam.fov, cam.aspect, width)
            frame = self.app.render_view(pose, k, stream=c.stream)
            self._publish(frame, [c.handle])

    def full_width(self, client: _Client) -> int:
        """The width of a resting client's frames: its canvas times "Resolution", at most MAX_RENDER_WIDTH."""
        canvas = getattr(client.handle.camera, "image_width", None) or self.app.intrinsics.width * 2
        return max(16, int(min(MAX_RENDER_WIDTH, canvas * float(self.resolution_slider.value))))

    def _publish(self, frame: ViewerFrame, clients: list) -> None:
        for client in clients:
            client.scene.set_background_image(frame.shown, format="jpeg", jpeg_quality=90)
        if not clients:
            self.server.scene.set_background_image(frame.shown, format="jpeg", jpeg_quality=90)
        self.image_md.content = frame_markdown(frame)
        self.last_frame = frame
        self._count_frame()

    def _count_frame(self) -> None:
        with self._shown_cond:
            self._shown_count += 1
            self._shown_cond.notify_all()

    def stop(self) -> None:
        """Stop the worker and the server."""
        self._stopping.set()
        self._wake.set()
        self._worker.join(timeout=5.0)
        self.server.stop()


def serve(app: ViewerApp, host: str = "127.0.0.1", port: int = 8080, verbose: bool = False,
          camera: str = "free") -> None:
    """Run the viewer until Ctrl-C."""
    srv = ViewerServer(app, host=host, port=port, verbose=verbose, camera=camera)
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
