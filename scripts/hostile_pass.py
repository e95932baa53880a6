"""Issue 23's hostile pass: a local user and an operator's bad day against one tree's ``serve`` and player.

    .venv/bin/python scripts/hostile_pass.py --repository REPO [--tree DIR] [--port 19200] [attack ...]

REPO holds a converted model 'atari' (onnx_converter_src/converter.py). ``--tree`` is the
checkout whose serve and player are attacked (default: this one): for the figures before a
change, ``git archive <commit> | tar -x -C /tmp/before`` and ``--tree /tmp/before``. Ports
``--port`` to ``--port`` + 79. Attacks (default: all): squatter, workdir, sigstop, full
(needs user and mount namespaces), http, nohttp (needs ``serve --no-http``), keys, repo.
Each prints one line of what it got; docs/serving.md records a run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from atari_trtis_demo.kserve import kserve_v2_pb2 as pb
from atari_trtis_demo.kserve.grpc_service_pb2_grpc import (
    GRPCInferenceServiceStub,
    add_GRPCInferenceServiceServicer_to_server,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the squatter is the suite's own (tests/helpers.py)
from helpers import Squatter  # noqa: E402

# Holds 20,000 connections to a port (raising its own open-file limit), reports, then waits for a
# line on stdin and reports how many the server has closed since.
HOLDER = r"""
import json, resource, socket, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
held, refused = [], {}
for _ in range(int(sys.argv[2])):
    try:
        s = socket.socket()
        s.connect(("127.0.0.1", int(sys.argv[1])))
        held.append(s)
    except OSError as e:
        refused[e.strerror] = refused.get(e.strerror, 0) + 1
print(json.dumps({"open": len(held), "refused": refused}), flush=True)
sys.stdin.readline()
closed = 0
for s in held:
    s.setblocking(False)
    try:
        closed += s.recv(1) == b""
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print(json.dumps({"closed by the server": closed}), flush=True)
"""
# serve with $TMPDIR on an 8 MiB tmpfs of its own, filled up to its last 256 KiB before serve starts.
FULL_TMPFS = (
    'mount -t tmpfs -o size=8m none "$TMPDIR" && head -c $((8 * 1024 * 1024 - 256 * 1024)) /dev/zero '
    '> "$TMPDIR/filler" && exec "$@"'
)


class Pass:
    def __init__(self, tree: Path, repository: Path, port: int, work: Path) -> None:
        self.tree, self.repository, self.port, self.work = tree, repository, port, work
        self.env = {**os.environ, "PYTHONPATH": str(tree), "SDL_VIDEODRIVER": "dummy", "TMPDIR": str(work / "tmp")}
        self.env.pop("ATARI_DEMO_KEY", None)
        (work / "tmp").mkdir(parents=True)

    def say(self, attack: str, text: str) -> None:
        print(f"{attack}: {text}", flush=True)

    def ports(self, n: int) -> list[str]:
        """Three ports (HTTP, gRPC, metrics) of their own for the n-th server of the pass."""
        return [str(self.port + 3 * n + i) for i in range(3)]

    def serve_argv(self, n: int, *flags: str, repository: Path | None = None) -> list[str]:
        http, grpc_port, metrics = self.ports(n)
        repository = repository or self.repository
        return [sys.executable, "-m", "atari_trtis_demo.serve", "--model-repository", str(repository),
                "--http-port", http, "--grpc-port", grpc_port, "--metrics-port", metrics, *flags]  # fmt: skip

    def serve(self, n: int, *flags: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path, Path]:
        """serve's n-th server, once ready: (process, its workdir, its stderr file)."""
        err = self.work / f"serve-{n}.err"
        proc = subprocess.Popen(
            self.serve_argv(n, *flags),
            stdout=subprocess.PIPE,
            stderr=err.open("w"),
            text=True,
            cwd=self.tree,
            env={**self.env, **(env or {})},
        )
        for line in proc.stdout:
            if line.startswith("Triton log:"):
                return proc, Path(line.split()[2].rstrip(";")).parent, err
        raise RuntimeError(f"serve did not start: {err.read_text()[-500:]}")

    def play(self, n: int, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        argv = [sys.executable, str(self.tree / "src" / "app.py"), "--headless", "--port", self.ports(n)[1], *args]
        return subprocess.run(
            argv, capture_output=True, text=True, cwd=self.tree, env={**self.env, **(env or {})}, timeout=300
        )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tritonserver_of(workdir: Path) -> int:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args[0].endswith(b"tritonserver") and any(str(workdir).encode() in a for a in args):
            return int(pid)
    raise RuntimeError(f"no tritonserver runs from {workdir}")


def answered(port: str, timeout: float) -> bool | str:
    """One inference of 'atari' on 127.0.0.1:port: True, or the gRPC status name."""
    request = pb.ModelInferRequest(model_name="atari")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4, 84, 84])
    request.raw_input_contents.append(np.zeros((1, 4, 84, 84), "<f4").tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=timeout)
            return True
        except grpc.RpcError as e:
            return e.code().name


