"""Which server answered how many calls, and a look at every server behind a balanced channel.

For a balanced channel (several servers). gRPC's Python client does not tell which address
answered a call (its client-side call objects have no ``peer()``), so the counts come from
gRPC's own channelz registry: each subchannel (one per server address) of the client's channel
counts the calls it completed; a balanced channel keeps its subchannels to itself
(``grpc.use_local_subchannel_pool``), so the counts are its own. The registry is read
through ``grpc._cython.cygrpc``'s channelz functions, which return channelz's JSON; the
public wrapper, the ``grpcio-channelz`` package, calls the same functions but needs protobuf
7, which ``tritonclient`` (protobuf < 7) excludes from this environment. Should a later grpcio
drop them, the counts are empty and play goes on.

:class:`ServerWatch` reads the registry at most once a second (on a thread of its own, never
the game's) and keeps each subchannel's highest count, so that a server that leaves a
``dns:`` name keeps what it answered. Each server address it sees is checked once it can
answer (the inference client's connection checks, on a channel to that server alone): a server
that serves another model or game is a fault that the client raises at its next call. No
Chainer here.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from atari_trtis_demo.client.answers import ServedModel
from atari_trtis_demo.client.errors import (
    InferenceError,
    ModelNotLoaded,
    ModelNotReady,
    RequestTimeout,
    ServerError,
    ServersDisagree,
    ServerUnavailable,
)
from atari_trtis_demo.client.server_list import Servers

try:
    from grpc._cython import cygrpc
except ImportError:  # pragma: no cover (a grpcio without its Cython core cannot run at all)
    cygrpc = None

WATCH_SECONDS = 1.0  # how often a balanced client reads the registry and looks for servers not yet checked


@dataclass(frozen=True)
class Subchannel:
    """One server address of a channel, as channelz reports it."""

    id: int
    address: str  # "127.0.0.1:8001", "[::1]:8001"
    state: str  # "READY", "CONNECTING", "TRANSIENT_FAILURE", "IDLE"
    answered: int  # calls completed with OK


def _channelz(function: str, *args: int) -> dict:
    try:
        return json.loads(getattr(cygrpc, function)(*args))
    except (AttributeError, TypeError, ValueError):  # not in this grpcio, or gone since it was listed
        return {}


def top_channels(target: str) -> list[dict]:
    """This process's channels to ``target``, oldest first (gRPC writes a plain ``host:port`` as ``dns:///host:port``)."""
    names = {target, "dns:///" + target}
    found: list[dict] = []
    start = 0
    while True:
        page = _channelz("channelz_get_top_channels", start)
        channels = page.get("channel", [])
        found += [c for c in channels if c.get("data", {}).get("target") in names]
        if page.get("end", True) or not channels:
            return found
        start = int(channels[-1]["ref"]["channelId"]) + 1


def subchannels(channel: dict) -> list[Subchannel]:
    """The server addresses of one channel (channelz's JSON of it), with their states and counts."""
    found = []
    for ref in channel.get("subchannelRef", []):
        number = int(ref["subchannelId"])
        data = _channelz("channelz_get_subchannel", number).get("subchannel", {}).get("data", {})
        if data:
            address = unquote(data.get("target", "")).partition(":")[2]  # "ipv4:1.2.3.4:8001"
            state = data.get("state", {}).get("state", "")
            found.append(Subchannel(number, address, state, int(data.get("callsSucceeded", 0))))
    return found


