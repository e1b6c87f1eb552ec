"""The web app: FastAPI routes over :class:`~sccan.app.live.LiveSession`, and the page.

Routes (JSON unless said otherwise; an error is ``{"error": "..."}`` with 400, 409 or 413):

========================  ===================================================================
``GET /``                 the page (``page.html``: a canvas, plain JavaScript, no build step)
``GET /api/state``        classes with presence, per-stage timings, FPS, paused, the frame's size
``GET /api/frame.jpg``    the latest frame with its overlay (JPEG; ``X-Frame-Index`` header)
``POST /api/pause``       ``{"paused": true|false}``: hold the frame to draw on, or play
``POST /api/propose``     ``{"box": [x0, y0, x1, y1]}`` and/or ``{"points": [[x, y]], "negative_points"}``:
                          the paused frame with the mask the prompt makes (JPEG), before registering
``POST /api/classes``     the same prompt and ``"name"``: register it from the paused frame
``DELETE /api/classes/N`` remove class N
``POST /api/thresholds``  ``{"threshold": t, "presence_threshold": p}``
``GET /api/support``      the registered classes' support file (.npz) to save
``POST /api/support``     a support file's bytes (from ``save_support`` or this app) to load
``POST /api/upload``      an image's bytes: the uploads become the source, paused on this one
========================  ===================================================================

Limits: request bodies over ``max_upload_bytes`` get 413 (the length is checked before reading,
and again while reading); class names are names only (no path separators or control characters,
at most 64 characters) and never touch the file system; the browser names no file path: uploads
and support files travel as bytes and are written to private temporary files.
"""

from __future__ import annotations

import os
import re
import tempfile
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from sccan.sdk.errors import BadArgumentError, SCCANError
from sccan.sdk.segmenter import check_class_name

from .live import LiveSession, NotPausedError, SourceClosedError

#: Request bodies above this are refused with 413 (uploads, support files).
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
MAX_NAME = 64
_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


class PayloadTooLarge(SCCANError):
    """A request body over the app's limit."""


class Prompt(BaseModel):
    box: list[float] | None = Field(default=None, description="x0, y0, x1, y1 in the frame's pixels")
    points: list[list[float]] | None = Field(default=None, description="clicks on the object, [[x, y], ...]")
    negative_points: list[list[float]] | None = Field(default=None, description="clicks off the object")


class NewClass(Prompt):
    name: str


class Pause(BaseModel):
    paused: bool


class Thresholds(BaseModel):
    threshold: float | None = None
    presence_threshold: float | None = None


def check_app_name(name: str) -> str:
    """A class name the app accepts: the SDK's (a non-empty string), and 1..64 characters without a
    path separator or control character."""
    check_class_name(name)
    if len(name) > MAX_NAME or _BAD_NAME.search(name) or name.strip() in (".", ".."):
        raise BadArgumentError(f"a class name is 1 to {MAX_NAME} characters without '/', '\\' or control "
                               f"characters, got {name!r}")
    return name


def _status(exc: SCCANError) -> int:
    if isinstance(exc, PayloadTooLarge):
        return 413
    if isinstance(exc, (SourceClosedError, NotPausedError)):
        return 409
    return 400


async def _body(request: Request, limit: int) -> bytes:
    """The request's body, refused (PayloadTooLarge) past ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request is {int(declared)} bytes: at most {limit} are accepted")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _display_name(raw: str | None) -> str:
    """An upload's name for display only (never a path): its last component's safe characters."""
    stem = Path((raw or "upload").replace("\\", "/")).name
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:MAX_NAME] or "upload"


def page() -> str:
    return resources.files("sccan.app").joinpath("page.html").read_text(encoding="utf-8")


def create_app(session: LiveSession, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """The app's routes over ``session`` (started by the caller; see :func:`sccan.app.cli.serve`)."""
    app = FastAPI(title="SCCAN Edge", docs_url=None, redoc_url=None, openapi_url=None)
    html = page()

    @app.exception_handler(SCCANError)
    async def sccan_error(_request: Request, exc: SCCANError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=_status(exc))

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return html

    @app.get("/api/state")
    def state() -> dict:
        return session.state()

    @app.get("/api/frame.jpg")
    def frame() -> Response:
        shown = session.frame()
        return Response(shown.jpeg, media_type="image/jpeg",
                        headers={"Cache-Control": "no-store", "X-Frame-Index": str(shown.index)})

    @app.post("/api/pause")
    def pause(body: Pause) -> dict:
        shown = session.set_paused(body.paused)
        return {"paused": body.paused, "frame": None if shown is None else shown.index}

    @app.post("/api/propose")
    def propose(body: Prompt) -> Response:
        mask, jpeg = session.propose(body.box, body.points, body.negative_points)
        return Response(jpeg, media_type="image/jpeg",
                        headers={"Cache-Control": "no-store", "X-Mask-Pixels": str(int((mask > 0).sum()))})

    @app.post("/api/classes")
    def add_class(body: NewClass) -> dict:
        return {"classes": session.add_class(check_app_name(body.name), body.box, body.points, body.negative_points)}

    @app.delete("/api/classes/{name}")
    def remove_class(name: str) -> dict:
        return {"classes": session.remove_class(check_app_name(name))}

    @app.post("/api/thresholds")
    def thresholds(body: Thresholds) -> dict:
        session.set_thresholds(body.threshold, body.presence_threshold)
        state = session.state()
        return {"threshold": state["threshold"], "presence_threshold": state["presence_threshold"]}

    @app.get("/api/support")
    def save_support() -> Response:
        if not session.segmenter.classes:
            raise BadArgumentError("no class is registered: nothing to save")
        with tempfile.TemporaryDirectory(prefix="sccan-app-") as tmp:
            path = session.segmenter.save_support(Path(tmp) / "support.npz")
            data = path.read_bytes()
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="support.npz"'})

    @app.post("/api/support")
    async def load_support(request: Request) -> dict:
        data = await _body(request, max_upload_bytes)
        if not data:
            raise BadArgumentError("the support file is empty")
        fd, name = tempfile.mkstemp(prefix="sccan-app-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                loaded = session.load_support(Path(name))
            except SCCANError as exc:  # the message names the private temporary file: name the upload instead
                raise type(exc)(str(exc).replace(name, "the uploaded file")) from None
        finally:
            os.unlink(name)
        return {"loaded": loaded, "classes": session.segmenter.classes}

    @app.post("/api/upload")
    async def upload(request: Request, name: str | None = None) -> dict:
        data = await _body(request, max_upload_bytes)
        shown = session.add_upload(_display_name(name), data)
        return {"frame": shown.index, "name": shown.name, "width": int(shown.image.shape[1]),
                "height": int(shown.image.shape[0])}

    return app
