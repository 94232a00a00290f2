// BullMQ side of `redline bench tasks --peers bullmq`: the same figures with the same definitions, against a
// private redis-server the Rust driver started. One mode per process; each prints one JSON line.
//
//   single    <port> <n>          queue.add, 64 calls in flight            -> {"rate": jobs/s}
//   bulk      <port> <n>          addBulk of 100, 4 calls in flight         -> {"rate": jobs/s}
//   memory    <port> <n>          used_memory delta per queued job          -> {"bytes": B}
//   drain     <port> <n> <conc>   n queued no-op jobs, 2 worker processes   -> {"rate": jobs/s}
//   roundtrip <port> <n>          add, then waitUntilFinished, sequential   -> {"p50_ms", "p99_ms"}
//   work      <port> <conc>       a worker process (used by drain and roundtrip)
import { fork } from 'node:child_process';
import { Queue, QueueEvents, Worker } from 'bullmq';
import IORedis from 'ioredis';

const [mode, portArg, nArg, concArg] = process.argv.slice(2);
const connection = { host: '127.0.0.1', port: Number(portArg), maxRetriesPerRequest: null };
const n = Number(nArg);
const NAME = 'bench';

const usedMemory = async (r) => Number((await r.info('memory')).match(/used_memory:(\d+)/)[1]);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function inFlight(total, parallel, step, call) {
  let next = 0;
  const lane = async () => {
    while (next < total) {
      const take = Math.min(step, total - next);
      next += take;
      await call(take);
    }
  };
  await Promise.all(Array.from({ length: parallel }, lane));
}

function workers(conc) {
  const children = [0, 1].map(() => fork(new URL(import.meta.url).pathname, ['work', portArg, '0', String(conc)]));
  return () => children.forEach((c) => c.kill('SIGKILL'));
}

async function main() {
  if (mode === 'work') {
    const w = new Worker(NAME, async () => null, { connection, concurrency: Number(concArg) });
    await w.waitUntilReady();
    return new Promise(() => {});
  }
  const queue = new Queue(NAME, { connection });
  await queue.waitUntilReady();
  const redis = new IORedis(connection);
  let out;
  if (mode === 'single' || mode === 'bulk') {
    await queue.add('noop', {}); // scripts loaded, keys created
    const t0 = process.hrtime.bigint();
    if (mode === 'single') {
      await inFlight(n, 64, 1, () => queue.add('noop', {}));
    } else {
      await inFlight(n, 4, 100, (k) => queue.addBulk(Array.from({ length: k }, () => ({ name: 'noop', data: {} }))));
    }
    out = { rate: n / (Number(process.hrtime.bigint() - t0) / 1e9) };
  } else if (mode === 'memory') {
    await queue.add('noop', {});
    const before = await usedMemory(redis);
    await inFlight(n, 4, 100, (k) => queue.addBulk(Array.from({ length: k }, () => ({ name: 'noop', data: {} }))));
    out = { bytes: ((await usedMemory(redis)) - before) / n };
  } else if (mode === 'drain') {
    await inFlight(n, 4, 100, (k) => queue.addBulk(Array.from({ length: k }, () => ({ name: 'noop', data: {} }))));
    const t0 = process.hrtime.bigint();
    const stop = workers(Number(concArg));
    while ((await queue.getCompletedCount()) < n) await sleep(10);
    out = { rate: n / (Number(process.hrtime.bigint() - t0) / 1e9) };
    stop();
  } else if (mode === 'roundtrip') {
    const events = new QueueEvents(NAME, { connection });
    await events.waitUntilReady();
    const stop = workers(8);
    await sleep(500);
    const times = [];
    for (let i = 0; i < n; i++) {
      const t0 = process.hrtime.bigint();
      const job = await queue.add('noop', {});
      await job.waitUntilFinished(events);
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    stop();
    times.sort((a, b) => a - b);
    const at = (q) => times[Math.min(times.length - 1, Math.floor(q * times.length))];
    out = { p50_ms: at(0.5), p99_ms: at(0.99) };
    await events.close();
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  console.log(JSON.stringify(out));
  await queue.close();
  redis.disconnect();
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
