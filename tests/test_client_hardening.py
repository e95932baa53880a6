"""The player's client trusts no server (issue 15 items 2, 3, 7, client side).

A lying KServe v2 server (real grpcio, on 127.0.0.1, built on the project's stubs)
answers each bad shape and value; the client must turn each into one line, sync and
async, through the real ``src/app.py``. The key travels in a header and a refusal is
exit 2 (also against a real tritonserver started with ``--grpc-restricted-protocol``);
TLS is tested with a certificate this module makes with openssl.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import REMOTE, FakeAtariModel, free_ports, one_error_line, run_command, serving_on_free_ports

from atari_trtis_demo.client.channel import player_key, read_root_certificate
from atari_trtis_demo.client.errors import (
    BadResponse,
    InferenceError,
    KeyRefused,
    RequestTimeout,
    ServerError,
    ServerUnavailable,
    TlsMismatch,
)
from atari_trtis_demo.client.inference_client import InferenceClient
from atari_trtis_demo.core.cli_args import run_cli
from atari_trtis_demo.core.errors import ServiceError, UserError, one_line
from atari_trtis_demo.core.keys import PLAYER_HEADER as KEY_HEADER
from atari_trtis_demo.core.keys import PLAYER_KEY_ENV as KEY_ENV
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb
from atari_trtis_demo.kserve.grpc_service_pb2_grpc import add_GRPCInferenceServiceServicer_to_server

N_ACTIONS = 4
GOOD_Q = np.array([0.1, 0.4, 0.3, 0.2], np.float32)
ANSI_DETAILS = "\x1b[31mboom\x1b[0m\nsecond line\x07\x1b]0;pwned\x07 " + "x" * 1000
# Each lie: (datatype, shape, raw bytes) of the answer to a single frame stack. None: an error status.
LIES = {
    "shape-1x7": ("FP32", [1, 7], np.zeros(7, np.float32).tobytes()),
    "shape-empty": ("FP32", [], np.zeros(1, np.float32).tobytes()),
    "shape-2^62x4": ("FP32", [2**62, 4], GOOD_Q.tobytes()),  # a few bytes behind a giant shape
    "two-rows": ("FP32", [2, 4], np.tile(GOOD_Q, 2).tobytes()),
    "short-bytes": ("FP32", [1, 4], GOOD_Q.tobytes()[:12]),
    "long-bytes": ("FP32", [1, 4], GOOD_Q.tobytes() + b"\0\0\0\0"),
    "nan": ("FP32", [1, 4], np.array([0.1, np.nan, 0.3, 0.2], np.float32).tobytes()),
    "inf": ("FP32", [1, 4], np.array([0.1, np.inf, 0.3, 0.2], np.float32).tobytes()),
    "fp64": ("FP64", [1, 4], GOOD_Q.astype(np.float64).tobytes()),
    "oversized": ("FP32", [1, 4], bytes(5 * 1024 * 1024)),  # past the client's 4 MiB cap on a reply
}


class LyingServer(FakeAtariModel):
    """A KServe v2 server whose model looks right ([-1,4,84,84] FP32 in, [-1,4] FP32 out) and whose
    answers are whatever ``mode`` says: 'good', a key of LIES, 'ansi' (an INTERNAL error with escape
    sequences and 1,000 characters), or 'silent' (never answers). With ``key`` set, every call but
    health needs the header, refused as tritonserver 2.51 refuses it (measured: UNAVAILABLE, "This
    protocol is restricted, expecting header ...")."""

    def __init__(self) -> None:
        self.mode = "good"
        self.key: str | None = None
        self.seen_keys: list[str | None] = []
        self.infer_calls = 0
        self.release = threading.Event()  # ends 'silent' waits when the server stops

    def check_call(self, context: grpc.ServicerContext) -> None:
        sent = dict(context.invocation_metadata()).get(KEY_HEADER)
        self.seen_keys.append(sent)
        if self.key is not None and sent != self.key:
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"This protocol is restricted, expecting header 'triton-grpc-protocol-{KEY_HEADER}'",
            )

    def ModelInfer(self, request, context):
        self.check_call(context)
        self.infer_calls += 1
        rows = int(request.inputs[0].shape[0])
        if self.mode == "silent":
            self.release.wait(30)
            context.abort(grpc.StatusCode.UNAVAILABLE, "stopping")
        if self.mode == "ansi":
            context.abort(grpc.StatusCode.INTERNAL, ANSI_DETAILS)
        if self.mode == "good":
            datatype, shape, raw = "FP32", [rows, N_ACTIONS], np.tile(GOOD_Q, rows).tobytes()
        else:
            datatype, shape, raw = LIES[self.mode]
        response = pb.ModelInferResponse(model_name="atari", id=request.id)
        response.outputs.add(name="action", datatype=datatype, shape=shape)
        response.raw_output_contents.append(raw)
        return response


