"""An independent attack on riskd: each class of issue 11, against a real daemon.

``python -m benchmarks.attack [--quick] [--only 1,2,...] [--json PATH]``

A client of its own: it speaks only the generated gRPC stubs (``riskd.v1``),
reads files and ``/proc`` from outside, and uses riskd's command line to start
the daemon (``riskd serve``), print its default config (``riskd config``),
make development certificates (``riskd dev-certs``) and check a data
directory (``riskd audit``).  Nothing else of riskd is imported: it believes
only what the wire and the disk show.

Every class prints one row: what was tried, ``held`` or ``broke`` (or
``error`` when the attack itself could not run), and the figures.  The exit
status is 1 when anything broke or errored.  Classes:

1. withdrawal retried after N refused withdrawals with other ids (paid twice?)
2. off-market fill draining the fund; a gateway withdrawing for another's account
3. inverse round-trip farming (buy 1, buy 1, sell 2 at one price) on BTC-USD
4. a rejection lost across a reconnect
5. journal shorter than the newest snapshot; deleted ``-wal`` after kill -9
6. journal write error (RLIMIT_FSIZE)
7. denied admin calls with 1.8 MB requests: disk and RSS; a torn audit line
8. 10,000 subscriptions; bad config values; truthful messages
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    types_pb2,
    withdrawal_pb2,
    withdrawal_pb2_grpc,
)

__all__ = ["main", "run"]

ROOT = Path(__file__).resolve().parent.parent
USDT = 10**6  # quantums (6 decimals)
BTC = 10**8
BTC_USDT, ETH_USDT, BTC_USD = "BTC-USDT", "ETH-USDT", "BTC-USD"
IDENTITIES = {
    "gw-all": ('["gateway"]', '["*"]'),
    "gw-btc": ('["gateway"]', '["BTC-USDT"]'),
    "gw-eth": ('["gateway"]', '["ETH-USDT"]'),
    "ops": ('["admin", "reader"]', None),
    "watcher": ('["reader"]', None),
    **{f"reader-{i}": ('["reader"]', None) for i in range(40)},
}
MAX_MESSAGE = 8 * 1024 * 1024
_ids = itertools.count(1_000_000)
T = TypeVar("T")


def fresh_id() -> int:
    return next(_ids)


_loop: asyncio.AbstractEventLoop | None = None


def arun(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on one event loop for the whole process, never closed: grpc.aio's poller
    thread may still call into a loop after ``asyncio.run`` would have closed it."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(coroutine)


@dataclass
class Row:
    number: str
    name: str
    tried: str
    result: str = "error"
    figures: dict[str, Any] = field(default_factory=dict)

    def held(self, ok: bool) -> None:
        self.result = "held" if ok else "broke"


# --- the daemon, from outside ----------------------------------------------------------


def cli(*args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "riskd.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **kw,
    )


def default_config() -> str:
    return cli("config").stdout


def set_server(text: str, **keys: Any) -> str:
    """The config with ``[server]`` keys set (replacing lines that set them)."""
    for key in keys:
        text = re.sub(rf"(?m)^{key}\s*=.*$", "", text)
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    return text.replace("[server]\n", "[server]\n" + lines, 1)


class Riskd:
    """``riskd serve`` as a subprocess in its own data directory."""

    def __init__(self, home: Path, config: str, fsize: int | None = None) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.data = home / "data"
        self.config = home / f"riskd-{time.monotonic_ns()}.toml"
        self.config.write_text(config)
        self.log = home / f"riskd-{time.monotonic_ns()}.log"
        self.fsize = fsize
        self.process: subprocess.Popen[bytes] | None = None
        self.grpc_port = self.metrics_port = 0
        self.tls_dir: Path | None = None

    def start(self, wait: bool = True) -> None:
        limit = self.fsize

        def limited() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        self.log = self.home / f"riskd-{time.monotonic_ns()}.log"  # one per start
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "riskd.cli", "serve", "--config", str(self.config),
                 "--grpc-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                 "--data-dir", str(self.data)],
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=limited,
            )  # fmt: skip
        if wait:
            self.wait_serving()

    def wait_serving(self, timeout: float = 60) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            lines = self.log.read_text(errors="replace").splitlines()
            for line in lines[seen:]:
                if '"riskd_serving"' in line:
                    rec = json.loads(line)
                    self.grpc_port, self.metrics_port = rec["grpc_port"], rec["metrics_port"]
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"riskd exited with {self.process.returncode}: {self.tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"riskd did not start: {self.tail()}")

    def tail(self, n: int = 3) -> str:
        return " | ".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def exited(self, timeout: float) -> int | None:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        code = self.exited(60)
        if code is None:
            self.process.kill()
            self.process.wait()
        return code

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def channel(self, identity: str = "") -> grpc.Channel:
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
        ]
        if self.tls_dir is None:
            return grpc.insecure_channel(self.target, options=options)
        return grpc.secure_channel(self.target, self.credentials(identity), options=options)

    def aio_channel(self, identity: str = "") -> grpc.aio.Channel:
        if self.tls_dir is None:
            return grpc.aio.insecure_channel(self.target)
        return grpc.aio.secure_channel(self.target, self.credentials(identity))

    def credentials(self, identity: str) -> grpc.ChannelCredentials:
        assert self.tls_dir is not None
        return grpc.ssl_channel_credentials(
            (self.tls_dir / "ca.crt").read_bytes(),
            (self.tls_dir / f"{identity}.key").read_bytes(),
            (self.tls_dir / f"{identity}.crt").read_bytes(),
        )


def tls_riskd(home: Path, **server: Any) -> Riskd:
    """A mutual-TLS daemon with the attack's identities (dev certificates via the CLI)."""
    certs = home / "tls"
    made = cli("dev-certs", str(certs), *(a for n in IDENTITIES for a in ("--client", n)))
    if made.returncode != 0:
        raise RuntimeError(f"riskd dev-certs: {made.stderr}")
    access = "".join(
        f"\n[access.{name}]\nroles = {roles}\n" + (f"markets = {markets}\n" if markets else "")
        for name, (roles, markets) in IDENTITIES.items()
    )
    text = set_server(default_config(), **server).replace("plaintext = true", "")
    text += (
        f'\n[server.tls]\ncert = "{certs / "server.crt"}"\nkey = "{certs / "server.key"}"\n'
        f'client_ca = "{certs / "ca.crt"}"\n{access}'
    )
    d = Riskd(home, text)
    d.tls_dir = certs
    return d


