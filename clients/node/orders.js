#!/usr/bin/env node
// The risk gate from Node (riskd.js): fund an account, send a mark with its
// index price, check, amend and cancel orders on the stream and with the unary
// CheckOrder, then a mark whose index diverges (the mark guard's input).
//
//   npm ci && node orders.js 127.0.0.1:50051 ACCOUNT
//
// BTC-USDT at 50,000 (price 5000000); 100 USDT of isolated margin; 0.1 BTC
// (quantity 100) at 125x costs 40 USDT. Prints one JSON line:
// {"stream": [rejections...], "unary": [answers...], "after_cancel": [...]}.
// Exits non-zero on any error or after 10 seconds.
'use strict';

const { Gateway, update } = require('./riskd');

const USDT = 1_000_000n;
const M = 'BTC-USDT';
const P = 5_000_000n;

function fail(message) {
  process.stderr.write(`orders.js: ${message}\n`);
  process.exit(1);
}

async function main() {
  const [target, accountArg] = process.argv.slice(2);
  if (!target || !/^\d+$/.test(accountArg || '')) fail('usage: node orders.js HOST:PORT ACCOUNT');
  const account = BigInt(accountArg);
  const id = (n) => account * 1000n + BigInt(n); // order ids of this account's run
  const timer = setTimeout(() => fail('timed out after 10000 ms'), 10_000);
  const gw = new Gateway(target, { gateway: 'node-orders' });
  const order = (n, quantity) => ({ market: M, orderId: id(n), account, side: 'buy', price: P, quantity });
  try {
    const first = await gw.send([
      update.deposit({ account, asset: 'USDT', amount: 1000n * USDT, depositId: Date.now() }),
      update.marginTransfer({ account, market: M, amount: 100n * USDT }),
      update.markPrice({ market: M, price: P, indexPrice: 4_990_000n }), // 0.2 % off: sane
      update.checkOrder(order(1, 100n)), // 40 USDT
      update.checkOrder(order(2, 200n)), // 80 of the 60 left: refused
      update.amendOrder({ market: M, orderId: id(1), price: P, quantity: 150n }), // 60
    ]);
    const unary = [
      await gw.checkOrder(order(3, 100n)), // the 40 left
      await gw.checkOrder(order(4, 10n)), // nothing left
    ];
    const second = await gw.send([
      update.cancelOrder({ market: M, orderId: id(1) }),
      update.markPrice({ market: M, price: P, indexPrice: 4_000_000n }), // 25 % off the index
    ]);
    const afterCancel = [await gw.checkOrder(order(4, 10n))]; // on the last good mark
    clearTimeout(timer);
    const brief = (r) => ({
      accepted: r.accepted,
      refusal: r.refusal,
      field: r.field,
      reserved: r.reserved,
      available: r.available,
    });
    const result = {
      stream: [...first.rejections, ...second.rejections].map((r) => ({
        sequence: r.sequence,
        field: r.field,
        order_refusal: r.order_refusal,
      })),
      unary: unary.map(brief),
      after_cancel: afterCancel.map(brief),
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } catch (err) {
    fail(`${err.code ?? ''} ${err.details || err.message}`);
  } finally {
    gw.close();
  }
}

main();
