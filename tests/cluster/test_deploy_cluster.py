"""deploy/: the compose profile "cluster" and deploy/k8s/cluster agree with riskd's flags."""

from __future__ import annotations

from pathlib import Path

import yaml

from riskd.cli import build_parser
from riskd.cluster.node import ingest_address

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _serve_flags(args: list[str]) -> None:
    """The arguments parse as `riskd serve` arguments (no typo'd flag)."""
    build_parser().parse_args(["serve", *args])


def test_compose_cluster_profile() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    svc = doc["services"]
    cluster = {n for n, s in svc.items() if "cluster" in s.get("profiles", [])}
    assert cluster == {"etcd-0", "etcd-1", "etcd-2", "postgres", "riskd-node-a", "riskd-node-b"}
    members = ",".join(f"etcd-{i}=http://etcd-{i}:2380" for i in range(3))
    for i in range(3):
        cmd = svc[f"etcd-{i}"]["command"]
        assert f"--name=etcd-{i}" in cmd and f"--initial-cluster={members}" in cmd
    for name in ("riskd-node-a", "riskd-node-b"):
        node = svc[name]
        _serve_flags(node["command"])
        flags = dict(a.split("=", 1) for a in node["command"])
        assert flags["--advertise"] == f"{name}:50051"
        assert flags["--storage"].startswith("postgresql://")
        assert flags["--storage"].split("@")[1].startswith("postgres:5432/")
        assert flags["--etcd"] == ",".join(f"http://etcd-{i}:2379" for i in range(3))
        assert f"{name}-data" in doc["volumes"]
    # The dev certificates name the nodes (gateways are redirected to them).
    (script,) = svc["certs"]["command"]
    assert "--host riskd-node-a" in script and "--host riskd-node-b" in script


def test_kubernetes_cluster_manifests() -> None:
    k = DEPLOY / "k8s" / "cluster"
    kust = yaml.safe_load((k / "kustomization.yaml").read_text())
    objs = {}
    for res in kust["resources"]:
        for o in yaml.safe_load_all((k / res).read_text()):
            assert o["kind"] != "Secret", "no credentials in git"
            objs[(o["kind"], o["metadata"]["name"])] = o
    sts = objs[("StatefulSet", "riskd-cluster")]
    assert sts["spec"]["replicas"] >= 2 and sts["spec"]["serviceName"] == "riskd-cluster-nodes"
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    _serve_flags(args[1:])
    assert args[args.index("--advertise") + 1] == "$(POD_NAME).riskd-cluster-nodes:50051"
    # The ingest front end: advertised on the node's own name, exposed by both Services.
    listen = args[args.index("--frontend-listen") + 1]
    advertised = ingest_address(args[args.index("--advertise") + 1], listen, None)
    assert advertised == "$(POD_NAME).riskd-cluster-nodes:50052"
    assert {"name": "ingest", "containerPort": 50052} in c["ports"]
    for service in ("riskd-cluster", "riskd-cluster-nodes"):
        ports = objs[("Service", service)]["spec"]["ports"]
        assert {"name": "ingest", "port": 50052, "targetPort": "ingest"} in ports
    etcd = objs[("StatefulSet", "etcd")]
    urls = ",".join(f"http://etcd-{i}.etcd:2379" for i in range(etcd["spec"]["replicas"]))
    assert args[args.index("--etcd") + 1] == urls
    env = {e["name"] for e in c["env"]}
    assert {"POD_NAME", "RISKD_STORAGE_URL"} <= env
    # Ready = the owner; alive = the port (a health-check liveness would kill standbys).
    assert "exec" in c["readinessProbe"] and "tcpSocket" in c["livenessProbe"]
    assert objs[("Service", "riskd-cluster-nodes")]["spec"]["publishNotReadyAddresses"]
    # The ConfigMap the nodes mount is the single-node one (deploy/riskd.toml verbatim).
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    cm = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
