"""Who may reach what on a ``serve``d Triton: keys, restricted protocols, TLS files and bind addresses.

Triton 2.51 can require a header on groups of its protocols (``--grpc-restricted-protocol``,
``--http-restricted-api``); a protocol belongs to at most one group. ``serve`` uses two:

- the owner's group: shared-memory, model-repository, logging, trace. Their header is
  ``atari-admin-key``; its value comes from ``ATARI_DEMO_ADMIN_KEY`` or is generated and
  written to a file only its user can read. Always on: any client could otherwise make
  Triton read or write any ``/dev/shm`` file it names, or log gigabytes an hour.
- the players' group, only when ``ATARI_DEMO_KEY`` is set: metadata, model-config,
  inference, statistics with the header ``atari-demo-key``. Health stays open (load
  balancers and readiness checks ask it without a key). Without a player key statistics
  stay open like inference: they tell request counts and timings, nothing a player
  could not measure.

On gRPC this Triton prefixes the header: the metadata key it checks is
``triton-grpc-protocol-<header>`` (measured; see :func:`grpc_metadata`). Over HTTP it is
the header itself. A missing or wrong gRPC header is ``UNAVAILABLE`` with the details
``This protocol is restricted, expecting header 'triton-grpc-protocol-<header>'``; over
HTTP it is ``403`` with ``{"error":"This API is restricted, expecting header '<header>'"}``.
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from atari_trtis_demo.core.addresses import ip_addresses, is_loopback
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.keys import (
    ADMIN_HEADER,
    ADMIN_KEY_ENV,
    GRPC_HEADER_PREFIX,
    PLAYER_HEADER,
    PLAYER_KEY_ENV,
    check_key,
)

ADMIN_KEY_FILE = "admin-key"  # in serve's workdir (mode 0700), itself mode 0600
ADMIN_PROTOCOLS = ("shared-memory", "model-repository", "logging", "trace")
PLAYER_PROTOCOLS = ("metadata", "model-config", "inference", "statistics")


def grpc_metadata(header: str, value: str) -> tuple[str, str]:
    """The gRPC metadata pair Triton checks for ``header``: ``triton-grpc-protocol-<header>``."""
    return (GRPC_HEADER_PREFIX + header, value)


@dataclass(frozen=True)
class Access:
    """The keys of one server: the owner's (always) and the players' (or None: inference open)."""

    admin_key: str
    player_key: str | None = None
    admin_key_generated: bool = True

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Access:
        env = os.environ if environ is None else environ
        player = env.get(PLAYER_KEY_ENV)
        if player is not None:
            check_key(PLAYER_KEY_ENV, player)
        given = env.get(ADMIN_KEY_ENV)
        if given is not None:
            return cls(check_key(ADMIN_KEY_ENV, given), player, admin_key_generated=False)
        return cls(secrets.token_urlsafe(32), player)

    def triton_flags(self) -> list[str]:
        """The restricted-protocol flags for Triton's command line (gRPC and HTTP alike)."""
        groups = [(ADMIN_PROTOCOLS, ADMIN_HEADER, self.admin_key)]
        if self.player_key is not None:
            groups.append((PLAYER_PROTOCOLS, PLAYER_HEADER, self.player_key))
        flags = []
        for protocols, header, value in groups:
            spec = f"{','.join(protocols)}:{header}={value}"
            flags += [f"--grpc-restricted-protocol={spec}", f"--http-restricted-api={spec}"]
        return flags

    def write_admin_key(self, directory: Path) -> Path | None:
        """Write a generated admin key to ``directory/admin-key``, readable by this user only; None if given."""
        if not self.admin_key_generated:
            return None
        path = directory / ADMIN_KEY_FILE
        # Created with its final mode: never readable by others, not even for an instant.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.admin_key + "\n")
        return path


def numeric_address(address: str) -> str:
    """``address`` as an IP literal (a host name resolved), or one line naming ``--address``.

    Triton's HTTP server parses its address with inet_addr: a host name such as
    ``localhost`` does not parse and it listened on 255.255.255.255 instead.
    """
    try:
        return ip_addresses(address.strip("[]"))[0]
    except OSError as e:
        raise UserError(f"--address {address}: cannot resolve it ({e.strerror})") from None


def triton_address(address: str) -> str:
    """The address as Triton's gRPC server needs it: an IPv6 literal in brackets.

    Triton joins address and port with ':'; ``::1:8001`` does not parse ("Name or service
    not known", which this Triton then reports as "Socket '::1:8001' already in use").
    """
    bare = address.strip("[]")
    return f"[{bare}]" if ":" in bare else address


def triton_http_address(address: str) -> str:
    """The address as Triton's HTTP and metrics servers (libevhtp) need it: IPv6 as ``ipv6:<literal>``.

    Given ``::1`` or ``[::1]`` they listened on 255.255.255.255 (an IPv4 parse failure).
    """
    bare = address.strip("[]")
    return f"ipv6:{bare}" if ":" in bare else address


def socket_family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def local_address(address: str) -> str:
    """Where this machine reaches a server bound to ``address`` (a wildcard is reached on loopback)."""
    bare = address.strip("[]")
    if bare in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bare == "::":
        return "::1"
    return bare


def http_address(address: str, expose_http: bool) -> str:
    """HTTP and metrics follow ``--address`` on loopback or with ``--expose-http``, else stay on 127.0.0.1.

    This Triton's HTTP server has published crashes (CVE-2025-23310, CVE-2025-23311).
    """
    return address if expose_http or is_loopback(address) else "127.0.0.1"


def check_tls_files(cert: str | None, key: str | None) -> tuple[Path, Path] | None:
    """Both TLS files given and readable PEM, or one line naming the flag."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing = "--tls-cert" if cert is None else "--tls-key"
        raise UserError(f"{missing}: missing; TLS needs both --tls-cert FILE and --tls-key FILE")
    paths = []
    for flag, name, marker in (("--tls-cert", cert, b"CERTIFICATE"), ("--tls-key", key, b"PRIVATE KEY")):
        path = Path(name)
        try:
            text = path.read_bytes()
        except OSError as e:
            raise UserError(f"{flag} {name}: cannot read it ({e.strerror})") from None
        if b"-----BEGIN " not in text or marker not in text:
            raise UserError(f"{flag} {name}: not a PEM file with a {marker.decode().lower()}")
        paths.append(path.resolve())
    return paths[0], paths[1]


SPECIAL_FILES = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device"), (stat.S_ISSOCK, "socket"))


def check_repository_files(repository: str | Path) -> None:
    """Only regular files, directories and symbolic links that stay inside: what ``serve`` copies and
    Triton loads; else one line naming the entry.

    A repository is code (a python-backend model runs as the server's user), so it must be
    the owner's own; these checks stop the accidents that hung or filled serve's temp folder:
    a FIFO blocks the copy, a link to ``/dev/zero`` never ends it, and a version directory
    linked outside the repository serves whatever it points to.
    """
    root = Path(repository)
    if not root.is_dir():
        return  # read_repository names it
    top = root.resolve()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            try:
                mode = path.lstat().st_mode
            except OSError:
                continue
            kind = next((kind for test, kind in SPECIAL_FILES if test(mode)), None)
            if kind:
                raise UserError(f"{path}: a {kind} in the model repository; serve takes regular files and folders only")
            if stat.S_ISLNK(mode):
                target = path.resolve()
                if target != top and top not in target.parents:
                    raise UserError(
                        f"{path}: a symbolic link leaving the model repository (to {target}); copy what it "
                        "points to into the repository"
                    )
