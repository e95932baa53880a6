"""deploy/kubernetes (issue 22): every manifest valid for Kubernetes, offline, and saying what ``serve`` says.

``kubernetes-validate`` (installed by ./setup.sh with the tests) checks each object strictly
against the schemas of the Kubernetes versions in ``KUBERNETES_VERSIONS``. The Triton flags
of NVIDIA's container are compared with the ones ``serve`` builds (``serve.policy_flags``),
the CPU variant's arguments are parsed by ``serve``'s own parser, and the probes' commands
are run against a real Triton.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helpers import ROOT
from triton_stats import COUNTERS

from atari_trtis_demo.core.keys import PLAYER_KEY_ENV
from atari_trtis_demo.serving.serve import build_parser, policy_flags
from atari_trtis_demo.serving.serve_security import Access

DEPLOY = ROOT / "deploy" / "kubernetes"
# The oldest release these manifests claim (docs/scaling.md) and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
VARIANTS = ("gpu", "cpu")
TLS_PAIR = (Path("/tls/tls.crt"), Path("/tls/tls.key"))  # where the Deployments mount the Secret atari-demo-tls


def objects(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def variant(name: str) -> dict[str, list[dict[str, Any]]]:
    """Every object ``kubectl apply -k deploy/kubernetes/<name>`` would create, by kind (resources followed)."""
    found: dict[str, list[dict[str, Any]]] = {}

    def follow(folder: Path) -> None:
        for entry in objects(folder / "kustomization.yaml")[0]["resources"]:
            target = (folder / entry).resolve()
            if target.is_dir():
                follow(target)
            else:
                for obj in objects(target):
                    found.setdefault(obj["kind"], []).append(obj)

    follow(DEPLOY / name)
    return found


def container(name: str) -> dict[str, Any]:
    (deployment,) = variant(name)["Deployment"]
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_is_valid_for_kubernetes(path: Path, version: str) -> None:
    for obj in objects(path):
        kubernetes_validate.validate(obj, version, strict=True)  # raises ValidationError naming the field


def test_every_kustomization_names_files_that_exist_and_every_manifest_is_used() -> None:
    used: set[Path] = set()
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        spec = objects(kustomization)[0]
        assert spec["kind"] == "Kustomization"
        for entry in spec["resources"]:
            target = (kustomization.parent / entry).resolve()
            assert target.exists(), f"{kustomization}: {entry} does not exist"
            used.add(target)
    assert set(manifests()) <= used, set(manifests()) - used


def test_nvidia_triton_gets_the_same_restricted_protocols_connection_age_and_tls_as_serve() -> None:
    args = container("gpu")["args"]
    # What serve passes its Triton, with the keys as the Deployment's variables and its TLS mount.
    access = Access(admin_key="$(ATARI_DEMO_ADMIN_KEY)", player_key="$(ATARI_DEMO_KEY)", admin_key_generated=False)
    expected = policy_flags(access, TLS_PAIR)
    names = {flag.split("=", 1)[0] for flag in expected}
    assert [a for a in args if a.split("=", 1)[0] in names] == expected
    # HTTP stays on the pod's loopback, as serve keeps it for any address but loopback.
    assert "--http-address=127.0.0.1" in args


@pytest.mark.parametrize("name", VARIANTS)
def test_the_keys_come_from_secrets_and_every_variable_the_arguments_use_is_defined(name: str) -> None:
    spec = container(name)
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in spec["env"]}
    assert env[PLAYER_KEY_ENV] == {"name": "atari-demo-keys", "key": "player-key"}
    assert env["ATARI_DEMO_ADMIN_KEY"] == {"name": "atari-demo-keys", "key": "admin-key"}
    for arg in spec["args"]:
        for variable in arg.split("$(")[1:]:
            assert variable.split(")")[0] in env, arg
    (deployment,) = variant(name)["Deployment"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "atari-demo-tls"
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "atari-models", "readOnly": True}
    # docs/scaling.md tells how to create both Secrets and the volume.
    doc = (ROOT / "docs" / "scaling.md").read_text()
    for secret in ("atari-demo-keys", "atari-demo-tls", "atari-models"):
        assert secret in doc


def test_the_cpu_variant_runs_serve_with_flags_serve_takes() -> None:
    args = build_parser().parse_args(container("cpu")["args"])
    assert args.address == "0.0.0.0" and not args.no_key  # serve refuses to start without the players' key
    assert (args.tls_cert, args.tls_key) == tuple(str(p) for p in TLS_PAIR)
    assert (args.grpc_port, args.metrics_port) == (8001, 8002)


@pytest.mark.parametrize("name", VARIANTS)
def test_services_budget_and_autoscaler_point_at_the_deployment(name: str) -> None:
    found = variant(name)
    (deployment,) = found["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in container(name)["ports"]}
    services = {s["metadata"]["name"]: s["spec"] for s in found["Service"]}
    assert services["atari-triton-players"]["clusterIP"] == "None"  # headless: one DNS answer per pod
    assert "clusterIP" not in services["atari-triton"]
    for spec in services.values():
        assert spec["selector"].items() <= labels.items()
        assert all(p["targetPort"] in ports for p in spec["ports"])
    (budget,) = found["PodDisruptionBudget"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (autoscaler,) = found["HorizontalPodAutoscaler"]
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert autoscaler["spec"]["minReplicas"] >= 2  # the budget can then let one go
    (rules,) = found["ConfigMap"]
    (rule,) = yaml.safe_load(rules["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == autoscaler["spec"]["metrics"][0]["pods"]["metric"]["name"]
    # The rule reads counters this project reads from a real Triton's metrics (bench/triton_stats.py).
    assert "nv_inference_queue_duration_us" in COUNTERS and "nv_inference_request_success" in COUNTERS
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"]
    assert "nv_inference_request_success" in rule["metricsQuery"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container(name)["resources"][kind].keys()


def test_the_gpu_variant_asks_for_a_gpu() -> None:
    resources = container("gpu")["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("name", VARIANTS)
def test_the_probes_ask_triton_health_and_fail_when_it_does_not_answer(name: str, server) -> None:
    spec = container(name)
    probes = {kind: spec[kind]["exec"]["command"] for kind in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert "/v2/health/ready" in probes["readinessProbe"][-1]
    assert "/v2/health/live" in probes["livenessProbe"][-1]
    for command in probes.values():
        # The container's own command, on this machine's interpreter and the session server's HTTP port.
        code = command[-1].replace("127.0.0.1:8000", f"127.0.0.1:{server.http_port}")
        ok = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
        assert ok.returncode == 0, (shlex.join(command), ok.stderr[-500:])
        closed = subprocess.run([sys.executable, "-c", command[-1].replace("8000", "1")], capture_output=True)
        assert closed.returncode != 0
