"""The rollout viewer: one browser page the simulator and the trainer serve at `/viewer`.

The page is plain HTML and JavaScript modules shipped as package data (`static/`), no build
step. It holds no data and no secret, so it and its static files are public; everything it
shows comes through the service's keyed API, with the key the user gives the page (typed in,
or in the URL fragment `#key=...`, which browsers never send to a server). The page keeps the
key in the tab's sessionStorage and sends it as `x-api-key`.

Routes (added by `create_app(..., viewer=...)`):

- `GET /viewer` -> a relative redirect to `/viewer/`, so the page's relative URLs (its
  static files, the API one level up) also work behind a path-prefix proxy;
- `GET /viewer/` -> the page; `GET /viewer/static/{name}` -> one of the shipped files
  (an allow-list built from `static/` at import: no path from the request reaches the disk);
- `GET /viewer/config.json` (keyed) -> what this service shows (`panels`) and what the page
  needs to know (e.g. the world model's frame size); the page's first call, so a wrong key
  is reported before anything else.

Responses carry a strict Content-Security-Policy: scripts, styles and connections only from
this origin, images also from `data:` (frames travel as PNG in the JSON API).

`static/vendor/uPlot.esm.js` is uPlot 1.6.32 (MIT, `static/vendor/uPlot.LICENSE`), a 145 KB
charting library without dependencies: the job panel's live plots get axes, ticks, a cursor
with values and cheap incremental redraws from it instead of hand-written SVG.
`static/examples/*.png` are real MetaWorld start frames (64x64, the bundled model's camera;
`make_env(task).reset(seed=1_000_000)`) the imagine panel offers besides an upload.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, RedirectResponse

from services.common.errors import NotFound

VIEWER_PATH = "/viewer"
STATIC_DIR = Path(__file__).resolve().parent / "static"
# Route templates reachable without a key (the auth check compares the matched route's path).
PUBLIC_PATHS = frozenset({VIEWER_PATH, f"{VIEWER_PATH}/", f"{VIEWER_PATH}/static/{{name:path}}"})

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".json": "application/json",
}
# Inline styles are allowed for style attributes set by the page's scripts (uPlot sizes its
# canvas that way); no inline scripts anywhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page changes with the service's version: always revalidate.
    "Cache-Control": "no-cache",
}


def _static_files() -> dict[str, Path]:
    """Every servable file under static/, by its path relative to it (POSIX separators)."""
    files: dict[str, Path] = {}
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file() and path.suffix in _MEDIA_TYPES:
            files[path.relative_to(STATIC_DIR).as_posix()] = path
    return files


STATIC_FILES = _static_files()


def example_frames() -> list[dict[str, str]]:
    """The bundled example start frames: task, instruction and the page-relative URL."""
    index = STATIC_DIR / "examples" / "examples.json"
    if not index.exists():
        return []
    return [
        {**entry, "url": f"static/examples/{entry['file']}"}
        for entry in json.loads(index.read_text())
        if f"examples/{entry['file']}" in STATIC_FILES
    ]


def _file(name: str) -> FileResponse:
    path = STATIC_FILES.get(name)
    if path is None:
        raise NotFound(f"the viewer has no file {name!r}")
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=SECURITY_HEADERS)


def viewer_router(
    service: str, version: str, describe: Callable[[], dict[str, Any]]
) -> APIRouter:
    """The viewer's routes for `service`; `describe()` gives the service's part of the page's
    config (at least `panels`: which of "imagine", "runs", "jobs" it shows)."""
    router = APIRouter(include_in_schema=False)

    @router.get(VIEWER_PATH)
    async def viewer_redirect() -> RedirectResponse:
        # Relative: /prefix/viewer -> /prefix/viewer/ behind a proxy too.
        return RedirectResponse("viewer/", status_code=307, headers=SECURITY_HEADERS)

    @router.get(f"{VIEWER_PATH}/")
    async def viewer_page() -> FileResponse:
        return _file("index.html")

    # Declared before the static route: this one needs the key.
    @router.get(f"{VIEWER_PATH}/config.json")
    async def viewer_config() -> Response:
        config = {"service": service, "version": version, **describe()}
        return Response(json.dumps(config), media_type="application/json", headers=SECURITY_HEADERS)

    @router.get(f"{VIEWER_PATH}/static/{{name:path}}")
    async def viewer_static(name: str) -> FileResponse:
        return _file(name)

    return router
