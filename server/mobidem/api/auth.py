"""One interceptor that authenticates and authorises every RPC (roles in mobidem.auth.METHOD_ROLES).

Credentials: metadata ``x-api-key: <key>`` or ``authorization: Bearer <key>`` (the same secrets).
It is installed inside :class:`~mobidem.api.errors.ObservingInterceptor`, so its
:class:`~mobidem.errors.Unauthenticated` / :class:`~mobidem.errors.PermissionDenied` become
UNAUTHENTICATED / PERMISSION_DENIED there, counted in the metrics and logged with the request id.
It sets ``mobidem.logs.caller`` (the key's name) and ``mobidem.logs.peer`` for the rest of the call.
With no key store (no ``api_keys_file``) every call passes and only the peer is recorded.
"""

from __future__ import annotations

from mobidem import logs
from mobidem.api.errors import WrappingInterceptor, stream_items
from mobidem.auth import ANY_ROLE, HEALTH_PREFIX, METHOD_ROLES, REFLECTION_PREFIXES, KeyStore
from mobidem.errors import PermissionDenied, Unauthenticated

HOW = "send metadata `x-api-key: <key>` or `authorization: Bearer <key>`"


class AuthInterceptor(WrappingInterceptor):
    def __init__(self, keys: KeyStore | None, exempt_health: bool = True, exempt_reflection: bool = False):
        self.keys = keys
        self.exempt_health = exempt_health
        self.exempt_reflection = exempt_reflection

    def required_role(self, method: str) -> str | None:
        """The role ``method`` needs; None: no credentials needed."""
        if method.startswith(HEALTH_PREFIX):
            return None if self.exempt_health else ANY_ROLE
        if method.startswith(REFLECTION_PREFIXES):
            return None if self.exempt_reflection else ANY_ROLE
        return METHOD_ROLES.get(method, "admin")

    def authenticate(self, method: str, metadata) -> str:
        """The caller's key name ("" when none is needed); raises Unauthenticated / PermissionDenied."""
        role = self.required_role(method) if self.keys is not None else None
        if role is None:
            return ""
        credentials = [(k, v) for k, v in ((item[0], item[1]) for item in metadata or ())
                       if k in ("x-api-key", "authorization")]
        if len(credentials) > 1:
            # a proxy that checks the first header and a server that reads the last must never disagree
            names = ", ".join(k for k, _ in credentials)
            raise Unauthenticated(f"{len(credentials)} credential headers ({names}); send exactly one: {HOW}")
        api_key = bearer = None
        for k, v in credentials:
            if k == "x-api-key":
                api_key = v if isinstance(v, str) else None
            elif isinstance(v, str):
                scheme, _, token = v.strip().partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    raise Unauthenticated("the authorization header must be `Bearer <key>`")
                bearer = token.strip()
        secret = api_key if api_key is not None else bearer
        if not secret:
            raise Unauthenticated(f"{method} needs credentials: {HOW}")
        key = self.keys.lookup(secret)
        if key is None:
            raise Unauthenticated("unknown or revoked API key")
        if not key.allows(role):
            raise PermissionDenied(f"key {key.name!r} (roles: {', '.join(key.roles)}) may not call {method}: "
                                   f"it needs the role {role!r} or 'admin'")
        return key.name

    def _enter(self, method: str, context):
        name = self.authenticate(method, context.invocation_metadata())
        return logs.caller.set(name), logs.peer.set(context.peer() or "")

    @staticmethod
    def _exit(tokens) -> None:
        for var, token in zip((logs.caller, logs.peer), tokens):
            try:
                var.reset(token)
            except ValueError:  # finalised in another context (an abandoned stream): nothing to restore
                pass

    def _unary(self, behavior, method):
        async def handler(request, context):
            tokens = self._enter(method, context)
            try:
                return await behavior(request, context)
            finally:
                self._exit(tokens)
        return handler

    def _stream(self, behavior, method):
        async def handler(request, context):
            tokens = self._enter(method, context)
            try:
                async for item in stream_items(behavior(request, context)):
                    yield item
            finally:
                self._exit(tokens)
        return handler


def from_settings(settings) -> AuthInterceptor:
    """The interceptor for ``settings`` (mobidem.config.Settings); warns when calls go unauthenticated."""
    import logging

    log = logging.getLogger(__name__)
    keys = KeyStore(settings.api_keys_file) if settings.api_keys_file else None
    if keys is None:
        log.warning("authentication is OFF: no api_keys_file is set, so every client may call every RPC "
                    "(make keys with `mobidem keys add`; docs/SECURITY.md)")
    else:
        log.info("authentication on: %d API key(s) from %s; health %s, reflection %s", len(keys), keys.path,
                 "exempt" if settings.auth_exempt_health else "needs a key",
                 "exempt" if settings.auth_exempt_reflection else "needs a key")
        if not (settings.tls_cert and settings.tls_key):
            log.warning("API keys travel in plaintext: TLS is off (set tls_cert and tls_key)")
    return AuthInterceptor(keys, settings.auth_exempt_health, settings.auth_exempt_reflection)