class Running:
    def __init__(self, lies: LyingServer, server: grpc.Server, port: int) -> None:
        self.lies, self.server, self.port = lies, server, port

    def client(self, **kwargs) -> InferenceClient:
        return InferenceClient("127.0.0.1", self.port, "atari", **kwargs)


def start_lying_server(credentials: grpc.ServerCredentials | None = None) -> Running:
    lies = LyingServer()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(8))
    add_GRPCInferenceServiceServicer_to_server(lies, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return Running(lies, server, port)


def stop_lying_server(running: Running) -> None:
    running.lies.release.set()
    running.server.stop(0).wait(5)


@pytest.fixture()
def liar() -> Iterator[Running]:
    running = start_lying_server()
    try:
        yield running
    finally:
        stop_lying_server(running)


@pytest.fixture()
def tls_liar(certificate: tuple[Path, Path]) -> Iterator[Running]:
    cert, key = certificate
    running = start_lying_server(grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    try:
        yield running
    finally:
        stop_lying_server(running)


@pytest.fixture(autouse=True)
def no_key_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    # A key in the developer's own environment would change what every test here sends.
    monkeypatch.delenv(KEY_ENV, raising=False)


def frames(n: int | None = None) -> np.ndarray:
    shape = (4, 84, 84) if n is None else (n, 4, 84, 84)
    return np.random.default_rng(0).random(shape, dtype=np.float32)


PLAY = ["--headless", "--fps", "0", "--max-steps", "30", "--timeout", "5"]


def play_against(running: Running, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_command(REMOTE, "--host", "127.0.0.1", "--port", str(running.port), *PLAY, *flags, env=env, timeout=120)


# -- answers are checked ------------------------------------------------------------------


def test_a_good_answer_passes_the_checks(liar: Running) -> None:
    with liar.client() as client:
        np.testing.assert_array_equal(client.infer(frames()), GOOD_Q)
        assert client.infer(frames(3)).shape == (3, N_ACTIONS)
        np.testing.assert_array_equal(client.infer_async(frames()).result(timeout=10), GOOD_Q)


@pytest.mark.parametrize("lie", list(LIES))
def test_each_lie_is_one_bad_response_line_sync_and_async(liar: Running, lie: str) -> None:
    liar.lies.mode = lie
    with liar.client() as client:
        tracemalloc.start()
        try:
            with pytest.raises(BadResponse) as sync:
                client.infer(frames())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The frame stack sent is 112 kB; a giant shape must not turn into a giant buffer. (The
        # oversized lie is 5 MB in this process's own server thread before the client refuses it.)
        assert lie == "oversized" or peak < 4 * 1024 * 1024, peak
        future = client.infer_async(frames())
        with pytest.raises(BadResponse) as async_:
            future.result(timeout=10)  # raised, never left pending: async play must not wait forever
    for err in (sync.value, async_.value):
        message = str(err)
        assert "\n" not in message and len(message) < 300 and f"127.0.0.1:{liar.port}" in message, message
        assert isinstance(err, ServiceError) and not isinstance(err, UserError)


@pytest.mark.parametrize("mode", ["--sync", "async"])
@pytest.mark.parametrize("lie", ["shape-1x7", "shape-empty", "shape-2^62x4", "nan"])
def test_a_lying_server_ends_play_with_one_line_and_exit_1(liar: Running, lie: str, mode: str) -> None:
    liar.lies.mode = lie
    result = play_against(liar, *([mode] if mode == "--sync" else []))
    line = one_error_line(result, f"127.0.0.1:{liar.port}", code=1)
    assert "answered" in line, line
    # Async play used to swallow such answers and play on with no server at all.
    assert liar.lies.infer_calls <= 2, liar.lies.infer_calls


@pytest.mark.parametrize("mode", ["--sync", "async"])
def test_a_lying_server_ends_many_games_with_one_line_and_exit_1(liar: Running, mode: str) -> None:
    liar.lies.mode = "shape-2^62x4"
    result = play_against(liar, "--games", "3", *([mode] if mode == "--sync" else []))
    one_error_line(result, f"127.0.0.1:{liar.port}", "answered shape", code=1)
    assert liar.lies.infer_calls <= 6, liar.lies.infer_calls


@pytest.mark.parametrize("mode", ["--sync", "async"])
def test_with_a_fallback_a_lying_server_is_played_through_locally(
    liar: Running, agents: dict[str, Path], mode: str
) -> None:
    liar.lies.mode = "shape-2^62x4"
    result = play_against(liar, "--fallback-modelpath", str(agents["breakout"]), *([mode] if mode == "--sync" else []))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "playing on with local inference" in result.stdout and "answered shape [4611686018427387904, 4]" in (
        result.stdout
    ), result.stdout[-3000:]
    assert "episode 1: score" in result.stdout and "30 steps" in result.stdout, result.stdout[-3000:]


# -- a server's words reach the terminal as one printable line ----------------------------


def test_one_line_strips_escapes_and_controls_and_caps_length() -> None:
    text = one_line(ANSI_DETAILS)
    assert "\x1b" not in text and "\x07" not in text and "\n" not in text and text.isprintable()
    assert text.startswith("boom second line ") and len(text) == 200 and text.endswith("...")
    assert one_line("a\u202eb\tc\x9b31md", limit=None) == "ab cd"  # a bidi override, a tab, an 8-bit CSI


def test_ansi_error_text_from_the_server_is_cut_to_one_printable_line(liar: Running) -> None:
    liar.lies.mode = "ansi"
    with liar.client() as client, pytest.raises(ServerError) as err:
        client.infer(frames())
    assert "\x1b" not in str(err.value) and "boom second line" in str(err.value) and len(str(err.value)) < 400
    result = play_against(liar, "--sync")
    line = one_error_line(result, "INTERNAL", "boom second line", code=1)
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr and len(line) < 400, repr(result.stderr)


# -- exit codes: the user's mistakes 2, run-time failures 1 --------------------------------


def test_run_cli_exits_2_for_user_errors_and_1_for_service_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for error, code in ((UserError("--flag x: bad"), 2), (ServerUnavailable("cannot connect (\x1b[1mdown\x1b[0m)"), 1)):

        def main(error: Exception = error) -> int:
            raise error

        with pytest.raises(SystemExit) as exit_:
            run_cli(main)
        assert exit_.value.code == code
        assert capsys.readouterr().err.splitlines() == [f"error: {one_line(error, limit=None)}"]
    assert issubclass(InferenceError, ServiceError) and not issubclass(InferenceError, UserError)
    assert issubclass(KeyRefused, UserError) and issubclass(TlsMismatch, UserError)


def test_a_down_server_is_exit_1() -> None:
    (port,) = free_ports(1)
    result = run_command(REMOTE, "--host", "127.0.0.1", "--port", str(port), "--headless", "--timeout", "2")
    one_error_line(result, f"cannot connect to 127.0.0.1:{port}", code=1, alone=True)


# -- a deadline of its own per call --------------------------------------------------------


def test_a_probe_has_its_own_short_deadline(liar: Running) -> None:
    with liar.client(timeout=5.0) as client:
        liar.lies.mode = "silent"
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match="within 0.2 s"):
            client.infer(frames(), timeout=0.2)
        future = client.infer_async(frames(), timeout=0.2)
        with pytest.raises(RequestTimeout):
            future.result(timeout=5)
        assert time.monotonic() - started < 2.0, "two probes, not two whole --timeout waits"


# -- the key ------------------------------------------------------------------------------


def test_the_key_is_sent_with_every_call_and_a_refusal_names_the_variable(
    liar: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    liar.lies.key = "k3y-of-the-server"
    with pytest.raises(KeyRefused) as missing:
        liar.client()
    assert KEY_ENV in str(missing.value) and not isinstance(missing.value, InferenceError)
    with pytest.raises(KeyRefused) as wrong:
        liar.client(key="not-it")
    assert KEY_ENV in str(wrong.value) and "not-it" not in str(wrong.value)
    monkeypatch.setenv(KEY_ENV, "k3y-of-the-server")
    liar.lies.seen_keys.clear()
    with liar.client() as client:
        client.infer(frames())
        client.infer_async(frames()).result(timeout=10)
    assert liar.lies.seen_keys and set(liar.lies.seen_keys) == {"k3y-of-the-server"}, liar.lies.seen_keys


def test_a_key_that_cannot_be_a_header_is_one_line_without_the_key() -> None:
    with pytest.raises(UserError) as err:
        player_key("s3cret\nwith a newline")
    assert KEY_ENV in str(err.value) and "s3cret" not in str(err.value)
    assert player_key("") is None


@pytest.mark.parametrize("fallback", [False, True], ids=["plain", "with-fallback"])
def test_a_refused_key_is_exit_2_and_never_the_fallback_loop(
    liar: Running, agents: dict[str, Path], fallback: bool
) -> None:
    liar.lies.key = "k3y-of-the-server"
    flags = ["--fallback-modelpath", str(agents["breakout"])] if fallback else []
    missing = play_against(liar, "--sync", *flags)
    one_error_line(missing, KEY_ENV, code=2, alone=True)
    wrong = play_against(liar, "--sync", *flags, env={KEY_ENV: "wrong-k3y"})
    one_error_line(wrong, KEY_ENV, code=2, alone=True)
    for result in (missing, wrong):
        assert "local inference" not in result.stdout and "episode" not in result.stdout, result.stdout
        assert "wrong-k3y" not in result.stdout + result.stderr
    right = play_against(liar, "--sync", *flags, env={KEY_ENV: "k3y-of-the-server"})
    assert right.returncode == 0 and "episode 1: score" in right.stdout, right.stderr[-3000:]
    assert "k3y-of-the-server" not in right.stdout + right.stderr


def start_restricted_triton(repository: Path, key: str):
    """serve's own Triton with the players' key: every protocol but health needs it (issue 15 item 2)."""
    from atari_trtis_demo.serving.serve_security import Access

    return serving_on_free_ports(repository, access=Access(admin_key="admin-k3y", player_key=key))


def test_a_real_triton_with_a_restricted_protocol_refuses_a_missing_or_wrong_key(repository: Path) -> None:
    with start_restricted_triton(repository, "tr1ton-k3y") as server:
        for key in (None, "wrong-k3y"):
            with pytest.raises(KeyRefused) as err:
                InferenceClient("127.0.0.1", server.grpc_port, "atari", key=key)
            assert KEY_ENV in str(err.value) and "k3y" not in str(err.value), err.value
        with InferenceClient("127.0.0.1", server.grpc_port, "atari", key="tr1ton-k3y") as client:
            assert client.infer(frames()).shape == (4,)
            assert client.infer_async(frames()).result(timeout=10).shape == (4,)
        refused = run_command(REMOTE, "--host", "127.0.0.1", "--port", str(server.grpc_port), *PLAY, timeout=120)
        one_error_line(refused, KEY_ENV, code=2, alone=True)
        played = run_command(
            REMOTE, "--host", "127.0.0.1", "--port", str(server.grpc_port), *PLAY, env={KEY_ENV: "tr1ton-k3y"}
        )
        assert played.returncode == 0 and "episode 1: score" in played.stdout, played.stderr[-3000:]


# -- TLS ----------------------------------------------------------------------------------


def test_tls_with_the_ca_plays(tls_liar: Running, certificate: tuple[Path, Path]) -> None:
    cert, _ = certificate
    for host in ("127.0.0.1", "localhost"):
        with InferenceClient(host, tls_liar.port, "atari", tls_ca=cert) as client:
            np.testing.assert_array_equal(client.infer(frames()), GOOD_Q)
    result = play_against(tls_liar, "--sync", "--tls-ca", str(cert))
    assert result.returncode == 0 and "episode 1: score" in result.stdout, result.stderr[-3000:]


def test_a_real_triton_over_tls_with_and_without_the_ca(repository: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with serving_on_free_ports(repository, tls=(cert, key)) as server:
        with InferenceClient("localhost", server.grpc_port, "atari", tls_ca=cert, timeout=2) as client:
            assert client.infer(frames()).shape == (4,)
        with pytest.raises(TlsMismatch, match="is it serving TLS"):
            InferenceClient("127.0.0.1", server.grpc_port, "atari")


def test_a_player_without_the_ca_against_tls_is_one_line(tls_liar: Running) -> None:
    with pytest.raises(TlsMismatch, match="does not speak plain gRPC: is it serving TLS"):
        tls_liar.client()
    line = one_error_line(play_against(tls_liar, "--sync"), "--tls-ca", code=2, alone=True)
    assert "is it serving TLS" in line, line


def test_a_tls_player_against_a_plain_server_is_one_line(liar: Running, certificate: tuple[Path, Path]) -> None:
    cert, _ = certificate
    with pytest.raises(TlsMismatch, match="does not speak TLS"):
        liar.client(tls_ca=cert)
    one_error_line(play_against(liar, "--sync", "--tls-ca", str(cert)), "does not speak TLS", code=2, alone=True)


def test_a_certificate_from_another_ca_is_one_line(
    tls_liar: Running, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    other = tmp_path / "other.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-keyout", str(tmp_path / "other-key.pem"), "-out", str(other)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with pytest.raises(TlsMismatch, match="CERTIFICATE_VERIFY_FAILED"):
        tls_liar.client(tls_ca=other)


@pytest.mark.parametrize("what", ["missing", "not-pem", "a-key"])
def test_a_bad_tls_ca_file_is_one_line(
    liar: Running, certificate: tuple[Path, Path], tmp_path: Path, what: str
) -> None:
    path = {"missing": tmp_path / "nope.pem", "not-pem": tmp_path / "junk.pem", "a-key": certificate[1]}[what]
    if what == "not-pem":
        path.write_bytes(b"\x00\xffnot a certificate")
    with pytest.raises(UserError, match="--tls-ca"):
        read_root_certificate(path)
    one_error_line(play_against(liar, "--sync", "--tls-ca", str(path)), "--tls-ca", str(path), code=2, alone=True)
