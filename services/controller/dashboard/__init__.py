"""The dashboard: a single page over the REST API, served by the controller at ``/dashboard``.

The page itself needs no key: it shows a login form, keeps the API key in the browser's
``sessionStorage`` and sends it as ``Authorization: Bearer`` on every ``/api/v1`` call (the
event stream included, read with ``fetch``). Nothing is built or fetched from a CDN: the page,
its script and style ship in ``static/``, and plotly.js is the bundle inside the installed
``plotly`` package (MIT licence, header kept in the file).
"""

from __future__ import annotations

import functools
from importlib import metadata, resources
from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse, HTMLResponse

__all__ = ["router"]

router = APIRouter(prefix="/dashboard", tags=["dashboard"], include_in_schema=False)

# The page loads scripts and styles from this origin only and talks to this origin only. plotly.js
# needs inline styles (it injects them) and 'unsafe-eval' (WebGL traces compile generated code).
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
REVALIDATE = {"Cache-Control": "no-cache"}  # small files that change with the project: ETag checks
FOREVER = {"Cache-Control": "public, max-age=31536000, immutable"}  # the page asks for it by version


def _package_file(package: str, *parts: str) -> Path | None:
    """A data file of an installed package, on disk (packages are installed unzipped), or None."""
    try:
        ref = resources.files(package).joinpath(*parts)
    except ModuleNotFoundError:
        return None
    return ref if isinstance(ref, Path) and ref.is_file() else None


@functools.cache
def _plotly_js() -> tuple[Path, str] | None:
    """The plotly.js bundle of the ``plotly`` package and that package's version."""
    path = _package_file("plotly", "package_data", "plotly.min.js")
    return None if path is None else (path, metadata.version("plotly"))


def _static(name: str) -> Path:
    path = _package_file(__name__, "static", name)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dashboard file {name} is missing from the installation")
    return path


@router.get("", response_class=HTMLResponse)
def page() -> HTMLResponse:
    """The single-page dashboard (a login form until an API key is given)."""
    plotly = _plotly_js()
    html = _static("index.html").read_text(encoding="utf-8")
    html = html.replace("{{plotly_version}}", plotly[1] if plotly else "missing")
    return HTMLResponse(html, headers={**REVALIDATE, "Content-Security-Policy": CSP})


@router.get("/app.js", response_class=FileResponse)
def app_js() -> FileResponse:
    """The dashboard's script."""
    return FileResponse(_static("app.js"), media_type="text/javascript", headers=REVALIDATE)


@router.get("/app.css", response_class=FileResponse)
def app_css() -> FileResponse:
    """The dashboard's style sheet."""
    return FileResponse(_static("app.css"), media_type="text/css", headers=REVALIDATE)


@router.get("/plotly.min.js", response_class=FileResponse)
def plotly_js() -> FileResponse:
    """plotly.js from the installed ``plotly`` package (cached for a year: the page asks by version)."""
    plotly = _plotly_js()
    if plotly is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, "plotly is not installed: pip install 'hyctas[services]' to serve the charts"
        )
    return FileResponse(plotly[0], media_type="text/javascript", headers=FOREVER)
