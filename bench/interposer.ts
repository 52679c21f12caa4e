/**
 * The cost of an interposed open: a plain C program (bench/interposer-opens.c) opening one file N
 * times under the interposer, against the same N opens sent as raw RFC frames by ref-client, over the
 * same broker (`openhook serve`), one synchronous client each, in alternating runs. The interposer
 * adds a path normalisation and a few cheap syscalls (getpid, fstat) to each open; the target is an
 * interposed open costing at most 1.2× ref-client's, which is a ratio of at least 0.83× in the
 * table's convention (≥ 1.0 is as good as the reference).
 *
 *   npm run bench -- --only interposer
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PRELOAD_LIBRARY } from '../src/launch/preload.js';
import { compile, latencyRow, ROOT, runRefClient, startOpenhook, workspace, type Row } from './lib.js';

export interface InterposerBenchOptions {
  runs: number;
  /** opens per run */
  count: number;
}

export async function benchInterposer(opts: InterposerBenchOptions): Promise<Row[]> {
  if (!existsSync(PRELOAD_LIBRARY)) throw new Error(`${PRELOAD_LIBRARY} is missing: run npm install`);
  const opener = compile(join(ROOT, 'bench', 'interposer-opens.c'), 'interposer-opens');
  const ws = workspace();
  const oh = await startOpenhook(join(ws.dir, 'oh.sock'), [`--allow=${join(ws.dir, 'data')}/:r`]);
  const env = { PATH: '/usr/bin:/bin', LD_PRELOAD: PRELOAD_LIBRARY, OPENHOOK_SOCKET: oh.socket };
  const interposed: number[] = [];
  const reference: number[] = [];
  try {
    runRefClient(oh.socket, ws.file, 2000); // warm the broker (JIT, page cache)
    for (let i = 0; i < opts.runs; i++) {
      interposed.push((await runOpener(opener, ws.file, opts.count, env)).meanUs);
      reference.push(runRefClient(oh.socket, ws.file, opts.count).meanUs);
    }
  } finally {
    await oh.stop();
    ws.cleanup();
  }
  return [latencyRow('interposed open (LD_PRELOAD) vs ref-client, same broker', 'µs/open', interposed, reference, '≥ 0.83× (cost ≤ 1.2×)')];
}

/** Runs the opener without blocking the event loop; returns its mean time per open. */
function runOpener(bin: string, file: string, count: number, env: Record<string, string>): Promise<{ meanUs: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, [file, String(count)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => {
      const mean = /^mean_us ([0-9.]+)$/m.exec(out);
      if (code !== 0 || !mean) reject(new Error(`interposer-opens exited with ${code}: ${err}${out}`));
      else resolve({ meanUs: Number(mean[1]) });
    });
  });
}
