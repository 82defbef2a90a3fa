"""API keys and the role policy as pure logic (no server): the keys file, the role check, and the
interceptor's decision for every method, credential header and role, as docs/SECURITY.md states them.
The end-to-end checks through a real server are in test_security.py; these run in milliseconds, so
the mutation run (`make mutants`, docs/TESTING.md) can use them."""

from __future__ import annotations

import os
import time

import pytest

from mobidem import auth
from mobidem.api.auth import AuthInterceptor
from mobidem.errors import InvalidArgument, PermissionDenied, Unauthenticated

# docs/SECURITY.md, "Authentication and roles", written out (never read from auth.METHOD_ROLES)
POLICY = {
    "/mobidem.v1.FaceAnalysis/Stream": "stream",
    "/mobidem.v1.FaceAnalysis/Analyze": "analyze",
    "/mobidem.v1.Gallery/Verify": "verify",
    "/mobidem.v1.Gallery/Identify": "verify",
    "/mobidem.v1.Gallery/GetIdentity": "verify",
    "/mobidem.v1.Gallery/Enroll": "admin",
    "/mobidem.v1.Gallery/EnrollStream": "admin",
    "/mobidem.v1.Gallery/DeleteIdentity": "admin",
    "/mobidem.v1.Gallery/ListIdentities": "admin",
    "/mobidem.v1.Gallery/GetEvidenceKeys": "*",
    "/mobidem.v1.Liveness/Ceremony": "liveness",
    "/mobidem.v1.Ceremonies/CreateCeremony": "ceremony",
    "/mobidem.v1.Ceremonies/GetCeremony": "ceremony",
}
ALL_ROLES = ("stream", "analyze", "verify", "liveness", "ceremony", "admin")
HEALTH = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


@pytest.fixture()
def keys(tmp_path):
    """A keys file with one key per role (named after it), and the plaintext keys."""
    path = tmp_path / "keys.yaml"
    plain = {role: auth.add_key(path, role, [role]) for role in ALL_ROLES}
    plain["two"] = auth.add_key(path, "two", "verify, analyze")
    return path, plain


def interceptor(path, **kw):
    return AuthInterceptor(auth.KeyStore(path, recheck_s=0.0), **kw)


def test_the_table_is_the_documented_policy():
    assert auth.METHOD_ROLES == POLICY
    assert auth.ROLES == ALL_ROLES


@pytest.mark.parametrize("method", sorted(POLICY))
def test_each_method_admits_exactly_its_role_and_admin(keys, method):
    path, plain = keys
    guard = interceptor(path)
    needed = POLICY[method]
    for role in ALL_ROLES:
        metadata = [("x-api-key", plain[role])]
        if needed == "*" or role in (needed, "admin"):
            assert guard.authenticate(method, metadata) == role
        else:
            with pytest.raises(PermissionDenied) as info:
                guard.authenticate(method, metadata)
            text = str(info.value)
            assert role in text and method in text and (needed in text), text


def test_a_key_with_two_roles_has_both_and_nothing_more(keys):
    path, plain = keys
    guard = interceptor(path)
    metadata = [("x-api-key", plain["two"])]
    assert guard.authenticate("/mobidem.v1.Gallery/Verify", metadata) == "two"
    assert guard.authenticate("/mobidem.v1.FaceAnalysis/Analyze", metadata) == "two"
    with pytest.raises(PermissionDenied):
        guard.authenticate("/mobidem.v1.FaceAnalysis/Stream", metadata)


def test_an_unlisted_method_needs_admin(keys):
    path, plain = keys
    guard = interceptor(path)
    assert guard.required_role("/mobidem.v1.Gallery/SomethingNew") == "admin"
    with pytest.raises(PermissionDenied):
        guard.authenticate("/mobidem.v1.Gallery/SomethingNew", [("x-api-key", plain["verify"])])
    assert guard.authenticate("/mobidem.v1.Gallery/SomethingNew", [("x-api-key", plain["admin"])]) == "admin"


