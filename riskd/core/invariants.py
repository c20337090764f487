"""Checks that must hold between any two inputs, and a canonical state digest.

Conservation, per settlement asset (exact, to the quantum)::

    Σ wallets + Σ isolated margins (backstop included) + Σ unrealised PnL
      + fund balance + Σ fee pools  ==  deposits − withdrawals + injections

Every open position not being liquidated is above maintenance margin at the
mark (the backstop: above bankruptcy): the liquidation index checked against
the exact predicate.

Σ unrealised PnL over a market is ``Σ value(q_i, P) − Σ basis_i``; since every
market nets to zero size and value is linear in size, the first sum is zero at
any mark, so it is exactly ``−Σ basis_i``.
"""

from __future__ import annotations

import hashlib

from riskd.core import cross_margin
from riskd.core.engine import Engine
from riskd.core.margin import is_bankrupt, is_liquidatable
from riskd.core.position import NOT_INDEXED

__all__ = ["violations", "conservation", "digest"]


def conservation(engine: Engine, asset: str) -> tuple[int, int]:
    """``(held, owed)``: the two sides of the conservation identity."""
    held = sum(engine.wallets[asset].balances.values()) + engine.funds[asset].balance
    for m in engine.markets.values():
        if m.asset == asset:
            held += m.fee_pool
            held += sum(p.margin - p.basis for p in m.positions.values())
    w = engine.wallets[asset]
    return held, w.deposits - w.withdrawals + engine.funds[asset].injected


def violations(engine: Engine) -> list[str]:
    """Every broken invariant, in words; empty when all hold."""
    out: list[str] = []
    for asset, fund in engine.funds.items():
        held, owed = conservation(engine, asset)
        if held != owed:
            out.append(f"{asset}: conservation broken: held {held} != owed {owed}")
        if fund.balance < 0 or fund.reserved_total > fund.balance:
            out.append(f"{asset}: fund balance {fund.balance}, reserved {fund.reserved_total}")
        if any(b < 0 for b in engine.wallets[asset].balances.values()):
            out.append(f"{asset}: a wallet is negative")
    for m in engine.markets.values():
        longs = sum(p.size for p in m.positions.values() if p.size > 0)
        shorts = -sum(p.size for p in m.positions.values() if p.size < 0)
        if longs != shorts:
            out.append(f"{m.symbol}: long size {longs} != short size {shorts}")
        if m.open_interest != longs:
            out.append(f"{m.symbol}: open interest {m.open_interest} != long size {longs}")
        for o in m.orders:
            if o.margin < 0 or o.quantity <= 0:
                out.append(f"{m.symbol}: order {o.order_id} holds {o.margin} for {o.quantity}")
        for p in m.positions.values():
            if p.size == 0 and p.basis != 0:
                out.append(f"{m.symbol}: flat position of {p.account} keeps basis {p.basis}")
            if p.liquidation:
                if p.liquidation not in m.liquidations:
                    out.append(f"{m.symbol}: {p.account} frozen by unknown liquidation")
                continue
            if p.account in m.cross:
                if m.mark is not None and p.size and p.threshold == NOT_INDEXED:
                    out.append(f"{m.symbol}: cross position of {p.account} is not indexed")
                continue  # its margin is a band: the account is checked below
            if p.margin < 0:
                out.append(f"{m.symbol}: account {p.account} has negative margin {p.margin}")
            if m.mark is not None and p.size and p.threshold == NOT_INDEXED:
                out.append(f"{m.symbol}: open position of {p.account} is not indexed")
            if m.mark is None or not p.size or m.guard.reason is not None:
                continue  # a guarded mark liquidates nobody (riskd.core.mark_guard)
            if p.is_backstop:
                if is_bankrupt(m.spec, p, m.mark):
                    out.append(f"{m.symbol}: the backstop is bankrupt but not liquidating")
            elif is_liquidatable(m.spec, p, m.mark):
                out.append(f"{m.symbol}: {p.account} is liquidatable but not liquidating")
    out += _cross_violations(engine)
    return out


def _cross_violations(engine: Engine) -> list[str]:
    """No cross account is left liquidatable unless it is being liquidated."""
    out: list[str] = []
    accounts = {(m.asset, a) for m in engine.markets.values() for a in m.cross}
    for asset, account in sorted(accounts):
        legs = [leg for _, leg in engine.cross_legs(asset, account)]
        if any(leg.liquidating or leg.guarded for leg in legs):
            continue  # being liquidated, or a guarded mark that decides nothing
        if cross_margin.liquidatable(legs, engine.wallets[asset].balance(account)):
            out.append(f"{asset}: cross account {account} is liquidatable but not liquidating")
    return out


def digest(engine: Engine) -> str:
    """SHA-256 over a canonical rendering of all state: same inputs, same digest.

    The remembered trade and deposit ids count as state (they decide what a
    later input does), so a restart that forgot them would show here.
    """
    h = hashlib.sha256()
    for sym in sorted(engine.markets):
        m = engine.markets[sym]
        h.update(f"M|{sym}|{m.mark}|{m.fee_pool}|{m.next_liquidation}\n".encode())
        h.update(f"T|{len(m.trade_ids)}\n".encode() + m.trade_ids.canonical())
        g = m.guard
        if m.status.value != "open" or g.reason is not None or g.good_mark != m.mark:
            # Only when not the default, so digests of states without them stay as they were.
            reason = "" if g.reason is None else g.reason.value
            h.update(f"S|{m.status.value}|{reason}|{g.good_mark}|{g.mark_ts}\n".encode())
        for acct in sorted(m.cross):
            h.update(f"C|{acct}\n".encode())
        for acct in sorted(m.positions):
            p = m.positions[acct]
            h.update(f"P|{acct}|{p.size}|{p.basis}|{p.margin}|{p.liquidation}\n".encode())
        if m.orders:  # only then, so digests of states without orders stay as they were
            h.update(f"OB|{len(m.orders)}\n".encode() + m.orders.canonical())
        for lid in sorted(m.liquidations):
            x = m.liquidations[lid]
            h.update(
                f"L|{lid}|{x.account}|{x.stage.value}|{x.price}|{x.quantity}|{x.reserved}|"
                f"{x.worst_price}|{x.filled}|{x.filled_notional}|{x.fee}|{x.shortfall}\n".encode()
            )
    for asset in sorted(engine.wallets):
        w, f = engine.wallets[asset], engine.funds[asset]
        h.update(f"A|{asset}|{w.deposits}|{w.withdrawals}|{f.injected}\n".encode())
        h.update(f"D|{len(w.deposit_ids)}\n".encode() + w.deposit_ids.canonical())
        for acct in sorted(w.balances):
            h.update(f"W|{acct}|{w.balances[acct]}\n".encode())
        h.update(f"F|{f.balance}|{f.reserved_total}|{len(f.ledger)}\n".encode())
        for e in f.ledger[-1:]:
            h.update(f"E|{e.sequence}|{e.kind.value}|{e.amount}|{e.balance_after}\n".encode())
    return h.hexdigest()
