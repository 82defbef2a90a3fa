"""The web listener (``web_listen``): HTTPS with the server's certificate, or plain HTTP on loopback only.

Browsers give getUserMedia (the camera) only to secure contexts: an https:// page, or http:// on
localhost. So without tls_cert/tls_key the listener must be on a loopback address (development and
tests); anywhere else it refuses to start rather than serve a page whose camera cannot work and whose
API key would cross the network in plaintext. With tls_client_ca set, browsers must present a client
certificate too, as gRPC clients must: the page is no side door around mutual TLS.

One port serves the pages' files (``static``) and their WebSockets: the live view's (``bridge``, at
/ws/stream) and the liveness ceremony's (``ceremony``, at /ws/ceremony, entered with a one-time token
from ``tokens``).
"""

from __future__ import annotations

import asyncio
import http
import ipaddress
import logging
import ssl
from urllib.parse import urlsplit

from websockets.asyncio.server import serve

from mobidem.errors import FailedPrecondition, InvalidArgument
from mobidem.web.bridge import StreamBridge
from mobidem.web.ceremony import CeremonyBridge
from mobidem.web.static import Pages
from mobidem.web.tokens import CeremonyTokens

log = logging.getLogger(__name__)

STREAM_PATH = "/ws/stream"
CEREMONY_PATH = "/ws/ceremony"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    try:
        return (host.strip("[]") or "127.0.0.1"), int(port)
    except ValueError:
        raise InvalidArgument(f"web_listen must be host:port, got {listen!r}") from None


def tls_context(settings) -> ssl.SSLContext | None:
    """The server's certificate for HTTPS (None: TLS is off); with tls_client_ca, client certificates required."""
    if not (settings.tls_cert and settings.tls_key):
        return None  # a half-configured TLS already failed the gRPC start (certs.server_credentials)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca:
        context.load_verify_locations(settings.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def same_origin(headers) -> bool:
    """A browser's socket must come from this server's own page (no cross-site use of a local server);
    clients that send no Origin (not browsers) pass, as they could call the gRPC API anyway."""
    origin = headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == (headers.get("Host") or "").lower()


class WebServer:
    def __init__(self, settings, servicer, auth, liveness=None):
        self.host, self.port = split_listen(settings.web_listen)
        self.ssl = tls_context(settings)
        if self.ssl is None and not is_loopback(self.host):
            raise FailedPrecondition(
                f"web_listen {settings.web_listen} is not a loopback address and TLS is off: browsers give the "
                "camera only to https:// pages or localhost, and API keys would cross the network in plaintext; "
                "set tls_cert and tls_key (`mobidem certs dev DIR` makes development ones) or listen on 127.0.0.1")
        self.max_message_bytes = min(settings.web_max_message_bytes, settings.max_message_bytes)
        self.bridge = StreamBridge(servicer, auth, settings.web_max_fps,
                                   first_message_timeout_s=settings.stream_idle_timeout_s or 30.0)
        self.pages = Pages({"key_required": self.bridge.key_required, "max_fps": settings.web_max_fps,
                            "max_message_bytes": self.max_message_bytes})
        self.sockets = {STREAM_PATH: self.bridge.handle}
        self.tokens = CeremonyTokens(settings.web_ceremony_ttl_s)
        if liveness is not None:  # mobidem.api.liveness.LivenessServicer
            self.ceremony = CeremonyBridge(liveness, self.tokens, self.bridge.key_required, settings.web_max_fps,
                                           idle_timeout_s=settings.stream_idle_timeout_s or 30.0)
            self.sockets[CEREMONY_PATH] = self.ceremony.handle
        self._server = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.ssl else 'http'}://{host}:{self.port}/"

    async def start(self) -> int:
        # bounded memory per socket: messages of at most max_message_bytes, at most 4 of them buffered
        # (then TCP holds the page back), no compression (JPEG does not shrink; inflating costs memory)
        self._server = await serve(self._handle, self.host, self.port, ssl=self.ssl, process_request=self._route,
                                   max_size=self.max_message_bytes, max_queue=4, compression=None,
                                   server_header=None, open_timeout=10, ping_interval=20, ping_timeout=20)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=True)  # pages see code 1001 (going away)
            try:
                await asyncio.wait_for(self._server.wait_closed(), 10)
            except asyncio.TimeoutError:
                log.warning("web sockets still open after 10 s of shutdown; going on without them")

    def _route(self, connection, request):
        """A page for a plain GET; None lets a WebSocket handshake on a socket path go on."""
        path = urlsplit(request.path).path
        host = request.headers.get("Host", "")
        if path in self.sockets:
            if not same_origin(request.headers):
                return self.pages.plain(http.HTTPStatus.FORBIDDEN, "cross-origin WebSocket refused\n", host)
            if "websocket" not in request.headers.get("Upgrade", "").lower():
                return self.pages.plain(http.HTTPStatus.UPGRADE_REQUIRED, f"{path} is a WebSocket\n", host)
            return None
        return self.pages.response(path, host)

    async def _handle(self, ws) -> None:
        await self.sockets[urlsplit(ws.request.path).path](ws)
