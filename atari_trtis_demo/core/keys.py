"""The shared secrets of a served model: where each key is read from, the headers it travels in, one check.

``serve`` and the player take the same keys, so the names and the check live here once,
for both (standard library only, like :mod:`~atari_trtis_demo.core.contract`):

- the players' key, ``ATARI_DEMO_KEY``: with it set, ``serve`` makes Triton require the
  header ``atari-demo-key`` on everything but health, and the players send it;
- the owner's key, ``ATARI_DEMO_ADMIN_KEY`` (or a generated one): the header
  ``atari-admin-key`` on Triton's admin protocols (shared memory, repository, logging, trace).

Over gRPC Triton 2.51 checks a restricted header under the name
``triton-grpc-protocol-<header>`` (measured: its refusal says "expecting header
'triton-grpc-protocol-atari-demo-key'"); over HTTP it checks the header as named. The player
sends its key under both names.
"""

from __future__ import annotations

from atari_trtis_demo.core.errors import UserError

PLAYER_KEY_ENV = "ATARI_DEMO_KEY"
ADMIN_KEY_ENV = "ATARI_DEMO_ADMIN_KEY"
PLAYER_HEADER = "atari-demo-key"
ADMIN_HEADER = "atari-admin-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # what Triton 2.51 prepends to a restricted gRPC header
PLAYER_GRPC_HEADER = GRPC_HEADER_PREFIX + PLAYER_HEADER

# gRPC's receiving side (Triton's server here) refuses a call whose metadata passes 8 KiB at
# random (RESOURCE_EXHAUSTED, which a player reads as a server failure), and every call from
# 16 KiB. Each metadata entry counts its name + value + 32 bytes, and the player's key travels in
# two entries. Measured on tritonserver 2.51 (40 calls per length): no refusal up to 3,700
# characters, the first at 3,800, 90% at 6,000, all at 7,000. 2,048 characters cost
# 2 x (2,048 + 35 + 32) = 4,230 bytes: about 3.4 KiB stay for gRPC's own headers (about 0.6 KiB
# measured), a long host name and the deadline.
MAX_KEY_LENGTH = 2048


def check_key(variable: str, value: str) -> str:
    """``value`` if it can be a key of ``variable``, else one line naming the variable (never the key).

    A key is 1 to :data:`MAX_KEY_LENGTH` characters of printable ASCII without spaces, ``,``,
    ``:`` or ``=``: it is a header value, and Triton's command line splits its
    ``<protocols>:<header>=<value>`` option at those.
    """
    if not value:
        raise UserError(f"{variable} is set but empty: give it a secret value (or unset it)")
    if len(value) > MAX_KEY_LENGTH:
        raise UserError(
            f"{variable}: {len(value)} characters; a key may have at most {MAX_KEY_LENGTH} "
            "(it travels in two gRPC headers, and gRPC refuses headers over 8 KiB)"
        )
    if not all(33 <= ord(c) <= 126 for c in value) or any(c in value for c in ",:="):
        raise UserError(f"{variable}: use printable ASCII without spaces, ',', ':' or '=' (a header value)")
    return value
