# riskd container image. Build from the repository root:
#   docker build -t riskd .
# Ports: 50051 gRPC over mutual TLS (with grpc.health.v1), 9464 Prometheus
# /metrics (plain HTTP: keep it on a private network; it carries no account ids).
# Data: /var/lib/riskd (mount a volume there).
# Config: /etc/riskd/riskd.toml, a copy of deploy/riskd.toml (mount your own over it).
# TLS: mount ca.crt, server.crt, server.key and the health check's probe.crt,
#   probe.key at /etc/riskd/tls (deploy/README.md, "TLS and access"). riskd
#   refuses to start without them: plaintext is refused off loopback.

FROM python:3.11-slim AS build
WORKDIR /src
# A C compiler: the install compiles riskd/core with mypyc (setup.py). Only
# this stage has it; the image gets the built venv.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/riskd/venv
ENV PATH=/opt/riskd/venv/bin:$PATH
# The generator's version is the floor the generated stubs enforce on grpcio.
RUN pip install --no-cache-dir "grpcio-tools>=1.85.1,<1.86" "mypy-protobuf>=5.1,<6"
COPY pyproject.toml setup.py ./
COPY protos/ protos/
COPY riskd/ riskd/
COPY clients/python/ clients/python/
# The daemon and its PostgreSQL client (riskd[postgres]: cluster mode,
# docs/cluster.md; the same range as pyproject.toml); no
# matplotlib (`riskd replay` is riskd[replay]).
RUN python clients/python/generate.py \
 && pip install --no-cache-dir . "psycopg[binary]>=3.2,<4" \
 && pip uninstall -y grpcio-tools mypy-protobuf

FROM python:3.11-slim
# /etc/riskd/tls belongs to riskd so that an empty named volume mounted there
# (compose's dev `certs` service) is writable by it; mounted Secrets replace it.
# Numeric ids (10001) so that Kubernetes' runAsNonRoot can check USER.
RUN groupadd --system --gid 10001 riskd \
 && useradd --system --uid 10001 --gid riskd --home-dir /var/lib/riskd --shell /usr/sbin/nologin riskd \
 && mkdir -p /var/lib/riskd /etc/riskd/tls \
 && chown riskd:riskd /var/lib/riskd /etc/riskd/tls && chmod 0700 /etc/riskd/tls
COPY --from=build /opt/riskd/venv /opt/riskd/venv
COPY deploy/docker/grpc_health_check.py /opt/riskd/grpc_health_check.py
# The Kubernetes config-reload sidecar runs this (deploy/k8s/statefulset.yaml).
COPY deploy/docker/config_reload.py /opt/riskd/config_reload.py
COPY deploy/riskd.toml /etc/riskd/riskd.toml
ENV PATH=/opt/riskd/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/riskd
VOLUME ["/var/lib/riskd"]
EXPOSE 50051 9464
# Mutual TLS with /etc/riskd/tls/{ca.crt,probe.crt,probe.key}; the probe
# identity needs no [access] entry (health needs no role).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "/opt/riskd/grpc_health_check.py", "127.0.0.1:50051"]
# SIGTERM: health NOT_SERVING, ingest drained, clean exit (docs/architecture.md).
STOPSIGNAL SIGTERM
ENTRYPOINT ["riskd", "serve", "--config", "/etc/riskd/riskd.toml", "--grpc-listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9464", "--data-dir", "/var/lib/riskd"]