def last_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[-1][:220]


def squatter(p: Pass) -> None:
    proc, _, _ = p.serve(0)
    spy = Squatter()
    fake = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    add_GRPCInferenceServiceServicer_to_server(spy, fake)
    fake.add_insecure_port(f"[::1]:{p.ports(0)[1]}")
    fake.start()
    try:
        played = p.play(0, "--sync", "--fps", "0", "--max-steps", "60", env={"ATARI_DEMO_KEY": "s3cret-key"})
        keys = sorted({key[:12] for key in spy.keys})
        p.say(
            "squatter", f"a default player: exit {played.returncode}; the squatter got {spy.calls} calls, keys {keys}"
        )
    finally:
        fake.stop(0)
        stop(proc)


def workdir(p: Pass) -> None:
    first, first_workdir, _ = p.serve(1)
    pid = tritonserver_of(first_workdir)
    planted = p.work / "tmp" / "atari-triton-"
    planted.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (planted / "owner.json").write_text(json.dumps({"pid": dead.pid}))
    regions = [name for name in os.listdir("/dev/shm") if first_workdir.name in name or "shm_region_" in name][:1]
    (planted / "shm-regions").write_text("".join(f"{name}\n" for name in regions))
    second, _, err = p.serve(2)
    alive = Path(f"/proc/{pid}/comm").exists() and Path(f"/proc/{pid}/comm").read_text().strip() == "tritonserver"
    kept = [Path("/dev/shm", name).exists() for name in regions]
    p.say(
        "workdir",
        f"the running server's tritonserver alive after a second start: {alive}; the region named "
        f"kept: {kept}; the second serve said {last_line(err.read_text())!r}",
    )
    for proc in (second, first):
        stop(proc)


def sigstop(p: Pass) -> None:
    proc, workdir, err = p.serve(3)
    stats = p.work / "sigstop.json"
    player = subprocess.Popen(
        [
            sys.executable,
            str(p.tree / "src" / "app.py"),
            "--headless",
            "--host",
            "127.0.0.1",
            "--port",
            p.ports(3)[1],
            "--sync",
            "--fps",
            "15",
            "--max-steps",
            "500",
            "--timeout",
            "2",
            "--reconnect",
            "60",
            "--json",
            str(stats),
        ],
        cwd=p.tree,
        env=p.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(6)
    pid, stopped, back = tritonserver_of(workdir), time.monotonic(), None
    os.kill(pid, signal.SIGSTOP)
    while time.monotonic() - stopped < 60 and back is None:
        if time.monotonic() - stopped > 20 and Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGCONT)  # the 20 s
        if answered(p.ports(3)[1], timeout=1) is True:
            back = time.monotonic() - stopped
        time.sleep(0.5)
    player.communicate(timeout=300)
    figures = json.loads(stats.read_text()) if stats.exists() else {}
    p.say(
        "sigstop",
        f"answers again {back:.1f} s after SIGSTOP; serve said {err.read_text().splitlines()}; the sync "
        f"player: exit {player.returncode}, {figures.get('steps')} steps, {figures.get('outage')}",
    )
    stop(proc)


def full(p: Pass) -> None:
    mount = p.work / "tmpfs"
    mount.mkdir()
    err = p.work / "full.err"
    argv = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", FULL_TMPFS, "sh",
            *p.serve_argv(4, "--log-verbose", "1")]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=err.open("w"), text=True, cwd=p.tree, env={**p.env, "TMPDIR": str(mount)}
    )
    next(line for line in proc.stdout if line.startswith("Triton log:"))
    count, started, failure = 0, time.monotonic(), None
    for _ in range(300):  # about 2.4 KB of log each at --log-verbose 1
        if (result := answered(p.ports(4)[1], timeout=10)) is not True:
            failure = result
            break
        count += 1
    p.say(
        "full",
        f"{count} of 300 answered in {time.monotonic() - started:.1f} s (then {failure}); serve said "
        f"{[line[:120] for line in err.read_text().splitlines()][:3]}",
    )
    stop(proc)


