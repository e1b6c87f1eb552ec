"""``sccan app``: the web app run as a user runs it (the command, a real uvicorn server on a free
port), its limits and bad prompts answered with errors while it keeps serving, SIGTERM and SIGINT
ending it cleanly, and (slow job) a real headless Chromium registering an object with a dragged box
on a DAVIS video and seeing the overlay on it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import scene

pytest.importorskip("fastapi", reason="the app needs the 'app' extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="the app needs the 'app' extra (fastapi, uvicorn)")

ROOT = Path(__file__).resolve().parents[1]
DAVIS = ROOT.parent / "shared" / "realdata" / "davis2016-train"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """A running ``sccan app`` and small HTTP helpers (status, body, headers)."""

    def __init__(self, proc: subprocess.Popen, url: str) -> None:
        self.proc, self.url = proc, url

    def call(self, method: str, path: str, body: object = None, data: bytes | None = None,
             headers: dict | None = None, timeout: float = 120) -> tuple[int, bytes, Message]:
        if body is not None:
            data = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        host, port = self.url.rsplit("//", 1)[1].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            connection.putrequest(method, path)
            for key, value in {**(headers or {}), "Content-Length": str(len(data or b""))}.items():
                connection.putheader(key, value)
            connection.endheaders()
            try:
                connection.send(data or b"")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered (413) before the whole body was sent: read its answer
            response = connection.getresponse()
            return response.status, response.read(), response.headers
        finally:
            connection.close()

    def json(self, method: str, path: str, body: object = None, **kwargs) -> tuple[int, dict]:
        status, data, _ = self.call(method, path, body, **kwargs)
        return status, json.loads(data) if data else {}

    def state(self) -> dict:
        status, state = self.json("GET", "/api/state")
        assert status == 200, state
        return state

    def frame(self) -> np.ndarray:
        status, data, _ = self.call("GET", "/api/frame.jpg")
        assert status == 200, data[:300]
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)

    def wait(self, predicate, what: str, timeout: float = 120) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.state()
            if predicate(state):
                return state
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}: {self.state()}")


@contextlib.contextmanager
def running_app(*args: str) -> Iterator[App]:
    port = _free_port()
    proc = subprocess.Popen(["sccan", "app", *args, "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    app = App(proc, f"http://127.0.0.1:{port}")
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, f"sccan app ended: {proc.communicate()[1][-3000:]}"
            try:
                app.state()
                break
            except (OSError, http.client.HTTPException):
                assert time.time() < deadline, "sccan app did not start listening within 180 s"
                time.sleep(0.2)
        yield app
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _stop(app: App, sig: int) -> tuple[str, str]:
    """Send ``sig``; the app must end by itself, exit 0, and say it stopped."""
    app.proc.send_signal(sig)
    stdout, stderr = app.proc.communicate(timeout=30)
    assert app.proc.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr and "stopped" in stderr, stderr[-2000:]
    return stdout, stderr


def test_app_refuses_bad_requests_and_keeps_serving(small_export, tmp_path):
    """No source: nothing to show (409). An upload over the limit (413), bytes that are no image
    (400), then a real upload. Every bad prompt of the SDK and the app's own limits (a class name
    with ``../``, a prompt on a playing source) get a 4xx with a message, change nothing, and the
    next request is served; a valid box registers; the support file round-trips; SIGTERM ends it."""
    _, bundle = small_export
    with running_app(str(bundle), "--max-upload-mb", "2") as app:
        assert app.state()["frame"] is None
        status, body = app.json("GET", "/api/frame.jpg")
        assert status == 409 and "no frame" in body["error"]
        status, body = app.json("POST", "/api/propose", {"box": [1, 1, 20, 20]})
        assert status == 409 and "pause" in body["error"]
        assert app.json("POST", "/api/pause", {"paused": True})[0] == 200
        status, body = app.json("POST", "/api/propose", {"box": [1, 1, 20, 20]})
        assert status == 409 and "no frame" in body["error"], body

        status, body = app.json("POST", "/api/upload?name=big.bin", data=b"\0" * 2_200_000)
        assert status == 413 and "at most" in body["error"]
        status, body = app.json("POST", "/api/upload?name=x.png", data=b"not an image")
        assert status == 400 and "decode" in body["error"]
        image = np.clip(np.random.default_rng(3).normal((150, 120, 110), 12, (60, 80, 3)), 0, 255).astype(np.uint8)
        mask = np.zeros((60, 80), bool)
        mask[18:42, 30:60] = True
        image[mask] = (40, 190, 60)  # a flat green object on a grey-blue ground
        status, body = app.json("POST", "/api/upload?name=../../etc/passwd", data=_png(image))
        assert status == 200 and body["name"] == "passwd" and (body["width"], body["height"]) == (80, 60), body
        assert not (tmp_path / "passwd").exists()
        state = app.state()
        assert state["paused"] and state["source"] == "uploads" and state["classes"] == []

        ys, xs = np.nonzero(mask)
        box = [int(xs.min()) - 3, int(ys.min()) - 3, int(xs.max()) + 4, int(ys.max()) + 4]
        bad = {
            "box outside the image": {"name": "a", "box": [-5, 0, 20, 20]},
            "box of zero area": {"name": "a", "box": [10, 10, 10, 30]},
            "reversed corners": {"name": "a", "box": [40, 40, 10, 10]},
            "a box of three numbers": {"name": "a", "box": [1, 2, 3]},
            "point outside": {"name": "a", "points": [[500, 5]]},
            "no positive point": {"name": "a", "negative_points": [[5, 5]]},
            "no prompt": {"name": "a"},
            "'../' in the name": {"name": "../a", "box": box},
            "a slash in the name": {"name": "a/b", "box": box},
            "an empty name": {"name": " ", "box": box},
            "a name of 65 characters": {"name": "n" * 65, "box": box},
        }
        for what, request in bad.items():
            status, body = app.json("POST", "/api/classes", request)
            assert 400 <= status < 500, (what, status, body)
            assert app.state()["classes"] == [], what
        # NaN is not JSON; Python's encoder writes it anyway, and the server refuses it
        status, data, _ = app.call("POST", "/api/classes", data=b'{"name": "a", "box": [NaN, 0, 20, 20]}',
                                   headers={"Content-Type": "application/json"})
        assert 400 <= status < 500, data
        status, body = app.json("DELETE", "/api/classes/nothing")
        assert status == 400 and "no class" in body["error"]
        status, body = app.json("POST", "/api/support", data=b"PK\x03\x04 not a support file")
        assert status == 400 and "not an SCCAN support file" in body["error"]

        status, proposed, headers = app.call("POST", "/api/propose", {"box": box})
        assert status == 200 and int(headers["X-Mask-Pixels"]) > 0
        status, body = app.json("POST", "/api/classes", {"name": "square", "box": box})
        assert status == 200 and body["classes"] == ["square"], body
        state = app.wait(lambda s: s["classes"] and "presence" in s["classes"][0], "the class's first result")
        assert set(state["timings_ms"]) >= {"backbone", "total"}
        shown = app.frame()
        assert np.abs(shown.astype(int) - image.astype(int)).max() > 60  # the overlay is drawn

        status, saved, _ = app.call("GET", "/api/support")
        assert status == 200 and saved[:2] == b"PK"
        assert app.json("DELETE", "/api/classes/square") == (200, {"classes": []})
        status, body = app.json("POST", "/api/support", data=saved)
        assert status == 200 and body["loaded"] == ["square"], body

        status, _ = app.json("POST", "/api/pause", {"paused": False})
        status, body = app.json("POST", "/api/classes", {"name": "b", "box": box})
        assert status == 409 and "pause" in body["error"]
        assert app.state()["classes"][0]["name"] == "square"
        _stop(app, signal.SIGTERM)


def test_app_plays_a_video_and_stops_on_sigint(small_export, tmp_path):
    """A video source plays (the frame index moves), and Ctrl-C (SIGINT) ends the app cleanly."""
    _, bundle = small_export
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (80, 60))
    for seed in range(5):
        writer.write(scene(seed, 60, 80)[0])
    writer.release()
    with running_app(str(bundle), "--source", str(video)) as app:
        first = app.wait(lambda s: s["frame"] is not None, "a frame")["frame"]["index"]
        app.wait(lambda s: s["frame"]["index"] >= first + 6, "the video to play past its end (it loops)")
        _stop(app, signal.SIGINT)


def test_app_warns_when_it_listens_beyond_this_computer(small_export):
    _, bundle = small_export
    with running_app(str(bundle), "--host", "0.0.0.0") as app:
        _, stderr = _stop(app, signal.SIGTERM)
    assert "warning: listening on 0.0.0.0" in stderr


def _chromium() -> tuple[str | None, str | None]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return browser, driver


@pytest.mark.slow
def test_a_box_dragged_in_chromium_registers_the_object_and_its_overlay_follows(real_export, tmp_path):
    """Headless Chromium (the system's, through its chromedriver) opens the page on a DAVIS video,
    pauses it, drags a box over the bear, registers it, plays on; the canvas then shows the overlay
    on the bear (checked against the frame's truth mask); removing the class removes the overlay."""
    browser, driver_path = _chromium()
    if browser is None or driver_path is None:
        why = "no Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("SCCAN_REQUIRE_BROWSER") == "1":  # .ci/run installed Chromium: it must be found
            raise RuntimeError(f"SCCAN_REQUIRE_BROWSER is set but the browser test cannot run: {why}")
        pytest.skip(why)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    sequence = DAVIS / "JPEGImages" / "bear"
    if not sequence.is_dir():
        pytest.skip("needs ../shared/realdata/davis2016-train")
    files = sorted(sequence.glob("*.jpg"))[:20]
    truths = [cv2.imread(str(DAVIS / "Annotations" / "bear" / f"{f.stem}.png"), cv2.IMREAD_GRAYSCALE) > 0
              for f in files]
    h, w = cv2.imread(str(files[0])).shape[:2]
    video = tmp_path / "bear.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 8.0, (w, h))
    for f in files:
        writer.write(cv2.imread(str(f)))
    writer.release()
    capture, decoded = cv2.VideoCapture(str(video)), []  # the frames exactly as the app reads them
    while (item := capture.read())[0]:
        decoded.append(item[1])
    assert len(decoded) == len(files)

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    with running_app(str(real_export), "--source", str(video)) as app:
        chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
        try:
            chrome.get(app.url + "/")
            canvas = chrome.find_element(By.ID, "view")
            app.wait(lambda s: s["frame"] is not None, "the first frame")
            deadline = time.time() + 60
            while chrome.execute_script("return arguments[0].width", canvas) != w:
                assert time.time() < deadline, "the page never drew a frame"
                time.sleep(0.2)

            def shown_frame() -> tuple[int, np.ndarray]:
                """Pause with the page's button and read back the canvas at the frame's size."""
                if not app.state()["paused"]:
                    chrome.find_element(By.ID, "play").click()
                state = app.wait(lambda s: s["paused"], "the pause")
                time.sleep(1.0)  # the page fetches and draws the held frame
                png = np.frombuffer(canvas.screenshot_as_png, np.uint8)
                shot = cv2.resize(cv2.imdecode(png, cv2.IMREAD_COLOR), (w, h), interpolation=cv2.INTER_AREA)
                return int(state["frame"]["name"][5:]), shot

            def tinted(index: int, shot: np.ndarray) -> tuple[float, float]:
                """Share of the truth mask's pixels, and of the far background's, that the overlay changed."""
                changed = np.abs(shot.astype(int) - decoded[index].astype(int)).max(axis=2) > 45
                truth = truths[index]
                far = ~cv2.dilate(truth.astype(np.uint8), np.ones((41, 41), np.uint8)).astype(bool)
                inner = cv2.erode(truth.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
                return float(changed[inner].mean()), float(changed[far].mean())

            def still(index: int, shot: np.ndarray) -> float:
                """Share of the frame's pixels the canvas shows changed (JPEG and scaling aside)."""
                return float((np.abs(shot.astype(int) - decoded[index].astype(int)).max(axis=2) > 45).mean())

            index, shot = shown_frame()
            assert still(index, shot) < 0.01, "the canvas is not the paused frame, or an overlay is drawn with no class"
            ys, xs = np.nonzero(truths[index])
            rect = chrome.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height]",
                                         canvas)
            scale = rect[0] / w

            def offset(x: float, y: float) -> tuple[int, int]:  # from the canvas's centre, in CSS pixels
                return int(round(x * scale - rect[0] / 2)), int(round(y * scale - rect[1] / 2))

            actions = ActionChains(chrome)
            actions.move_to_element_with_offset(canvas, *offset(xs.min(), ys.min())).click_and_hold()
            actions.move_to_element_with_offset(canvas, *offset((xs.min() + xs.max()) / 2, ys.mean()))
            actions.move_to_element_with_offset(canvas, *offset(xs.max() + 1, ys.max() + 1)).release().perform()
            register = chrome.find_element(By.ID, "register")
            deadline = time.time() + 60
            while not register.is_enabled():
                assert time.time() < deadline, chrome.find_element(By.ID, "status").text
                time.sleep(0.2)
            chrome.find_element(By.ID, "name").send_keys("bear")
            register.click()
            state = app.wait(lambda s: [c["name"] for c in s["classes"]] == ["bear"] and not s["paused"],
                             "the class registered and the video playing")
            app.wait(lambda s: s["frame"]["index"] >= state["frame"]["index"] + 4, "the next frames")

            later, shot = shown_frame()
            cv2.imwrite(str(tmp_path / "overlay.png"), shot)
            if os.environ.get("SCCAN_APP_SCREENSHOT"):  # the README's picture of the page
                chrome.save_screenshot(os.environ["SCCAN_APP_SCREENSHOT"])
            # On the object: most of the bear is tinted. And the overlay is the SDK's mask: the SDK, run
            # here on the same frame with the app's support (its support file), tints what it finds
            # and nothing far from it.
            inside, _ = tinted(later, shot)
            assert inside > 0.6, (later, inside, tmp_path / "overlay.png")
            from sccan.sdk import Segmenter

            status, support, _ = app.call("GET", "/api/support")
            assert status == 200
            (tmp_path / "support.npz").write_bytes(support)
            sdk = Segmenter(real_export, backend="onnxruntime")
            assert sdk.load_support(tmp_path / "support.npz") == ["bear"]
            expected = sdk.segment(decoded[later]).masks["bear"]
            changed = np.abs(shot.astype(int) - decoded[later].astype(int)).max(axis=2) > 45
            off = ~cv2.dilate(expected.astype(np.uint8), np.ones((41, 41), np.uint8)).astype(bool)
            on = cv2.erode(expected.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
            label = np.zeros_like(off)
            label[: h // 4, : w // 3] = True  # where the overlay writes the class name
            assert changed[on].mean() > 0.9 and changed[off & ~label].mean() < 0.02, \
                (changed[on].mean(), changed[off & ~label].mean(), tmp_path / "overlay.png")

            chrome.find_element(By.CSS_SELECTOR, "button.remove[data-name='bear']").click()
            app.wait(lambda s: s["classes"] == [], "the class removed")
            time.sleep(1.5)
            png = np.frombuffer(canvas.screenshot_as_png, np.uint8)
            shot = cv2.resize(cv2.imdecode(png, cv2.IMREAD_COLOR), (w, h), interpolation=cv2.INTER_AREA)
            assert still(int(app.state()["frame"]["name"][5:]), shot) < 0.01, "the overlay outlived its class"
        finally:
            chrome.quit()
        _stop(app, signal.SIGTERM)


def test_pausing_holds_the_frame_being_segmented_and_reports_it(tmp_path):
    """Pause arrives while a frame is being segmented: the call waits for it, and the frame the
    state reports is the one held from then on (the page draws prompts on it)."""
    import threading

    from sccan.app.live import LiveSession
    from sccan.sdk.segmenter import Result

    class SlowSegmenter:
        classes = ["x"]
        backend = None
        entered = threading.Event()

        def segment(self, image, threshold, presence_threshold):
            self.entered.set()
            time.sleep(0.3)
            label = np.zeros(image.shape[:2], np.int32)
            return Result({}, {}, label, ["x"], presence={"x": 1.0})

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 100.0, (80, 60))
    for seed in range(20):
        writer.write(scene(seed, 60, 80)[0])
    writer.release()
    segmenter = SlowSegmenter()
    session = LiveSession(segmenter, str(video))
    session.start()
    try:
        for _ in range(3):  # a few times, each pause landing in the middle of a frame
            segmenter.entered.clear()
            assert segmenter.entered.wait(10)
            session.set_paused(True)
            held = session.state()["frame"]["index"]
            time.sleep(0.5)
            assert session.frame().index == held == session.state()["frame"]["index"]
            session.set_paused(False)
    finally:
        session.close()
