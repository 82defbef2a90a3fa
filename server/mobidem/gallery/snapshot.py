"""Index snapshot files: a gateway starts from a file instead of reading every template from the database.

Reading 10 M templates row by row from PostgreSQL (decrypting each) takes minutes; a snapshot holds the
exact index's arrays as they sit in memory, so a start reads them at disk speed and then applies only the
changes committed after the snapshot's sequence number from the change log (docs/SCALING.md).

The file: ``MAGIC``, the header's length (8 bytes, little-endian), a JSON header, then the sections in
the header's order, each cut into ``chunk`` byte pieces. The header names the change the snapshot ends
with (its seq and that change's fingerprint, ``PostgresGallery.change_fingerprint``); a snapshot is used
only when the database's log still holds that very change, so a snapshot of another database, of a
database restored to an earlier point, or older than the log's retention is refused (the gateway then
loads in full, as without one). With a template key every piece is sealed with AES-256-GCM under that key;
the associated data binds it to the header's hash, its section and its place, so a piece cannot be
altered, moved, dropped or swapped in from another snapshot, and the header (its seq above all) cannot be
changed. Without a key the file is plaintext with a SHA-256 per section: that detects a torn or corrupted
file, not a deliberate change (whoever may write the file could then write the database's templates too).

A snapshot is written to a temporary file beside its path, flushed, then renamed over it: a reader sees the
old file or the new one, never a half-written one, and gateways sharing the path may write it in turn.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import GalleryError

MAGIC = b"MOBIDEM-INDEX-SNAPSHOT\n"
FORMAT = 1
CHUNK = 64 << 20
_NONCE, _TAG = 12, 16
SEP = "\0"  # ids and display names never hold NUL (identity ids are checked; PostgreSQL text cannot)


class SnapshotRefused(GalleryError):
    """This snapshot file cannot be used (missing, another database, corrupt, wrong key); the reason says which."""


class SnapshotMissing(SnapshotRefused):
    """There is no snapshot file yet (a first start: not a problem)."""


@dataclass
class IndexArrays:
    """What an exact index holds, as arrays: identity ids by code, and per (model_name, model_version) the
    float32 embeddings, their identity codes, template ids and its accelerator's state (gallery/ann.py:
    (meta, [(name, array)]) when written, (meta, what ``load_ann`` built, serial of each row) when read;
    None: none)."""

    dim: int
    identity_ids: list[str]
    segments: list[tuple[tuple[str, str], np.ndarray, np.ndarray, list[str], object]]


@dataclass
class Snapshot:
    seq: int
    arrays: IndexArrays
    names: dict[str, str]
    created_at: float


def _joined(strings: list[str], what: str) -> bytes:
    text = SEP.join(strings)
    if text.count(SEP) != max(0, len(strings) - 1):
        raise GalleryError(f"cannot write an index snapshot: a {what} contains NUL")
    return text.encode("utf-8")


def _split(data: bytes | bytearray, n: int) -> list[str]:
    if n == 0:
        return []
    out = data.decode("utf-8").split(SEP)
    if len(out) != n:
        raise SnapshotRefused(f"the snapshot's string table holds {len(out)} entries where its header says {n}")
    return out


def _pieces(nbytes: int, chunk: int) -> int:
    """How many pieces a section of ``nbytes`` is cut into (an empty section is one empty piece)."""
    return max(1, -(-nbytes // chunk))


def _ad(header_hash: bytes, section: int, piece: int, last: bool) -> bytes:
    return b"mobidem-snapshot-v1\0" + header_hash + section.to_bytes(4, "little") + piece.to_bytes(8, "little") + (
        b"\1" if last else b"\0")


def write(path: str | os.PathLike, snap: Snapshot, fingerprint: str, cipher=None) -> int:
    """Write ``snap`` to ``path`` atomically; ``fingerprint``: the store's fingerprint of change ``snap.seq``;
    ``cipher``: the gallery's ``TemplateCipher`` (None: plaintext). Returns the file's size in bytes."""
    a = snap.arrays
    # display names by identity code (read back with the ids' own strings), the few others apart
    has_name = np.fromiter((i in snap.names for i in a.identity_ids), dtype=np.uint8, count=len(a.identity_ids))
    known = set(a.identity_ids)
    names = sorted((k, v) for k, v in snap.names.items() if k not in known)
    sections: list[tuple[str, memoryview]] = [
        ("identities", memoryview(_joined(a.identity_ids, "identity id"))),
        ("identity_names", memoryview(_joined([snap.names.get(i, "") for i in a.identity_ids], "display name"))),
        ("has_name", memoryview(has_name)),
        ("name_ids", memoryview(_joined([k for k, _ in names], "identity id"))),
        ("names", memoryview(_joined([v for _, v in names], "display name"))),
    ]
    segments = []
    for i, ((model_name, model_version), emb, codes, tids, ann) in enumerate(a.segments):
        n = emb.shape[0]
        if emb.dtype != np.float32 or emb.shape != (n, a.dim) or codes.shape != (n,) or len(tids) != n:
            raise GalleryError(f"cannot write an index snapshot: segment {model_name}:{model_version} is inconsistent")
        segments.append({"model_name": model_name, "model_version": model_version, "n": n,
                         "ann": ann[0] if ann is not None else None})
        sections += [(f"seg{i}.emb", memoryview(np.ascontiguousarray(emb)).cast("B")),
                     (f"seg{i}.codes", memoryview(np.ascontiguousarray(codes, dtype="<i8")).cast("B")),
                     (f"seg{i}.tids", memoryview(_joined(tids, "template id")))]
        if ann is not None:
            sections += [(f"seg{i}.{name}", memoryview(np.ascontiguousarray(arr)).cast("B")) for name, arr in ann[1]]
    header = {
        "format": FORMAT, "created_at": snap.created_at, "seq": int(snap.seq), "change": fingerprint,
        "dim": a.dim, "sealed": cipher is not None, "chunk": CHUNK, "identities": len(a.identity_ids),
        "names": len(names), "segments": segments,
        "sections": [{"name": name, "bytes": view.nbytes} for name, view in sections],
    }
    if cipher is None:
        for entry, (_, view) in zip(header["sections"], sections):
            entry["sha256"] = hashlib.sha256(view).hexdigest()
    head = json.dumps(header, sort_keys=True).encode()
    head_hash = hashlib.sha256(head).digest()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # templates: private, as the database's files
            f.write(MAGIC + len(head).to_bytes(8, "little") + head)
            for s, (_, view) in enumerate(sections):
                pieces = _pieces(view.nbytes, CHUNK)
                for p in range(pieces):
                    part = view[p * CHUNK:(p + 1) * CHUNK]
                    if cipher is None:
                        f.write(part)
                    else:
                        nonce = secrets.token_bytes(_NONCE)
                        f.write(nonce + cipher.seal_bytes(nonce, part, _ad(head_hash, s, p, p == pieces - 1)))
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    except OSError:
        pass
    return size


def read_header(f) -> tuple[dict, bytes]:
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise SnapshotRefused("not a mobidem index snapshot (bad magic)")
    n = int.from_bytes(f.read(8), "little")
    if not 0 < n <= 1 << 24:
        raise SnapshotRefused("the snapshot's header is damaged")
    head = f.read(n)
    try:
        header = json.loads(head)
    except ValueError:
        raise SnapshotRefused("the snapshot's header is damaged") from None
    if header.get("format") != FORMAT:
        raise SnapshotRefused(f"snapshot format {header.get('format')!r}; this mobidem reads format {FORMAT}")
    return header, head


def read(path: str | os.PathLike, *, dim: int, fingerprint_of, cipher=None, headroom: float = 0.125,
         load_ann=None) -> Snapshot:
    """Read a snapshot, checking it against the store: ``fingerprint_of(seq)`` is the store's fingerprint
    of change ``seq`` (None: not in its log). Raises ``SnapshotRefused`` with the reason. The embedding
    arrays get ``headroom`` spare rows so that the first enrolments after a start do not copy them.
    ``load_ann(meta, read)``: builds a segment's accelerator from its bytes, drawn with ``read(n)`` (sealed
    files stream them, each piece opened before it is handed on); None: accelerators are skipped."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise SnapshotMissing(f"no snapshot file at {path}") from None
    except OSError as exc:
        raise SnapshotRefused(f"cannot open the snapshot {path}: {exc.strerror or exc}") from None
    with f:
        header, head = read_header(f)
        if header["dim"] != dim:
            raise SnapshotRefused(f"the snapshot holds {header['dim']}-D templates; the gallery's are {dim}-D")
        if header["sealed"] and cipher is None:
            raise SnapshotRefused("the snapshot is sealed and no template key is configured")
        if not header["sealed"] and cipher is not None:
            raise SnapshotRefused("the snapshot is not sealed but the gallery's templates are: write a new one")
        seq = int(header["seq"])
        current = fingerprint_of(seq)
        if current != header["change"]:
            raise SnapshotRefused(
                f"the snapshot ends at change {seq} ({header['change']!r}) and the database's log "
                + ("no longer holds that change (trimmed, or another database)" if current is None
                   else f"holds {current!r} there (another database, or one restored to an earlier point)"))
        head_hash = hashlib.sha256(head).digest()
        sections = header["sections"]
        chunk = int(header["chunk"])
        by_name = {s["name"]: i for i, s in enumerate(sections)}

        def opened(s: int):
            """The pieces of sealed section s in order, each opened (authenticated) before it is yielded."""
            nbytes = sections[s]["bytes"]
            count = _pieces(nbytes, chunk)
            for p in range(count):
                size = min(chunk, nbytes - p * chunk)
                blob = f.read(_NONCE + size + _TAG)
                if len(blob) != _NONCE + size + _TAG:
                    raise SnapshotRefused("the snapshot is truncated")
                plain = cipher.open_bytes(blob[:_NONCE], memoryview(blob)[_NONCE:], _ad(head_hash, s, p, p == count - 1))
                if plain is None:
                    raise SnapshotRefused("the snapshot does not open with the template key: another key, or the "
                                          "file was altered")
                yield plain

        def into(s: int, out: memoryview) -> None:  # section s, read (and opened) into ``out``
            nbytes = sections[s]["bytes"]
            if out.nbytes != nbytes:
                raise SnapshotRefused(f"the snapshot's section {sections[s]['name']} has the wrong size")
            if not header["sealed"]:
                if f.readinto(out) != nbytes:
                    raise SnapshotRefused("the snapshot is truncated")
                if hashlib.sha256(out).hexdigest() != sections[s]["sha256"]:
                    raise SnapshotRefused(f"the snapshot's section {sections[s]['name']} is corrupt (SHA-256)")
                return
            for p, plain in enumerate(opened(s)):
                out[p * chunk:p * chunk + len(plain)] = plain

        def stream(s: int):
            """Section s as a ``read(n)`` callable, its pieces opened (sealed) or checked whole first (plain)."""
            nbytes = sections[s]["bytes"]
            if not header["sealed"]:
                whole = bytearray(nbytes)
                into(s, memoryview(whole))  # checksum first: nothing unchecked reaches a parser
                pieces = iter([whole])
            else:
                pieces = opened(s)
            state = {"buf": memoryview(b""), "done": 0}

            def read(n: int) -> bytes:
                out = []
                while n > 0:
                    buf = state["buf"]
                    if not len(buf):
                        nxt = next(pieces, None)
                        if nxt is None:
                            break
                        buf = state["buf"] = memoryview(nxt)
                    take = buf[:n]
                    out.append(take)
                    state["buf"] = buf[len(take):]
                    n -= len(take)
                    state["done"] += len(take)
                return b"".join(out)

            def finish() -> None:
                if state["done"] != nbytes or len(state["buf"]) or next(pieces, None) is not None:
                    raise SnapshotRefused(f"the snapshot's section {sections[s]['name']} was not read whole")
            return read, finish

        def skip(s: int) -> None:
            nbytes = sections[s]["bytes"]
            f.seek(nbytes + (_pieces(nbytes, chunk) * (_NONCE + _TAG) if header["sealed"] else 0), os.SEEK_CUR)

        def strings(name: str, n: int) -> list[str]:
            s = by_name[name]
            buf = bytearray(sections[s]["bytes"])
            into(s, memoryview(buf))
            return _split(buf, n)

        try:
            identity_ids = strings("identities", header["identities"])
            names = dict(zip(identity_ids, strings("identity_names", header["identities"])))
            has_name = np.empty(header["identities"], dtype=np.uint8)
            into(by_name["has_name"], memoryview(has_name))
            for c in np.flatnonzero(has_name == 0).tolist():
                del names[identity_ids[c]]
            names.update(zip(strings("name_ids", header["names"]), strings("names", header["names"])))
            segments = []
            for i, seg in enumerate(header["segments"]):
                n = int(seg["n"])
                emb = np.empty((n + max(1024, int(n * headroom)), dim), dtype=np.float32)
                into(by_name[f"seg{i}.emb"], memoryview(emb[:n]).cast("B"))
                codes = np.empty(n, dtype="<i8")
                into(by_name[f"seg{i}.codes"], memoryview(codes).cast("B"))
                if n and (codes.min() < 0 or codes.max() >= len(identity_ids)):
                    raise SnapshotRefused("the snapshot's identity codes are out of range")
                tids = strings(f"seg{i}.tids", n)
                ann = None
                if seg.get("ann") is not None:
                    blob_s, rows_s = by_name[f"seg{i}.ann"], by_name[f"seg{i}.ann_rows"]
                    if load_ann is not None:
                        read_ann, finish = stream(blob_s)
                        try:
                            built = load_ann(seg["ann"], read_ann)
                        except SnapshotRefused:
                            raise
                        except Exception as exc:  # noqa: BLE001 - FAISS's own error for damaged bytes
                            raise SnapshotRefused(f"the snapshot's approximate index does not load: {exc}") from None
                        finish()
                        serial_of_row = np.empty(n, dtype="<i8")
                        into(rows_s, memoryview(serial_of_row).cast("B"))
                        ann = (seg["ann"], built, serial_of_row)
                    else:
                        skip(blob_s)
                        skip(rows_s)
                segments.append(((seg["model_name"], seg["model_version"]), emb, codes, tids, ann))
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise SnapshotRefused(f"the snapshot is damaged ({type(exc).__name__}: {exc})") from None
        if f.read(1):
            raise SnapshotRefused("the snapshot has trailing bytes")
    return Snapshot(seq, IndexArrays(dim, identity_ids, segments), names, float(header["created_at"]))


def describe(path: str | os.PathLike) -> dict:
    """The header of a snapshot file (its seq, sizes, sections)."""
    with open(path, "rb") as f:
        return read_header(f)[0]
