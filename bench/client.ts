/**
 * The library client (src/client, Node) against ref-client (C), both driving the same `openhook
 * serve` (realistic policy, audit log on) with the same number of requests in flight on one
 * connection, in alternating runs. The ratio reads "as fast as the C client" at 1.0×.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { rateRow, ROOT, runRefClient, startOpenhook, workspace, type ClientResult, type Row } from './lib.js';
import { realisticPolicy } from './realistic.js';

export interface ClientBenchOptions {
  runs: number;
  count: number;
}

function runLibraryClient(socket: string, path: string, count: number, depth: number): ClientResult {
  const out = execFileSync(
    process.execPath,
    ['--import', 'tsx', join(ROOT, 'bench', 'client-driver.ts'), socket, path, String(count), String(depth)],
    { encoding: 'utf8', cwd: ROOT },
  );
  const get = (k: string): number => Number(new RegExp(`^${k} ([0-9.]+)$`, 'm').exec(out)?.[1]);
  return { opensPerS: get('opens_per_s'), meanUs: get('mean_us'), errors: get('errors') };
}

export async function benchClient(opts: ClientBenchOptions): Promise<Row[]> {
  const ws = workspace();
  const policy = join(ws.dir, 'policy.toml');
  writeFileSync(policy, realisticPolicy(ws.dir));
  const oh = await startOpenhook(join(ws.dir, 'oh.sock'), ['--policy', policy, '--audit', join(ws.dir, 'audit.jsonl')]);
  const rows: Row[] = [];
  try {
    runRefClient(oh.socket, ws.file, 2000);
    for (const depth of [16, 1]) {
      const lib: number[] = [],
        ref: number[] = [];
      for (let i = 0; i < opts.runs; i++) {
        const l = runLibraryClient(oh.socket, ws.file, opts.count, depth);
        const r = runRefClient(oh.socket, ws.file, opts.count, 1, depth);
        if (l.errors || r.errors) throw new Error(`client bench: ${l.errors} + ${r.errors} errors`);
        lib.push(l.opensPerS);
        ref.push(r.opensPerS);
      }
      const name =
        depth === 1 ? 'library client (Node), synchronous, vs ref-client' : `library client (Node), ${depth} in flight, vs ref-client`;
      rows.push(rateRow(name, lib, ref, '(report)'));
    }
  } finally {
    await oh.stop();
    ws.cleanup();
  }
  return rows;
}
