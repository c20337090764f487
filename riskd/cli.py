"""Command-line entry point: ``riskd serve``, ``config``, ``audit`` and ``replay``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from riskd import __version__, core_build

#: ``riskd serve`` exit statuses (docs/runbook.md says what to do about each).
#: Could not start as configured: bad config, unwritable data directory, busy
#: port, unreadable TLS file (one ``riskd: ...`` line on stderr).
EXIT_STARTUP = 2
#: The data directory cannot be trusted: a journal that does not read back,
#: breaks its hash chain, or lost records a snapshot or the WAL index saw.
EXIT_CORRUPT = 3
#: 4: a storage write failed while serving (``riskd.storage.EXIT_STORAGE_FAULT``).


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="riskd", description="Risk engine daemon.")
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__} ({core_build()} core)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the risk engine daemon")
    serve.add_argument("--config", help="TOML config file (default: the embedded default)")
    serve.add_argument("--grpc-listen", help="override server.grpc_listen (host:port)")
    serve.add_argument(
        "--frontend-listen",
        help="override server.frontend_listen (host:port; the ingest front-end process)",
    )
    serve.add_argument("--metrics-listen", help="override server.metrics_listen (host:port)")
    serve.add_argument("--data-dir", help="override server.data_dir")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.add_argument(
        "--storage",
        metavar="URL",
        help="journal and snapshots in PostgreSQL (postgresql://...; docs/cluster.md);"
        " default: SQLite in the data directory",
    )
    serve.add_argument(
        "--shard",
        help="the shard this node journals under in --storage (default: the config's"
        " settlement assets, e.g. USDT)",
    )
    serve.add_argument(
        "--etcd",
        metavar="URLS",
        help="cluster mode: etcd client URLs, comma-separated; the node serves its shard only"
        " while it holds the shard's lease (needs --storage; docs/cluster.md)",
    )
    serve.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="with --etcd: the address gateways are sent to (default: --grpc-listen)",
    )
    serve.add_argument(
        "--advertise-ingest",
        metavar="HOST:PORT",
        help="with --etcd: where gateways stream (IngestService), e.g. the front end's"
        " address (default: server.frontend_listen when it names a host, else --advertise's"
        " host with its port; --advertise without a front end)",
    )
    serve.add_argument(
        "--lease-ttl",
        type=int,
        default=2,
        metavar="SECONDS",
        help="with --etcd: the owner lease's time to live (default 2)",
    )
    commands.add_parser("config", help="print the embedded default configuration")
    certs = commands.add_parser(
        "dev-certs", help="make a development CA, server and client certificates for mTLS"
    )
    certs.add_argument("directory", help="where to write the PEM files")
    certs.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="IDENTITY",
        help="a client identity to issue a certificate for (repeatable)",
    )
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        help="a name or IP the server is reached at (repeatable; default localhost, 127.0.0.1)",
    )
    audit = commands.add_parser(
        "audit", help="verify a data directory offline: journal chain, fund ledger, invariants"
    )
    audit.add_argument("--data", help="the data directory to check")
    audit.add_argument("--config", help="TOML config the daemon ran with (default: embedded)")
    audit.add_argument(
        "--storage",
        help="instead: the PostgreSQL journal of riskd serve --storage (postgresql:// URL)",
    )
    audit.add_argument("--shard", help="with --storage: the shard (default: the config's assets)")
    replay = commands.add_parser(
        "replay",
        help="drive a daemon through a price path with a seeded population; write a report",
    )
    # Only the options are defined here (a light import); the driver, grpc and
    # matplotlib are imported when the command runs.
    from riskd.replay import add_arguments

    add_arguments(replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config":
        from riskd.config import default_toml

        sys.stdout.write(default_toml())
        return 0
    if args.command == "serve":
        return _serve(args)
    if args.command == "dev-certs":
        return _dev_certs(args)
    if args.command == "audit":
        from riskd import audit
        from riskd.config import load

        try:
            config = load(args.config)
        except (OSError, ValueError) as e:
            return _bad_config(str(e))
        if not args.data and not args.storage:
            return _bad_config("riskd audit needs --data or --storage")
        if args.shard and not args.storage:
            return _bad_config("--shard needs --storage")
        return audit.main(config, args.data, args.storage, args.shard)
    if args.command == "replay":
        from riskd.replay import main as replay_main

        return replay_main(args)
    raise AssertionError(f"unhandled command {args.command!r}")


def _bad_config(why: str) -> int:
    print(f"riskd: bad configuration: {why}", file=sys.stderr)
    return EXIT_STARTUP


def _dev_certs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from riskd.dev_certs import write_dev_set

    directory = Path(args.directory).resolve()
    hosts = args.host or ["localhost", "127.0.0.1"]
    written = write_dev_set(directory, args.client or ["gateway-1", "ops"], hosts)
    for name, (cert, key) in written.items():
        print(f"{name}: {cert} {key}")
    print(
        f'\n[server.tls]\ncert = "{directory / "server.crt"}"\n'
        f'key = "{directory / "server.key"}"\nclient_ca = "{directory / "ca.crt"}"'
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    import trio

    from riskd import config as config_mod
    from riskd import logs
    from riskd.daemon import StartupError, serve
    from riskd.storage import StorageFault
    from riskd.storage.journal import JournalCorrupt, JournalInconsistent

    logs.configure(args.log_level)
    try:
        config = config_mod.load(args.config)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return _bad_config(str(e))
    overrides = {
        k: v
        for k, v in (
            ("grpc_listen", args.grpc_listen),
            ("frontend_listen", args.frontend_listen),
            ("metrics_listen", args.metrics_listen),
            ("data_dir", args.data_dir),
        )
        if v
    }
    if overrides:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, **overrides))
    try:
        config.server.check_transport()
    except ValueError as e:
        return _bad_config(str(e))
    for flag, given in (("--shard", args.shard), ("--etcd", args.etcd)):
        if given and not args.storage:
            return _bad_config(f"{flag} needs --storage")
    if not 1 <= args.lease_ttl <= 60:
        return _bad_config("--lease-ttl must be 1..60 seconds")
    if args.storage and not args.storage.startswith(("postgresql://", "postgres://")):
        return _bad_config("--storage must be a postgresql:// URL")
    if args.advertise_ingest and not args.etcd:
        return _bad_config("--advertise-ingest needs --etcd")
    if args.etcd:
        from riskd.cluster.node import ingest_address

        args.advertise = args.advertise or config.server.grpc_listen
        try:
            args.advertise_ingest = ingest_address(
                args.advertise, config.server.frontend_listen, args.advertise_ingest
            )
        except ValueError as e:
            return _bad_config(str(e))
    # Raised inside the daemon's nursery, hence groups.  A StorageFault that
    # gets here happened before serving (one while serving exits 4 at once).
    failed: list[BaseException] = []
    try:
        if args.storage:
            trio.run(_serve_postgres, config, args)
        else:
            trio.run(serve, config, args.config)
    except* (JournalCorrupt, StartupError, StorageFault) as group:
        failed.extend(group.exceptions)
    if not failed:
        return 0
    first = failed[0]
    if isinstance(first, JournalInconsistent):
        print(f"riskd: refusing to start, the journal is inconsistent: {first}", file=sys.stderr)
        return EXIT_CORRUPT
    if isinstance(first, JournalCorrupt):
        print(f"riskd: refusing to start, the journal is unreadable: {first}", file=sys.stderr)
        return EXIT_CORRUPT
    if isinstance(first, StorageFault):
        print(f"riskd: cannot write {first}", file=sys.stderr)
    else:
        print(f"riskd: {first}", file=sys.stderr)
    return EXIT_STARTUP


async def _serve_postgres(config: Any, args: argparse.Namespace) -> None:
    from functools import partial

    from riskd.cluster.node import _push, shard_of
    from riskd.daemon import Daemon
    from riskd.storage import postgres

    shard = args.shard or shard_of(config)
    if args.etcd:
        from riskd.cluster.etcd import Etcd
        from riskd.cluster.node import serve_node

        etcd = Etcd([u.strip() for u in args.etcd.split(",") if u.strip()])
        await serve_node(
            config,
            args.config,
            args.storage,
            etcd,
            args.advertise,
            args.lease_ttl,
            shard,
            args.advertise_ingest,
        )
        return
    daemon = Daemon(config, config_path=args.config)
    daemon.open_journal = postgres.opener(args.storage, shard, None, list(config.assets))
    daemon.snapshot_written = partial(_push, daemon)
    await daemon.run()


if __name__ == "__main__":
    sys.exit(main())
