/**
 * The cost of an interposed open: a plain C program opening one file N times under the interposer,
 * against the same N opens sent as raw RFC frames by ../shared/bench/ref-client.c, over the same
 * broker (`openhook serve`), one after the other, in alternating rounds. The figure that matters is
 * the ratio of the two (target: at most 1.2), never an absolute rate: the machines are shared.
 *
 *   node --import tsx bench/interposer.ts [COUNT [ROUNDS]]
 *
 * `npm run bench` calls benchInterposer().
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { PRELOAD_LIBRARY } from '../src/launch/preload.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
const REF_CLIENT_SRC = process.env.OPENHOOK_REF_CLIENT ?? join(ROOT, '..', '..', 'shared', 'bench', 'ref-client.c');

export interface InterposerBenchOptions {
  /** opens per run (default 20,000) */
  count?: number;
  /** alternating runs of each (default 5); the median is reported */
  rounds?: number;
  /** ref-client.c; default $OPENHOOK_REF_CLIENT or /work/shared/bench/ref-client.c */
  refClientSource?: string;
}

export interface Rate {
  opensPerSec: number;
  meanUs: number;
}

export interface InterposerBenchResult {
  count: number;
  rounds: number;
  /** medians over the rounds */
  interposed: Rate;
  reference: Rate;
  /** interposed mean time per open / reference mean time per open (target: <= 1.2) */
  ratio: number;
  /** per-round ratios, for the spread */
  ratios: number[];
}

function compile(src: string, out: string): string {
  if (!existsSync(out) || statSync(out).mtimeMs < statSync(src).mtimeMs) {
    mkdirSync(dirname(out), { recursive: true });
    execFileSync('cc', ['-O2', '-o', out, src], { stdio: 'inherit' });
  }
  return out;
}

function parse(output: string): Rate {
  const field = (name: string): number => Number(new RegExp(`^${name} ([0-9.]+)$`, 'm').exec(output)?.[1] ?? NaN);
  return { opensPerSec: field('opens_per_s'), meanUs: field('mean_us') };
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export async function benchInterposer(options: InterposerBenchOptions = {}): Promise<InterposerBenchResult> {
  const count = options.count ?? 20_000;
  const rounds = options.rounds ?? 5;
  const refClient = compile(options.refClientSource ?? REF_CLIENT_SRC, join(ROOT, 'build', 'bench', 'ref-client'));
  const opener = compile(join(ROOT, 'bench', 'interposer-opens.c'), join(ROOT, 'build', 'bench', 'interposer-opens'));
  if (!existsSync(PRELOAD_LIBRARY)) throw new Error(`${PRELOAD_LIBRARY} is missing: run npm install`);

  const dir = mkdtempSync(join(tmpdir(), 'openhook-bench-interposer-'));
  const file = join(dir, 'data', 'file');
  mkdirSync(dirname(file));
  writeFileSync(file, 'x');
  const socket = join(dir, 'broker.sock');
  const serve = spawn(process.execPath, [CLI, 'serve', '--socket', socket, '--allow', `${dirname(file)}/:r`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let serveErr = '';
  serve.stderr!.on('data', (d) => (serveErr += d));
  try {
    for (let i = 0; i < 500 && !serveErr.includes('serving'); i++) {
      if (serve.exitCode !== null) throw new Error(`serve exited: ${serveErr}`);
      await sleep(10);
    }
    const env = { PATH: '/usr/bin:/bin', LD_PRELOAD: PRELOAD_LIBRARY, OPENHOOK_SOCKET: socket };
    const interposed: Rate[] = [];
    const reference: Rate[] = [];
    const ratios: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const ref = parse(await run(refClient, [socket, file, String(count)], { PATH: '/usr/bin:/bin' }));
      const mine = parse(await run(opener, [file, String(count)], env));
      reference.push(ref);
      interposed.push(mine);
      ratios.push(mine.meanUs / ref.meanUs);
    }
    return {
      count,
      rounds,
      interposed: { opensPerSec: median(interposed.map((x) => x.opensPerSec)), meanUs: median(interposed.map((x) => x.meanUs)) },
      reference: { opensPerSec: median(reference.map((x) => x.opensPerSec)), meanUs: median(reference.map((x) => x.meanUs)) },
      ratio: median(ratios),
      ratios,
    };
  } finally {
    serve.kill('SIGTERM');
    await new Promise((resolve) => (serve.exitCode !== null ? resolve(null) : serve.on('exit', resolve)));
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Async, so that nothing blocks the event loop while a program runs. */
function run(cmd: string, args: string[], env: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} exited with ${code}: ${err}`))));
  });
}

export function formatInterposerBench(r: InterposerBenchResult): string {
  return [
    `interposer: ${r.count} opens x ${r.rounds} rounds, one synchronous client, same broker (openhook serve)`,
    `  ref-client (raw RFC frames): ${r.reference.opensPerSec.toFixed(0)} opens/s, ${r.reference.meanUs.toFixed(2)} us/open`,
    `  C program under LD_PRELOAD:  ${r.interposed.opensPerSec.toFixed(0)} opens/s, ${r.interposed.meanUs.toFixed(2)} us/open`,
    `  ratio (interposed / ref): ${r.ratio.toFixed(3)} (target <= 1.2; rounds: ${r.ratios.map((x) => x.toFixed(3)).join(' ')})`,
  ].join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const count = process.argv[2] ? Number(process.argv[2]) : undefined;
  const rounds = process.argv[3] ? Number(process.argv[3]) : undefined;
  console.log(formatInterposerBench(await benchInterposer({ count, rounds })));
}
