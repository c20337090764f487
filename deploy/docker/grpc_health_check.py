"""Exit 0 when riskd's gRPC health service reports SERVING, 1 otherwise.

Used by the container HEALTHCHECK (Dockerfile, deploy/compose.yaml) and by the
Kubernetes exec probes (deploy/k8s/statefulset.yaml): kubelet's built-in gRPC
probe cannot present a client certificate, which riskd requires over TLS.
Needs only grpcio and grpcio-health-checking, which riskd already depends on.

    python grpc_health_check.py [HOST:PORT] [SERVICE]
        [--ca PEM] [--cert PEM] [--key PEM] [--server-name NAME] [--plaintext]

By default it speaks mutual TLS with the files mounted at /etc/riskd/tls:
``ca.crt`` to verify riskd, ``probe.crt``/``probe.key`` as its own client
certificate. The health service needs no role, so the probe's identity needs
no ``[access]`` entry, only a certificate from riskd's client CA. Each file
can be changed by flag or by environment (RISKD_TLS_CA, RISKD_TLS_CERT,
RISKD_TLS_KEY, RISKD_TLS_SERVER_NAME). ``--server-name`` checks riskd's
certificate against that name instead of the target's host (e.g. when the
certificate names the Service but the probe dials 127.0.0.1). ``--plaintext``
(or RISKD_PLAINTEXT=1) is for a development riskd on loopback only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TLS_DIR = "/etc/riskd/tls"


def parse_args(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description="riskd gRPC health check")
    p.add_argument("target", nargs="?", default="127.0.0.1:50051", help="HOST:PORT")
    p.add_argument("service", nargs="?", default="", help="health service name ('' = server)")
    p.add_argument("--ca", default=env("RISKD_TLS_CA", f"{TLS_DIR}/ca.crt"))
    p.add_argument("--cert", default=env("RISKD_TLS_CERT", f"{TLS_DIR}/probe.crt"))
    p.add_argument("--key", default=env("RISKD_TLS_KEY", f"{TLS_DIR}/probe.key"))
    p.add_argument("--server-name", default=env("RISKD_TLS_SERVER_NAME", ""))
    p.add_argument(
        "--plaintext",
        action="store_true",
        default=env("RISKD_PLAINTEXT", "") in ("1", "true", "yes"),
        help="no TLS (a development riskd on loopback)",
    )
    p.add_argument("--timeout", type=float, default=3.0, help="seconds")
    return p.parse_args(argv)


def channel(args: argparse.Namespace) -> grpc.Channel:
    if args.plaintext:
        return grpc.insecure_channel(args.target)
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(args.ca).read_bytes(),
        private_key=Path(args.key).read_bytes(),
        certificate_chain=Path(args.cert).read_bytes(),
    )
    options = []
    if args.server_name:
        options.append(("grpc.ssl_target_name_override", args.server_name))
    return grpc.secure_channel(args.target, creds, options=options)


def main(argv: list[str]) -> int:
    args = parse_args(argv[1:])
    try:
        with channel(args) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
    except OSError as e:
        print(f"unhealthy: cannot read TLS file: {e}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"unhealthy: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