def http(p: Pass, *flags: str) -> None:
    proc, _, _ = p.serve(5, *flags)
    targets = [("HTTP", p.ports(5)[0])] + ([("gRPC", p.ports(5)[1])] if flags else [])
    try:
        for name, port in targets:
            holder = subprocess.Popen(
                [sys.executable, "-c", HOLDER, port, "20000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            held = holder.stdout.readline().strip()
            started = time.monotonic()
            played = p.play(
                5,
                "--host",
                "127.0.0.1",
                "--sync",
                "--fps",
                "0",
                "--max-steps",
                "30",
                "--timeout",
                "5",
                "--reconnect",
                "0",
            )
            took = time.monotonic() - started
            time.sleep(max(0.0, 8 - took))
            holder.stdin.write("\n")
            holder.stdin.flush()
            closed = holder.stdout.readline().strip()
            holder.stdin.close()
            holder.wait(60)
            p.say(
                f"http{' ' + ' '.join(flags) if flags else ''}",
                f"20,000 idle connections to {name}: {held}; a new "
                f"player: exit {played.returncode} in {took:.1f} s {last_line(played.stderr)!r}; after 8 s {closed}",
            )
    finally:
        stop(proc)


def keys(p: Pass) -> None:
    for key, what in (("k" * 6000, "a 6,000-character key"), ("two words", "a key with an inner space")):
        try:
            served = subprocess.run(
                p.serve_argv(6),
                capture_output=True,
                text=True,
                cwd=p.tree,
                timeout=30,
                env={**p.env, "ATARI_DEMO_KEY": key},
            )
            said = f"exit {served.returncode} {last_line(served.stderr)!r}"
        except subprocess.TimeoutExpired:
            said = "serving (still up after 30 s)"
        played = p.play(6, "--host", "127.0.0.1", "--max-steps", "5", env={"ATARI_DEMO_KEY": key})
        p.say("keys", f"{what}: serve {said}; player exit {played.returncode} {last_line(played.stderr)!r}")


def repo(p: Pass) -> None:
    for what in ("fifo", "devzero", "version-outside", "truncated-onnx"):
        repository = p.work / "repos" / what / "trtismodel"
        shutil.copytree(p.repository, repository)
        python_model = repository / "slow" / "1"
        if what in ("fifo", "devzero"):
            python_model.mkdir(parents=True)
            (python_model / "model.py").write_text("class TritonPythonModel:\n    pass\n")
            (python_model.parent / "config.pbtxt").write_text(
                'name: "slow"\nbackend: "python"\nmax_batch_size: 8\n'
                'input { name: "input" data_type: TYPE_FP32 dims: [4, 84, 84] }\n'
                'output { name: "action" data_type: TYPE_FP32 dims: [4] }\n'
            )
        if what == "fifo":
            os.mkfifo(python_model / "pipe")
        elif what == "devzero":
            # Before the check, copying this filled the temp folder: run it in a tmpfs of its own.
            (python_model / "zero").symlink_to("/dev/zero")
        elif what == "version-outside":
            shutil.copytree(repository / "atari" / "1", repository.parent / "elsewhere")
            (repository / "atari" / "2").symlink_to(repository.parent / "elsewhere")
        else:
            onnx = repository / "atari" / "1" / "model.onnx"
            onnx.write_bytes(onnx.read_bytes()[:5000])
        argv = p.serve_argv(7, repository=repository)
        if what == "devzero":
            mount = p.work / "zero-tmpfs"
            mount.mkdir()
            argv = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                    'mount -t tmpfs -o size=64m none "$TMPDIR" && exec "$@"', "sh", *argv]  # fmt: skip
        started = time.monotonic()
        try:
            env = {**p.env, "TMPDIR": str(mount)} if what == "devzero" else p.env
            done = subprocess.run(argv, capture_output=True, text=True, cwd=p.tree, env=env, timeout=60)
            p.say(
                "repo",
                f"{what}: exit {done.returncode} in {time.monotonic() - started:.1f} s, "
                f"{len(done.stderr.splitlines())} lines, {len(done.stderr)} characters: {last_line(done.stderr)!r}",
            )
        except subprocess.TimeoutExpired:
            p.say("repo", f"{what}: still running after 60 s")
    kept = sorted((p.work / "tmp").glob("tritonserver-failed-*.log"))
    p.say("repo", f"logs kept for the owner: {[(k.name, oct(k.stat().st_mode & 0o777)) for k in kept]}")


ATTACKS = {"squatter": squatter, "workdir": workdir, "sigstop": sigstop, "full": full, "http": http,
           "nohttp": lambda p: http(p, "--no-http"), "keys": keys, "repo": repo}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", required=True, type=Path)
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--port", type=int, default=19200)
    parser.add_argument("attacks", nargs="*", help=f"some of {', '.join(ATTACKS)} (default: all)")
    args = parser.parse_args()
    if unknown := set(args.attacks) - set(ATTACKS):
        parser.error(f"unknown attack(s): {', '.join(sorted(unknown))}")
    work = Path(tempfile.mkdtemp(prefix="hostile-pass-"))
    try:
        run = Pass(args.tree.resolve(), args.repository.resolve(), args.port, work)
        for name in args.attacks or ATTACKS:
            try:
                ATTACKS[name](run)
            except Exception as e:  # one attack's harness failing must not stop the pass
                print(f"{name}: the pass itself failed: {type(e).__name__}: {e}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
