"""Which store a gallery URL names. A new backend: a module implementing ``GalleryStore`` (and, when
several processes share it, ``ChangeFeed``), and one entry in ``SCHEMES``."""

from __future__ import annotations

from .errors import InvalidArgument


def _sqlite(url: str, **kw):
    from .store import SqliteGallery

    path = url[len("sqlite://"):] if url.startswith("sqlite://") else url
    for key in ("pool_size", "timeout_s"):  # PostgreSQL's settings mean nothing to an embedded file
        kw.pop(key, None)
    return SqliteGallery(path, **kw)


def _postgres(url: str, **kw):
    from .postgres import PostgresGallery

    return PostgresGallery(url, **kw)


SCHEMES = {"postgresql": _postgres, "postgres": _postgres, "sqlite": _sqlite}


def open_store(url: str, **kw):
    """``postgresql://…`` / ``postgres://…``: PostgreSQL; ``sqlite:///path`` or a plain path: SQLite."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument("the gallery URL is empty; give a SQLite path or postgresql://user@host:port/database")
    url = url.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if not scheme:
        return _sqlite(url, **kw)
    if scheme not in SCHEMES:
        raise InvalidArgument(f"gallery_url scheme {scheme!r} is not supported; use one of "
                              f"{sorted(SCHEMES)} (postgresql://user@host:port/database)")
    return SCHEMES[scheme](url, **kw)
