"""What one decision's evidence says: the claims of its JWS (see docs/SECURITY.md, "Evidence").

Only what the decision needs to be re-checked later: never an image, an embedding or a name.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

TYP = "mobidem-evidence+jwt"
MAX_TRANSACTION_REF = 256  # an opaque reference (e.g. the SHA-512 of the signed document in hex: 128)


def image_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_descriptions(repositories: list[Path], versions: dict[str, str]) -> list[dict]:
    """name, version and ONNX sha256 of each served model, from the build manifests (sha256 empty
    when no manifest describes the version Triton serves)."""
    from mobidem import modelbuild

    out = []
    for name, version in versions.items():
        sha = next((e["sha256"] for r in repositories
                    if (e := modelbuild.load_manifest(r)["models"].get(name))
                    and e.get("file", "").split("/")[-2:-1] == [str(version)]), "")
        out.append({"name": name, "version": str(version), "onnx_sha256": sha})
    return out


def decision_claims(record: dict, record_id: str, seq: int, models: list[dict], caller_key: str,
                    images: list[dict], transaction_ref: str) -> dict:
    """``record``: the audit row's fields (mobidem.audit.FIELDS); ``images``: [{"role", "sha256"}]."""
    time = record["time"]
    return {
        "iss": "mobidem",
        "jti": record_id,
        "iat": int(datetime.fromisoformat(time).timestamp()),
        "time": time,
        "kind": record["kind"],
        "decision": record["decision"],
        "distance": record["distance"],
        "threshold": record["threshold"],
        "operating_point": record["operating_point"],
        "far_target": record["far_target"],
        "identity_id": record.get("identity_id", ""),
        "matched_id": record["matched_id"],
        "embedder": record["embedder"],
        "models": models,
        "caller_key": caller_key,
        "images": images,
        "transaction_ref": transaction_ref,
        "request_id": record["request_id"],
        "audit": {"seq": seq, "prev_hash": record["prev_hash"]},
    }


# the claims an audit row must agree with (claim name -> audit column)
BOUND = {"time": "time", "kind": "kind", "decision": "decision", "distance": "distance", "threshold": "threshold",
         "operating_point": "operating_point", "far_target": "far_target", "matched_id": "matched_id",
         "embedder": "embedder", "request_id": "request_id"}


def liveness_claim(ceremony_id: str, passed: bool, reasons: list[str], score: float, frames: int,
                   duration_s: float, challenges: list[dict], test_seed: int | None, one_to_one: str) -> dict:
    """The ``liveness`` claim of a ceremony's evidence: what was asked, what was seen, and whether the
    challenges were drawn by the server (``seeded`` false) or fixed by a test seed (a seeded ceremony
    proves nothing: its challenges were known in advance; a relying party must refuse it).
    ``one_to_one``: "identity", "reference_image" or "" (none was asked for)."""
    return {"ceremony_id": ceremony_id, "outcome": "pass" if passed else "fail", "reasons": list(reasons),
            "score": round(float(score), 4), "frames": int(frames), "duration_s": round(float(duration_s), 3),
            "challenges": challenges, "seeded": test_seed is not None,
            **({"test_seed": int(test_seed)} if test_seed is not None else {}), "one_to_one": one_to_one}
