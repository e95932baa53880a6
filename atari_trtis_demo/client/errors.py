"""The inference client's errors, and which one a failed gRPC call is.

- :class:`InferenceError` and its subclasses (server down, model not ready, request
  refused, bad answer, timeout) are subclasses of
  :class:`~atari_trtis_demo.core.errors.ServiceError`: run-time failures, exit 1, the ones a
  fallback player plays through.
- :class:`KeyRefused` and :class:`TlsMismatch` are
  :class:`~atari_trtis_demo.core.errors.UserError` subclasses: the player's setup is wrong (the key,
  the TLS flag), exit 2, and no fallback loop can mend them.
"""

from __future__ import annotations

import re

import grpc

from atari_trtis_demo.core.errors import ServiceError, UserError, one_line
from atari_trtis_demo.core.keys import PLAYER_KEY_ENV

# The reason in gRPC's words for a failed handshake, e.g. "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED".
TLS_REASON = re.compile(r"OPENSSL_internal:([A-Z0-9_]+)")

# Statuses that say the request itself is wrong; any other is the server's own failure.
REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.FAILED_PRECONDITION)


class InferenceError(ServiceError):
    """A request or connection failed; the message is one line naming server, model and status.

    ``status`` is the gRPC status code's name when the failure came from one (else None).
    """

    status: str | None = None


class ServerUnavailable(InferenceError):
    """The server cannot be reached (down, restarting, wrong address)."""


class ModelNotReady(InferenceError):
    """The server answers but the model is unknown, not loaded, or not what the player needs."""


class ModelNotLoaded(ModelNotReady):
    """The server answers but does not have the model ready (an unknown name, still loading, unloading)."""


class ServersDisagree(ModelNotReady):
    """The servers behind one ``--host`` serve different models (other tensors, another game)."""


class ServerGoingAway(ServerUnavailable):
    """The model the client checked is gone (NOT_FOUND): the server is shutting down or unloaded it."""


class InvalidRequest(InferenceError):
    """The server refused the request (wrong name, shape, data type, size, batch...)."""


class ServerError(InferenceError):
    """The server failed the request for a reason of its own (INTERNAL, UNKNOWN, out of resources...)."""


class BadResponse(InferenceError):
    """The server answered, but not with the Q-values the client asked for."""


class RequestTimeout(InferenceError):
    """No answer within the per-request deadline."""


class KeyRefused(UserError):
    """The server refuses this player's key (none, or a wrong one in ``ATARI_DEMO_KEY``): the user's to fix."""


class TlsMismatch(UserError):
    """Client and server disagree on TLS (no ``--tls-ca`` for a TLS server, or one for a plain
    server, or a certificate that root does not vouch for): the user's to fix."""


def rpc_failure(
    error: grpc.RpcError, *, address: str, model: str, host: str, deadline: float, keyed: bool, tls: bool
) -> InferenceError | UserError:
    """The error a failed call to ``model`` on ``address`` is, with the server's words as one printable line.

    ``deadline``: the call's, for a timeout's message; ``keyed``/``tls``: whether the client sent a
    key / speaks TLS, which tells a refused key or a TLS mismatch from a server that is down.
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    # The server's words, made safe for a terminal: one printable line of bounded length.
    full = one_line(error.details() if hasattr(error, "details") else error, limit=None)
    details, lowered = one_line(full), full.lower()  # matched in full, shown cut
    failure: InferenceError
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or (
        # Triton's --grpc-restricted-protocol answers a missing or wrong key with UNAVAILABLE
        # "This protocol is restricted, expecting header '...'": not a server that is down.
        code == grpc.StatusCode.UNAVAILABLE and "restricted" in lowered and "header" in lowered
    ):
        if keyed:
            return KeyRefused(
                f"{address} refused the key in {PLAYER_KEY_ENV} ({code.name}): "
                f"set {PLAYER_KEY_ENV} to the key the server was started with"
            )
        return KeyRefused(
            f"{address} takes only players with its key ({code.name}): "
            f"set {PLAYER_KEY_ENV} to the key the server was started with"
        )
    if tls and "handshake" in lowered:  # only a TLS channel shakes hands
        reason = TLS_REASON.search(full)
        why = reason.group(1) if reason else details
        if "WRONG_VERSION_NUMBER" in why or "HTTP_REQUEST" in why:
            return TlsMismatch(f"{address} does not speak TLS: drop --tls-ca, or serve with TLS ({why})")
        return TlsMismatch(
            f"{address}: TLS handshake failed ({why}): is its certificate signed by --tls-ca and made for '{host}'?"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        failure = ServerUnavailable(f"cannot connect to {address} (UNAVAILABLE: {details})")
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        failure = RequestTimeout(f"{address}: no answer from model '{model}' within {deadline:g} s")
    elif code == grpc.StatusCode.NOT_FOUND:
        failure = ServerGoingAway(
            f"{address}: model '{model}' is no longer served (NOT_FOUND: {details}): "
            "the server is shutting down or unloaded it"
        )
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in lowered:
        failure = BadResponse(f"{address}: model '{model}' answered with an oversized message ({details})")
    elif code in REFUSALS:
        failure = InvalidRequest(f"{address}: model '{model}' refused the request ({code.name}: {details})")
    else:
        failure = ServerError(f"{address}: model '{model}' failed the request ({code.name}: {details})")
    failure.status = code.name
    return failure
