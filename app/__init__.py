"""``sccan app``: a local web page to try a bundle live. Play a camera, a video, an image folder or
uploaded images; pause, drag a box (or click) on the object, see the proposed support mask, name
and register it, and watch the overlays with presence, per-stage timings and FPS.

Built on FastAPI and uvicorn (the ``app`` extra): a few JSON routes and one static page with plain
JavaScript, so nothing is built or downloaded at run time. :mod:`.live` holds the state and works
without a browser; :mod:`.server` is the routes; :mod:`.cli` the command.
"""
