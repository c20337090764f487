"""compose, Kubernetes, systemd and the Dockerfile: they parse and agree with
riskd on ports, paths and health checks. Docker does not run here, so nothing
is built or started; kubectl and systemd-analyze are used when installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ALERTS, DASHBOARD, DEPLOY, PROM_CONFIG, ROOT, run_tool, yaml_module

GRPC_PORT = 50051
METRICS_PORT = 9464
DATA_DIR = "/var/lib/riskd"
HEALTH_SCRIPT = "/opt/riskd/grpc_health_check.py"


def load(path: Path) -> list[dict]:
    yaml = yaml_module()
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_default_ports_match_riskd() -> None:
    from riskd import config as config_mod

    server = config_mod.load().server
    assert server.grpc_listen.endswith(f":{GRPC_PORT}")
    assert server.metrics_listen.endswith(f":{METRICS_PORT}")


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^EXPOSE {GRPC_PORT} {METRICS_PORT}$", text, re.M)
    assert f'VOLUME ["{DATA_DIR}"]' in text
    assert "clients/python/generate.py" in text  # the riskd.v1 stubs are generated
    assert f'"{HEALTH_SCRIPT}", "127.0.0.1:{GRPC_PORT}"' in text
    assert "COPY deploy/docker/grpc_health_check.py " + HEALTH_SCRIPT in text
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    assert entry
    args = json.loads(entry.group(1))  # exec form: a JSON array
    assert args[:2] == ["riskd", "serve"]
    assert f"0.0.0.0:{GRPC_PORT}" in args and f"0.0.0.0:{METRICS_PORT}" in args
    assert args[args.index("--data-dir") + 1] == DATA_DIR
    assert re.search(r"^USER riskd$", text, re.M)
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / src).exists(), src


def test_compose() -> None:
    (doc,) = load(DEPLOY / "compose.yaml")
    svc = doc["services"]
    assert set(svc) == {"riskd", "prometheus", "grafana"}
    riskd = svc["riskd"]
    assert (DEPLOY / riskd["build"]["context"] / riskd["build"]["dockerfile"]).is_file()
    assert f"127.0.0.1:{GRPC_PORT}:{GRPC_PORT}" in riskd["ports"]
    assert f"127.0.0.1:{METRICS_PORT}:{METRICS_PORT}" in riskd["ports"]
    assert f"riskd-data:{DATA_DIR}" in riskd["volumes"]
    assert "riskd-data" in doc["volumes"]
    assert riskd["healthcheck"]["test"] == [
        "CMD",
        "python",
        HEALTH_SCRIPT,
        f"127.0.0.1:{GRPC_PORT}",
    ]
    # Every bind mount exists, and Prometheus/Grafana see the files where
    # their configs say.
    mounts = {}
    for s in svc.values():
        for v in s.get("volumes", []):
            src, dst = v.split(":")[:2]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), src
                mounts[dst] = (DEPLOY / src).resolve()
    assert mounts["/etc/prometheus/prometheus.yml"] == PROM_CONFIG.resolve()
    assert mounts["/etc/prometheus/rules/riskd-alerts.yml"] == ALERTS.resolve()
    assert mounts["/var/lib/grafana/dashboards/riskd"] == DASHBOARD.parent.resolve()
    (prom,) = load(PROM_CONFIG)
    assert prom["rule_files"] == ["/etc/prometheus/rules/riskd-alerts.yml"]
    (job,) = prom["scrape_configs"]
    assert job["job_name"] == "riskd"  # RiskdDown matches up{job="riskd"}
    assert job["static_configs"][0]["targets"] == [f"riskd:{METRICS_PORT}"]
    assert job["metrics_path"] == "/metrics"
    (ds,) = load(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    assert "9090:9090" in svc["prometheus"]["ports"][0]


def k8s_objects() -> dict[str, dict]:
    kust = load(DEPLOY / "k8s" / "kustomization.yaml")[0]
    objs = {}
    for res in [*kust["resources"], "servicemonitor.yaml"]:
        for o in load(DEPLOY / "k8s" / res):
            assert o["apiVersion"] and o["metadata"]["name"] == "riskd"
            objs[o["kind"]] = o
    return objs


def test_kubernetes() -> None:
    objs = k8s_objects()
    assert set(objs) == {"StatefulSet", "Service", "ServiceMonitor"}
    sts, svc = objs["StatefulSet"], objs["Service"]
    assert sts["spec"]["replicas"] == 1  # one sequencer
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    pod = sts["spec"]["template"]
    assert pod["metadata"]["labels"].items() >= sts["spec"]["selector"]["matchLabels"].items()
    assert pod["metadata"]["labels"].items() >= svc["spec"]["selector"].items()
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == str(METRICS_PORT)
    assert ann["prometheus.io/path"] == "/metrics"
    (c,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    cmd = c["command"] + c["args"]
    assert cmd[:2] == ["riskd", "serve"]
    assert cmd[cmd.index("--grpc-listen") + 1] == f"0.0.0.0:{GRPC_PORT}"
    assert cmd[cmd.index("--metrics-listen") + 1] == f"0.0.0.0:{METRICS_PORT}"
    assert cmd[cmd.index("--data-dir") + 1] == DATA_DIR
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["grpc"] == {"port": GRPC_PORT, "service": ""}, probe
    (mount,) = c["volumeMounts"]
    assert mount["mountPath"] == DATA_DIR
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == mount["name"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001  # the image's riskd user
    svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert svc_ports == {"grpc": (GRPC_PORT, "grpc"), "metrics": (METRICS_PORT, "metrics")}
    (ep,) = objs["ServiceMonitor"]["spec"]["endpoints"]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics"
    assert objs["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items() <= (
        svc["metadata"]["labels"].items()
    )


def test_kubectl_kustomize_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH")
    out = run_tool(kubectl, "kustomize", str(DEPLOY / "k8s"))
    assert "kind: StatefulSet" in out and "kind: Service" in out


def test_systemd_unit(tmp_path: Path) -> None:
    text = (DEPLOY / "systemd" / "riskd.service").read_text()
    sections = dict(re.findall(r"^\[(\w+)\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S))
    assert set(sections) == {"Unit", "Service", "Install"}
    svc = dict(line.split("=", 1) for line in sections["Service"].splitlines() if "=" in line)
    assert svc["StateDirectory"] == "riskd"  # = /var/lib/riskd
    exec_start = svc["ExecStart"].split()
    assert exec_start[:2] == ["/opt/riskd/venv/bin/riskd", "serve"]
    assert exec_start[exec_start.index("--data-dir") + 1] == DATA_DIR
    assert svc["KillSignal"] == "SIGTERM" and svc["User"] == "riskd"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not on PATH")
    # Verify with the ExecStart binary that exists here (the venv's riskd).
    riskd = Path(sys.executable).parent / "riskd"
    unit = tmp_path / "riskd.service"
    unit.write_text(text.replace("/opt/riskd/venv/bin/riskd", str(riskd)))
    proc = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0 and "Unknown" not in proc.stderr, proc.stderr
