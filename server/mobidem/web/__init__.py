"""The web front end: a live-view page served by `mobidem serve` on its own listener (``web_listen``).

- ``server``: the HTTPS (or loopback-only HTTP) listener; routes a request to a page or the socket.
- ``static``: the page's files (``static/``, shipped in the package, no build step) and their headers.
- ``bridge``: one WebSocket = one FaceAnalysis stream, through the same servicer as gRPC clients.
- ``wire``: a FrameResult as the JSON the page reads.

docs/WEB.md describes the protocol, the authentication and the limits.
"""

from mobidem.web.server import WebServer

__all__ = ["WebServer"]
