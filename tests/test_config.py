"""Configuration: transport settings (TLS or explicit plaintext, plaintext only on
loopback), and strictness: every key known, every value of the right type and in
range, each error naming its key."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.config import SERVER_LIMITS, ConfigError, ServerConfig, default_toml, is_loopback, parse
from riskd.core import AdlPolicy, LiquidationMode, MarketSpec

TLS = '\n[server.tls]\ncert = "s.crt"\nkey = "s.key"\nclient_ca = "ca.crt"\n'
ACCESS = '\n[access.gw]\nroles = ["gateway"]\nmarkets = ["*"]\n'


def test_the_embedded_default_is_plaintext_on_loopback() -> None:
    server = parse(default_toml()).server
    assert server.plaintext and server.tls is None and is_loopback(server.grpc_listen)


def test_no_transport_configured_is_refused() -> None:
    with pytest.raises(ValueError, match="no transport security"):
        parse(default_toml().replace("plaintext = true", ""))


def test_plaintext_off_loopback_is_refused() -> None:
    text = default_toml().replace('"127.0.0.1:50051"', '"0.0.0.0:50051"')
    with pytest.raises(ValueError, match="loopback"):
        parse(text)


def test_plaintext_front_end_off_loopback_is_refused() -> None:
    text = default_toml().replace(
        'grpc_listen = "127.0.0.1:50051"',
        'grpc_listen = "127.0.0.1:50051"\nfrontend_listen = "0.0.0.0:50052"',
    )
    with pytest.raises(ConfigError, match=r"^server\.frontend_listen: plaintext .* loopback"):
        parse(text)
    assert parse(text.replace("0.0.0.0:50052", "[::1]:0")).server.frontend_listen == "[::1]:0"
    assert parse(default_toml()).server.frontend_listen == ""  # none unless asked for


def test_tls_and_plaintext_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        parse(default_toml() + TLS + ACCESS)


def test_tls_needs_an_access_policy() -> None:
    text = default_toml().replace("plaintext = true", "") + TLS
    with pytest.raises(ValueError, match="access"):
        parse(text)
    config = parse(text + ACCESS)
    assert config.server.tls is not None and config.access.grant("gw") is not None


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:1", True),
        ("127.9.9.9:1", True),
        ("[::1]:1", True),
        ("localhost:1", True),
        ("0.0.0.0:1", False),
        ("[::]:1", False),
        ("10.0.0.1:1", False),
        ("riskd.internal:1", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


# --- strict keys and types (issue 13 item 7, issue 11 item 8) -------------------------------

STRICT_TLS = TLS + ACCESS


def _tables(doc: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of every table in a parsed TOML document."""
    out = []
    for key, value in doc.items():
        if isinstance(value, dict):
            name = f"{prefix}.{key}" if prefix else key
            out += [name, *_tables(value, name)]
    return out