class ServerWatch:
    """The calls each server of ``servers`` answered, and, when they are several, a check that each
    serves the same model.

    ``served_by(address)`` asks one server what it serves (the client's connection checks on a
    channel to that server alone). The first server that answers sets :attr:`reference`; one
    that serves something else (other tensors, another game) is :class:`ServersDisagree`. A
    server that cannot tell yet (down, its model loading) is asked again later. One server's
    calls are counted by the client (:meth:`count_answer`): gRPC drops a single server's
    subchannel, and its count, each time the server closes the connection.
    """

    def __init__(self, servers: Servers, served_by: Callable[[str], ServedModel], model: str) -> None:
        self.servers, self.target, self.served_by = servers, servers.target, served_by
        self.model, self.address = model, servers.address  # for messages: the model's name, --host as shown
        self._one_server_answered = 0
        self.reference: tuple[str, ServedModel] | None = None  # (server, what it serves): what all must serve
        self.unchecked: InferenceError | None = None  # why the last server asked could not tell
        self.channel_id: int | None = None  # the client's own channel (attach); None: every channel to target
        self.fault: Exception | None = None
        self._counts: dict[int, tuple[str, int]] = {}  # subchannel id -> (address, highest count)
        self._checked: set[str] = set()
        self._lock = threading.Lock()
        self._next = 0.0
        self._pending: concurrent.futures.Future | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self.attach()  # made right after the client's channel

    def attach(self) -> None:
        """Watch the newest channel to the target: the client's, called right after the client made it."""
        if not self.servers.balanced:
            return
        channels = top_channels(self.target)
        self.channel_id = int(channels[-1]["ref"]["channelId"]) if channels else None

    def sample(self) -> list[Subchannel]:
        """Read the registry now: the subchannels of the client's channel, their counts kept."""
        if self.channel_id is not None:
            channels = [_channelz("channelz_get_channel", self.channel_id).get("channel", {})]
        else:
            channels = top_channels(self.target)
        found = [sub for channel in channels for sub in subchannels(channel)]
        with self._lock:
            for sub in found:
                seen = self._counts.get(sub.id, (sub.address, 0))[1]
                self._counts[sub.id] = (sub.address, max(seen, sub.answered))
        return found

    def count_answer(self) -> None:
        """One call answered: counted here for one server (a balanced channel's are gRPC's)."""
        if not self.servers.balanced:
            with self._lock:
                self._one_server_answered += 1

    def answered(self) -> dict[str, int]:
        """Calls each server answered (OK) so far, by address, in address order."""
        if not self.servers.balanced:
            with self._lock:
                return {self.address: self._one_server_answered}
        self.sample()
        totals: dict[str, int] = {}
        with self._lock:
            for address, count in self._counts.values():
                totals[address] = totals.get(address, 0) + count
        return dict(sorted(totals.items()))

    def check(self, address: str) -> bool:
        """Whether ``address`` serves the reference's model (the first to pass sets it); False: cannot tell yet."""
        try:
            served = self.served_by(address)
        except (ModelNotLoaded, ServerUnavailable, RequestTimeout, ServerError) as e:
            self.unchecked = e
            return False
        except ModelNotReady as e:  # tensors the player cannot use
            if self.reference is None:
                raise
            raise ServersDisagree(f"{e}; every server of --host {self.address} must serve the same model") from None
        if self.reference is None:
            self.reference = (address, served)
        elif served != self.reference[1]:
            first, model = self.reference
            raise ServersDisagree(
                f"{address} serves model '{self.model}' with {served.describe()}, {first} with "
                f"{model.describe()}: every server of --host must serve the same model"
            )
        return True

    def check_servers(self) -> None:
        """Check every server not yet checked that may answer (any, the first time); a fault is kept and raised."""
        first = not self._checked

        def listed(sub: Subchannel) -> tuple[int, int]:  # the target's order: its first server sets the model
            where = self.target.find(sub.address)
            return (where if where >= 0 else len(self.target), sub.id)

        for sub in sorted(self.sample(), key=listed):
            if sub.address in self._checked or not (first or sub.state == "READY" or sub.answered):
                continue
            try:
                if self.check(sub.address):
                    self._checked.add(sub.address)
            except Exception as e:  # noqa: BLE001 (kept, and raised on the game's thread at its next call)
                self.fault = e
                raise

    def tick(self) -> None:
        """From the client's calls: at most once every WATCH_SECONDS, :meth:`check_servers` on the watch's thread."""
        if self.fault is not None:
            raise self.fault
        now = time.monotonic()
        if not self.servers.balanced:
            return
        if now < self._next or (self._pending is not None and not self._pending.done()):
            return
        self._next = now + WATCH_SECONDS
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="server-watch")
        self._pending = self._thread.submit(self.check_servers)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)
