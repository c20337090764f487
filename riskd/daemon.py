"""The daemon: actors in a trio nursery, gRPC on its thread, metrics on theirs.

Start-up order: actors running → journal replayed into them (the same
state as before the restart) → gRPC bound and started → health SERVING.
Shutdown (SIGTERM/SIGINT, or cancellation): health NOT_SERVING → ingest
streams stop reading and end with OK after acknowledging what they had in
flight → gRPC server stops → actors are cancelled.  ``server.stop(grace)``
alone would cut streams with acks still in flight (measured:
docs/architecture.md), hence the explicit drain first.

Failures: whatever stops the start — an unwritable data directory, a busy
port, an unreadable TLS file — is raised as :class:`StartupError` or
:class:`~riskd.storage.StorageFault` before anything is acknowledged, and
``riskd serve`` prints it as one line and exits 2; a journal that snapshots
or its WAL index say is missing records is refused like a corrupt one (exit
3).  A storage write failing while serving fail-stops the process (exit 4,
:mod:`riskd.storage.faults`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
import trio
from grpc_health.v1 import health_pb2
from prometheus_client import start_http_server

from riskd import core_build, cpus, heap, logs
from riskd.actors.actor import Actor, ActorStopped
from riskd.actors.fund import FundActor
from riskd.actors.journal import JournalActor
from riskd.actors.market import MarketActor
from riskd.actors.sequencer import Sequencer, SettingsConflict
from riskd.actors.wallet import WalletActor
from riskd.api.admin import AdminServicer
from riskd.api.auth import Authenticator, AuthInterceptor, server_credentials
from riskd.api.bridge import GrpcThread, Portal, call_soon
from riskd.api.events import EventLog, EventServicer
from riskd.api.frontend_link import FrontendFailed, FrontendLink, Launched
from riskd.api.ingest import IngestServicer
from riskd.api.query import QueryServicer
from riskd.api.server import MAX_MESSAGE_BYTES, SERVICE_NAMES, Services, build_server
from riskd.api.withdrawal import WithdrawalServicer
from riskd.config import Config
from riskd.config import load as load_config
from riskd.core import Asset, FundPolicy, InsuranceFund, MarketEngine, Rejected, stress
from riskd.core.events import Effect
from riskd.core.invariants import violations
from riskd.core.wallet import Wallets
from riskd.effects import EFFECTS, encode_event
from riskd.errors import RiskdError
from riskd.metrics import Metrics
from riskd.storage import StorageFault, codec, fail_stop, ledger, snapshot
from riskd.storage import events as storage_events
from riskd.storage.admin_log import AdminLog
from riskd.storage.journal import (
    Journal,
    JournalCorrupt,
    JournalInconsistent,
    open_sqlite,
)
from riskd.storage.ledger import LedgerWriter
from riskd.storage.postgres import PostgresJournal
from riskd.v1 import events_pb2

__all__ = ["Daemon", "Endpoints", "StartupError", "bind_error", "serve"]

log = structlog.get_logger("riskd")

#: Room for every message a unary RPC may have waiting at the sequencer.
UNARY_LIMIT = 64
DRAIN_SECONDS = 10.0
#: Journal records decoded at a time at start-up.
REPLAY_CHUNK = 10_000


class StartupError(RiskdError):
    """riskd cannot start as configured (a busy port, an unreadable file): one line, exit 2."""

    STATUS = "FAILED_PRECONDITION"


@dataclass(frozen=True, slots=True)
class Endpoints:
    grpc_port: int
    metrics_port: int
    #: The ingest front-end process's port (0: none, server.frontend_listen is empty).
    frontend_port: int = 0


class Daemon:
    """All of riskd's moving parts, built from a config (nothing started yet)."""

    def __init__(
        self, config: Config, metrics: Metrics | None = None, config_path: str | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path  # re-read for [access] on SIGHUP
        self.metrics = metrics or Metrics()
        srv = config.server
        cap = srv.mailbox_capacity
        data = Path(srv.data_dir)
        self.event_log = EventLog(srv.event_retention, data / storage_events.FILE)
        # Published events go to events.sqlite3 (bounded retention); numbered here.
        self.events = storage_events.EventWriter(data / storage_events.FILE, srv.event_retention)
        #: Numbered events whose journal record is not yet queued (one input's worth).
        self._unsealed: list[tuple[int, str, events_pb2.Event]] = []
        self._grpc: GrpcThread | None = None
        #: The ingest front-end process (server.frontend_listen), once started.
        self.frontend: FrontendLink | None = None
        #: A front-end process started before this daemon (by a standing-by
        #: cluster node), for :meth:`run` to hand its config instead of starting one.
        self.frontend_ahead: Launched | None = None
        self.wallets = {a: WalletActor(Wallets(a), cap) for a in config.assets}
        # Fund ledger entries go to ledger.sqlite3; memory keeps the newest.
        self.ledger = LedgerWriter(Path(srv.data_dir) / ledger.FILE)
        self._snapshot_at: int | None = None  # journal records the newest snapshot covers
        # Storage: the data directory's SQLite file unless riskd.cli says otherwise
        # (--storage postgresql://...: riskd.storage.postgres).
        self.open_journal: Callable[[Path], Journal] = open_sqlite
        #: Called with (data directory, records, chain hash, state) after a snapshot
        #: written in process (at a clean stop), e.g. to store it in PostgreSQL; a
        #: writer process stores its own (riskd.storage.snapshot.start_writer).
        self.snapshot_written: Callable[[Path, int, str, dict[str, Any]], object] | None = None
        #: ClusterService on the gRPC port (a cluster node owning its shard).
        self.route: Any = None
        self.funds = {
            a: FundActor(
                InsuranceFund(a, config.funds.get(a)),
                self.publish,
                cap,
                self._fund_changed,
                writer=self.ledger,
                ledger_memory=srv.fund_ledger_memory,
            )
            for a in config.assets
        }
        self.markets = {m.symbol: self._market_actor(MarketEngine(m)) for m in config.markets}
        # Every stream may have a full window in flight, plus the unary calls.
        self.sequencer = Sequencer(
            self.markets,
            self.wallets,
            self.funds,
            self.metrics,
            srv.max_ingest_streams * (srv.stream_window + 1) + UNARY_LIMIT,
            withdrawal_ids=srv.withdrawal_ids_remembered,
            retained_sequences=srv.stream_window * srv.max_batch_updates,
        )
        self.sequencer.assets = dict(config.assets)
        self.nursery: trio.Nursery | None = None  # where runtime-added markets run
        self.sequencer.spawn = self._spawn_market
        self.sequencer.spawn_asset = self._spawn_asset
        self.metrics.declare(self.markets, config.assets)
        self.metrics.describe(
            ((a, asset.decimals) for a, asset in config.assets.items()),
            ((m.symbol, m.asset.symbol) for m in config.markets),
        )
        for a in config.assets:
            self.metrics.watch_mailbox("fund", "", a, _depth(self.funds[a]), cap)
            self.metrics.watch_mailbox("wallet", "", a, _depth(self.wallets[a]), cap)
        for sym, actor in self.markets.items():
            self.metrics.watch_mailbox("market", sym, actor.engine.asset, _depth(actor), cap)
        self.metrics.watch_mailbox(
            "sequencer", "", "", _depth(self.sequencer), self.sequencer.capacity
        )

    def _market_actor(self, engine: MarketEngine) -> MarketActor:
        asset, sym = engine.asset, engine.symbol
        return MarketActor(
            engine,
            self.funds[asset],
            self.wallets[asset],
            self.publish,
            self.config.server.mailbox_capacity,
            self._marked,
            self.metrics.liquidations_in_progress.labels(sym),
            self.metrics.fills_unreserved.labels(sym),
        )

    async def _spawn_market(self, engine: MarketEngine) -> MarketActor:
        """Start the actor of a market added at runtime (AdminService.AddMarket)."""
        if self.nursery is None:
            raise Rejected.precondition("market", "riskd is not running")
        actor = self._market_actor(engine)
        await self.nursery.start(actor.run)
        sym, cap = engine.symbol, self.config.server.mailbox_capacity
        self.metrics.declare([sym], ())
        self.metrics.describe((), [(sym, engine.asset)])
        self.metrics.watch_mailbox("market", sym, engine.asset, _depth(actor), cap)
        self.metrics.market_state(sym, engine.status, engine.guard.reason)
        return actor

    #: Whether funds write their ledger entries to ledger.sqlite3 (the snapshot
    #: writer process only reads it).
    writes_ledger = True

    async def _spawn_asset(self, asset: Asset, policy: FundPolicy) -> None:
        """Start the wallet and fund actors of an asset added at runtime (AddAsset)."""
        if self.nursery is None:
            raise Rejected.precondition("symbol", "riskd is not running")
        if self.route is not None:
            # A cluster node's shard is named by its configured assets.
            raise Rejected.precondition(
                "symbol", "a cluster node adds assets only through its configuration"
            )
        a, srv = asset.symbol, self.config.server
        cap = srv.mailbox_capacity
        wallet = WalletActor(Wallets(a), cap)
        fund = FundActor(
            InsuranceFund(a, policy),
            self.publish,
            cap,
            self._fund_changed,
            writer=self.ledger if self.writes_ledger else None,
            ledger_memory=srv.fund_ledger_memory,
        )
        await self.nursery.start(wallet.run)
        await self.nursery.start(fund.run)
        self.wallets[a], self.funds[a] = wallet, fund
        self.metrics.declare((), [a])
        self.metrics.describe([(a, asset.decimals)], ())
        self.metrics.watch_mailbox("fund", "", a, _depth(fund), cap)
        self.metrics.watch_mailbox("wallet", "", a, _depth(wallet), cap)

    def actors(self) -> list[Actor]:
        return [
            self.sequencer,
            *self.markets.values(),
            *self.funds.values(),
            *self.wallets.values(),
        ]

    #: Whether numbered events are kept (the snapshot writer process only counts).
    keep_events = True

    def publish(self, effects: list[Effect]) -> None:
        """Effects for the outside world: metrics, one log line per money decision,
        and events, numbered in the order the engine produced them (a function of
        the journal: markets apply in journal order and wait for their funds)."""
        self.observe(effects)
        seq = self.sequencer
        for e in effects:
            kind = EFFECTS.get(type(e))
            if kind is None or kind.event is None or kind.encode is None:
                continue
            seq.events += 1
            if self.keep_events:
                pb = encode_event(seq.events, e)
                assert pb is not None
                self._unsealed.append((seq.events, getattr(e, "market", ""), pb))

    def observe(self, effects: list[Effect]) -> None:
        self.metrics.observe(effects)
        for e in effects:
            kind = EFFECTS.get(type(e))
            if kind is not None and kind.log is not None and kind.log_fields is not None:
                log.info(kind.log, **kind.log_fields(e))

    async def _seal(self) -> Callable[[], None] | None:
        """Hand the events published so far to the disk writer; what to run once
        the journal record they belong to is durable (subscribers see them then)."""
        if not self._unsealed:
            return None
        batch, self._unsealed = self._unsealed, []
        await self.events.submit([(n, m, pb.SerializeToString()) for n, m, pb in batch])

        def visible() -> None:
            grpc = self._grpc
            if grpc is not None and grpc.loop is not None:
                call_soon(grpc.loop, self.event_log.extend, batch)

        return visible

    def _fund_changed(self, fund: InsuranceFund) -> None:
        self.metrics.fund_reserved.labels(fund.asset).set(fund.reserved_total)

    def _marked(self, market: str, ts: int) -> None:
        # An unstamped mark (ts 0) ages from when riskd applied it, not from 1970.
        # Replay cannot know that moment: the gauge then waits for a live mark.
        if ts:
            self.metrics.mark_applied(market, ts / 1000)
        elif self.sequencer.journal is not None:
            self.metrics.mark_applied(market, time.time())

    async def run(
        self, *, task_status: trio.TaskStatus[Endpoints] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until SIGTERM/SIGINT or cancellation; then drain and stop."""
        srv = self.config.server
        srv.check_transport()  # again: the command line may have moved grpc_listen
        # Fail early, in one line each, before replaying anything.
        started_on = cpus.available()
        try:
            frontend_cpus = cpus.check("server.frontend_cpus", srv.frontend_cpus)
            engine_cpus = cpus.check("server.engine_cpus", srv.engine_cpus)
            # Before the gRPC, metrics and worker threads start: they inherit it.
            cpus.pin(engine_cpus)
        except (cpus.CpuError, OSError) as e:
            raise StartupError(str(e)) from e
        if engine_cpus:
            log.info("riskd_pinned", process="engine", cpus=sorted(engine_cpus))
        await trio.to_thread.run_sync(_check_writable, Path(srv.data_dir))
        auth = Authenticator(self.config.access if srv.tls is not None else None)
        credentials = _credentials(srv.tls) if srv.tls is not None else None
        _check_port("server.grpc_listen", srv.grpc_listen)
        if srv.frontend_listen:
            _check_port("server.frontend_listen", srv.frontend_listen)
        admin_log = AdminLog(Path(srv.data_dir) / "admin-audit.jsonl")
        host, port = _split(srv.metrics_listen)
        try:
            http, http_thread = start_http_server(port, host, registry=self.metrics.registry)
        except OSError as e:
            admin_log.close()
            raise StartupError(
                f"cannot listen on server.metrics_listen {srv.metrics_listen}: {e.strerror}"
            ) from e
        gc_times = heap.CollectionTimes()
        self.metrics.registry.register(gc_times)
        gc_times.install()
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                if srv.frontend_listen:
                    # Started now, configured once the engine serves: its imports
                    # overlap the recovery (a takeover's, a restart's).
                    self.frontend = FrontendLink(
                        self.config,
                        srv.frontend_listen,
                        self.sequencer,
                        self.metrics,
                        self.sequencer.capacity,
                        logs.level(),
                    )
                    # Not the engine's CPUs unless asked: where riskd was started.
                    self.frontend.cpus = frontend_cpus or (
                        started_on if engine_cpus else frozenset()
                    )
                    try:
                        self.frontend.launch(self.frontend_ahead)
                    except FrontendFailed as e:
                        raise StartupError(str(e)) from e
                for actor in self.actors():
                    await nursery.start(actor.run)
                await nursery.start(self.ledger.run)
                await nursery.start(self.events.run)
                self.metrics.watch_mailbox(
                    "ledger", "", "", _depth(self.ledger), self.ledger.capacity
                )
                journal = await self._recover()
                heap.settle()  # the restored state: out of every later collection's walk
                await nursery.start(journal.run)
                self.metrics.watch_mailbox("journal", "", "", _depth(journal), journal.capacity)
                portal = Portal(trio.lowlevel.current_trio_token(), nursery, UNARY_LIMIT)
                ingest = IngestServicer(portal, self.sequencer, srv, self.metrics, auth)
                services = Services(
                    ingest=ingest,
                    events=EventServicer(
                        self.event_log,
                        self.metrics,
                        auth,
                        srv.max_subscriptions,
                        srv.max_subscriptions_per_identity,
                    ),
                    query=QueryServicer(
                        portal,
                        self.markets,
                        self.funds,
                        self.wallets,
                        self.sequencer.assets,  # with those added at runtime
                        auth,
                        stress_moves=srv.stress_moves_ppm,
                        sequencer=self.sequencer,
                    ),
                    withdrawal=WithdrawalServicer(portal, self.sequencer, auth),
                    admin=AdminServicer(portal, self.sequencer),
                    log=self.event_log,
                    cluster=self.route,
                )
                bound: dict[str, Any] = {}

                async def build() -> Any:
                    server, port, health = await build_server(
                        services,
                        srv.grpc_listen,
                        MAX_MESSAGE_BYTES,
                        AuthInterceptor(auth, admin_log, self.metrics),
                        credentials,
                        srv.transport_window_bytes,
                    )
                    bound.update(port=port, health=health)
                    return server

                self._grpc = grpc = GrpcThread(build)
                try:
                    await trio.to_thread.run_sync(grpc.start)
                except RuntimeError as e:  # grpc says only "Failed to bind to address"
                    why = bind_error(srv.grpc_listen) or str(e)
                    raise StartupError(
                        f"cannot listen on server.grpc_listen {srv.grpc_listen}: {why}"
                    ) from e
                health = bound["health"]
                frontend_port = 0
                if self.frontend is not None:
                    try:
                        frontend_port = await self.frontend.start(nursery)
                    except FrontendFailed as e:
                        await trio.to_thread.run_sync(grpc.stop, 0.0)
                        raise StartupError(str(e)) from e
                await trio.to_thread.run_sync(
                    grpc.run_coroutine, _set_health(health, health_pb2.HealthCheckResponse.SERVING)
                )
                endpoints = Endpoints(bound["port"], http.server_port, frontend_port)
                log.info(
                    "riskd_serving",
                    transport="mtls" if auth.tls else "plaintext (development, loopback only)",
                    grpc_port=endpoints.grpc_port,
                    metrics_port=endpoints.metrics_port,
                    frontend_port=endpoints.frontend_port,
                    markets=list(self.markets),
                    core=core_build(),
                )
                task_status.started(endpoints)
                if srv.invariant_check_seconds > 0:
                    nursery.start_soon(self._check_invariants, srv.invariant_check_seconds)
                if srv.snapshot_seconds > 0:
                    nursery.start_soon(self._snapshots, srv.snapshot_seconds)
                try:
                    stop = (signal.SIGTERM, signal.SIGINT)
                    with trio.open_signal_receiver(*stop, signal.SIGHUP) as signals:
                        async for sig in signals:
                            if sig == signal.SIGHUP:
                                self.reload_access(auth)
                                continue
                            log.info("riskd_stopping", signal=signal.Signals(sig).name)
                            break
                finally:
                    with trio.CancelScope(shield=True):
                        await self._shutdown(grpc, health, ingest)
                    nursery.cancel_scope.cancel()
        finally:
            if self.sequencer.journal is not None:
                # Closed here, not by the collector at exit: the close checkpoints
                # SQLite's WAL into the file and removes it.
                self.sequencer.journal.journal.close()
            if self.frontend is not None:  # not drained (the start failed after it): no orphan
                self.frontend.kill()
            heap.unsettle()
            gc_times.uninstall()
            http.shutdown()
            http_thread.join(timeout=5)
            admin_log.close()
            self._grpc = None

    def reload_access(self, auth: Authenticator) -> bool:
        """Re-read the config file and swap in its ``[access]`` policy.

        Only the access policy (identities, roles, markets, rate limits) is
        reloaded; anything else needs a restart.  A config that does not
        parse changes nothing.  Open streams re-check their caller against
        the new policy: a revoked gateway's ingest stream ends at its next
        batch, a revoked reader's subscription at its next event.  (TLS
        files reload by themselves.)
        """
        if self.config_path is None or not auth.tls:
            log.warning("config_reload_skipped", reason="no config file, or plaintext")
            return False
        try:
            fresh = load_config(self.config_path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("config_reload_failed", error=str(e))
            return False
        auth.reload(fresh.access)
        self.config = dataclasses.replace(self.config, access=fresh.access)
        if self.frontend is not None:
            self.frontend.reload_access(fresh.access)
        log.info("config_reloaded", identities=sorted(fresh.access.grants))
        return True

    async def _check_invariants(self, every: float) -> None:
        """Re-check the engine's invariants between inputs, for the alert that pages."""
        sequencer = self.sequencer
        moves = self.config.server.stress_moves_ppm
        while True:
            await trio.sleep(every)
            broken = await sequencer.call(
                sequencer.barrier, lambda: violations(sequencer.engine_view())
            )
            self.metrics.invariant_violations.set(len(broken))
            self.metrics.invariant_check_timestamp.set(time.time())
            if broken:
                # No texts here: they may name accounts (AdminService/CheckState lists them).
                log.error("invariants_violated", count=len(broken))
            # Stress coverage on the same timer: it walks only the positions each
            # stress move crosses, within the cost of the check above.
            rows = await sequencer.call(
                sequencer.barrier, lambda: stress.every_market(sequencer.engine_view(), moves)
            )
            self.metrics.stress(rows, time.time())

    async def _recover(self) -> JournalActor:
        """Newest snapshot + the journal after it, then attach the journal for new inputs."""
        data = Path(self.config.server.data_dir)
        journal = await trio.to_thread.run_sync(self.open_journal, data)
        total, broken = await trio.to_thread.run_sync(journal.verify)
        if broken:
            raise JournalCorrupt(f"{journal.path}: {broken}")
        try:
            await trio.to_thread.run_sync(snapshot.remove_partial, data)
        except OSError as e:
            raise StorageFault("snapshot", data, e) from e
        snap = await trio.to_thread.run_sync(
            functools.partial(snapshot.load_latest, data, settle=True)  # kept: frozen as loaded
        )
        covered = 0
        if snap is not None:
            # Acknowledged records the snapshot saw must still be in the journal:
            # replaying from where a cut journal ends would silently lose them.
            at = await trio.to_thread.run_sync(journal.hash_at, snap.records)
            disagree = snapshot.mismatch(snap, journal.path, total, at)
            if disagree:
                raise JournalInconsistent(disagree)
            covered = snap.records
        if not await self._ledger_agrees(snap):
            covered, snap = 0, None  # the journal from its start rebuilds what the file lost
        if snap is not None:
            self.sequencer.restore(snap.state)
            await self.sequencer.call(self.sequencer.adopt_restored)
        self._snapshot_at = None if snap is None else snap.records
        # Events after the snapshot are numbered again by the replay below.
        store = await trio.to_thread.run_sync(self.events.open)
        disk_oldest = await trio.to_thread.run_sync(
            storage_events.cut, store, self.sequencer.events
        )
        # Decoded a chunk at a time, so neither the texts nor the records are all
        # held at once (a takeover may replay a long journal).  A record that does
        # not decode refuses the start (exit 3) before any record after it applies;
        # what the ones before it wrote (events, ledger entries) is derived from
        # durable records, so the same again at the next start.
        texts = journal.replay(covered)
        replayed = 0
        while True:
            chunk = await trio.to_thread.run_sync(
                codec.decode_all,
                itertools.islice(texts, REPLAY_CHUNK),
                covered + replayed,
                journal.path,
            )
            if not chunk:
                break
            for record in chunk:
                try:
                    await self.sequencer.call(self.sequencer.replay, record)
                except (ValueError, KeyError, TypeError) as e:
                    raise JournalCorrupt(f"{journal.path}: record after {covered}: {e}") from e
                await self._seal()  # the same numbers as before the restart, on disk again
            replayed += len(chunk)
        total += await self._reconcile_markets(journal, total == 0)
        await self._seal()
        for m in self.markets.values():  # restored from a snapshot: no event set these
            self.metrics.market_state(m.engine.symbol, m.engine.status, m.engine.guard.reason)
        log.info(
            "riskd_recovered",
            snapshot_records=covered,
            replayed=replayed,
            journal_epoch=journal.epoch,
        )
        actor = JournalActor(
            journal,
            self.config.server.mailbox_capacity,
            total,
            journal.head,
            on_commit=self.metrics.journal_commit_seconds.observe,
            interval=self.config.server.journal_commit_interval_seconds,
        )
        actor.seal = self._seal
        self.event_log.start_at(self.sequencer.events + 1, disk_oldest)
        self.sequencer.journal = actor
        return actor

    async def _reconcile_markets(self, journal: Journal, fresh: bool) -> int:
        """Journal the file's market settings, applying what it changed; records added.

        (``docs/configuration.md``, "Changing a live market".)
        """
        result = await self.sequencer.call(self.sequencer.reconcile, self.config.markets, fresh)
        if isinstance(result, SettingsConflict):
            raise StartupError(f"bad configuration: {result}")
        if result.differ:
            log.warning(
                "market_settings_differ",
                keys=result.differ,
                kept="the data directory's (settings journaled before format 2)",
            )
        if result.settled:
            log.warning(
                "settled_market_in_config",
                markets=result.settled,
                kept="settled: the file's settings for it are not applied; remove it from the file",
            )
        added = result.records
        if added:
            await trio.to_thread.run_sync(journal.append, [codec.encode(r) for r in added])
        return len(added)

    async def _ledger_agrees(self, snap: snapshot.Snapshot | None) -> bool:
        """Cut ledger.sqlite3 back to what ``snap`` covers (or to nothing without
        one) and check its chain reaches the snapshot's; whether ``snap`` is usable."""
        store = await trio.to_thread.run_sync(self.ledger.open)
        funds = {a: f.fund for a, f in self.funds.items()}  # fresh: nothing booked
        # An asset added at runtime (AddAsset): what the snapshot holds of it, or
        # nothing, and the journal books the rest again.
        booked = await trio.to_thread.run_sync(store.assets)
        funds.update((a, InsuranceFund(a)) for a in booked if a not in funds)
        if snap is not None:
            added = snap.state.get("added_assets", {})
            funds.update((a, f) for a, f in snap.state["funds"].items() if a in funds or a in added)
        why = await trio.to_thread.run_sync(ledger.agree, store, funds)
        if why is None:
            return True
        assert snap is not None  # fresh funds agree with any file once it is cut to 0
        log.warning("snapshot_ignored", snapshot=str(snap.path), reason=why)
        fresh = {a: InsuranceFund(a) for a in funds}
        await trio.to_thread.run_sync(ledger.agree, store, fresh)
        return False

    async def take_snapshot(self, final: bool = False) -> None:
        """Write the state at the journal's durable position (riskd.storage.snapshot).

        The engine pauses only while its actors settle: a writer process rebuilds
        the state from the journal.  ``final`` (at shutdown, nothing left to
        serve): the state is pickled here.  Fund ledger entries are made durable
        first, since the snapshot no longer carries them.  A snapshot that cannot
        be written is a storage fault: fail-stop (exit 4).
        """
        started = time.perf_counter()
        data = Path(self.config.server.data_dir)
        seq = self.sequencer
        state: dict[str, Any] | None = None
        try:
            if final:
                covered, head, state = await seq.call(seq.capture)
            else:
                covered, head = await seq.call(seq.position)
        except ActorStopped:  # an actor crashed: its state is not worth keeping
            log.warning("snapshot_skipped", reason="the engine has stopped")
            return
        paused = time.perf_counter() - started
        try:
            if covered == self._snapshot_at:
                # Nothing new to write; a disk gone read-only still surfaces here.
                await trio.to_thread.run_sync(snapshot.probe, data)
                return
            await self.ledger.sync(f.fund for f in self.funds.values())
            await self.events.sync()  # a snapshot covers only events already on disk
            if state is not None:
                payload = await trio.to_thread.run_sync(snapshot.dumps, state)
                await trio.to_thread.run_sync(snapshot.write, data, covered, payload, head)
                ok = True
            else:
                writer = await trio.to_thread.run_sync(
                    snapshot.start_writer, self.config, data, covered, head, self._store()
                )
                ok = await trio.to_thread.run_sync(
                    snapshot.wait_writer, writer, abandon_on_cancel=True
                )
        except StorageFault as fault:
            fail_stop(fault)
        except OSError as e:
            fail_stop(StorageFault("snapshot", data, e))
        if ok:
            self._snapshot_at = max(covered, self._snapshot_at or 0)
            if state is not None and self.snapshot_written is not None:
                try:  # e.g. into PostgreSQL for other nodes
                    await trio.to_thread.run_sync(self.snapshot_written, data, covered, head, state)
                except StorageFault as fault:
                    fail_stop(fault)
            log.info(
                "snapshot_written",
                records=covered,
                paused_ms=round(paused * 1000, 1),
                seconds=round(time.perf_counter() - started, 2),
                writer="in process" if final else "process",
            )
        else:  # not fatal: the journal holds everything, a restart just replays more
            log.error("snapshot_failed", records=covered)

    def _store(self) -> tuple[str, str, int] | None:
        """(database URL, shard, epoch) of a PostgreSQL journal, for the writer process."""
        actor = self.sequencer.journal
        journal = None if actor is None else actor.journal
        if isinstance(journal, PostgresJournal):
            return journal.dsn, journal.shard, journal.epoch
        return None

    async def _snapshots(self, every: float) -> None:
        while True:
            await trio.sleep(every)
            await self.take_snapshot()

    async def _shutdown(self, grpc: GrpcThread, health: Any, ingest: IngestServicer) -> None:
        await trio.to_thread.run_sync(
            grpc.run_coroutine, _set_health(health, health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        if self.frontend is not None:  # its streams first: their acks need the engine
            await self.frontend.drain(DRAIN_SECONDS)
        await trio.to_thread.run_sync(grpc.run_coroutine, ingest.drain(DRAIN_SECONDS))
        await trio.to_thread.run_sync(grpc.stop, 2.0)
        await self.take_snapshot(final=True)  # a clean restart replays nothing
        log.info("riskd_stopped")


async def serve(
    config: Config,
    config_path: str | None = None,
    *,
    task_status: trio.TaskStatus[Endpoints] = trio.TASK_STATUS_IGNORED,
) -> None:
    await Daemon(config, config_path=config_path).run(task_status=task_status)


async def _set_health(health: Any, status: int) -> None:
    for name in ("", *SERVICE_NAMES):
        await health.set(name, status)


def _check_writable(data: Path) -> None:
    """Create, write, fsync and remove a file in the data directory, or raise StorageFault."""
    probe = data / f".riskd-write-test-{os.getpid()}"
    try:
        data.mkdir(parents=True, exist_ok=True)
        for stale in data.glob(".riskd-write-test-*"):  # left by a kill mid-probe
            stale.unlink(missing_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"riskd")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as e:
        raise StorageFault("data directory", data, e) from e


def _credentials(tls: Any) -> Any:
    try:
        return server_credentials(tls)
    except (OSError, ValueError) as e:
        raise StartupError(f"cannot read the TLS files of [server.tls]: {e}") from e


def bind_error(address: str) -> str | None:
    """Why ``address`` cannot be bound (gRPC does not say), or None if it can."""
    host, port = _split(address)
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        return str(e)
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
        try:
            s.bind(sockaddr)
        except OSError as e:
            return e.strerror or str(e)
    return None


def _check_port(key: str, address: str) -> None:
    why = bind_error(address)
    if why is not None:
        raise StartupError(f"cannot listen on {key} {address}: {why}")


class _HasDepth(Protocol):
    @property
    def depth(self) -> int: ...


def _depth(actor: _HasDepth) -> Callable[[], int]:
    return lambda: actor.depth


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)
