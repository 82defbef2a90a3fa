"""Liveness: an active challenge ceremony on live video (docs/LIVENESS.md).

- ``challenges``: the challenge sequence (cryptographic RNG; a seed only in the server's test mode);
- ``headpose``: pose and face-action signals from the face mesh;
- ``decision``: the ceremony as a pure state machine over per-frame observations;
- ``limits``: failed ceremonies per API key and per identity;
- ``client``: running a ceremony as a client.

The servicer is mobidem.api.liveness.
"""
