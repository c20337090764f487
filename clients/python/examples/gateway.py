"""A first riskd example: a toy exchange gateway, start to liquidation.

    riskd serve                       # in one terminal (default 127.0.0.1:50051)
    python clients/python/examples/gateway.py --target 127.0.0.1:50051

Two accounts deposit USDT, move margin into isolated BTC-USDT positions and
trade 0.1 BTC with each other at 50,000.  The gateway then walks the mark
price down until the thinly margined long is liquidated.  Meanwhile a second
task prints every event riskd publishes, and at the end the USDT insurance
fund shows what the liquidation left it.

Units (see protos/riskd/v1/types.proto): everything on the wire is an integer.
USDT amounts are quantums (6 decimals); BTC-USDT prices have 2 decimals and a
tick of 10, quantities 3 decimals (100 = 0.100 BTC).
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
from google.protobuf import text_format

from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from riskd_client.gateway import Gateway, tls_credentials

USDT = 10**6  # 1 USDT in quantums
MARKET = "BTC-USDT"
LONG, SHORT = 1, 2  # account ids, as the exchange numbers them


async def print_events(channel: grpc.aio.Channel, liquidated: asyncio.Event) -> None:
    """Print riskd's event stream (liquidations, fund flows, ADL…), one line each."""
    events = events_pb2_grpc.EventServiceStub(channel)
    # from_sequence=0: start at the oldest event riskd still retains.
    async for response in events.Subscribe(events_pb2.SubscribeRequest(from_sequence=0)):
        event = response.event
        print("event", text_format.MessageToString(event, as_one_line=True))
        if event.HasField("liquidation_settled"):
            liquidated.set()


async def long_position(query: query_pb2_grpc.QueryServiceAsyncStub) -> query_pb2.Position | None:
    """LONG's BTC-USDT position, or None once it is closed."""
    account = await query.GetAccount(query_pb2.GetAccountRequest(account=LONG, asset="USDT"))
    return next((p for p in account.positions if p.market == MARKET and p.size), None)


async def main(target: str, tls: tuple[str, str, str] | None, name: str) -> None:
    channel = (
        grpc.aio.secure_channel(target, tls_credentials(*tls))
        if tls
        else grpc.aio.insecure_channel(target)
    )
    async with channel:
        liquidated = asyncio.Event()
        watcher = asyncio.create_task(print_events(channel, liquidated))
        query = query_pb2_grpc.QueryServiceStub(channel)

        # 0. The operator seeds the insurance fund: to take over a liquidated position
        #    it must be able to margin it (an empty fund would hand it to ADL instead).
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        seed = admin_pb2.InjectFundRequest(asset="USDT", amount=1_000 * USDT, cause="seed")
        await admin.InjectFund(seed)

        # A new session: riskd assigns it a fresh epoch (a fencing token) and the
        # helper numbers its updates 1, 2, 3... in it, so a rerun is never taken
        # for a resend of an earlier run's updates.
        async with Gateway(target, name, channel=channel) as gw:
            await gw.wait_connected()
            print(f"gateway: session epoch {gw.epoch}")
            # 1. Fund both wallets, then move margin into isolated positions:
            #    the long gets 500 USDT (thin, ~10x), the short 5,000 USDT.
            for account in (LONG, SHORT):
                gw.deposit(account, "USDT", 10_000 * USDT)
            gw.margin_transfer(LONG, MARKET, 500 * USDT)
            gw.margin_transfer(SHORT, MARKET, 5_000 * USDT)

            # 2. A mark price, then a trade: LONG buys 0.1 BTC from SHORT at 50,000.00,
            #    each paying a 1 USDT fee.  flush() returns once riskd acknowledged it all.
            gw.mark_price(MARKET, 5_000_000)
            gw.fill(
                MARKET, LONG, SHORT, 5_000_000, 100, trade_id=1, buyer_fee=USDT, seller_fee=USDT
            )
            await gw.flush()
            pos = await long_position(query)
            assert pos is not None
            liq_price = pos.liquidation_price / 100
            print(f"gateway: long {pos.size / 1000} BTC open, liquidation price {liq_price:,.2f}")

            # 3. Walk the mark price down 100.00 at a time until the long is gone.
            #    (riskd reacts to each mark: margin calls, then the liquidation.)
            price = 5_000_000
            while price > 4_000_000 and pos is not None:
                price -= 10_000
                gw.mark_price(MARKET, price)
                await gw.flush()
                pos = await long_position(query)
            print(f"gateway: mark {price / 100:,.2f}, long {'open' if pos else 'liquidated'}")
            # Updates riskd refused come back with a code and the offending field.
            for r in gw.rejections:
                print(f"gateway: rejected #{r.sequence} {r.field}: {r.message}")

        # Give the event stream a moment to deliver the liquidation, then stop it.
        try:
            await asyncio.wait_for(liquidated.wait(), timeout=5)
        finally:
            watcher.cancel()

        fund = (await query.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="USDT"))).fund
        print("insurance fund", text_format.MessageToString(fund, as_one_line=True))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="riskd gRPC host:port")
    parser.add_argument(
        "--tls",
        nargs=3,
        metavar=("CA", "CERT", "KEY"),
        help="mutual TLS: PEM files; the certificate's identity needs the gateway,"
        " reader and admin roles (this example does all three)",
    )
    parser.add_argument(
        "--gateway-id", default="example-gw", help="over TLS: the certificate's identity"
    )
    args = parser.parse_args()
    asyncio.run(main(args.target, args.tls, args.gateway_id))