# --- a small gateway of its own --------------------------------------------------------

_epochs = itertools.count(int(time.time()))


class Feed:
    """One gateway epoch: numbers updates, sends them on a stream, collects acks."""

    def __init__(self, channel: grpc.Channel, name: str = "") -> None:
        self.stub = ingest_pb2_grpc.IngestServiceStub(channel)
        self.epoch = next(_epochs)
        self.seq = 0
        self.metadata: tuple[tuple[str, str | bytes], ...] = (("x-riskd-epoch", str(self.epoch)),)
        if name:
            self.metadata += (("x-riskd-gateway", name),)

    def number(self, updates: Sequence[ingest_pb2.Update], batch: int) -> list[Any]:
        requests = []
        for i in range(0, len(updates), batch):
            chunk = list(updates[i : i + batch])
            for u in chunk:
                self.seq += 1
                u.sequence = self.seq
            requests.append(ingest_pb2.IngestRequest(epoch=self.epoch, updates=chunk))
        return requests

    def send(
        self, updates: Sequence[ingest_pb2.Update], batch: int = 2000, timeout: float = 300
    ) -> tuple[int, list[Any]]:
        """(last acked sequence, rejections) once every update is acknowledged."""
        requests = self.number(updates, batch)
        acked, rejections = 0, []
        for r in self.stub.Ingest(iter(requests), metadata=self.metadata, timeout=timeout):
            acked = r.acked_sequence
            rejections += list(r.rejections)
        return acked, rejections


def U(**kind: Any) -> ingest_pb2.Update:
    return ingest_pb2.Update(**kind)


def mark(market: str, price: int) -> ingest_pb2.Update:
    return U(mark_price=ingest_pb2.MarkPrice(market=market, price=price))


def deposit(account: int, asset: str, amount: int) -> ingest_pb2.Update:
    return U(
        deposit=ingest_pb2.Deposit(
            account=account, asset=asset, amount=amount, deposit_id=fresh_id()
        )
    )


def margin(account: int, market: str, amount: int) -> ingest_pb2.Update:
    return U(
        margin_transfer=ingest_pb2.MarginTransfer(account=account, market=market, amount=amount)
    )


def fill(market: str, buyer: int, seller: int, price: int, quantity: int) -> ingest_pb2.Update:
    return U(
        fill=ingest_pb2.Fill(
            market=market,
            trade_id=fresh_id(),
            buyer_account=buyer,
            seller_account=seller,
            price=price,
            quantity=quantity,
        )
    )


def _account(
    channel: grpc.Channel, account: int, asset: str
) -> query_pb2.GetAccountResponse | None:
    """One account in one asset; None where riskd has never seen it."""
    q = query_pb2_grpc.QueryServiceStub(channel)
    try:
        return q.GetAccount(query_pb2.GetAccountRequest(account=account, asset=asset), timeout=30)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def equity(channel: grpc.Channel, account: int, asset: str) -> int:
    """Wallet + isolated margins + unrealised PnL of one account in one asset."""
    a = _account(channel, account, asset)
    if a is None:
        return 0
    return int(a.wallet_balance + sum(p.isolated_margin + p.unrealized_pnl for p in a.positions))


def wallet(channel: grpc.Channel, account: int, asset: str) -> int:
    a = _account(channel, account, asset)
    return 0 if a is None else int(a.wallet_balance)


def fund(channel: grpc.Channel, asset: str) -> int:
    q = query_pb2_grpc.QueryServiceStub(channel)
    f = q.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset=asset), timeout=30).fund
    return int(f.balance)


def codes(rejections: Iterable[Any]) -> list[str]:
    return sorted({ingest_pb2.RejectionCode.Name(r.code) for r in rejections})


# --- the attacks -----------------------------------------------------------------------


