/**
 * The broker against the C reference broker, both driven by ref-client: one synchronous client (like
 * QEMU's hook), 64 clients, and 2 clients with 16 requests in flight.
 *
 * openhook runs as it would in production: `openhook serve --policy` with a realistic policy (a few
 * dozen rules, carve-outs, globs, client sections; bench/realistic.ts) and the audit log writing JSON
 * lines to a file. Beside the reference (ref-broker.c: a plain openat2, no checks, no log) runs our
 * C safe variant (bench/ref-safe.c: openhook's safe open and an audit line per request), so that the
 * table tells the cost of the safety from the cost of TypeScript.
 *
 * Runs rotate between the three brokers so that drift on a shared machine hits them alike. Besides
 * the client's view (rate, latency), each broker's own CPU time per open is read from /proc/PID/stat:
 * it does not count the time a busy machine makes a broker wait for a core.
 *
 * The synchronous case runs a fourth broker in the same rotation: openhook with `--busy-poll 50`,
 * which trades up to 50 µs of CPU per wake-up for not sleeping between a synchronous client's
 * requests (OPENHOOK_BENCH_NO_BUSY_POLL=1 leaves it out, for revisions without the option).
 *
 * OPENHOOK_BENCH_SERVE_ARGS adds `openhook serve` options (space-separated), for experiments;
 * OPENHOOK_BENCH_CLI runs another revision's CLI (see lib.ts).
 */
import { existsSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { latencyRow, rateRow, runRefClient, startOpenhook, startRef, startRefSafe, workspace, type Row, type Running } from './lib.js';
import { realisticPolicy } from './realistic.js';

export interface BrokerBenchOptions {
  runs: number;
  /** opens per client for the synchronous case; the others scale from it */
  count: number;
}

/** CPU time (user + system) of a process so far, in ms (clock ticks of 10 ms). */
export function cpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

export async function benchBroker(opts: BrokerBenchOptions): Promise<Row[]> {
  const ws = workspace();
  const policy = join(ws.dir, 'policy.toml');
  writeFileSync(policy, realisticPolicy(ws.dir));
  const ohAudit = join(ws.dir, 'openhook-audit.jsonl');
  const safeAudit = join(ws.dir, 'ref-safe-audit.jsonl');
  const extra = process.env.OPENHOOK_BENCH_SERVE_ARGS?.split(' ').filter(Boolean) ?? [];
  const oh = await startOpenhook(join(ws.dir, 'oh.sock'), ['--policy', policy, '--audit', ohAudit, ...extra]);
  const ref = await startRef(join(ws.dir, 'ref.sock'), ws.dir);
  const safe = await startRefSafe(join(ws.dir, 'safe.sock'), ws.dir, safeAudit);
  const busyAudit = join(ws.dir, 'openhook-busy-audit.jsonl');
  const busy = process.env.OPENHOOK_BENCH_NO_BUSY_POLL
    ? null
    : await startOpenhook(join(ws.dir, 'busy.sock'), ['--policy', policy, '--audit', busyAudit, '--busy-poll', '50', ...extra]);
  const relative = ws.file.slice(ws.dir.length + 1);
  const cases = [
    { name: '1 synchronous client', count: opts.count, clients: 1, depth: 1 },
    { name: '64 clients', count: Math.max(100, Math.round(opts.count / 20)), clients: 64, depth: 1 },
    { name: '2 clients × 16 in flight', count: opts.count, clients: 2, depth: 16 },
  ];
  type Acc = { rate: number[]; p50: number[]; p99: number[]; cpu: number[] };
  type Target = [Running, string, string];
  const brokers: Target[] = [
    [oh, ws.file, 'openhook'],
    [ref, relative, 'the reference'],
    [safe, relative, 'the C safe variant'],
  ];
  const audits = [ohAudit, safeAudit, busyAudit];
  const rows: Row[] = [];
  try {
    // Warm them all (JIT, page cache) before measuring.
    for (const [b, name] of brokers) runRefClient(b.socket, name, 2000);
    if (busy) runRefClient(busy.socket, ws.file, 2000);
    for (const c of cases) {
      // The synchronous case runs the busy-polling openhook too, in the same rotation, so that its
      // row is measured against the same runs of the C brokers.
      const sync = c.clients === 1 && c.depth === 1;
      const set: Target[] = sync && busy ? [...brokers, [busy, ws.file, 'openhook --busy-poll']] : brokers;
      const acc = new Map<Running, Acc>(set.map(([b]) => [b, { rate: [], p50: [], p99: [], cpu: [] }]));
      for (let i = 0; i < opts.runs; i++) {
        // Rotate which goes first, so that none always follows the same neighbour.
        const order = [...set.slice(i % set.length), ...set.slice(0, i % set.length)];
        for (const [target, name, label] of order) {
          // The audit files would grow by hundreds of MB over a full bench; only their writing matters.
          for (const a of audits) if (existsSync(a)) truncateSync(a, 0);
          const a = acc.get(target)!;
          const before = cpuMs(target.child.pid!);
          const res = runRefClient(target.socket, name, c.count, c.clients, c.depth);
          if (res.errors) throw new Error(`${c.name}: ${res.errors} errors against ${label}`);
          a.cpu.push(((cpuMs(target.child.pid!) - before) * 1000) / (c.count * c.clients));
          a.rate.push(res.opensPerS);
          if (res.p50Us !== undefined) a.p50.push(res.p50Us);
          if (res.p99Us !== undefined) a.p99.push(res.p99Us);
        }
      }
      const r = acc.get(ref)!,
        s = acc.get(safe)!;
      const target = c.name.startsWith('2 clients') ? '≥ 0.9×' : '≥ 1.0×';
      for (const [b] of set.filter(([b]) => b === oh || b === busy)) {
        const o = acc.get(b)!;
        const name = b === busy ? `${c.name}, --busy-poll 50` : c.name;
        rows.push(rateRow(name, o.rate, r.rate, target, s.rate));
        if (sync) {
          rows.push(latencyRow(name, 'p50', o.p50, r.p50, target, s.p50));
          rows.push(latencyRow(name, 'p99', o.p99, r.p99, target, s.p99));
        }
        rows.push(latencyRow(name, 'broker CPU/open', o.cpu, r.cpu, '(info)', s.cpu));
      }
    }
  } finally {
    for (const [b] of brokers) await b.stop();
    await busy?.stop();
    ws.cleanup();
  }
  return rows;
}
