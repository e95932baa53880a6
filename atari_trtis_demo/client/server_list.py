"""Which servers a player talks to: ``--host`` as one server, a list of them, or a DNS name of many.

- ``HOST`` or ``HOST:PORT``: one server, as before (a bare IPv6 literal, or ``[V6]:PORT``).
- ``A:8001,B:8001,C``: a list; an entry without a port takes ``--port``. The names are
  resolved once, here, into one gRPC target of addresses (``ipv4:10.0.0.1:8001,...``):
  gRPC's list target takes addresses of one family, not names.
- ``dns:///NAME[:PORT]``: every address the name resolves to, re-resolved by gRPC while
  playing (a Kubernetes headless Service); without a port it takes ``--port``.

A list or a ``dns:`` name is *balanced*: one channel whose calls gRPC's round_robin spreads
over the servers (``client.channel.BALANCED_OPTIONS``). With TLS, every server's certificate
is checked against one name, the first entry's host (or the ``dns:`` name): a channel has one
authority.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from atari_trtis_demo.client.channel import grpc_target, host_and_port
from atari_trtis_demo.client.errors import ServerUnavailable
from atari_trtis_demo.core.addresses import ip_addresses
from atari_trtis_demo.core.errors import UserError

# dns:[//AUTHORITY/]HOST[:PORT], as gRPC's dns resolver takes it.
DNS_TARGET = re.compile(r"dns:(?://(?P<authority>[^/]*)/)?(?P<name>[^/,]+)$")


@dataclass(frozen=True)
class Servers:
    """The servers of one ``--host`` value, as a gRPC channel needs them."""

    target: str  # what gRPC dials
    address: str  # what messages show: "127.0.0.1:8001", "a:8001,b:8001" or "dns:///name:8001"
    balanced: bool  # several servers: round_robin, failover to the others (client.channel.BALANCED_OPTIONS)
    tls_name: str  # the name every server's certificate must hold
    probes: tuple[tuple[str, int], ...]  # where a TLS handshake may be tried (client.channel.speaks_tls)

    @property
    def tls_override(self) -> str | None:
        """The name a channel to :attr:`target` must check certificates against when its target holds
        addresses, not that name (a list); None when the target itself carries it."""
        return self.tls_name if self.target.startswith(("ipv4:", "ipv6:")) else None


def split_entry(entry: str, port: int, spec: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``V6`` or ``[V6]:PORT`` as (host, port); one line naming ``--host`` when not."""
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")) or ":" not in host:
            raise UserError(f"--host {spec}: '{entry}' is not [IPv6] or [IPv6]:PORT")
        text = rest[1:] if rest else None
    elif entry.count(":") > 1:  # a bare IPv6 literal: no port can follow it
        try:
            host, text = str(ipaddress.IPv6Address(entry)), None
        except ValueError:
            raise UserError(f"--host {spec}: '{entry}' is neither HOST:PORT nor an IPv6 address") from None
    else:
        host, _, text = entry.partition(":")
        text = text if ":" in entry else None
    if not host:
        raise UserError(f"--host {spec}: '{entry}' names no host")
    if text is None:
        return host, port
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UserError(f"--host {spec}: '{entry}' has port '{text}', not a TCP port (1-65535)")
    return host, int(text)


def resolve(host: str, port: int, spec: str) -> list[str]:
    """The IP addresses of ``host`` (an IP literal: itself), in the resolver's order, without repeats."""
    try:
        return ip_addresses(host, port)
    except OSError as e:
        raise ServerUnavailable(f"--host {spec}: cannot resolve '{host}' ({e.strerror or e})") from None


def list_target(entries: list[tuple[str, int]], spec: str) -> str:
    """One ``ipv4:`` or ``ipv6:`` target of every address of ``entries`` (a name: all its addresses of that family).

    gRPC's list target holds one family: IPv4 when every entry has an IPv4 address, else IPv6.
    """
    resolved = [(host, port, resolve(host, port, spec)) for host, port in entries]
    family = 4 if all(any(":" not in a for a in addresses) for _, _, addresses in resolved) else 6
    targets: list[str] = []
    for host, port, addresses in resolved:
        mine = [a for a in addresses if (":" in a) == (family == 6)]
        if not mine:
            raise UserError(
                f"--host {spec}: '{host}' has no IPv{family} address and another entry has no IPv{10 - family} "
                "address: a list holds servers of one family"
            )
        targets += [grpc_target(a, port) for a in mine]
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise UserError(f"--host {spec}: a server is listed twice ({', '.join(twice)})")
    return f"ipv{family}:" + ",".join(targets)


def parse_servers(spec: str, port: int) -> Servers:
    """The servers ``--host spec`` names, ``port`` for entries without one (see the module's text)."""
    spec = spec.strip()
    if spec.startswith("dns:"):
        match = DNS_TARGET.match(spec)
        if match is None:
            raise UserError(f"--host {spec}: expected dns:///NAME or dns:///NAME:PORT, alone (not in a list)")
        host, host_port = split_entry(match.group("name"), port, spec)
        prefix = spec[: match.start("name")]
        # The name as typed: a dns: target asks for every address of it (localhost's ::1 too).
        target = prefix + host_and_port(host, host_port)
        return Servers(target, target, True, host.strip("[]"), ((host.strip("[]"), host_port),))
    if "://" in spec:
        raise UserError(f"--host {spec}: the only scheme taken is dns:///NAME[:PORT]")
    if any(not entry.strip() for entry in spec.split(",")):
        raise UserError(f"--host '{spec}': an empty entry (expected HOST, HOST:PORT or a list A,B:PORT,C)")
    entries = [split_entry(entry.strip(), port, spec) for entry in spec.split(",")]
    if len(entries) == 1:
        host, host_port = entries[0]
        target = grpc_target(host, host_port)
        return Servers(target, target, False, host.strip("[]"), ((host.strip("[]"), host_port),))
    address = ",".join(grpc_target(h, p) for h, p in entries)
    probes = tuple((h.strip("[]"), p) for h, p in entries)
    return Servers(list_target(entries, spec), address, True, probes[0][0], probes)