def test_health_and_reflection_exemptions(keys):
    path, plain = keys
    default = interceptor(path)  # health exempt, reflection not (docs/SECURITY.md)
    assert default.required_role(HEALTH) is None and default.authenticate(HEALTH, []) == ""
    assert default.required_role(REFLECTION) == "*"
    assert default.required_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == "*"
    with pytest.raises(Unauthenticated):
        default.authenticate(REFLECTION, [])
    assert default.authenticate(REFLECTION, [("x-api-key", plain["stream"])]) == "stream"
    flipped = interceptor(path, exempt_health=False, exempt_reflection=True)
    assert flipped.required_role(HEALTH) == "*" and flipped.required_role(REFLECTION) is None
    with pytest.raises(Unauthenticated):
        flipped.authenticate(HEALTH, [])


def test_without_a_key_store_every_call_passes():
    guard = AuthInterceptor(None)
    assert guard.authenticate("/mobidem.v1.Gallery/DeleteIdentity", []) == ""


def test_credentials_bearer_and_header_rules(keys):
    path, plain = keys
    guard = interceptor(path)
    verify = "/mobidem.v1.Gallery/Verify"
    key = plain["verify"]
    assert guard.authenticate(verify, [("authorization", f"Bearer {key}")]) == "verify"
    assert guard.authenticate(verify, [("authorization", f"bearer   {key} ")]) == "verify"
    assert guard.authenticate(verify, [("other", "x"), ("x-api-key", key)]) == "verify"
    for metadata, words in [
        ([], "needs credentials"),
        (None, "needs credentials"),
        ([("x-api-key", "")], "needs credentials"),
        ([("authorization", f"Basic {key}")], "must be `Bearer <key>`"),
        ([("authorization", "Bearer ")], "must be `Bearer <key>`"),
        ([("authorization", key)], "must be `Bearer <key>`"),
        ([("x-api-key", key), ("authorization", f"Bearer {key}")], "2 credential headers"),
        ([("x-api-key", key), ("x-api-key", key)], "send exactly one"),
        ([("x-api-key", key + "x")], "unknown or revoked"),
        ([("x-api-key", auth.digest(key))], "unknown or revoked"),  # the stored digest is not a key
    ]:
        with pytest.raises(Unauthenticated, match=words.replace("`", ".").replace("<", ".").replace(">", ".")):
            guard.authenticate(verify, metadata)


def test_roles_are_parsed_strictly():
    assert auth.parse_roles("stream, analyze,stream") == ("stream", "analyze")
    assert auth.parse_roles(["admin"]) == ("admin",)
    for bad in ("", " , ", "root", ["stream", "owner"], []):
        with pytest.raises(InvalidArgument, match="non-empty subset"):
            auth.parse_roles(bad)


def test_api_key_allows():
    k = auth.ApiKey("k", "0" * 64, ("verify",))
    assert k.allows("verify") and k.allows("*") and not k.allows("admin") and not k.allows("stream")
    assert auth.ApiKey("a", "0" * 64, ("admin",)).allows("stream")


def test_the_keys_file_holds_digests_only_and_is_private(keys):
    path, plain = keys
    text = path.read_text()
    assert not any(k in text for k in plain.values())
    assert all(auth.digest(k) in text for k in plain.values())
    assert os.stat(path).st_mode & 0o777 == 0o600
    stored = auth.read_keys(path)
    assert [k.name for k in stored] == [*ALL_ROLES, "two"]
    assert stored[-1].roles == ("verify", "analyze") and stored[-1].created.endswith("Z")
    key = plain["stream"]
    assert key.startswith("mbk_") and len(key) == 4 + 43  # 256 bits, URL-safe base64 without padding


@pytest.mark.parametrize("text, words", [
    ("keys: [", "not YAML/JSON"),
    ("- a\n- b\n", "expected a mapping with a list `keys`"),
    ("keys: {a: 1}", "expected a mapping with a list `keys`"),
    ("keys: [3]", "keys[0]: expected a mapping"),
    ("keys: [{name: 'bad name', sha256: " + "a" * 64 + ", roles: [admin]}]", "name must be 1-64"),
    ("keys: [{name: x, sha256: abc, roles: [admin]}]", "64 hex digits"),
    ("keys: [{name: x, sha256: " + "a" * 64 + ", roles: [root]}]", "keys[0] (x): roles must"),
    ("keys: [{name: x, sha256: " + "a" * 64 + "}]", "roles must"),
    ("keys:\n - {name: x, sha256: " + "a" * 64 + ", roles: [admin]}\n - {name: x, sha256: " + "b" * 64
     + ", roles: [admin]}", "keys[1]: duplicate name 'x'"),
])
def test_a_malformed_keys_file_says_what_is_wrong(tmp_path, text, words):
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(InvalidArgument) as info:
        auth.read_keys(path)
    assert words in str(info.value) and str(path) in str(info.value)