def attack_withdrawal_retry(d: Riskd, refused: int) -> Row:
    row = Row(
        "1", "withdrawal retry", f"withdraw 1 USDT id W, {refused:,} refused other ids, retry W"
    )
    gw = d.channel("gw-all")
    account, poor = fresh_id(), fresh_id()
    Feed(gw).send([deposit(account, "USDT", 10 * USDT), deposit(poor, "USDT", USDT // 2)])
    w = withdrawal_pb2_grpc.WithdrawalServiceStub(gw)
    wid = fresh_id()
    first = w.Withdraw(
        withdrawal_pb2.WithdrawRequest(
            account=account, asset="USDT", amount=USDT, withdrawal_id=wid
        )
    )
    after_first = wallet(d.channel("ops"), account, "USDT")
    started = time.perf_counter()
    outcomes = arun(_refused_withdrawals(d, poor, refused))
    spent = time.perf_counter() - started
    retry_text = "?"
    try:
        retry = w.Withdraw(
            withdrawal_pb2.WithdrawRequest(
                account=account, asset="USDT", amount=USDT, withdrawal_id=wid
            )
        )
        retry_text = (
            "approved (original decision)" if retry.approved else f"refused: {retry.reason}"
        )
    except grpc.RpcError as e:
        retry_text = f"{e.code().name}: {e.details()}"
    final = wallet(d.channel("ops"), account, "USDT")
    row.figures = {
        "first": "approved" if first.approved else f"refused: {first.reason}",
        "refused_calls": dict(outcomes),
        "refused_per_s": round(refused / spent),
        "retry": retry_text,
        "wallet_after_first_usdt": after_first / USDT,
        "wallet_after_retry_usdt": final / USDT,
    }
    row.held(first.approved and final == after_first == 9 * USDT)
    return row


async def _refused_withdrawals(d: Riskd, account: int, n: int) -> dict[str, int]:
    outcomes: dict[str, int] = {}
    ids = iter(range(n))
    async with d.aio_channel("gw-all") as channel:
        stub = withdrawal_pb2_grpc.WithdrawalServiceStub(channel)

        async def worker() -> None:
            for _ in ids:
                req = withdrawal_pb2.WithdrawRequest(
                    account=account, asset="USDT", amount=USDT, withdrawal_id=fresh_id()
                )
                try:
                    r = await stub.Withdraw(req, timeout=60)
                    key = "approved" if r.approved else "refused"
                except grpc.RpcError as e:
                    key = e.code().name
                outcomes[key] = outcomes.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(64)))
    return outcomes


def attack_off_market_fill(d: Riskd) -> Row:
    row = Row(
        "2a",
        "off-market fill",
        "mark 50,000: a 1,000 USDT account sells 1 BTC to a colluder at 40,000 (20 % off),"
        " then at 47,600 (within a 5 % band); the colluder closes at the mark",
    )
    ops = d.channel("ops")
    admin_pb2_grpc.AdminServiceStub(ops).InjectFund(
        admin_pb2.InjectFundRequest(asset="USDT", amount=1_000_000 * USDT, cause="attack-seed")
    )
    held = True
    for label, price in (("at_40000", 4_000_000), ("at_47600", 4_760_000)):
        outcome, gained, fund_delta = _collude(d, price)
        row.figures[label] = (
            f"{outcome}, pair {gained / USDT:+,.2f} USDT, fund {fund_delta / USDT:+,.2f} USDT"
        )
        held &= gained <= 0
    row.held(held)
    return row


def _collude(d: Riskd, price: int) -> tuple[str, int, int]:
    """One colluding round trip; (the off-market fill's outcome, pair's gain, fund's change)."""
    gw, ops = d.channel("gw-all"), d.channel("ops")
    seller, buyer, neutral = fresh_id(), fresh_id(), fresh_id()
    feed = Feed(gw)
    feed.send(
        [
            mark(BTC_USDT, 5_000_000),
            deposit(seller, "USDT", 1_000 * USDT),
            deposit(buyer, "USDT", 20_000 * USDT),
            deposit(neutral, "USDT", 100_000 * USDT),
            margin(seller, BTC_USDT, 1_000 * USDT),
            margin(buyer, BTC_USDT, 20_000 * USDT),
            margin(neutral, BTC_USDT, 100_000 * USDT),
        ]
    )
    fund_before = fund(ops, "USDT")
    pair_before = equity(ops, seller, "USDT") + equity(ops, buyer, "USDT")
    _, off = feed.send([fill(BTC_USDT, buyer, seller, price, 1000), mark(BTC_USDT, 5_000_000)])
    if not off:  # the colluder takes the profit at the mark
        feed.send([fill(BTC_USDT, neutral, buyer, 5_000_000, 1000)])
    pair_after = equity(ops, seller, "USDT") + equity(ops, buyer, "USDT")
    outcome = f"refused {off[0].field} ({codes(off)[0]})" if off else "accepted"
    return outcome, pair_after - pair_before, fund(ops, "USDT") - fund_before


def attack_cross_grant_withdrawal(d: Riskd) -> Row:
    row = Row(
        "2b",
        "cross-grant withdrawal",
        "gateway granted only ETH-USDT withdraws USDT for an account trading BTC-USDT",
    )
    btc = d.channel("gw-btc")
    victim, other = fresh_id(), fresh_id()
    _, rej = Feed(btc).send(
        [
            mark(BTC_USDT, 5_000_000),
            deposit(victim, "USDT", 1_000 * USDT),
            deposit(other, "USDT", 1_000 * USDT),
            margin(victim, BTC_USDT, 500 * USDT),
            margin(other, BTC_USDT, 500 * USDT),
            fill(BTC_USDT, victim, other, 5_000_000, 10),
        ]
    )
    before = wallet(d.channel("ops"), victim, "USDT")
    w = withdrawal_pb2_grpc.WithdrawalServiceStub(d.channel("gw-eth"))
    try:
        r = w.Withdraw(
            withdrawal_pb2.WithdrawRequest(
                account=victim, asset="USDT", amount=100 * USDT, withdrawal_id=fresh_id()
            )
        )
        outcome = "approved" if r.approved else f"refused in the response: {r.reason}"
    except grpc.RpcError as e:
        outcome = f"{e.code().name}: {(e.details() or '')[:80]}"
    after = wallet(d.channel("ops"), victim, "USDT")
    row.figures = {
        "setup_rejections": len(rej),
        "withdraw": outcome,
        "victim_wallet_delta": after - before,
    }
    row.held(after == before and not outcome.startswith("approved"))
    return row


def attack_inverse_farming(d: Riskd, cycles: int) -> Row:
    row = Row(
        "3", "inverse rounding farm", f"BTC-USD: buy 1, buy 1, sell 2 at one price, x{cycles:,}"
    )
    gw, ops = d.channel("gw-all"), d.channel("ops")
    a, b = fresh_id(), fresh_id()
    price = 371_235  # 37,123.5 USD: 100 USD / price is not a whole number of satoshis
    feed = Feed(gw)
    feed.send([mark(BTC_USD, price), deposit(a, "BTC", BTC), deposit(b, "BTC", BTC)])
    before = {a: equity(ops, a, "BTC"), b: equity(ops, b, "BTC")}
    updates = []
    for _ in range(cycles):
        # A flat position's margin goes back to the wallet: put some in each cycle.
        updates += [
            margin(a, BTC_USD, BTC // 100),
            margin(b, BTC_USD, BTC // 100),
            fill(BTC_USD, a, b, price, 1),
            fill(BTC_USD, a, b, price, 1),
            fill(BTC_USD, b, a, price, 2),
        ]
    _, rej = feed.send(updates, batch=4000)
    da, db = equity(ops, a, "BTC") - before[a], equity(ops, b, "BTC") - before[b]
    row.figures = {
        "fills": 3 * cycles,
        "rejected": len(rej),
        "rejection_codes": codes(rej),
        "trader_a_sat": da,
        "trader_b_sat": db,
        "to_residue_sat": -(da + db),
    }
    # Held: nobody gains (the residue may leave both, to the named place).
    row.held(len(rej) < cycles and da <= 0 and db <= 0)
    if len(rej) >= cycles:
        row.result = "error"
        row.figures["note"] = "most fills refused: the attack did not run"
    return row


def attack_reconnect_rejection(d: Riskd) -> Row:
    row = Row(
        "4",
        "rejection across reconnect",
        "batch [refused transfer, deposit]; stream dropped before its ack; reconnect, resend",
    )
    gw, ops = d.channel("gw-all"), d.channel("ops")
    feed = Feed(gw)
    account, probe = fresh_id(), fresh_id()
    feed.send([deposit(account, "USDT", USDT)])
    batch = [margin(account, BTC_USDT, 1_000 * USDT), deposit(probe, "USDT", 7)]
    requests = feed.number(batch, len(batch))
    refused_seq = batch[0].sequence
    sent = iter(requests)
    gate = threading.Event()

    def hold() -> Any:
        yield next(sent)
        gate.wait(60)  # keep the stream open (no half-close) until we cancel it

    call = feed.stub.Ingest(hold(), metadata=feed.metadata, timeout=60)
    first = next(call)  # the resume point: before our batch
    deadline = time.monotonic() + 30
    while wallet(ops, probe, "USDT") != 7 and time.monotonic() < deadline:
        time.sleep(0.02)
    applied = wallet(ops, probe, "USDT") == 7
    call.cancel()  # the ack for our batch is never read
    gate.set()
    seen: list[Any] = []
    resumed = 0
    again = feed.stub.Ingest(iter(requests), metadata=feed.metadata, timeout=60)
    for i, r in enumerate(again):
        if i == 0:
            resumed = r.acked_sequence
        seen += list(r.rejections)
    got = [r for r in seen if r.sequence == refused_seq]
    row.figures = {
        "batch_applied_before_drop": applied,
        "acked_before": first.acked_sequence,
        "resume_acked": resumed,
        "rejection_redelivered": f"{codes(got)[0]} {got[0].field}" if got else "no",
        "probe_wallet": wallet(ops, probe, "USDT"),
    }
    row.held(applied and bool(got) and wallet(ops, probe, "USDT") == 7)
    return row


def _plain(home: Path, **server: Any) -> Riskd:
    return Riskd(home, set_server(default_config(), **server))


def _ingest_deposits(feed: Feed, n: int, batch: int = 500) -> int:
    acked, _ = feed.send([deposit(fresh_id(), "USDT", 1) for _ in range(n)], batch)
    return acked


def _resume_point(d: Riskd, feed: Feed) -> int:
    """The last sequence the (restarted) daemon says it applied for this feed."""
    feed.stub = ingest_pb2_grpc.IngestServiceStub(d.channel())
    call = feed.stub.Ingest(iter(()), metadata=feed.metadata, timeout=30)
    return int(next(call).acked_sequence)


def _restart_outcome(d: Riskd) -> tuple[int | None, str]:
    """Start again: (None, '') when it serves, else (exit code, its last line)."""
    try:
        d.start()
        return None, ""
    except RuntimeError:
        assert d.process is not None
        return d.process.returncode, d.tail(1)[:160]


def _snapshots(d: Riskd) -> list[int]:
    """Journal records each snapshot this run of the daemon wrote covers (its log)."""
    return [
        json.loads(line)["records"]
        for line in d.log.read_text(errors="replace").splitlines()
        if '"snapshot_written"' in line
    ]


def _cut_journal(d: Riskd, keep: int) -> int:
    """Delete the journal's records after the first ``keep``; how many went."""
    db = sqlite3.connect(d.data / "journal.sqlite3")
    try:
        table = next(
            t
            for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            if "journal" in t
        )
        gone = db.execute(f"DELETE FROM {table} WHERE rowid > ?", (keep,)).rowcount
        db.commit()
    finally:
        db.close()
    return int(gone)


def _judge_restart(row: Row, d: Riskd, feed: Feed, acked: int) -> None:
    """Held: riskd refuses to start (exit 3) and ``riskd audit`` fails, or nothing was lost."""
    code, line = _restart_outcome(d)
    lost = False
    if code is None:
        resumed = _resume_point(d, feed)
        row.figures["started"] = f"yes, resumes at {resumed} of {acked} acked"
        d.stop()
        lost = resumed != acked
    else:
        row.figures["exit"] = code
        row.figures["says"] = line[:100]
    audit = cli("audit", "--data", str(d.data), "--config", str(d.config), timeout=300)
    row.figures["riskd_audit_exit"] = audit.returncode
    refused = code == 3 and audit.returncode != 0
    row.held(refused or (code is None and not lost))


def attack_short_journal(home: Path, records: int) -> Row:
    row = Row(
        "5a",
        "journal shorter than snapshot",
        "snapshots every 0.3 s, kill -9, cut the journal below the newest snapshot",
    )
    d = _plain(home, snapshot_seconds=0.3)
    d.start()
    feed = Feed(d.channel(), "attack-5a")
    acked = _ingest_deposits(feed, records)
    taken = len(_snapshots(d))
    deadline = time.monotonic() + 60
    while len(_snapshots(d)) < taken + 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # two more: the newer one began after the last ack
    d.kill9()
    newest = _snapshots(d)[-1]
    keep = newest * 2 // 3
    row.figures = {
        "acked": acked,
        "newest_snapshot_records": newest,
        "journal_records_deleted": _cut_journal(d, keep),
    }
    _judge_restart(row, d, feed, acked)
    return row


def attack_journal_tail_cut(home: Path, records: int) -> Row:
    row = Row(
        "5c",
        "journal tail cut past the snapshot",
        "clean stop (snapshot), more acked updates, kill -9, cut the journal back to the snapshot",
    )
    d = _plain(home)
    d.start()
    feed = Feed(d.channel(), "attack-5c")
    _ingest_deposits(feed, records // 2)
    d.stop()  # a snapshot covering everything so far
    d.start()
    feed.stub = ingest_pb2_grpc.IngestServiceStub(d.channel())
    acked = _ingest_deposits(feed, records // 2)
    d.kill9()
    previous = sorted(d.home.glob("riskd-*.log"))[-2]
    newest = [
        json.loads(line)["records"]
        for line in previous.read_text().splitlines()
        if '"snapshot_written"' in line
    ][-1]
    row.figures = {
        "acked": acked,
        "newest_snapshot_records": newest,
        "journal_records_deleted": _cut_journal(d, newest),
    }
    _judge_restart(row, d, feed, acked)
    if row.result == "broke":
        row.figures["note"] = (
            "a cut at a record boundary past the newest snapshot looks like a shorter"
            " history; only the gateway sees its acked sequence go back"
        )
    return row


def attack_deleted_wal(home: Path, records: int) -> Row:
    row = Row("5b", "deleted -wal", "ingest, kill -9, delete journal.sqlite3-wal, restart")
    d = _plain(home)
    d.start()
    feed = Feed(d.channel(), "attack-5b")
    acked = _ingest_deposits(feed, records)
    d.kill9()
    wal = d.data / "journal.sqlite3-wal"
    size = wal.stat().st_size if wal.exists() else 0
    wal.unlink(missing_ok=True)
    code, line = _restart_outcome(d)
    row.figures = {"acked": acked, "wal_bytes_deleted": size}
    if code is None:
        resumed = _resume_point(d, feed)
        row.figures["started"] = f"yes, resumes at {resumed} of {acked}"
        d.stop()
        row.held(resumed == acked)
    else:
        row.figures["exit"] = code
        row.figures["says"] = line[:100]
        row.held(code == 3)
    return row


def attack_journal_write_error(home: Path) -> Row:
    limit = 2 * 1024 * 1024
    row = Row(
        "6", "journal write error", f"RLIMIT_FSIZE {limit // 1024} KiB, ingest until it fails"
    )
    d = Riskd(home, default_config(), fsize=limit)
    d.start()
    feed = Feed(d.channel(), "attack-6")
    acked, error, failed_at = 0, "", 0.0
    try:
        for _ in range(400):
            acked, _ = feed.send([deposit(fresh_id(), "USDT", 1) for _ in range(1000)], 1000, 60)
    except grpc.RpcError as e:
        error = f"{e.code().name}"
        failed_at = time.monotonic()
    code = d.exited(30)
    took = round(time.monotonic() - failed_at, 1) if failed_at else None
    if code is None:
        d.kill9()
    said = [
        line for line in d.log.read_text(errors="replace").splitlines() if "fault" in line.lower()
    ]
    d.fsize = None
    restart, line = _restart_outcome(d)
    resumed = None
    if restart is None:
        resumed = _resume_point(d, feed)
        d.stop()
    row.figures = {
        "acked_before_fault": acked,
        "stream_ended": error or "no",
        "exit": code if code is not None else "hung (killed after 30 s)",
        "exit_after_s": took,
        "logged": (said[0][:140] if said else "nothing"),
        "after_restart_resumes_at": resumed if resumed is not None else f"exit {restart}: {line}",
    }
    row.held(code == 4 and resumed is not None and resumed >= acked)
    return row


def huge_update_market(symbol: str, tiers: int) -> admin_pb2.UpdateMarketRequest:
    return admin_pb2.UpdateMarketRequest(
        market=types_pb2.Market(
            symbol=symbol,
            tiers=[
                types_pb2.RiskTier(
                    notional_floor=i * 10**9 + 1,
                    max_leverage=100,
                    maintenance_margin_rate_ppm=5_000 + i,
                    cum=i,
                )
                for i in range(tiers)
            ],
        )
    )


def attack_denied_admin(d: Riskd, seconds: float) -> Row:
    request = huge_update_market(BTC_USDT, 90_000)
    size = request.ByteSize()
    row = Row(
        "7",
        "denied admin calls",
        f"gateway cert sends {size / 1e6:.2f} MB UpdateMarket for {seconds:.0f} s",
    )
    audit = d.data / "admin-audit.jsonl"
    disk0 = audit.stat().st_size if audit.exists() else 0
    lines0 = len(audit.read_bytes().splitlines()) if audit.exists() else 0
    rss = [d.rss_mb()]
    stub = admin_pb2_grpc.AdminServiceStub(d.channel("gw-btc"))
    calls, denied = 0, 0
    for _half in (1, 2):  # RSS after each half: a plateau, or growth with the calls?
        deadline = time.monotonic() + seconds / 2
        while time.monotonic() < deadline:
            calls += 1
            try:
                stub.UpdateMarket(request, timeout=30)
            except grpc.RpcError as e:
                denied += e.code() == grpc.StatusCode.PERMISSION_DENIED
        rss.append(d.rss_mb())
    disk1 = audit.stat().st_size if audit.exists() else 0
    lines1 = len(audit.read_bytes().splitlines()) if audit.exists() else 0
    row.figures = {
        "calls": calls,
        "denied": denied,
        "sent_mb": round(calls * size / 1e6),
        "audit_lines_written": lines1 - lines0,
        "audit_log_growth_kb": round((disk1 - disk0) / 1024, 1),
        "rss_mb_start_half_end": "/".join(f"{r:.0f}" for r in rss),
    }
    grew = rss[2] - rss[1]
    row.held(denied == calls and disk1 - disk0 < 1_000_000 and grew < 20)
    return row


def attack_torn_audit_line(d: Riskd) -> Row:
    """After the TLS daemon stopped: a torn last audit line, then audit and restart."""
    row = Row(
        "7b", "torn audit line", "append half a line to admin-audit.jsonl; riskd audit; restart"
    )
    audit = d.data / "admin-audit.jsonl"
    with audit.open("ab") as f:
        f.write(b'{"step":"requested","identity":"ops","tor')
    first = cli("audit", "--data", str(d.data), "--config", str(d.config), timeout=300)
    d.start()
    d.stop()
    second = cli("audit", "--data", str(d.data), "--config", str(d.config), timeout=300)
    row.figures = {
        "audit_with_torn_tail_exit": first.returncode,
        "ends_whole_after_restart": audit.read_bytes().endswith(b"\n"),
        "audit_after_restart_exit": second.returncode,
    }
    row.held(first.returncode == 0 and second.returncode == 0)
    return row


def attack_subscriptions(d: Riskd, n: int) -> Row:
    row = Row("8a", "subscriptions", f"{n:,} event subscriptions from 42 reader identities")
    admin = admin_pb2_grpc.AdminServiceStub(d.channel("ops"))
    admin.InjectFund(admin_pb2.InjectFundRequest(asset="USDT", amount=1, cause="an event"))
    alone, _, _ = arun(_subscribe_many(d, 100, ["watcher"]))
    rss0 = d.rss_mb()
    accepted, refused, rss1 = arun(_subscribe_many(d, n))
    row.figures = {
        "one_identity_accepted_of_100": alone,
        "accepted": accepted,
        "refused": refused,
        "rss_mb": f"{rss0:.0f} -> {rss1:.0f}",
    }
    row.held(alone <= 16 and accepted <= 256 and rss1 - rss0 < 60)
    return row


async def _subscribe_many(
    d: Riskd, n: int, names: list[str] | None = None
) -> tuple[int, dict[str, int], float]:
    """Open ``n`` subscriptions round-robin over reader identities, hold them, measure RSS."""
    names = names or [name for name, (roles, _) in IDENTITIES.items() if "reader" in roles]
    channels = {name: d.aio_channel(name) for name in names}
    calls: list[Any] = []
    refused: dict[str, int] = {}
    accepted = 0
    sem = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        nonlocal accepted
        async with sem:
            stub = events_pb2_grpc.EventServiceStub(channels[names[i % len(names)]])
            call = stub.Subscribe(events_pb2.SubscribeRequest(from_sequence=1), timeout=120)
            try:
                await call.read()
                accepted += 1
                calls.append(call)
            except grpc.RpcError as e:
                refused[e.code().name] = refused.get(e.code().name, 0) + 1

    try:
        await asyncio.gather(*(one(i) for i in range(n)))
        await asyncio.sleep(0.5)
        rss = d.rss_mb()
    finally:
        for call in calls:
            call.cancel()
        for ch in channels.values():
            await ch.close()
    return accepted, refused, rss


BAD_CONFIGS: list[tuple[str, Callable[[str], str], str]] = [
    ("stream_window = 0", lambda t: set_server(t, stream_window=0), "stream_window"),
    ("event_retention = 0", lambda t: set_server(t, event_retention=0), "event_retention"),
    ("mailbox_capacity = -1", lambda t: set_server(t, mailbox_capacity=-1), "mailbox_capacity"),
    ("max_subscriptions = 0", lambda t: set_server(t, max_subscriptions=0), "max_subscriptions"),
    (
        "tier floor 10^13 USDT (beyond int64 in quantums)",
        lambda t: t.replace("[0, 125, 4000]", "[0, 125, 4000], [10000000000000, 100, 5000]", 1),
        "tiers",
    ),
    (
        "tier of 1000x leverage with 50 % maintenance",
        lambda t: t.replace("[0, 125, 4000]", "[0, 1000, 500000]", 1),
        "tiers",
    ),
]


def attack_bad_configs(home: Path) -> Row:
    row = Row("8b", "bad config values", f"{len(BAD_CONFIGS)} configs with out-of-range values")
    base = default_config()
    home.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, str] = {}
    ok = True
    running: list[tuple[str, str, subprocess.Popen[str]]] = []
    for i, (what, change, key) in enumerate(BAD_CONFIGS):  # all at once: each is a start-up
        text = change(base)
        if text == base:
            outcomes[what] = "not applied (config format changed)"
            ok = False
            continue
        cfg = home / f"bad-{i}.toml"
        cfg.write_text(text)
        proc = subprocess.Popen(
            [sys.executable, "-m", "riskd.cli", "serve", "--config", str(cfg),
             "--data-dir", str(home / f"bad-{i}"), "--grpc-listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        running.append((what, key, proc))
    for what, key, proc in running:
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            outcomes[what] = "accepted: riskd started"
            ok = False
            continue
        err = stderr.strip().splitlines()
        ok &= proc.returncode == 2 and len(err) == 1 and key in err[0]
        named = "names the key" if err and key in err[-1] else f"says {(err or [''])[-1][:60]!r}"
        outcomes[what] = f"exit {proc.returncode}, {len(err)} line(s), {named}"
    row.figures = outcomes
    row.held(ok)
    return row


def attack_truthful(d: Riskd) -> Row:
    row = Row(
        "8c",
        "truthful answers",
        "UpdateMarket 1000x/50 %; refused withdrawal's balance; oversize transfer;"
        " streams over max_ingest_streams",
    )
    ops, gw = d.channel("ops"), d.channel("gw-all")
    figures: dict[str, Any] = {}
    ok = True
    # UpdateMarket with a tier of 1000x leverage and 50 % maintenance margin.
    admin = admin_pb2_grpc.AdminServiceStub(ops)
    markets = query_pb2_grpc.QueryServiceStub(ops).ListMarkets(query_pb2.ListMarketsRequest())
    market = next(m for m in markets.markets if m.symbol == ETH_USDT)
    bad = types_pb2.Market()
    bad.CopyFrom(market)
    del bad.tiers[:]
    bad.tiers.append(
        types_pb2.RiskTier(notional_floor=0, max_leverage=1000, maintenance_margin_rate_ppm=500_000)
    )
    try:
        admin.UpdateMarket(admin_pb2.UpdateMarketRequest(market=bad))
        figures["update_market_1000x_50pct"] = "accepted"
        ok = False
    except grpc.RpcError as e:
        figures["update_market_1000x_50pct"] = f"{e.code().name}: {(e.details() or '')[:70]}"
        ok &= e.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A refused withdrawal reports the real balance.
    account = fresh_id()
    feed = Feed(gw)
    feed.send([deposit(account, "USDT", 900_000)])
    w = withdrawal_pb2_grpc.WithdrawalServiceStub(gw)
    r = w.Withdraw(
        withdrawal_pb2.WithdrawRequest(
            account=account, asset="USDT", amount=2 * USDT, withdrawal_id=fresh_id()
        )
    )
    figures["refused_withdrawal_balance"] = f"{r.wallet_balance} (wallet 900000)"
    ok &= not r.approved and r.wallet_balance == 900_000
    # A margin transfer larger than the wallet.
    _, rej = feed.send([margin(account, BTC_USDT, 5 * USDT)])
    text = rej[0].message if rej else "accepted"
    figures["oversize_transfer"] = text[:80]
    ok &= bool(rej) and "overflow" not in text
    # Streams over max_ingest_streams: every refused one RESOURCE_EXHAUSTED.
    got = arun(_many_streams(d, 40))
    figures["streams_over_limit"] = got
    ok &= set(got) <= {"open", "RESOURCE_EXHAUSTED"} and got.get("RESOURCE_EXHAUSTED", 0) > 0
    row.figures = figures
    row.held(ok)
    return row


async def _many_streams(d: Riskd, n: int) -> dict[str, int]:
    """Open ``n`` idle ingest streams at once (limit 8); what each one got."""
    out: dict[str, int] = {}
    calls: list[Any] = []
    channels = [d.aio_channel("gw-all") for _ in range(4)]
    meta = (("x-riskd-epoch", str(next(_epochs))),)

    async def one(i: int) -> None:
        stub = ingest_pb2_grpc.IngestServiceStub(channels[i % 4])
        call = stub.Ingest(metadata=meta, timeout=60)
        calls.append(call)
        try:
            await call.read()
            key = "open"
        except grpc.aio.AioRpcError as e:
            key = e.code().name
        out[key] = out.get(key, 0) + 1

    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        for call in calls:
            call.cancel()
        for ch in channels:
            await ch.close()
    return out


# --- running and reporting -------------------------------------------------------------


def run(quick: bool = False, only: set[str] | None = None) -> list[Row]:
    sizes: dict[str, Any] = {
        "refused": 20_000 if quick else 100_001,
        "cycles": 2_000,
        "records": 20_000 if quick else 150_000,
        "denied_s": 8.0 if quick else 17.0,
        "subscriptions": 10_000,
    }
    rows: list[Row] = []

    def want(n: str) -> bool:
        return only is None or n in only

    def attempt(number: str, name: str, fn: Callable[[], Row]) -> None:
        print(f"-- {number} {name}", flush=True)
        started = time.perf_counter()
        try:
            row = fn()
        except Exception as e:  # report, and go on with the next class
            why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            row = Row(number, name, "", "error", {"error": why})
        row.figures["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(f"   {row.result}: {row.figures}", flush=True)

    with tempfile.TemporaryDirectory(prefix="riskd-attack-") as tmp:
        home = Path(tmp)
        if any(want(n) for n in "123478"):
            d = tls_riskd(home / "tls", max_ingest_streams=8)
            d.start()
            try:
                if want("1"):
                    attempt(
                        "1",
                        "withdrawal retry",
                        lambda: attack_withdrawal_retry(d, sizes["refused"]),
                    )
                if want("2"):
                    attempt("2a", "off-market fill", lambda: attack_off_market_fill(d))
                    attempt(
                        "2b", "cross-grant withdrawal", lambda: attack_cross_grant_withdrawal(d)
                    )
                if want("3"):
                    attempt(
                        "3", "inverse farming", lambda: attack_inverse_farming(d, sizes["cycles"])
                    )
                if want("4"):
                    attempt(
                        "4", "rejection across reconnect", lambda: attack_reconnect_rejection(d)
                    )
                if want("7"):
                    attempt(
                        "7", "denied admin calls", lambda: attack_denied_admin(d, sizes["denied_s"])
                    )
                if want("8"):
                    attempt(
                        "8a",
                        "subscriptions",
                        lambda: attack_subscriptions(d, sizes["subscriptions"]),
                    )
                    attempt("8c", "truthful answers", lambda: attack_truthful(d))
            finally:
                d.stop()
            if want("7"):
                attempt("7b", "torn audit line", lambda: attack_torn_audit_line(d))
        if want("5"):
            attempt(
                "5a", "short journal", lambda: attack_short_journal(home / "5a", sizes["records"])
            )
            attempt("5b", "deleted -wal", lambda: attack_deleted_wal(home / "5b", sizes["records"]))
            attempt(
                "5c",
                "journal tail cut",
                lambda: attack_journal_tail_cut(home / "5c", sizes["records"]),
            )
        if want("6"):
            attempt("6", "journal write error", lambda: attack_journal_write_error(home / "6"))
        if want("8"):
            attempt("8b", "bad config values", lambda: attack_bad_configs(home / "8b"))
    rows.sort(key=lambda r: r.number)
    return rows


def table(rows: Sequence[Row]) -> str:
    out = ["| class | tried | result | figures |", "|---|---|---|---|"]
    for r in rows:
        figures = "; ".join(f"{k} {v}" for k, v in r.figures.items())
        out.append(f"| {r.number} {r.name} | {r.tried} | **{r.result}** | {figures} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.attack", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="smaller storage runs and a shorter flood")
    p.add_argument("--only", help="comma-separated class numbers (1-8)")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    for d in ("/proc/self/status",):
        if not Path(d).exists():
            print("needs Linux (/proc) for RSS figures", file=sys.stderr)
            return 2
    only = set(args.only.split(",")) if args.only else None
    started = time.perf_counter()
    rows = run(args.quick, only)
    print()
    print(table(rows))
    print(f"\n{len(rows)} rows in {time.perf_counter() - started:.0f} s"
          f" ({'quick' if args.quick else 'full'})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=2) + "\n")
    return 0 if all(r.result == "held" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
