"""Command-line entry point: ``riskd serve`` and ``riskd config``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from riskd import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="riskd", description="Risk engine daemon.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the risk engine daemon")
    serve.add_argument("--config", help="TOML config file (default: the embedded default)")
    serve.add_argument("--grpc-listen", help="override server.grpc_listen (host:port)")
    serve.add_argument("--metrics-listen", help="override server.metrics_listen (host:port)")
    serve.add_argument("--data-dir", help="override server.data_dir")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    commands.add_parser("config", help="print the embedded default configuration")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config":
        from riskd.config import default_toml

        sys.stdout.write(default_toml())
        return 0
    if args.command == "serve":
        return _serve(args)
    raise AssertionError(f"unhandled command {args.command!r}")


def _serve(args: argparse.Namespace) -> int:
    import trio

    from riskd import config as config_mod
    from riskd import logs
    from riskd.daemon import serve

    logs.configure(args.log_level)
    try:
        config = config_mod.load(args.config)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"riskd: bad configuration: {e}", file=sys.stderr)
        return 2
    overrides = {
        k: v
        for k, v in (
            ("grpc_listen", args.grpc_listen),
            ("metrics_listen", args.metrics_listen),
            ("data_dir", args.data_dir),
        )
        if v
    }
    if overrides:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, **overrides))
    trio.run(serve, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
