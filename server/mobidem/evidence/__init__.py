"""Signed evidence of decisions: Ed25519 compact JWS (RFC 7515/8037), the signing keys and their JWKS.

``jws``: sign and check one compact JWS. ``keys``: the key file (create, rotate, load, export).
``records``: what a decision's evidence claims hold. ``checkpoints``: signed checkpoints of the
audit log's hash chain and the witness hook. ``verify``: offline checks of one record.
"""
