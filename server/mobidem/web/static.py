"""The page's files (``static/``, shipped inside the package: no build step, no CDN) as HTTP responses.

Every response carries a strict Content-Security-Policy (scripts, styles and sockets from this origin
only), no caching of stale pages, no Referer and no framing; the files are read once, at start.
"""

from __future__ import annotations

import email.utils
import http
import json
from importlib import resources

from websockets.datastructures import Headers
from websockets.http11 import Response

# path -> (file in static/, content type). The live view and the ceremony share common.js and style.css.
PAGES = {
    "/": ("live.html", "text/html; charset=utf-8"),
    "/live.html": ("live.html", "text/html; charset=utf-8"),
    "/ceremony": ("ceremony.html", "text/html; charset=utf-8"),
    "/common.js": ("common.js", "text/javascript; charset=utf-8"),
    "/live.js": ("live.js", "text/javascript; charset=utf-8"),
    "/ceremony.js": ("ceremony.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}


def _headers(content_type: str, length: int, host: str) -> Headers:
    # 'self' covers same-origin ws:/wss: in CSP 3; the explicit socket origins are for older browsers
    sockets = f" ws://{host} wss://{host}" if host else ""
    csp = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
           f"media-src 'self' blob: mediastream:; connect-src 'self'{sockets}; object-src 'none'; "
           "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    return Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Type", content_type),
        ("Content-Length", str(length)),
        ("Cache-Control", "no-cache"),
        ("Content-Security-Policy", csp),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("Permissions-Policy", "camera=(self), microphone=()"),
    ])


class Pages:
    def __init__(self, config: dict):
        root = resources.files("mobidem.web") / "static"
        self.files = {path: ((root / name).read_bytes(), kind) for path, (name, kind) in PAGES.items()}
        # what the page needs to know before it opens the socket (no secrets)
        self.files["/config.json"] = (json.dumps(config).encode(), "application/json")

    def response(self, path: str, host: str) -> Response:
        found = self.files.get(path)
        if found is None:
            return self.plain(http.HTTPStatus.NOT_FOUND, f"no page at {path[:100]}; the live view is at /\n", host)
        body, kind = found
        return Response(200, "OK", _headers(kind, len(body), host), body)

    @staticmethod
    def plain(status: http.HTTPStatus, text: str, host: str = "") -> Response:
        body = text.encode()
        return Response(status.value, status.phrase, _headers("text/plain; charset=utf-8", len(body), host), body)
