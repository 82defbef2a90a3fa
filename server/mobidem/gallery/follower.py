"""Keeps a gateway's in-memory index in step with a shared store's change log (``ChangeFeed``).

One daemon thread per gateway: it LISTENs on the store's channel with its own connection, and after
each notification, and at least every ``sync_interval_s`` when none comes, applies every change after
the last one applied (``changes_since``). A notification is only a hint: the log is the truth, so a
missed notification, a dropped connection (it reconnects with back-off and catches up first) or a
restart (the index is rebuilt from a snapshot that names its last seq) loses nothing. A follower further
behind than the log's retention (``trim_changes``: the changes it needs are gone) reloads the whole index
from a snapshot instead.

Applying is idempotent and order-safe: an upsert adds only those of its templates that still exist in
the store and are not in the index yet; a delete drops the identity from the index.
"""

from __future__ import annotations

import logging
import threading
import time

from .errors import ChangesTrimmed

log = logging.getLogger(__name__)


class ChangeFollower:
    def __init__(self, feed, gallery, applied_seq: int, *, sync_interval_s: float = 1.0,
                 connect_timeout_s: float = 5.0) -> None:
        self.feed = feed
        self.gallery = gallery
        self.applied_seq = applied_seq
        self.sync_interval_s = float(sync_interval_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.connected = False  # whether the LISTEN connection is up (for readiness and tests)
        self.reconnects = 0
        self.reloads = 0  # full reloads because the log was trimmed past ``applied_seq``
        self._lock = threading.Lock()  # one catch-up at a time (the thread and writers on this gateway)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gallery-follower", daemon=True)
        self._conn = None

    def start(self) -> ChangeFollower:
        self._thread.start()
        return self

    def catch_up(self) -> int:
        """Apply every change after ``applied_seq``; returns how many. Raises when the store is unreachable."""
        with self._lock:
            applied = 0
            while True:
                try:
                    changes, records = self.feed.changes_since(self.applied_seq)
                except ChangesTrimmed as exc:
                    log.warning("gallery follower: %s; reloading the index from a snapshot", exc)
                    self.gallery._load_snapshot()
                    self.reloads += 1
                    continue
                if not changes:
                    return applied
                self.gallery._apply(changes, records)
                self.applied_seq = changes[-1].seq
                applied += len(changes)

    def _run(self) -> None:
        import psycopg

        backoff = 0.1
        while not self._stop.is_set():
            try:
                if self._conn is None:
                    self._conn = psycopg.connect(self.feed.url, autocommit=True,
                                                 connect_timeout=max(1, int(round(self.connect_timeout_s))),
                                                 application_name="mobidem-gallery-follower")
                    self._conn.execute(f"LISTEN {self.feed.channel}")
                    if self.reconnects or not self.connected:
                        log.info("gallery follower listening on %s", self.feed.where)
                    self.connected = True
                    self.catch_up()  # whatever happened while not listening
                    backoff = 0.1
                deadline = time.monotonic() + self.sync_interval_s
                notified = False
                while not self._stop.is_set() and not notified and time.monotonic() < deadline:
                    for _ in self._conn.notifies(timeout=min(0.25, self.sync_interval_s), stop_after=1):
                        notified = True
                if not self._stop.is_set():
                    self.catch_up()
            except Exception as exc:  # noqa: BLE001 - the follower must outlive any database outage
                if self._stop.is_set():
                    break
                if self.connected:
                    log.warning("gallery follower lost %s (%s); reconnecting", self.feed.where, exc)
                self.connected = False
                self.reconnects += 1
                self._close_conn()
                self._stop.wait(backoff)
                backoff = min(2.0, backoff * 2)
        self._close_conn()

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
