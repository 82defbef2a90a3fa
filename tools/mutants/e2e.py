"""Curated mutants for `make mutants-e2e`: small, deliberate bugs (the examples of issue 22 and the paths
that need a real Triton), each applied alone to a scratch copy of a committed revision, with the tests
named for it run there. A mutant is *killed* when at least one of its tests fails, *survived* when all
pass; the run prints a table (docs/TESTING.md keeps the last one).

    .venv/bin/python tools/mutants/e2e.py [--rev REV] [--only NAME ...] [--list] [--out FILE]

The scratch copy (``git archive``) gets this checkout's built models (model_repository/*/1/model.onnx and
MANIFEST.json, ignored build outputs) and a ``shared`` link beside it to the face data, so the tests find
what they find here; ``PYTHONPATH`` puts the copy's code before the editable install. Each mutant's text
must occur exactly once in its file: one that no longer does is reported ``stale`` (update it here).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Mutant:
    name: str
    example: str  # what the bug is, in the words where it is one of its examples
    file: str
    edits: list[tuple[str | tuple[str, ...], str]]  # (old text, or alternatives, exactly once) -> new text
    tests: list[str]  # pytest node ids (files or tests)


U = "tests/test_{}_unit.py".format
MUTANTS = [
    Mutant("threshold-fixed-0.6", "Identify and streams decide \"known\" at a fixed 0.6, not the calibrated threshold",
           "server/mobidem/identity.py",
           [("known = best is not None and best[2] <= point.threshold", "known = best is not None and best[2] <= 0.6")],
           [U("identity"), "tests/test_gallery_e2e.py::"
            "test_identify_and_streams_decide_at_the_calibrated_threshold_of_the_requested_point"]),
    Mutant("operating-point-ignored-identify", "Identify ignores the requested operating_point",
           "server/mobidem/identity.py",
           [("        name = operating_point or self.default_operating_point\n",
             "        name = self.default_operating_point\n")],
           [U("embedders"), "tests/test_gallery_e2e.py::"
            "test_identify_and_streams_decide_at_the_calibrated_threshold_of_the_requested_point"]),
    Mutant("operating-point-ignored", "the matcher (streams; Identify before the embedders change) ignores the "
           "requested operating_point",
           "server/mobidem/identity.py",
           [(("        point = self.point(operating_point)\n        result = self.gallery.search(",
              "self._search(self.primary, embedding, top_k, self.point(operating_point))[0]"),
             None)],
           [U("identity"), "tests/test_gallery_e2e.py::"
            "test_identify_and_streams_decide_at_the_calibrated_threshold_of_the_requested_point"]),
    Mutant("role-list-identities-to-verify", "ListIdentities opened to the verify role", "server/mobidem/auth.py",
           [('"/mobidem.v1.Gallery/ListIdentities": "admin",', '"/mobidem.v1.Gallery/ListIdentities": "verify",')],
           [U("auth"), "tests/test_security.py::test_wrong_role_is_permission_denied_and_the_right_role_passes"]),
    Mutant("role-delete-identity-to-verify", "DeleteIdentity opened to the verify role", "server/mobidem/auth.py",
           [('"/mobidem.v1.Gallery/DeleteIdentity": "admin",', '"/mobidem.v1.Gallery/DeleteIdentity": "verify",')],
           [U("auth"), "tests/test_security.py::test_wrong_role_is_permission_denied_and_the_right_role_passes"]),
    Mutant("idempotency-hash-name-only", "the idempotency request hash covers only display_name",
           "server/mobidem/api/gallery.py",
           [("    copy = pb.EnrollRequest()\n    copy.CopyFrom(request)\n    copy.idempotency_key = \"\"\n",
             "    copy = pb.EnrollRequest(display_name=request.display_name)\n")],
           ["tests/test_gallery_e2e.py"]),
    Mutant("exif-ignored-pillow", "EXIF orientation ignored (WebP, HEIF)", "server/mobidem/imaging.py",
           [("image = ImageOps.exif_transpose(image)", "image = image")],
           [U("imaging"), "tests/test_phone_inputs.py::test_phone_formats_sizes_and_orientation[webp]"]),
    Mutant("exif-ignored-jpeg", "EXIF orientation ignored (JPEG, PNG: OpenCV)", "server/mobidem/imaging.py",
           [("_REDUCED = {1: cv2.IMREAD_COLOR_RGB,",
             "_REDUCED = {1: cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION,")],
           [U("imaging"), "tests/test_phone_inputs.py::test_phone_formats_sizes_and_orientation[portrait-exif6-jpeg]"]),
    Mutant("jpeg-header-check-off", "the JPEG/PNG header size check disabled", "server/mobidem/imaging.py",
           [("    _check_dims(*size, limits)  # refuse decompression bombs before allocating\n", "")],
           [U("imaging"), "tests/test_gateway_e2e.py::test_png_header_bomb_refused_before_decoding"]),
    Mutant("width-only", "only the width checked against max_side", "server/mobidem/imaging.py",
           [("if width > limits.max_side or height > limits.max_side:", "if width > limits.max_side:")],
           [U("imaging")]),
    Mutant("bmp-past-the-format-check", "a BMP (the ~70-byte bomb) let past the format check",
           "server/mobidem/imaging.py",
           [("    if fmt is None:\n        raise InvalidImage(f\"image format not accepted",
             "    if fmt is None and data[:2] != b\"BM\":\n        raise InvalidImage(f\"image format not accepted")],
           [U("imaging")]),
    Mutant("lfw-drops-newest", "latest-frame-wins drops the newest waiting frame instead of the oldest",
           "server/mobidem/streaming.py",
           [("for entry in waiting or self.held:", "for entry in reversed(waiting or self.held):")],
           [U("streaming"), "tests/test_gateway_e2e.py::test_latest_frame_wins_drops_with_a_reason"]),
    Mutant("max-in-flight-ignored", "the server's max_in_flight limit not enforced", "server/mobidem/streaming.py",
           [("if len(self.held) >= self.max_in_flight:", "if False:")],
           [U("streaming"), "tests/test_gateway_e2e.py::test_the_server_holds_at_most_max_in_flight_frames_of_a_stream"]),
    Mutant("drop-policy-ignored", "the end-to-end latest-frame-wins test passing when nothing is dropped "
           "(the requested policy ignored)", "server/mobidem/api/analysis.py",
           [("policy = DropPolicy(opts.drop_policy) if opts.drop_policy in (1, 2) else DropPolicy.NONE",
             "policy = DropPolicy.NONE")],
           ["tests/test_gateway_e2e.py::test_latest_frame_wins_drops_with_a_reason"]),
    Mutant("deadline-counted-cancelled", "a call that ran out of deadline in the server counted as CANCELLED",
           "server/mobidem/api/errors.py",
           [('return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= DEADLINE_SKEW_S else "CANCELLED"',
             'return "CANCELLED"')],
           [U("errors"), "tests/test_reliability.py::test_a_deadline_that_runs_out_inside_the_server",
            "tests/test_reliability.py::test_a_stream_deadline_reached_with_frames_in_flight"]),
    Mutant("deadline-in-flight-leak", "a stream ended by its deadline leaves its held frames counted in flight",
           "server/mobidem/streaming.py",
           [("            self.stats.in_flight -= len(self.held)\n", "")],
           [U("streaming"), "tests/test_reliability.py::test_a_stream_deadline_reached_with_frames_in_flight"]),
    Mutant("deadline-stream-place-leak", "a stream ended by its deadline keeps its client's stream place",
           "server/mobidem/api/analysis.py",
           [("            self.streams_by_client[client] -= 1\n", "")],
           ["tests/test_reliability.py::test_a_stream_deadline_reached_with_frames_in_flight"]),
    Mutant("deadline-not-passed-to-triton", "the call's deadline not passed on to its Triton work",
           "server/mobidem/api/errors.py",
           [("deadline.set(time.monotonic() + remaining if remaining is not None else None)", "deadline.set(None)")],
           ["tests/test_reliability.py::test_a_deadline_that_runs_out_inside_the_server",
            "tests/test_reliability.py::test_a_stream_deadline_reached_with_frames_in_flight"]),
    Mutant("sigterm-grace-ignored", "shutdown_grace_s documented but unused (the stop always waits 10 s)",
           "server/mobidem/app.py",
           [("await server.stop(settings.shutdown_grace_s)", "await server.stop()")],
           ["tests/test_reliability.py::test_sigterm_finishes_accepted_frames_refuses_new_calls_and_exits_within_the_grace"]),
    Mutant("sigterm-no-drain", "SIGTERM cuts the frames in flight (no drain)", "server/mobidem/app.py",
           [("await server.stop(settings.shutdown_grace_s)", "await server.stop(0)")],
           ["tests/test_reliability.py::test_sigterm_finishes_accepted_frames_refuses_new_calls_and_exits_within_the_grace"]),
    Mutant("failed-precondition-as-invalid-argument", "FailedPrecondition mapped to INVALID_ARGUMENT",
           "server/mobidem/api/errors.py",
           [("errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,",
             "errors.FailedPrecondition: grpc.StatusCode.INVALID_ARGUMENT,")],
           [U("errors")]),
    Mutant("audit-field-unhashed", "an audit field (distance) left out of the record hash", "server/mobidem/audit.py",
           [("body = {k: record[k] for k in FIELDS}", "body = {k: record[k] for k in FIELDS if k != \"distance\"}")],
           [U("audit")]),
    Mutant("audit-chain-only-by-seq", "removed or reordered audit rows: the walk trusts the stored hashes "
           "(neither prev_hash nor the recomputed hash checked)", "server/mobidem/audit.py",
           [("if prev_hash != prev:", "if False:"), ("if _hash(prev, record, token) != stored:", "if False:")],
           [U("audit")]),
    Mutant("audit-restart-from-genesis", "the audit chain broken at restart (a reopened log starts from genesis)",
           "server/mobidem/audit.py",
           [("return (row[0], row[1]) if row else (0, GENESIS)", "return (row[0], GENESIS) if row else (0, GENESIS)")],
           [U("audit")]),
    Mutant("embedding-logged", "a full embedding logged on every frame (numpy's printing, no commas)",
           "server/mobidem/api/analysis.py",
           [('log.debug("frame analysed: %d face(s) in %.1f ms", len(analysis.faces), analysis.timings_ms["total"])',
             'log.debug("frame analysed: %d face(s) in %.1f ms %s", len(analysis.faces), analysis.timings_ms["total"], '
             '[f.embedding for f in analysis.faces])')],
           ["tests/test_observability.py::test_logs_carry_ids_but_no_biometric_data"]),
]


def apply(root: Path, mutant: Mutant) -> str | None:
    """Apply the mutant's edits under ``root``; None, or why it does not apply."""
    path = root / mutant.file
    text = path.read_text()
    for old, new in mutant.edits:
        choices = old if isinstance(old, tuple) else (old,)
        found = [c for c in choices if text.count(c) == 1]
        if not found:
            return f"stale: none of {choices!r} occurs exactly once in {mutant.file}"
        if new is None:  # the alternatives' own mutation: the requested operating point replaced by the default
            new = found[0].replace("self.point(operating_point)", 'self.point("")')
        text = text.replace(found[0], new)
    path.write_text(text)
    return None