def test_read_keys_accepts_upper_case_digests_and_an_empty_file(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text("keys: [{name: x, sha256: " + "AB" * 32 + ", roles: [verify]}]")
    assert auth.read_keys(path) == [auth.ApiKey("x", "ab" * 32, ("verify",))]
    path.write_text("")
    assert auth.read_keys(path) == []
    with pytest.raises(InvalidArgument, match="No such file"):
        auth.read_keys(tmp_path / "absent.yaml")


def test_add_and_remove_keys(tmp_path):
    path = tmp_path / "sub" / "keys.yaml"
    auth.add_key(path, "a", "verify")
    with pytest.raises(InvalidArgument, match="exists"):
        auth.add_key(path, "a", "verify")
    with pytest.raises(InvalidArgument, match="1-64 characters"):
        auth.add_key(path, "no spaces", "verify")
    with pytest.raises(InvalidArgument, match="no key named 'b'"):
        auth.remove_key(path, "b")
    auth.add_key(path, "b", "stream")
    auth.remove_key(path, "a")
    assert [k.name for k in auth.read_keys(path)] == ["b"]
    assert not [p for p in path.parent.iterdir() if p.name != "keys.yaml"], "a temporary file was left"


def test_the_store_follows_the_file_and_keeps_the_last_good_keys(tmp_path):
    path = tmp_path / "keys.yaml"
    first = auth.add_key(path, "first", "verify")
    with pytest.raises(InvalidArgument, match="does not exist"):
        auth.KeyStore(tmp_path / "none.yaml")
    store = auth.KeyStore(path, recheck_s=0.0)
    assert len(store) == 1 and store.lookup(first).name == "first"
    second = auth.add_key(path, "second", "stream")
    assert store.lookup(second).name == "second" and len(store) == 2
    auth.remove_key(path, "first")
    assert store.lookup(first) is None  # revoked without a restart
    path.write_text("keys: [")  # a broken edit: the previous keys stay
    assert store.lookup(second).name == "second"


def test_the_store_rereads_at_most_every_recheck_s(tmp_path):
    path = tmp_path / "keys.yaml"
    auth.add_key(path, "first", "verify")
    store = auth.KeyStore(path, recheck_s=30.0)
    store.lookup("anything")  # the first look within 30 s of the start: no re-read needed
    second = auth.add_key(path, "second", "stream")
    assert store.lookup(second) is None  # not re-read yet
    store._checked = time.monotonic() - 31
    assert store.lookup(second).name == "second"


def test_the_keys_file_layout(tmp_path):
    """Found by the mutation run (docs/TESTING.md): the file an operator reads and edits by hand."""
    import re

    path = tmp_path / "a" / "b" / "keys.yaml"  # parent folders are made
    auth.add_key(path, "cam", "stream")
    lines = path.read_text().splitlines()
    assert lines[0] == "# mobidem API keys: SHA-256 digests only (mobidem keys add/remove; docs/SECURITY.md)"
    fields = re.findall(r"^[ -]*(\w+):", path.read_text(), re.M)
    assert fields == ["keys", "name", "sha256", "roles", "created"]  # in this order, as documented
    created = auth.read_keys(path)[0].created
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created), created
    assert abs(time.mktime(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")) - time.mktime(time.gmtime())) < 120
    with pytest.raises(InvalidArgument) as info:
        auth.add_key(path, "cam", "stream")
    assert str(path) in str(info.value)
    with pytest.raises(InvalidArgument) as info:
        auth.remove_key(path, "nobody")
    assert str(path) in str(info.value)
    with pytest.raises(InvalidArgument) as info:
        auth.read_keys(tmp_path / "absent.yaml")
    assert "No such file or directory" in str(info.value) and "absent.yaml" in str(info.value)
    assert len({auth.new_key() for _ in range(3)}) == 3 and len(auth.new_key()) == 47


def test_keys_file_entries_need_a_name_and_role_lists_may_have_empty_items(tmp_path):
    """Found by the mutation run: an entry without a name is refused (not stored under a made-up name), and
    `--roles stream,analyze,` (a trailing or doubled comma) means the roles named, as typed by hand."""
    path = tmp_path / "keys.yaml"
    path.write_text("keys: [{sha256: " + "a" * 64 + ", roles: [admin]}]")
    with pytest.raises(InvalidArgument, match=r"keys\[0\]: name must be 1-64"):
        auth.read_keys(path)
    assert auth.parse_roles("stream,,analyze, ") == ("stream", "analyze")


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    """Found by the mutation run: the keys file is replaced atomically (docs/SECURITY.md). The temporary
    file is made beside it (a rename is atomic only within one file system), never in the system's
    temporary folder, and a write that fails raises its own error, keeps the old file, and leaves no
    temporary file behind."""
    import tempfile

    path = tmp_path / "keys.yaml"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    auth.add_key(path, "a", "verify")  # the system's temporary folder is never used
    before = path.read_bytes()
    with pytest.raises(Exception, match="cannot represent"):  # yaml's RepresenterError, not a TypeError
        auth.write_keys(path, [auth.ApiKey("b", "0" * 64, (object(),))])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keys.yaml"], "a temporary file was left"


def test_created_is_utc_whatever_the_local_time_zone(tmp_path, monkeypatch):
    """Found by the mutation run: `created` ends in Z, so it is UTC even where the local zone is not."""
    import calendar

    monkeypatch.setenv("TZ", "UTC-09:00")  # POSIX: nine hours ahead of UTC
    time.tzset()
    try:
        auth.add_key(tmp_path / "keys.yaml", "a", "verify")
    finally:
        monkeypatch.undo()
        time.tzset()
    created = auth.read_keys(tmp_path / "keys.yaml")[0].created
    assert abs(calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")) - time.time()) < 120, created


def test_the_server_rereads_within_about_2_s_and_logs_a_malformed_file(tmp_path, caplog):
    """Found by the mutation run (docs/SECURITY.md, "Keys"): the server's store (default settings) re-reads
    the file within about 2 s of a change; a missing file's error names it; a malformed file keeps the last
    good keys and logs an error that says why and that the previous keys are kept."""
    path = tmp_path / "keys.yaml"
    with pytest.raises(InvalidArgument) as info:
        auth.KeyStore(path)
    assert str(path) in str(info.value) and "does not exist" in str(info.value)
    first = auth.add_key(path, "first", "verify")
    store = auth.KeyStore(path)
    second = auth.add_key(path, "second", "stream")
    store._checked = time.monotonic() - 2.1  # 2.1 s since the last look
    assert store.lookup(second).name == "second"
    path.write_text("keys: [")
    store._checked = time.monotonic() - 2.1
    with caplog.at_level("ERROR"):
        assert store.lookup(first).name == "first"
    [record] = [r for r in caplog.records if r.name.startswith("mobidem")]
    assert record.levelname == "ERROR" and record.name == "mobidem.auth"
    assert "keeping the previous keys" in record.getMessage() and "not YAML/JSON" in record.getMessage()


def test_refusals_name_the_headers_sent_and_the_roles_held(keys):
    """Found by the mutation run (docs/TESTING.md, api/auth.py): the messages say what to fix. Two
    credential headers are named in the order sent; a key refused for its roles lists all of them."""
    path, plain = keys
    guard = interceptor(path)
    with pytest.raises(Unauthenticated) as info:
        guard.authenticate("/mobidem.v1.Gallery/Verify",
                           [("x-api-key", plain["verify"]), ("authorization", f"Bearer {plain['verify']}")])
    assert str(info.value).startswith("2 credential headers (x-api-key, authorization); send exactly one: ")
    with pytest.raises(PermissionDenied) as info:
        guard.authenticate("/mobidem.v1.FaceAnalysis/Stream", [("x-api-key", plain["two"])])
    assert str(info.value) == ("key 'two' (roles: verify, analyze) may not call /mobidem.v1.FaceAnalysis/Stream: "
                               "it needs the role 'stream' or 'admin'")