def _leaves(doc: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in doc.items():
        name = f"{prefix}.{key}" if prefix else key
        out += _leaves(value, name) if isinstance(value, dict) else [(name, value)]
    return out


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = _split(dotted)
    for key in path:
        doc = doc[key]
    doc[last] = value


def _split(dotted: str) -> list[str]:
    # Market symbols contain dashes, never dots: a plain split is exact.
    return dotted.split(".")


def _dump(doc: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML writing for these tests (tomllib only reads)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(v)

    lines, tables = [], []
    for k, v in doc.items():
        key = json.dumps(k) if "-" in k else k
        if (isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values())) or (
            isinstance(v, dict) and any(not isinstance(x, dict) for x in v.values())
        ):
            tables.append((key, v))
        else:
            lines.append(f"{key} = {value(v)}")
    out = (f"[{prefix}]\n" if prefix else "") + "".join(line + "\n" for line in lines)
    for k, v in tables:
        out += _dump(v, f"{prefix}.{k}" if prefix else k)
    return out


def _full_doc() -> dict[str, Any]:
    """The default config plus TLS, an access entry and explicit fund tables: every
    kind of table riskd reads, each with its keys."""
    doc = tomllib.loads(default_toml().replace("plaintext = true", "") + STRICT_TLS)
    doc["access"]["gw"]["updates_per_second"] = 10
    doc["access"]["gw"]["burst"] = 20
    return doc


def test_the_full_document_round_trips() -> None:
    doc = _full_doc()
    text = _dump(doc)
    assert tomllib.loads(text) == doc
    parse(text)


@pytest.mark.parametrize("table", _tables(_full_doc()))
def test_an_unknown_key_in_any_table_is_refused_by_name(table: str) -> None:
    doc = _full_doc()
    _set(doc, f"{table}.colour", "blue")
    # In tables of names (assets, markets, identities) a stray key is a name without a table.
    why = "must be a table" if table in ("assets", "markets", "access") else "unknown key"
    with pytest.raises(ConfigError, match=rf"^{re.escape(table)}\.colour: {why}"):
        parse(_dump(doc))


def test_an_unknown_top_level_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^serverr: unknown key"):
        parse(default_toml() + "\n[serverr]\nstream_window = 8\n")


def _wrong_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return 7
    return {"not": "a list"}


@pytest.mark.parametrize(("key", "value"), _leaves(_full_doc()), ids=lambda x: str(x)[:40])
def test_a_value_of_the_wrong_type_anywhere_is_refused_by_name(key: str, value: Any) -> None:
    doc = _full_doc()
    _set(doc, key, _wrong_type(value))
    with pytest.raises(ConfigError) as e:
        parse(_dump(doc))
    assert str(e.value).startswith(f"{key}:") or str(e.value).startswith(f"{key}["), str(e.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("server.stream_window", 64.0, "must be an integer"),  # 64.0 is not 64 batches
        ("server.mailbox_capacity", True, "must be an integer"),
        ("server.snapshot_seconds", "300", "must be a number"),
        ("server.plaintext", 1, "true or false"),
        ("markets.BTC-USDT.tick_size", 10.5, "must be an integer"),
        ("markets.BTC-USDT.partial_liquidation", "true", "true or false"),
        ("markets.BTC-USDT.liquidation_mode", "auction", "one of book, takeover"),
        ("markets.BTC-USDT.adl_policy", "random", "one of pnl_leverage"),
        ("markets.BTC-USDT.contract_type", "quanto", "one of linear, inverse"),
        ("markets.BTC-USDT.tiers", [[0, 125]], r"must be \[notional floor"),
        ("markets.BTC-USDT.tiers", [[0, 125, 0.4]], r"must be \[notional floor"),
        ("markets.BTC-USDT.tiers", [], "non-empty array"),
        ("markets.BTC-USDT.asset", "EUR", "unknown asset 'EUR'"),
        ("assets.USDT.decimals", 6.0, "must be an integer"),
        ("assets.USDT.fund.drawdown_limit_ppm", 0.3, "must be an integer"),
        ("access.gw.roles", "gateway", "array of strings"),
        ("access.gw.markets", "BTC-USDT", "array of strings"),
        ("access.gw.updates_per_second", 1.5, "must be an integer"),
        ("server.tls.cert", "", "must not be empty"),
    ],
)
def test_wrong_types_say_what_was_expected(key: str, value: Any, message: str) -> None:
    doc = _full_doc()
    _set(doc, key, value)
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}[:\[].*{message}"):
        parse(_dump(doc))


def test_a_missing_required_key_is_named() -> None:
    for key in ("markets.BTC-USDT.tick_size", "markets.BTC-USDT.tiers", "assets.USDT.decimals"):
        doc = _full_doc()
        *path, last = _split(key)
        table = doc
        for k in path:
            table = table[k]
        del table[last]
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: required"):
            parse(_dump(doc))
    doc = _full_doc()
    del doc["server"]["tls"]["client_ca"]
    with pytest.raises(ConfigError, match=r"^server\.tls\.client_ca: required"):
        parse(_dump(doc))


# --- ranges -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "limits"), sorted(SERVER_LIMITS.items()))
def test_every_server_number_is_range_checked(key: str, limits: tuple[Any, Any]) -> None:
    low, high = limits
    assert key in ServerConfig.__dataclass_fields__, f"limit for a key that does not exist: {key}"
    step = 1 if isinstance(low, int) else 0.5
    for bad in (low - step, high + step if isinstance(high, int) else float("inf")):
        doc = _full_doc()
        doc["server"][key] = bad
        with pytest.raises(ConfigError, match=rf"^server\.{key}: must be"):
            parse(_dump(doc))
    for good in (low, high):
        doc = _full_doc()
        doc["server"][key] = good
        assert getattr(parse(_dump(doc)).server, key) == good


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("server.stream_window", 0),  # never acknowledges
        ("server.event_retention", 0),  # refuses every subscription
        ("server.mailbox_capacity", -1),  # was a traceback
        ("server.max_ingest_streams", 0),
        ("server.max_batch_updates", 0),
        ("server.invariant_check_seconds", -1),
        ("server.max_clock_skew_seconds", float("nan")),
        ("server.transport_window_bytes", 2**31),
    ],
)
def test_the_issue_11_server_values_are_refused(key: str, value: Any) -> None:
    doc = _full_doc()
    _set(doc, key, value)
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: must be"):
        parse(_dump(doc))