def scratch_copy(rev: str) -> Path:
    base = Path(tempfile.mkdtemp(prefix=f"mobidem-e2e-{rev[:12]}-"))
    root = base / "repo"
    root.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    for built in [*REPO.glob("model_repository/*/1/*.onnx"), REPO / "model_repository" / "MANIFEST.json"]:
        if built.exists():
            target = root / built.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built, target)
    shared = REPO.parent / "shared"
    if shared.exists():
        (base / "shared").symlink_to(shared)
    return root


def run_tests(root: Path, tests: list[str], log: Path) -> tuple[int, list[str], float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "server"), str(root / "plugins" / "builtin")]))
    started = time.monotonic()
    with open(log, "w") as out:
        rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *tests],
                            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    failed = [line.split(" ", 2)[1] for line in log.read_text().splitlines()
              if line.startswith(("FAILED ", "ERROR "))]
    return rc, failed, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--only", nargs="*", help="mutant names (default: all)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.example} ({m.file}); tests: {' '.join(m.tests)}")
        return 0
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", args.rev], check=True, capture_output=True,
                         text=True).stdout.strip()
    root = scratch_copy(rev)
    logs = root.parent / "logs"
    logs.mkdir()
    print(f"revision {rev}; scratch copy {root}; logs in {logs}", flush=True)
    rows = ["| mutant | the bug | result | failing tests | s |", "|---|---|---|---|---|"]
    survived = 0
    for m in chosen:
        original = (root / m.file).read_text()
        why = apply(root, m)
        if why:
            result, failed, took = why, [], 0.0
        else:
            rc, failed, took = run_tests(root, m.tests, logs / f"{m.name}.log")
            result = "killed" if rc == 1 and failed else "survived" if rc == 0 else f"error (pytest exit {rc})"
        (root / m.file).write_text(original)
        survived += result != "killed"
        short = ", ".join(f.replace("tests/", "") for f in failed[:4]) + (f" (+{len(failed) - 4})" if len(failed) > 4 else "")
        rows.append(f"| {m.name} | {m.example} | {result} | {short} | {took:.0f} |")
        print(rows[-1], flush=True)
    shutil.rmtree(root)  # the copy; its logs stay beside it
    table = "\n".join([f"Revision {rev}", "", *rows, ""])
    print(table)
    if args.out:
        args.out.write_text(table)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
