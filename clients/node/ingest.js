#!/usr/bin/env node
// Second-language check: stream one batch into riskd's IngestService from Node,
// using nothing but the .proto files (no generated code).
//
//   npm ci && node ingest.js 127.0.0.1:50051
//
// Over mutual TLS (riskd's production mode), name the PEM files in the
// environment: RISKD_TLS_CA (the CA that signed riskd's certificate),
// RISKD_TLS_CERT and RISKD_TLS_KEY (this gateway's certificate: riskd knows
// the gateway by it, so no x-riskd-gateway header is sent).
//
// Each run is a new session: it asks riskd for a fresh epoch (no
// x-riskd-epoch, or 0) and numbers its updates 1..5 in it, so a second run
// applies again instead of having its updates taken for resends of the first
// run's. RISKD_EPOCH=N resumes epoch N instead; since this script numbers from
// 1, it refuses to send when riskd already acknowledged sequences of that epoch
// (they would be taken for resends and not applied).
//
// In a cluster (docs/cluster.md) it may be pointed at any node: a standby
// answers UNAVAILABLE naming the shard's owner in the riskd-owner trailer, and
// the run goes there (at most 3 hops), resuming its session after what the
// owner acknowledged. RISKD_NODES=host:port,... names the other nodes: when
// the node in use is down (the owner died), the run tries them in turn every
// 200 ms, following their redirects, until one serves (the new owner).
//
// Prints one JSON line: {"epoch": "E", "acked": N, "duplicates": D,
// "redirects": R, "rejections": [{sequence, code, field}]}. Exits 0 when riskd acknowledged
// the whole batch, non-zero on any error or after 10 seconds.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const TIMEOUT_MS = 10_000;
const PROTOS = path.resolve(__dirname, '..', '..', 'protos');
const GATEWAY = 'node-gw';
const OWNER_METADATA = 'riskd-owner'; // a cluster standby's redirect (docs/cluster.md)
const MAX_REDIRECTS = 3;
const RETRY_MS = 200; // between nodes, while a takeover is under way
const RESUME = process.env.RISKD_EPOCH || ''; // '' or '0': a fresh epoch, assigned by riskd
const USDT = 1_000_000n; // USDT has 6 decimals: 1 USDT = 10^6 quantums

function fail(message) {
  process.stderr.write(`ingest.js: ${message}\n`);
  process.exit(1);
}

