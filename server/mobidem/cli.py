"""The `mobidem` command: build models, run Triton or the server, and talk to a server."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

DEFAULT_TARGET = "127.0.0.1:50051"


def _models_build(args) -> int:
    from mobidem import modelbuild

    try:
        modelbuild.build(args.repository, args.model or None, force=args.force, gather=args.include_plugins)
    except modelbuild.BuildError as exc:
        print(f"mobidem models build: {exc}", file=sys.stderr)
        return 2
    return 0


def _triton(args) -> int:
    import signal
    import time

    from mobidem.config import Settings
    from mobidem.managed_triton import ManagedTriton
    from mobidem.modelbuild import default_repository
    from mobidem.plugins import served_by_triton

    # --repository: that folder alone (built with --include-plugins); else what a default gateway needs:
    # the built-in repository and the default plugins' own (yunet: detector_confirm)
    repositories = ([Path(args.repository)] if args.repository
                    else served_by_triton(Settings(model_repository=str(default_repository())))[0])
    triton = ManagedTriton(repositories, Path(args.workdir),
                           grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
                           address=args.listen)
    triton.start(args.start_timeout)
    print(f"Triton ready: gRPC {args.listen}:{triton.grpc_port}, HTTP {args.listen}:{triton.http_port}, "
          f"metrics {args.listen}:{triton.metrics_port}; Ctrl-C stops it", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while triton.running:
            time.sleep(0.5)
        print(f"Triton exited:\n{triton.tail_log()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        triton.stop()


def _serve(args) -> int:
    from mobidem import config
    from mobidem.app import serve

    from mobidem import logs

    settings = config.load(args)
    logs.setup(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))
    return 0


def _gallery_reembed(args) -> int:
    from mobidem import config, logs
    from mobidem.app import reembed_gallery

    settings = config.load(args)
    logs.setup(settings.log_level, settings.log_format)
    added = asyncio.run(reembed_gallery(settings))
    print(f"re-embedded {sum(1 for n in added.values() if n)} identities, {sum(added.values())} templates added")
    return 0


def _gallery_snapshot(args) -> int:
    import time

    from mobidem import config, logs
    from mobidem.app import shared_gallery

    settings = config.load(args)
    logs.setup(settings.log_level, settings.log_format)
    out = args.out or settings.gallery_snapshot_path
    if not settings.gallery_url.strip() or not out:
        print("mobidem gallery snapshot: needs gallery_url (a PostgreSQL gallery) and a file: --out FILE or "
              "gallery_snapshot_path", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with shared_gallery(settings) as gallery:
        loaded = time.perf_counter() - t0
        seq, size = gallery.write_snapshot(out)
        print(f"wrote {out}: {len(gallery.index)} templates of {gallery.index.identity_count()} identities up to "
              f"change {seq}, {size / 1e6:.1f} MB (index from the {gallery.loaded_from} in {loaded:.1f} s, written "
              f"in {time.perf_counter() - t0 - loaded:.1f} s)")
    return 0


def _client(args):
    import os

    from mobidem.client import MobidemClient, tls_credentials

    tls = args.ca or args.cert or args.key
    return MobidemClient(args.target, credentials=tls_credentials(args.ca, args.cert, args.key) if tls else None,
                         api_key=args.api_key or os.environ.get("MOBIDEM_API_KEY") or None)


def _certs_dev(args) -> int:
    from mobidem import certs

    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    files = certs.make_dev(args.dir, hosts=hosts, client_name=args.client_name, days=args.days, force=args.force)
    print(f"development CA and certificates in {args.dir} (server for {', '.join(hosts)}):")
    for name, path in files.items():
        print(f"  {name:11} {path}")
    print(f"serve:  mobidem serve --tls-cert {files['server']} --tls-key {files['server-key']}"
          f" [--tls-client-ca {files['ca']}]")
    print(f"client: mobidem analyze --ca {files['ca']} [--cert {files['client']} --key {files['client-key']}] ...")
    return 0


def _keys(args) -> int:
    from mobidem import auth
    from mobidem.gallery import crypto

    if args.keys_command == "template-key":
        path = Path(args.file).expanduser()
        if path.exists() and not args.force:
            print(f"mobidem keys template-key: {path} exists; pass --force to replace it "
                  "(a gallery encrypted with the old key cannot be read with a new one)", file=sys.stderr)
            return 2
        import os

        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(crypto.new_key_text() + "\n")
        print(f"wrote a 256-bit template key to {path} (mode 0600); serve with --template-key-file {path}")
        return 0
    path = Path(args.file).expanduser()
    try:
        if args.keys_command == "add":
            key = auth.add_key(path, args.name, args.roles)
            print(key)
            print(f"key {args.name!r} ({args.roles}) added to {path}; it is shown only this once",
                  file=sys.stderr)
        elif args.keys_command == "remove":
            auth.remove_key(path, args.name)
            print(f"key {args.name!r} removed from {path}", file=sys.stderr)
        else:
            for k in auth.read_keys(path):
                print(f"{k.name}\t{','.join(k.roles)}\t{k.created}")
    except Exception as exc:  # noqa: BLE001 - InvalidArgument and OS errors: one line
        print(f"mobidem keys {args.keys_command}: {exc}", file=sys.stderr)
        return 2
    return 0


def _analyze(args) -> int:
    from mobidem.client import describe

    with _client(args) as client:
        for path in args.images:
            print(f"{path}: {describe(client.analyze(path))}")
    return 0


def _stream(args) -> int:
    from mobidem.client import describe, frame_count, video_fps, video_frames
    from mobidem.v1 import mobidem_pb2 as pb

    source = int(args.camera) if args.camera is not None else args.video
    if source is None:
        print("mobidem stream: name a VIDEO file or --camera N", file=sys.stderr)
        return 2
    policy = pb.DROP_POLICY_LATEST_FRAME_WINS if args.latest_frame_wins else pb.DROP_POLICY_NONE
    frames = list(video_frames(source, args.max_frames)) if args.output else None
    results = []
    with _client(args) as client:
        stream = client.stream(frames if frames is not None else video_frames(source, args.max_frames),
                               drop_policy=policy, raw=args.raw,
                               tracking=pb.TRACKING_OFF if args.no_tracking else pb.TRACKING_ON,
                               fps=video_fps(source) if isinstance(source, str) else None, resume=args.resume)
        progress = None
        if isinstance(source, str) and not args.no_progress:
            from tqdm import tqdm
            total = frame_count(source)
            progress = tqdm(total=min(total, args.max_frames or total), unit="frame", file=sys.stderr)
        for result in stream:
            line = describe(result)
            (progress.write(line) if progress else print(line, flush=True))
            if progress:
                progress.update(1)
            if args.output:
                results.append(result)
        if progress:
            progress.close()
    if args.output:
        from mobidem.annotate import write_video
        write_video(args.output, frames, results)
        print(f"annotated video written to {args.output}")
    return 0


def _enroll(args) -> int:
    with _client(args) as client:
        r = client.enroll(args.name, args.images, identity_id=args.id or "", face_index=args.face_index)
        print(f"enrolled {r.identity.display_name!r} as {r.identity.id} "
              f"({r.templates_added} template(s) added, {r.identity.template_count} in all)")
    return 0


def _verify(args) -> int:
    with _client(args) as client:
        r = client.verify(args.a, args.b, operating_point=args.operating_point,
                          probe_face_index=args.probe_face_index, reference_face_index=args.reference_face_index)
        verdict = "SAME person" if r.match else "DIFFERENT people"
        print(f"{verdict}: distance {r.distance:.4f} vs threshold {r.threshold:.4f} "
              f"at {r.operating_point} (FAR target {r.far_target:g}, {r.embedder})")
    return 0 if r.match else 1


def _identify(args) -> int:
    with _client(args) as client:
        r = client.identify(args.image, top_k=args.top_k, probe_face_index=args.face_index)
        m = r.match
        print(f"{'identified as ' + m.display_name + ' (' + m.identity_id + ')' if m.known else 'unknown'}: "
              f"distance {m.distance:.4f}, threshold {m.threshold:.4f} at {m.operating_point}")
        for c in m.candidates:
            print(f"  {c.display_name} ({c.identity_id}) distance {c.distance:.4f}")
    return 0


def _trusted(args, default_key_file: Path | None = None):
    """kid -> public key from --public-key/--jwks, else the key file's public keys; (None, "") if none."""
    from mobidem.evidence import keys

    source = args.public_key or args.jwks
    if source:
        return keys.load_trusted(source), source
    if default_key_file is not None and default_key_file.exists():
        return keys.trusted_keys(__import__("json").dumps(keys.public_jwks(default_key_file))), str(default_key_file)
    return None, ""