@pytest.mark.parametrize(
    ("key", "value", "named", "message"),
    [
        # A tier floor beyond int64 once scaled to quantums made ListMarkets fail forever.
        ("markets.BTC-USDT.tiers", [[0, 125, 4000], [10**13, 100, 5000]], "tiers[1]", "int64"),
        ("markets.BTC-USDT.tiers", [[0, 1000, 500_000]], "tiers[0]", "max leverage 1000x"),
        ("markets.BTC-USDT.tiers", [[0, 20, 50_000]], "tiers[0]", "below the initial margin"),
        ("markets.BTC-USDT.tiers", [[0, 125, 4000], [0, 100, 5000]], "tiers[1]", "increase"),
        ("markets.BTC-USDT.tiers", [[1, 125, 4000]], "tiers[0]", "start at notional 0"),
        ("markets.BTC-USDT.tiers", [[0, 125, 0]], "tiers[0]", "maintenance_margin_rate"),
        ("markets.BTC-USDT.tick_size", 0, "tick_size", ">= 1"),
        ("markets.BTC-USDT.step_size", -1, "step_size", ">= 1"),
        ("markets.BTC-USDT.price_decimals", 19, "price_decimals", "0..18"),
        ("markets.BTC-USDT.price_decimals", 4, "price_decimals", "needs >= 7 decimals"),
        ("markets.BTC-USDT.liquidation_fee_cap_ppm", 1_000_001, "liquidation_fee_cap_ppm", ""),
        ("markets.BTC-USDT.fund_fee_share_ppm", -1, "fund_fee_share_ppm", "0..1000000"),
        ("markets.BTC-USDT.margin_call_ppm", 1_000_000, "margin_call_ppm", "0..999999"),
        ("markets.BTC-USDT.fund_loss_cap", -1, "fund_loss_cap", "must be in 0.."),
        ("markets.BTC-USDT.fund_loss_cap", 10**13, "fund_loss_cap", "must be in 0.."),
        ("markets.BTC-USDT.contract_value", 100, "contract_value", "only inverse"),
        ("markets.BTC-USD.contract_value", 0, "contract_value", "inverse markets need"),
        ("markets.BTC-USDT.partial_liquidation", True, "partial_liquidation", "fee cap"),
        ("assets.USDT.decimals", 19, "decimals", "0..18"),
        ("assets.USDT.fund.drawdown_limit_ppm", 0, "fund.drawdown_limit_ppm", "1..1000000"),
        ("assets.USDT.fund.drawdown_limit_ppm", 1_000_001, "fund.drawdown_limit_ppm", ""),
        ("assets.USDT.fund.window_seconds", 59, "fund.window_seconds", "60.."),
        ("access.gw.burst", -1, "burst", "0.."),
    ],
)
def test_market_asset_and_access_ranges(key: str, value: Any, named: str, message: str) -> None:
    doc = _full_doc()
    _set(doc, key, value)
    table = key.rsplit(".", 2)[0] if named.startswith("fund.") else key.rsplit(".", 1)[0]
    with pytest.raises(ConfigError, match=rf"^{re.escape(f'{table}.{named}')}: .*{message}"):
        parse(_dump(doc))


def test_an_asset_no_market_settles_in_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^assets\.ETH: no market settles in ETH"):
        parse(default_toml() + "\n[assets.ETH]\ndecimals = 18\n")


def test_no_markets_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^markets: "):
        parse("[server]\nplaintext = true\n[assets.USDT]\ndecimals = 6\n")


def test_not_toml_is_refused() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse("[server\n")


# --- what the keys do ---------------------------------------------------------------------------


def test_every_market_setting_is_read() -> None:
    """partial_liquidation was silently dropped; now every MarketSpec field is a key."""
    doc = _full_doc()
    m = doc["markets"]["BTC-USDT"]
    m.update(
        partial_liquidation=True,
        liquidation_fee_cap_ppm=10_000,
        fund_fee_share_ppm=250_000,
        margin_call_ppm=0,
        fund_loss_cap=250_000,
        reduce_only=True,
        liquidation_mode="book",
        adl_policy="leverage_pnl",
    )
    spec = next(s for s in parse(_dump(doc)).markets if s.symbol == "BTC-USDT")
    assert spec.partial_liquidation and spec.reduce_only
    assert (spec.liquidation_fee_cap_ppm, spec.fund_fee_share_ppm, spec.margin_call_ppm) == (
        10_000,
        250_000,
        0,
    )
    assert spec.fund_loss_cap == 250_000 * 10**6  # whole USDT, scaled to quantums
    assert spec.liquidation_mode is LiquidationMode.BOOK
    assert spec.adl_policy is AdlPolicy.LEVERAGE_PNL
    # Any other field (one added later) is a key too: its default, written out, is read back.
    for f in dataclasses.fields(MarketSpec):
        if f.init and not f.name.startswith("_") and f.name != "symbol" and f.name not in m:
            assert f.default is not dataclasses.MISSING and f.default is not None, f.name
            m[f.name] = f.default.value if isinstance(f.default, enum.Enum) else f.default
    again = next(s for s in parse(_dump(doc)).markets if s.symbol == "BTC-USDT")
    assert again.tiers.as_rows() == spec.tiers.as_rows()
    assert dataclasses.replace(again, tiers=spec.tiers) == spec