function main() {
  const target = process.argv[2];
  if (!target) fail('usage: node ingest.js HOST:PORT');
  if (!/^\d+$/.test(RESUME || '0')) fail(`RISKD_EPOCH must be an integer, got ${RESUME}`);

  const definition = protoLoader.loadSync(['riskd/v1/ingest.proto'], {
    keepCase: true, // field names exactly as in the .proto (acked_sequence, not ackedSequence)
    longs: String, // int64/uint64 arrive as decimal strings: no precision loss
    enums: String, // RejectionCode arrives as its name
    defaults: true, // unset scalars arrive as 0 / "" rather than undefined
    oneofs: true,
    includeDirs: [PROTOS],
  });
  const riskd = grpc.loadPackageDefinition(definition).riskd.v1;
  const { RISKD_TLS_CA: ca, RISKD_TLS_CERT: cert, RISKD_TLS_KEY: key } = process.env;
  const tls = Boolean(ca || cert || key);
  if (tls && !(ca && cert && key)) fail('set all of RISKD_TLS_CA, RISKD_TLS_CERT, RISKD_TLS_KEY');
  const credentials = tls
    ? grpc.credentials.createSsl(fs.readFileSync(ca), fs.readFileSync(key), fs.readFileSync(cert))
    : grpc.credentials.createInsecure();
  const timer = setTimeout(() => fail(`timed out after ${TIMEOUT_MS} ms`), TIMEOUT_MS);

  // 64-bit integers are sent as strings so nothing depends on JS number precision.
  const ts = String(Date.now());
  // Deposit ids must keep increasing per asset (riskd drops a reused one): the
  // clock in ms stands in for the exchange's own ids in this demo.
  const amount = String(1000n * USDT);
  const updates = [
    { deposit: { account: '42', asset: 'USDT', amount, deposit_id: ts } },
    { margin_transfer: { account: '42', market: 'BTC-USDT', amount: String(100n * USDT) } },
    { mark_price: { market: 'BTC-USDT', price: '5000000' } }, // 50,000.00
    { mark_price: { market: 'BTC-USDT', price: '5000005' } }, // off the 10-unit tick: rejected
    { mark_price: { market: 'BTC-USDT', price: '5001000' } }, // the batch goes on after a rejection
  ].map((u, i) => ({ sequence: String(i + 1), timestamp_ms: ts, ...u }));
  const last = BigInt(updates.length);

  let epoch = '0'; // this session's, once riskd has named it
  let acked = 0n;
  let duplicates = 0n;
  let redirects = 0;
  let hops = 0; // redirects since a node last failed
  const rejections = [];
  // Other nodes of the cluster to try when the one in use is down.
  const nodes = [target, ...(process.env.RISKD_NODES || '').split(',').filter(Boolean)];
  let next = 0;

  // One stream to `target`. A cluster standby refuses with UNAVAILABLE and the
  // shard owner's address in the riskd-owner trailer: the stream is opened
  // again there, in the same session (epoch), and resumes after what the owner
  // says it acknowledged, so nothing is applied twice.
  function open(target) {
    const client = new riskd.IngestService(target, credentials);
    const metadata = new grpc.Metadata();
    if (!tls) metadata.set('x-riskd-gateway', GATEWAY); // over TLS the certificate names us
    metadata.set('x-riskd-epoch', epoch !== '0' ? epoch : RESUME || '0');
    const call = client.Ingest(metadata, { deadline: Date.now() + TIMEOUT_MS });
    let first = true;
    let halfClosed = false;

    function endIfDone() {
      if (acked >= last && !halfClosed) {
        halfClosed = true;
        call.end(); // half-close: riskd ends the stream with OK
      }
    }

    call.on('data', (response) => {
      if (first) {
        // riskd speaks first: this stream's epoch, and the last sequence it
        // already applied in it (0 for a fresh epoch).
        first = false;
        const held = BigInt(response.acked_sequence);
        process.stderr.write(`first response: epoch=${response.epoch} acked_sequence=${held}\n`);
        if (epoch === '0') {
          epoch = response.epoch;
          if (!RESUME || RESUME === '0') {
            if (epoch === '0') fail('riskd assigned no epoch (it predates them): set RISKD_EPOCH');
            if (held !== 0n) fail(`riskd assigned epoch ${epoch} but says ${held} of it is acked`);
          } else if (held > 0n) {
            fail(
              `riskd already acknowledged sequences 1..${held} of epoch ${RESUME}; this run` +
                ' numbers from 1, so those updates would be taken for resends and not applied:' +
                ' nothing sent (unset RISKD_EPOCH for a new session)',
            );
          }
        } else if (response.epoch !== epoch) {
          fail(`riskd answered epoch ${response.epoch} for session ${epoch}`);
        }
        if (held > acked) acked = held;
        const rest = updates.filter((u) => BigInt(u.sequence) > held);
        if (rest.length > 0) call.write({ epoch, updates: rest });
        endIfDone();
        return;
      }
      duplicates += BigInt(response.duplicates);
      for (const r of response.rejections) {
        rejections.push({ sequence: Number(r.sequence), code: r.code, field: r.field });
      }
      const n = BigInt(response.acked_sequence);
      if (n > acked) acked = n;
      endIfDone();
    });

    call.on('error', (err) => {
      client.close();
      const owner = err.metadata ? err.metadata.get(OWNER_METADATA)[0] : undefined;
      if (err.code === grpc.status.UNAVAILABLE && owner && hops < MAX_REDIRECTS) {
        hops += 1;
        redirects += 1;
        process.stderr.write(`redirected to the shard's owner ${owner}\n`);
        open(String(owner));
        return;
      }
      if (err.code === grpc.status.UNAVAILABLE && nodes.length > 1) {
        // The node is down (or a standby names an owner that is): the next one
        // in RISKD_NODES, until one serves or the run's time is up.
        hops = 0;
        next = (next + 1) % nodes.length;
        process.stderr.write(`${target} unavailable (${err.details}): trying ${nodes[next]}\n`);
        setTimeout(() => open(nodes[next]), RETRY_MS);
        return;
      }
      fail(`stream failed: ${err.code} ${err.details || err.message}`);
    });

    call.on('status', (status) => {
      if (status.code !== grpc.status.OK) return; // reported by the 'error' handler
      clearTimeout(timer);
      client.close();
      if (acked < last) fail(`stream ended at acked_sequence=${acked}, expected ${last}`);
      if (duplicates > 0n) {
        process.stderr.write(`riskd already had ${duplicates} of these updates: not applied again\n`);
      }
      const result = {
        epoch,
        acked: Number(acked),
        duplicates: Number(duplicates),
        redirects,
        rejections,
      };
      process.stdout.write(`${JSON.stringify(result)}\n`);
    });
  }

  open(target);
}

main();
