// A small gateway library for riskd's IngestService, from the .proto files alone:
// pre-trade checks (unary CheckOrder), order updates and marks with their index
// price for the ingest stream, and one-batch stream sessions.
//
//   const riskd = require('./riskd');
//   const gw = new riskd.Gateway('127.0.0.1:50051', { gateway: 'gw-1' });
//   const r = await gw.checkOrder({ market: 'BTC-USDT', orderId: 7, account: 42,
//                                   side: 'buy', price: 5000000, quantity: 100 });
//   // r.accepted, r.refusal ('ORDER_REFUSAL_...'), r.field, r.reserved, r.available
//   await gw.send([riskd.update.markPrice({ market: 'BTC-USDT', price: 5000000,
//                                           indexPrice: 4999000 }),
//                  riskd.update.cancelOrder({ market: 'BTC-USDT', orderId: 7 })]);
//   gw.close();
//
// Integers (ids, prices, quantities, amounts) may be given as bigint, safe
// integer numbers or decimal strings; they go on the wire as decimal strings
// and come back as strings (int64 loses nothing), so money never passes
// through a float.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.resolve(__dirname, '..', '..', 'protos');
const SIDES = { buy: 'ORDER_SIDE_BUY', sell: 'ORDER_SIDE_SELL' };

let loaded = null;

/** The riskd.v1 package, loaded once from protos/. */
function proto() {
  if (loaded === null) {
    const definition = protoLoader.loadSync(['riskd/v1/ingest.proto'], {
      keepCase: true, // field names as in the .proto
      longs: String, // int64 as decimal strings: no precision loss
      enums: String, // enums by name (ORDER_REFUSAL_INSUFFICIENT_BALANCE)
      defaults: true,
      oneofs: true,
      includeDirs: [PROTOS],
    });
    loaded = grpc.loadPackageDefinition(definition).riskd.v1;
  }
  return loaded;
}

/** An integer as the wire's decimal string; anything else is a TypeError naming `name`. */
function int(value, name) {
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'number' && Number.isSafeInteger(value)) return String(value);
  if (typeof value === 'string' && /^-?\d+$/.test(value)) return value;
  throw new TypeError(`${name} must be an integer (bigint, safe number or decimal string), got ${value}`);
}

function side(value) {
  const wire = SIDES[value];
  if (!wire) throw new TypeError(`side must be 'buy' or 'sell', got ${value}`);
  return wire;
}

/** A CheckOrder message: leverage 0 (the default) is the tier's maximum. */
function checkOrder(o) {
  return {
    market: o.market,
    order_id: int(o.orderId, 'orderId'),
    account: int(o.account, 'account'),
    side: side(o.side),
    price: int(o.price, 'price'),
    quantity: int(o.quantity, 'quantity'),
    reduce_only: Boolean(o.reduceOnly),
    post_only: Boolean(o.postOnly),
    leverage: int(o.leverage ?? 0, 'leverage'),
  };
}

/** An AmendOrder message: the open order's new price and remaining quantity. */
function amendOrder(o) {
  return {
    market: o.market,
    order_id: int(o.orderId, 'orderId'),
    price: int(o.price, 'price'),
    quantity: int(o.quantity, 'quantity'),
  };
}

/** A CancelOrder message. */
function cancelOrder(o) {
  return { market: o.market, order_id: int(o.orderId, 'orderId') };
}

/** A MarkPrice message; indexPrice (the spot index, for the mark guard) may be left out. */
function markPrice(m) {
  return {
    market: m.market,
    price: int(m.price, 'price'),
    index_price: int(m.indexPrice ?? 0, 'indexPrice'),
  };
}

/** Stream updates (without sequence and timestamp: Gateway.send numbers them). */
const update = {
  checkOrder: (o) => ({ check_order: checkOrder(o) }),
  amendOrder: (o) => ({ amend_order: amendOrder(o) }),
  cancelOrder: (o) => ({ cancel_order: cancelOrder(o) }),
  markPrice: (m) => ({ mark_price: markPrice(m) }),
  deposit: (d) => ({
    deposit: {
      account: int(d.account, 'account'),
      asset: d.asset,
      amount: int(d.amount, 'amount'),
      deposit_id: int(d.depositId ?? 0, 'depositId'),
    },
  }),
  marginTransfer: (t) => ({
    margin_transfer: {
      account: int(t.account, 'account'),
      market: t.market,
      amount: int(t.amount, 'amount'),
    },
  }),
};

/**
 * One gateway's connection. `gateway` names it in plaintext mode (the
 * x-riskd-gateway header); over mTLS pass `credentials` and riskd knows it by
 * its certificate.
 */
class Gateway {
  constructor(target, { gateway = 'node-gw', credentials = null, timeoutMs = 10_000 } = {}) {
    const riskd = proto();
    this.tls = credentials !== null;
    this.gateway = gateway;
    this.timeoutMs = timeoutMs;
    this.client = new riskd.IngestService(target, credentials ?? grpc.credentials.createInsecure());
  }

  metadata(epoch) {
    const m = new grpc.Metadata();
    if (!this.tls) m.set('x-riskd-gateway', this.gateway);
    if (epoch !== undefined) m.set('x-riskd-epoch', epoch);
    return m;
  }

  /**
   * The pre-trade check, answered once journaled: {accepted, refusal, field,
   * message, reserved, available}. A refusal is an answer, not an error;
   * malformed input rejects the promise with the gRPC status (INVALID_ARGUMENT
   * naming the field).
   */
  checkOrder(order, timestampMs = Date.now()) {
    const request = { order: checkOrder(order), timestamp_ms: int(timestampMs, 'timestampMs') };
    return new Promise((resolve, reject) => {
      this.client.CheckOrder(
        request,
        this.metadata(),
        { deadline: Date.now() + this.timeoutMs },
        (err, response) => (err ? reject(err) : resolve(response)),
      );
    });
  }

  /**
   * Send `updates` as one batch in a fresh session (riskd assigns the epoch),
   * numbered 1..n; resolves once all are acknowledged with
   * {epoch, acked, rejections: [{sequence, code, field, message, order_refusal}]}.
   */
  send(updates, timestampMs = Date.now()) {
    const ts = int(timestampMs, 'timestampMs');
    const batch = updates.map((u, i) => ({ sequence: String(i + 1), timestamp_ms: ts, ...u }));
    const last = BigInt(batch.length);
    return new Promise((resolve, reject) => {
      const call = this.client.Ingest(this.metadata('0'), { deadline: Date.now() + this.timeoutMs });
      let epoch = null;
      let acked = 0n;
      let ended = false;
      const rejections = [];
      call.on('data', (response) => {
        if (epoch === null) {
          epoch = response.epoch; // riskd speaks first: the session's epoch
          if (batch.length > 0) call.write({ epoch, updates: batch });
        } else {
          for (const r of response.rejections) {
            rejections.push({
              sequence: Number(r.sequence),
              code: r.code,
              field: r.field,
              message: r.message,
              order_refusal: r.order_refusal,
            });
          }
          const n = BigInt(response.acked_sequence);
          if (n > acked) acked = n;
        }
        if (acked >= last && !ended) {
          ended = true;
          call.end();
        }
      });
      call.on('error', reject);
      call.on('status', (status) => {
        if (status.code !== grpc.status.OK) return; // the 'error' handler has it
        if (acked < last) reject(new Error(`stream ended at acked_sequence=${acked} of ${last}`));
        else resolve({ epoch, acked: Number(acked), rejections });
      });
    });
  }

  close() {
    this.client.close();
  }
}

module.exports = { Gateway, update, checkOrder, amendOrder, cancelOrder, markPrice, proto };
