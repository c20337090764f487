"""The access policy read from ``[access]``: grants, and errors that name the key."""

from __future__ import annotations

import pytest

from riskd.access import DEVELOPMENT, Policy, Role

MARKETS = {"BTC-USDT": "USDT", "ETH-USDT": "USDT", "BTC-USD": "BTC"}


def test_grants_roles_markets_and_the_assets_they_settle_in() -> None:
    p = Policy.parse(
        {
            "gw": {"roles": ["gateway"], "markets": ["BTC-USD"], "updates_per_second": 10},
            "ops": {"roles": ["admin", "reader"]},
            "all": {"roles": ["gateway"], "markets": ["*"]},
        },
        MARKETS,
        default_rate=99,
    )
    gw = p.grant("gw")
    assert gw is not None and gw.roles == {Role.GATEWAY}
    assert gw.covers_market("BTC-USD") and not gw.covers_market("BTC-USDT")
    assert gw.covers_asset("BTC") and not gw.covers_asset("USDT")
    assert (gw.updates_per_second, gw.burst) == (10, 10)
    ops = p.grant("ops")
    assert ops is not None and ops.roles == {Role.ADMIN, Role.READER}
    assert ops.updates_per_second == 99  # the server-wide default
    assert ops.markets is None  # no market list: not scoped (it is not a gateway)
    everything = p.grant("all")
    assert everything is not None and everything.covers_market("anything")
    assert p.grant("nobody") is None
    assert DEVELOPMENT.roles == frozenset(Role) and DEVELOPMENT.markets is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"roles": ["root"]}, "access.x.roles"),
        ({"roles": []}, "access.x.roles"),
        ({"roles": ["gateway"]}, "access.x.markets"),
        ({"roles": ["gateway"], "markets": ["DOGE-USDT"]}, "unknown markets"),
        ({"roles": ["reader"], "colour": "red"}, "unknown keys"),
        ({"roles": ["gateway"], "markets": ["*"], "burst": -1}, "access.x"),
    ],
)
def test_mistakes_are_refused_at_start_up_naming_the_key(
    entry: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Policy.parse({"x": entry}, MARKETS)


def test_withdrawals_need_every_market_where_the_accounts_asset_is_at_work() -> None:
    p = Policy.parse(
        {
            "gw-eth": {"roles": ["gateway"], "markets": ["ETH-USDT"]},
            "gw-usdt": {"roles": ["gateway"], "markets": ["BTC-USDT", "ETH-USDT"]},
            "all": {"roles": ["gateway"], "markets": ["*"]},
        },
        MARKETS,
    )
    eth, usdt, everything = p.grant("gw-eth"), p.grant("gw-usdt"), p.grant("all")
    assert eth is not None and usdt is not None and everything is not None
    # The case: an account trading only BTC-USDT.
    refusal = eth.withdrawal_refusal("USDT", ["BTC-USDT"])
    assert refusal is not None and refusal[0] == "account" and "BTC-USDT" in refusal[1]
    assert eth.withdrawal_refusal("USDT", ["ETH-USDT"]) is None
    assert eth.withdrawal_refusal("USDT", []) is None  # flat: the wallet is the asset's
    refusal = eth.withdrawal_refusal("BTC", [])
    assert refusal is not None and refusal[0] == "asset"
    assert usdt.withdrawal_refusal("USDT", ["BTC-USDT", "ETH-USDT"]) is None
    assert everything.withdrawal_refusal("USDT", ["BTC-USDT"]) is None
    assert DEVELOPMENT.withdrawal_refusal("BTC", ["BTC-USD"]) is None
