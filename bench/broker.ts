/**
 * The broker against the C reference broker, both driven by ref-client: one synchronous client (like
 * QEMU's hook), 64 clients, and 2 clients with 16 requests in flight. Runs alternate between the two
 * brokers so that drift on a shared machine hits both alike.
 */
import { join } from 'node:path';
import { latencyRow, rateRow, runRefClient, startOpenhook, startRef, workspace, type Row } from './lib.js';

export interface BrokerBenchOptions {
  runs: number;
  /** opens per client for the synchronous case; the others scale from it */
  count: number;
  /** extra `openhook serve` arguments (policy, audit) */
  serveArgs?: (dir: string) => string[];
}

export async function benchBroker(opts: BrokerBenchOptions): Promise<Row[]> {
  const ws = workspace();
  const serveArgs = opts.serveArgs?.(ws.dir) ?? [`--allow=${join(ws.dir, 'data')}/:r`];
  const oh = await startOpenhook(join(ws.dir, 'oh.sock'), serveArgs);
  const ref = await startRef(join(ws.dir, 'ref.sock'), ws.dir);
  const relative = ws.file.slice(ws.dir.length + 1);
  const cases = [
    { name: '1 synchronous client', count: opts.count, clients: 1, depth: 1 },
    { name: '64 clients', count: Math.max(100, Math.round(opts.count / 20)), clients: 64, depth: 1 },
    { name: '2 clients × 16 in flight', count: opts.count, clients: 2, depth: 16 },
  ];
  const rows: Row[] = [];
  try {
    // Warm both (JIT, page cache) before measuring.
    runRefClient(oh.socket, ws.file, 2000);
    runRefClient(ref.socket, relative, 2000);
    for (const c of cases) {
      const o = { rate: [] as number[], p50: [] as number[], p99: [] as number[] };
      const r = { rate: [] as number[], p50: [] as number[], p99: [] as number[] };
      for (let i = 0; i < opts.runs; i++) {
        for (const [target, name, acc] of [[oh, ws.file, o], [ref, relative, r]] as const) {
          const res = runRefClient(target.socket, name, c.count, c.clients, c.depth);
          if (res.errors) throw new Error(`${c.name}: ${res.errors} errors against ${target === oh ? 'openhook' : 'the reference'}`);
          acc.rate.push(res.opensPerS);
          if (res.p50Us !== undefined) acc.p50.push(res.p50Us);
          if (res.p99Us !== undefined) acc.p99.push(res.p99Us);
        }
      }
      const target = c.name.startsWith('2 clients') ? '≥ 0.9×' : '≥ 1.0×';
      rows.push(rateRow(c.name, o.rate, r.rate, target));
      if (c.depth === 1 && c.clients === 1) {
        rows.push(latencyRow(c.name, 'p50', o.p50, r.p50, target));
        rows.push(latencyRow(c.name, 'p99', o.p99, r.p99, target));
      }
    }
  } finally {
    await oh.stop();
    await ref.stop();
    ws.cleanup();
  }
  return rows;
}
