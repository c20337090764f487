"""Invariants of the riskd.v1 API, checked on the generated descriptors."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    FileDescriptor,
)

import riskd.v1

PROTO_DIR = Path(__file__).resolve().parents[2] / "protos" / "riskd" / "v1"

INTEGER_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
}
# Field names that carry money, prices or quantities. They must be 64-bit
# integers: the API has no floats and 32 bits overflow at realistic quantums.
MONEY_FIELD = re.compile(
    r"(price|quantity|amount|balance|margin|fee|pnl|notional|size|value|delta|"
    r"volume|inflow|outflow|reserved|returned|cap|cum|leverage|rate)"
)

# Counters and resolutions, not amounts.
NOT_MONEY = {"sequence", "epoch", "page_size"}

EXPECTED_SERVICES = {
    "IngestService": {"Ingest", "CheckOrder"},
    "EventService": {"Subscribe"},
    "QueryService": {
        "GetAccount",
        "GetPosition",
        "GetInsuranceFund",
        "ListFundLedger",
        "GetFundDailyReport",
        "ListMarkets",
        "ListAssets",
        "GetStressCoverage",
        "ListLiquidationOrders",
    },
    "WithdrawalService": {"Withdraw"},
    "AdminService": {
        "UpdateMarket",
        "SetReduceOnly",
        "InjectFund",
        "CheckState",
        "AddMarket",
        "AddAsset",
        "SetMarketStatus",
        "SettleMarket",
        "OverrideMarkGuard",
    },
}


def _pb2_modules() -> list[ModuleType]:
    names = sorted(
        m.name for m in pkgutil.iter_modules(riskd.v1.__path__) if m.name.endswith("_pb2")
    )
    return [importlib.import_module(f"riskd.v1.{name}") for name in names]


def _files() -> list[FileDescriptor]:
    return [module.DESCRIPTOR for module in _pb2_modules()]


def _messages(messages: list[Descriptor]) -> Iterator[Descriptor]:
    for message in messages:
        yield message
        yield from _messages(list(message.nested_types))


def _all_messages() -> Iterator[Descriptor]:
    for file in _files():
        yield from _messages(list(file.message_types_by_name.values()))


def _all_enums() -> Iterator[EnumDescriptor]:
    for file in _files():
        yield from file.enum_types_by_name.values()
    for message in _all_messages():
        yield from message.enum_types


def test_every_proto_has_a_generated_module() -> None:
    protos = {p.stem for p in PROTO_DIR.glob("*.proto")}
    generated = {m.__name__.rsplit(".", 1)[1].removesuffix("_pb2") for m in _pb2_modules()}
    assert protos == generated


def test_package_is_riskd_v1() -> None:
    assert {file.package for file in _files()} == {"riskd.v1"}


def test_enum_zero_values_are_unspecified() -> None:
    enums = list(_all_enums())
    assert enums
    for enum in enums:
        zero = enum.values_by_number[0].name
        assert zero.endswith("_UNSPECIFIED"), f"{enum.full_name}: zero value is {zero}"


def test_no_floating_point_fields() -> None:
    floats = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
    offenders = [
        field.full_name
        for message in _all_messages()
        for field in message.fields
        if field.type in floats
    ]
    assert offenders == []


def test_money_fields_are_64_bit_integers() -> None:
    checked = 0
    for message in _all_messages():
        if message.GetOptions().map_entry:
            if message.fields_by_name["value"].type in INTEGER_TYPES:
                continue
            pytest.fail(f"{message.full_name}: map value must be a 64-bit integer")
        for field in message.fields:
            if field.type in {FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_ENUM}:
                continue
            if field.name.endswith(("_id", "_decimals")) or field.name in NOT_MONEY:
                continue
            if MONEY_FIELD.search(field.name) and field.type != FieldDescriptor.TYPE_BOOL:
                assert field.type in INTEGER_TYPES, f"{field.full_name} is type {field.type}"
                checked += 1
    assert checked > 50  # guards against the pattern silently matching nothing


@pytest.mark.parametrize(("service", "rpcs"), sorted(EXPECTED_SERVICES.items()))
def test_services_and_rpcs(service: str, rpcs: set[str]) -> None:
    found = [f.services_by_name[service] for f in _files() if service in f.services_by_name]
    assert len(found) == 1, f"service {service} defined {len(found)} times"
    descriptor = found[0]
    assert set(descriptor.methods_by_name) == rpcs
    for method in descriptor.methods:
        assert method.input_type.name == f"{method.name}Request"
        assert method.output_type.name == f"{method.name}Response"


def test_ingest_is_bidirectional_and_subscribe_server_streaming() -> None:
    from riskd.v1 import events_pb2, ingest_pb2

    ingest = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].methods_by_name["Ingest"]
    assert ingest.client_streaming and ingest.server_streaming
    subscribe = events_pb2.DESCRIPTOR.services_by_name["EventService"].methods_by_name["Subscribe"]
    assert not subscribe.client_streaming and subscribe.server_streaming


def test_grpc_stubs_import() -> None:
    from riskd.v1 import (
        admin_pb2_grpc,
        events_pb2_grpc,
        ingest_pb2_grpc,
        query_pb2_grpc,
        withdrawal_pb2_grpc,
    )

    for module, service in [
        (ingest_pb2_grpc, "IngestService"),
        (events_pb2_grpc, "EventService"),
        (query_pb2_grpc, "QueryService"),
        (withdrawal_pb2_grpc, "WithdrawalService"),
        (admin_pb2_grpc, "AdminService"),
    ]:
        assert hasattr(module, f"{service}Stub")
        assert hasattr(module, f"{service}Servicer")
        assert hasattr(module, f"add_{service}Servicer_to_server")


def test_int64_extremes_round_trip() -> None:
    from riskd.v1 import ingest_pb2

    update = ingest_pb2.Update(
        sequence=2**64 - 1,
        timestamp_ms=1_700_000_000_000,
        fill=ingest_pb2.Fill(
            market="BTC-USDT-PERP",
            trade_id=1,
            buyer_account=1,
            seller_account=2,
            price=2**63 - 1,
            quantity=1,
            buyer_fee=0,
            seller_fee=0,
        ),
    )
    parsed = ingest_pb2.Update.FromString(update.SerializeToString())
    assert parsed == update
    assert parsed.WhichOneof("kind") == "fill"
    assert parsed.fill.price == 2**63 - 1