def test_fund_policy_is_read() -> None:
    doc = _full_doc()
    doc["assets"]["BTC"]["fund"] = {"drawdown_limit_ppm": 1_000_000, "window_seconds": 60}
    policy = parse(_dump(doc)).funds["BTC"]
    assert (policy.drawdown_limit_ppm, policy.window_ms) == (1_000_000, 60_000)


def test_riskd_config_shows_the_drawdown_guard_and_the_fund_loss_cap() -> None:
    text = default_toml()
    assert "drawdown_limit_ppm = 300000" in text and "window_seconds = 28800" in text
    assert re.search(r"drawdown guard.*\n(#.*\n)*.*deleveraged", text)
    assert re.search(r"#.*fund loss cap.*\n(#.*\n)*# fund_loss_cap = \d+", text, re.I)
    assert "ADL reason market_cap" in text and "ADL reason\n# drawdown_limit" in text


def test_serve_refuses_a_bad_config_with_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "riskd.toml"
    config.write_text(default_toml().replace("stream_window = 64", "stream_window = 0"))
    p = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == (
        "riskd: bad configuration: server.stream_window: must be in 1..65536, got 0"
    )


def test_audit_refuses_a_bad_config_the_same_way(tmp_path: Path) -> None:
    config = tmp_path / "riskd.toml"
    config.write_text(
        default_toml().replace("[markets.ETH-USDT]", "[markets.ETH-USDT]\ncolour = 1")
    )
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "riskd.cli",
            "audit",
            "--data",
            str(tmp_path),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("riskd: bad configuration: markets.ETH-USDT.colour: unknown key")
    assert "Traceback" not in p.stderr


# --- no input makes parse() fail any other way ----------------------------------------------

_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "roles", "decimals", "fund"]), inner, max_size=2)
    ),
    max_leaves=6,
)
_PLACES = [name for name, _ in _leaves(_full_doc())] + _tables(_full_doc())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_PLACES), _VALUES), min_size=1, max_size=3))
def test_any_value_anywhere_is_accepted_or_refused_by_name(changes: list[tuple[str, Any]]) -> None:
    """A config value of any type at any key either parses or is a ConfigError naming a
    key: never a TypeError, KeyError or traceback from deeper down."""
    doc = _full_doc()
    for place, value in changes:
        try:
            _set(doc, place, value)
        except (KeyError, TypeError):  # an earlier change replaced a table on the path
            continue
    try:
        text = _dump(doc)
    except TypeError:
        return  # a shape this test's writer cannot express
    try:
        parse(text)
    except ConfigError as e:
        assert re.match(r"^[\w.\-\[\]()]+: ", str(e)), str(e)


@pytest.mark.parametrize(
    ("key", "address", "message"),
    [
        ("grpc_listen", "127.0.0.1:99999", "port must be in 0..65535"),  # gRPC: port 34463
        ("grpc_listen", "127.0.0.1", "must be host:port"),
        ("metrics_listen", "abc", "must be host:port"),  # was a traceback at start
        ("metrics_listen", ":9464", "must be host:port"),
        ("metrics_listen", "127.0.0.1:http", "must be host:port"),
        ("frontend_listen", "127.0.0.1", "must be host:port"),
        ("frontend_listen", "127.0.0.1:65536", "port must be in 0..65535"),
    ],
)
def test_listen_addresses_are_host_and_port(key: str, address: str, message: str) -> None:
    doc = _full_doc()
    doc["server"][key] = address
    with pytest.raises(ConfigError, match=rf"^server\.{key}: {message}"):
        parse(_dump(doc))


def test_a_command_line_listen_address_is_checked_too(tmp_path: Path) -> None:
    p = subprocess.run(
        [
            *(sys.executable, "-m", "riskd.cli", "serve", "--data-dir", str(tmp_path / "d")),
            *("--metrics-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:70000"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == (
        "riskd: bad configuration: server.grpc_listen: port must be in 0..65535,"
        " got '127.0.0.1:70000'"
    )