def _evidence(args) -> int:
    import json

    from mobidem.evidence import keys
    from mobidem.evidence import verify as evidence_verify
    from mobidem.evidence.jws import JwsError

    name = f"mobidem evidence {args.evidence_command}"
    try:
        if args.evidence_command == "keygen":
            kid = keys.create(args.file)
            print(f"wrote evidence signing key {kid} to {args.file} (mode 0600); serve with --evidence-key-file "
                  f"{args.file}")
        elif args.evidence_command == "rotate":
            kid = keys.rotate(args.file)
            print(f"new signing key {kid} in {args.file}; older keys kept (public part only) for verification; "
                  "restart the server to sign with it")
        elif args.evidence_command == "jwks":
            print(keys.public_pem(args.file) if args.pem else json.dumps(keys.public_jwks(args.file), indent=2))
        else:
            trusted, source = _trusted(args)
            record = args.record
            if record == "-":
                record = sys.stdin.read()
            elif record.count(".") != 2 or "/" in record:  # not a compact JWS: a file holding one
                record = Path(record).read_text()
            try:
                claims = evidence_verify.evidence(record.strip(), trusted)
            except JwsError as exc:
                print(f"{name}: INVALID: {exc}", file=sys.stderr)
                return 1
            print(json.dumps(claims, indent=2, sort_keys=True))
            print(f"signature valid (EdDSA, key from {source})", file=sys.stderr)
    except (keys.KeyFileError, OSError, ValueError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    return 0


def _audit(args) -> int:
    from mobidem import config
    from mobidem.audit import AuditLog, check
    from mobidem.evidence import keys

    settings = config.load(None)
    data = Path(args.data_dir).expanduser() if args.data_dir else settings.data_path
    path = Path(args.audit_log or settings.audit_log or data / "audit.db").expanduser()
    key_file = Path(getattr(args, "key_file", None) or settings.evidence_key_file or data / "evidence-keys.json")
    name = f"mobidem audit {args.audit_command}"
    if not path.is_file():
        print(f"{name}: {path} does not exist (pass --data-dir DIR or --audit-log FILE)", file=sys.stderr)
        return 2
    try:
        if args.audit_command == "purge":
            log = AuditLog(path, signer=keys.Signer.load(key_file.expanduser()))
            try:
                purged = log.purge(args.older_than_s)
                log.checkpoint()
            finally:
                log.close()
            if purged is None:
                print(f"no audit record older than {args.older_than_s:.0f} s in {path}")
            else:
                print(f"purged {purged['count']} record(s) through record {purged['through_seq']} from {path}; "
                      f"signed purge record {purged['record']['seq']} appended")
            return 0
        trusted, source = _trusted(args, key_file.expanduser())
    except (keys.KeyFileError, OSError, ValueError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    report = check(path, trusted)
    signatures = f"signatures checked against {source}" if trusted else \
        "signatures NOT checked (no --public-key, --jwks or key file): chain only"
    if report.problems:
        print(f"{path}: NOT intact: {report.problems[0]}")
        for problem in report.problems[1:]:
            print(f"  also: {problem}")
        print(f"  ({signatures})")
        return 1
    span = f"records {report.first_seq}..{report.last_seq}" if report.records else "no records"
    print(f"{path}: intact: {report.records} record(s) ({span}), {report.signed_records} with signed evidence, "
          f"{report.checkpoints} checkpoint(s) (the last covers {report.checkpointed}; {report.witnessed} "
          f"witnessed), {report.uncovered} record(s) after the last checkpoint"
          + (f", purged through record {report.purged_through}" if report.purged_through else "")
          + f"; {signatures}")
    return 0


def _demo(args) -> int:
    from mobidem.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    from mobidem import config

    parser = argparse.ArgumentParser(prog="mobidem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="model repository").add_subparsers(dest="models_command", required=True)
    b = models.add_parser("build", help="convert the pretrained weights into ONNX files in the Triton repository")
    b.add_argument("--repository", type=Path, default=None)
    b.add_argument("--model", action="append", help="build only this model (repeatable)")
    b.add_argument("--force", action="store_true", help="rebuild even when up to date")
    b.add_argument("--include-plugins", action="store_true",
                   help="copy every installed plugin's models into --repository and build them there: one folder "
                        "a Triton in another container serves whole (deploy/k8s); default: each plugin's own folder")
    b.set_defaults(func=_models_build)

    t = sub.add_parser("triton", help="run the managed Triton alone (for an external-Triton setup or debugging)")
    t.add_argument("--repository", default=None)
    t.add_argument("--workdir", default="/tmp/mobidem-triton")
    t.add_argument("--grpc-port", type=int, default=8001)
    t.add_argument("--http-port", type=int, default=8000)
    t.add_argument("--metrics-port", type=int, default=8002)
    t.add_argument("--listen", default="127.0.0.1", help="address Triton listens on (0.0.0.0: other machines, "
                                                         "as in a Kubernetes pod; deploy/k8s)")
    t.add_argument("--start-timeout", type=float, default=300.0, help="seconds to have every model ready")
    t.set_defaults(func=_triton)

    s = sub.add_parser("serve", help="serve gRPC (starts the managed Triton unless --triton-url is set)")
    config.add_arguments(s)
    s.set_defaults(func=_serve)

    g = sub.add_parser("gallery", help="gallery maintenance").add_subparsers(dest="gallery_command", required=True)
    gr = g.add_parser("reembed", help="make the templates a migration's new embedder lacks from the kept enrolment "
                                      "photos (keep_enrolment_images); takes the serve settings")
    config.add_arguments(gr)
    gr.set_defaults(func=_gallery_reembed)
    gs = g.add_parser("snapshot", help="write the PostgreSQL gallery's index snapshot (gallery_snapshot_path, or "
                                       "--out), which gateways start from; takes the serve settings")
    config.add_arguments(gs)
    gs.add_argument("--out", default="", help="the file to write (default: gallery_snapshot_path)")
    gs.set_defaults(func=_gallery_snapshot)

    def client_parser(name, help_text, func):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--target", default=DEFAULT_TARGET, help=f"server address (default {DEFAULT_TARGET}); several, "
                                                                "comma-separated, or dns:///name:port: calls spread "
                                                                "over them")
        p.add_argument("--ca", help="TLS: PEM CA that signed the server's certificate")
        p.add_argument("--cert", help="mutual TLS: this client's PEM certificate")
        p.add_argument("--key", help="mutual TLS: this client's PEM private key")
        p.add_argument("--api-key", help="API key (default: env MOBIDEM_API_KEY)")
        p.set_defaults(func=func)
        return p

    a = client_parser("analyze", "faces, identities and expressions in images", _analyze)
    a.add_argument("images", nargs="+")
    st = client_parser("stream", "stream a video file or camera and print per-frame results", _stream)
    st.add_argument("video", nargs="?")
    st.add_argument("--camera", help="camera index instead of a file")
    st.add_argument("--output", help="write an annotated video here")
    st.add_argument("--max-frames", type=int)
    st.add_argument("--latest-frame-wins", action="store_true", help="drop old frames under overload")
    st.add_argument("--raw", action="store_true", help="send raw RGB pixels instead of JPEG")
    st.add_argument("--no-tracking", action="store_true",
                    help="analyse every frame on its own (every face embedded in every frame)")
    st.add_argument("--no-progress", action="store_true")
    st.add_argument("--resume", action="store_true", help="after UNAVAILABLE (the gateway died or aged the "
                                                          "connection) open the stream again, on another gateway "
                                                          "when --target names several, and go on")
    lv = client_parser("liveness", "run a liveness ceremony from a camera or a video: follow the prompts; "
                                   "exit 0 on PASS, 1 on FAIL (docs/LIVENESS.md)", _liveness)
    lv.add_argument("video", nargs="?", help="a video file (played on its own timeline) instead of --camera")
    lv.add_argument("--camera", type=int, help="camera index")
    ref = lv.add_mutually_exclusive_group()
    ref.add_argument("--identity-id", default="", help="also 1:1 against this enrolled identity")
    ref.add_argument("--reference", help="also 1:1 against this photo (e.g. the ID document's)")
    lv.add_argument("--operating-point", default="")
    lv.add_argument("--test-seed", type=int, help="fixed challenges (only a server in liveness_test_mode accepts it)")
    lv.add_argument("--show", action="store_true", help="show the preview and the prompt in a window")
    lv.add_argument("--transaction-ref", default="",
                    help="an opaque reference signed into the outcome's evidence (e.g. the document's SHA-256)")
    lv.add_argument("--evidence-out", help="write the outcome's signed evidence (a compact JWS) to this file")
    e = client_parser("enroll", "enrol a person from one or more photos", _enroll)
    e.add_argument("name")
    e.add_argument("images", nargs="+")
    e.add_argument("--id", help="add to this identity instead of creating one")
    e.add_argument("--face-index", type=int, help="take this face (0 = largest) when a photo has several")
    v = client_parser("verify", "1:1: are the faces in two photos the same person?", _verify)
    v.add_argument("a")
    v.add_argument("b")
    v.add_argument("--operating-point", default="")
    v.add_argument("--probe-face-index", type=int, help="take this face of A (0 = largest) when it shows several")
    v.add_argument("--reference-face-index", type=int, help="take this face of B (0 = largest) when it shows several")
    i = client_parser("identify", "1:N: who is in this photo?", _identify)
    i.add_argument("image")
    i.add_argument("--top-k", type=int, default=5)
    i.add_argument("--face-index", type=int, help="take this face (0 = largest) when the photo shows several")
    c = sub.add_parser("certs", help="TLS certificates").add_subparsers(dest="certs_command", required=True)
    cd = c.add_parser("dev", help="make a development CA, a server certificate and a client certificate")
    cd.add_argument("dir")
    cd.add_argument("--hosts", default="localhost,127.0.0.1,::1", help="server names and addresses (comma-separated)")
    cd.add_argument("--client-name", default="mobidem-client")
    cd.add_argument("--days", type=int, default=365)
    cd.add_argument("--force", action="store_true", help="overwrite existing files")
    cd.set_defaults(func=_certs_dev)
    k = sub.add_parser("keys", help="API keys (stored hashed) and the template encryption key")
    ks = k.add_subparsers(dest="keys_command", required=True)
    ka = ks.add_parser("add", help="make a key, store its hash, print it once")
    ka.add_argument("name")
    ka.add_argument("--roles", required=True, help="comma-separated: stream, analyze, verify, liveness, admin")
    ka.add_argument("--file", required=True, help="the keys file (setting api_keys_file)")
    kr = ks.add_parser("remove", help="revoke a key")
    kr.add_argument("name")
    kr.add_argument("--file", required=True)
    kl = ks.add_parser("list", help="names and roles")
    kl.add_argument("--file", required=True)
    kt = ks.add_parser("template-key", help="write a random 256-bit key for templates at rest")
    kt.add_argument("file")
    kt.add_argument("--force", action="store_true")
    for p in (ka, kr, kl, kt):
        p.set_defaults(func=_keys)
    ev = sub.add_parser("evidence", help="signed evidence of decisions: signing keys, offline verification")
    evs = ev.add_subparsers(dest="evidence_command", required=True)
    evg = evs.add_parser("keygen", help="write a new Ed25519 signing key file (mode 0600)")
    evg.add_argument("file")
    evr = evs.add_parser("rotate", help="add a new signing key; old keys stay (public only) for verification")
    evr.add_argument("file")
    evj = evs.add_parser("jwks", help="print the public keys as a JWK Set (or --pem: the active key as PEM)")
    evj.add_argument("file")
    evj.add_argument("--pem", action="store_true")
    evv = evs.add_parser("verify", help="check a record's signature and print its claims (exit 0 valid, 1 not)")
    evv.add_argument("record", help="the compact JWS, a file holding it, or - for stdin")
    evk = evv.add_mutually_exclusive_group(required=True)
    evk.add_argument("--public-key", help="PEM public key or JWK file")
    evk.add_argument("--jwks", help="JWK Set file (e.g. from /.well-known/jwks.json)")
    for p in (evg, evr, evj, evv):
        p.set_defaults(func=_evidence)
    au = sub.add_parser("audit", help="the audit log: verify its chain and checkpoints, purge old records")
    aus = au.add_subparsers(dest="audit_command", required=True)
    auv = aus.add_parser("verify", help="walk the hash chain, evidence and checkpoints (exit 0 intact, 1 not)")
    aup = aus.add_parser("purge", help="delete records older than --older-than-s, leaving a signed purge record")
    aup.add_argument("--older-than-s", type=float, required=True)
    aup.add_argument("--key-file", help="evidence key file (default: setting evidence_key_file, else "
                                        "<data_dir>/evidence-keys.json)")
    for p in (auv, aup):
        where = p.add_mutually_exclusive_group()
        where.add_argument("--data-dir", help="the server's data_dir (default: setting data_dir)")
        where.add_argument("--audit-log", help="the audit database itself")
        p.set_defaults(func=_audit)
    auk = auv.add_mutually_exclusive_group()
    auk.add_argument("--public-key", help="trusted PEM public key or JWK (default: the data dir's key file)")
    auk.add_argument("--jwks", help="trusted JWK Set file")
    d = sub.add_parser("demo", help="start everything, enrol a man from a photo, recognise him in a real video, "
                                    "and a stranger as unknown (material from PyPI)")
    d.add_argument("--video", help="stream this video instead of the built-in material")
    d.add_argument("--camera", help="stream this camera instead")
    d.add_argument("--frames", type=int, default=0, help="at most this many frames per clip (default: all)")
    d.set_defaults(func=_demo)
    return parser


def _liveness(args) -> int:
    """A ceremony as a client: prompts printed (and drawn with --show), the outcome printed; 0 on PASS."""
    from mobidem.client import video_fps, video_frames
    from mobidem.liveness.client import ceremony, live, timed
    from mobidem.v1 import mobidem_pb2 as pb

    if (args.video is None) == (args.camera is None):
        raise SystemExit("mobidem liveness: give a VIDEO file or --camera N")
    frames = video_frames(args.camera if args.camera is not None else args.video)
    if args.show:
        frames = _shown(frames)
    stamped = live(frames) if args.camera is not None else timed(frames, video_fps(args.video) or 30.0)
    reference = Path(args.reference).read_bytes() if args.reference else None

    def prompt(p):
        print(f"[{p.index + 1}/{p.count}] {p.text} (within {p.window_s:g} s)", flush=True)
        _SHOWN["text"] = p.text

    with _client(args) as client:
        _, outcome = ceremony(client.liveness, stamped, args.identity_id, reference, args.test_seed,
                              args.operating_point, timeout=300, on_prompt=prompt,
                              transaction_ref=args.transaction_ref)
    if outcome is None:
        print("no outcome: the server ended the ceremony", file=sys.stderr)
        return 1
    print(pb.LivenessOutcome.Decision.Name(outcome.decision).removeprefix("DECISION_"),
          f"score {outcome.score:.2f}, {outcome.frames} frames, {outcome.duration_s:.1f} s")
    for t in outcome.challenges:
        state = f"done at {t.completed_s:.2f} s" if t.completed else "not done"
        print(f"  {pb.Challenge.Name(t.challenge).removeprefix('CHALLENGE_').lower()}: from {t.started_s:.2f} s, {state}")
    for reason in outcome.reasons:
        print(f"  reason: {reason}")
    if outcome.verified:
        print(f"  1:1 {'match' if outcome.match else 'NO match'}: distance {outcome.distance:.3f} "
              f"(threshold {outcome.threshold:.3f}, {outcome.operating_point})")
    if outcome.evidence_record_id:
        print(f"  evidence record {outcome.evidence_record_id}")
    if args.evidence_out:
        Path(args.evidence_out).write_text(outcome.evidence + "\n")
    return 0 if outcome.decision == pb.LivenessOutcome.DECISION_PASS else 1


_SHOWN = {"text": ""}


def _shown(frames):
    """Frames passed through, each shown in a window with the current prompt (--show)."""
    import cv2

    for frame in frames:
        view = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        cv2.putText(view, _SHOWN["text"], (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 255, 0), 2)
        cv2.imshow("mobidem liveness", view)
        cv2.waitKey(1)
        yield frame


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear one-line error for the user, not a traceback
        import grpc

        if isinstance(exc, grpc.RpcError):
            print(f"mobidem {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
