/**
 * Benchmark plumbing shared by the cases: building the yardsticks, starting brokers, running
 * ref-client, and reducing repeated runs to medians. Speed is never asserted anywhere: the figures
 * are printed, and only ratios from the same run mean anything on a shared, noisy machine.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { spawnQemu } from '../src/qemu/spawn.js';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** The openhook CLI the brokers run: this tree's, or $OPENHOOK_BENCH_CLI (another revision's dist/cli/main.js, to compare). */
export const CLI = process.env.OPENHOOK_BENCH_CLI ?? join(ROOT, 'dist', 'cli', 'main.js');
/** The shared yardsticks: ../shared/bench beside the repository, or $OPENHOOK_BENCH_SHARED. */
export const SHARED = process.env.OPENHOOK_BENCH_SHARED ?? resolve(ROOT, '..', 'shared', 'bench');
const OUT = join(ROOT, 'build', 'bench');

/** Compiles a C file once (rebuilt when the source is newer); returns the binary. */
export function compile(src: string, name: string, flags: string[] = []): string {
  if (!existsSync(src))
    throw new Error(`${src} is missing: set OPENHOOK_BENCH_SHARED to the directory holding ref-broker.c and ref-client.c`);
  mkdirSync(OUT, { recursive: true });
  const bin = join(OUT, name);
  if (!existsSync(bin) || statSync(bin).mtimeMs < statSync(src).mtimeMs)
    execFileSync('cc', ['-O2', '-o', bin, src, ...flags], { stdio: 'inherit' });
  return bin;
}

export const refBroker = (): string => compile(join(SHARED, 'ref-broker.c'), 'ref-broker');
export const refClient = (): string => compile(join(SHARED, 'ref-client.c'), 'ref-client');
/** Ours: the reference broker doing openhook's safe open (and, given a file, an audit line per request). */
export const refSafe = (): string => compile(join(ROOT, 'bench', 'ref-safe.c'), 'ref-safe');

export interface Workspace {
  dir: string;
  /** a small file inside dir, the one every case opens */
  file: string;
  cleanup(): void;
}

export function workspace(): Workspace {
  const dir = mkdtempSync(join(tmpdir(), 'openhook-bench-'));
  mkdirSync(join(dir, 'data'));
  const file = join(dir, 'data', 'disk.img');
  writeFileSync(file, 'x'.repeat(4096));
  return { dir, file, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface Running {
  child: ChildProcess;
  socket: string;
  stop(): Promise<void>;
}

async function waitForSocket(child: ChildProcess, socket: string, what: string): Promise<void> {
  for (let i = 0; i < 1000 && !existsSync(socket); i++) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}`);
    await sleep(5);
  }
  if (!existsSync(socket)) throw new Error(`${what} did not create ${socket}`);
}

function running(child: ChildProcess, socket: string): Running {
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  return {
    child,
    socket,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** Starts the C reference broker serving everything beneath root. */
export async function startRef(socket: string, root: string): Promise<Running> {
  const child = spawn(refBroker(), [socket, root], { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForSocket(child, socket, 'ref-broker');
  return running(child, socket);
}

/** Starts the C safe variant (bench/ref-safe.c) serving everything beneath root, auditing to audit if given. */
export async function startRefSafe(socket: string, root: string, audit?: string): Promise<Running> {
  const child = spawn(refSafe(), [socket, root, ...(audit ? [audit] : [])], { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForSocket(child, socket, 'ref-safe');
  return running(child, socket);
}

/** Starts `openhook serve` with the given arguments after --socket. */
export async function startOpenhook(socket: string, args: string[], nodeArgs: string[] = []): Promise<Running> {
  const child = spawn(process.execPath, [...nodeArgs, CLI, 'serve', '--socket', socket, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  try {
    await waitForSocket(child, socket, 'openhook serve');
  } catch (e) {
    throw new Error(`${(e as Error).message}: ${err}`);
  }
  return running(child, socket);
}

export interface ClientResult {
  opensPerS: number;
  meanUs: number;
  p50Us?: number;
  p99Us?: number;
  errors: number;
}

/** Runs ref-client against a socket. */
export function runRefClient(
  socket: string,
  name: string,
  count: number,
  clients = 1,
  depth = 1,
  kind: 'seqpacket' | 'stream' = 'seqpacket',
): ClientResult {
  const out = execFileSync(refClient(), [socket, name, String(count), String(clients), String(depth), kind], {
    encoding: 'utf8',
    maxBuffer: 1 << 20,
  });
  const get = (k: string): number | undefined => {
    const m = new RegExp(`^${k} ([0-9.]+)$`, 'm').exec(out);
    return m ? Number(m[1]) : undefined;
  };
  return {
    opensPerS: get('opens_per_s')!,
    meanUs: get('mean_us')!,
    p50Us: get('p50_us'),
    p99Us: get('p99_us'),
    errors: get('errors') ?? 0,
  };
}

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** A row of the results table: openhook's figure, the reference's, and the ratio (≥1 is as good). */
export interface Row {
  case: string;
  metric: string;
  openhook: number;
  reference: number;
  /** openhook/reference for rates, reference/openhook for latencies and costs: ≥ 1.0 means as good */
  ratio: number;
  target: string;
  unit: string;
  /** the C safe variant's figure (bench/ref-safe.c), where it was measured */
  safe?: number;
}

export function rateRow(caseName: string, oh: number[], ref: number[], target: string, safe?: number[]): Row {
  const o = median(oh),
    r = median(ref);
  return {
    case: caseName,
    metric: 'opens/s',
    openhook: o,
    reference: r,
    ratio: o / r,
    target,
    unit: '/s',
    ...(safe?.length && { safe: median(safe) }),
  };
}

export function latencyRow(caseName: string, metric: string, oh: number[], ref: number[], target: string, safe?: number[]): Row {
  const o = median(oh),
    r = median(ref);
  return {
    case: caseName,
    metric,
    openhook: o,
    reference: r,
    ratio: r / o,
    target,
    unit: 'µs',
    ...(safe?.length && { safe: median(safe) }),
  };
}

/** openhook against the C safe variant, in the table's convention (≥ 1.0 is as good). */
export function safeRatio(r: Row): number | undefined {
  if (r.safe === undefined) return undefined;
  return r.unit === '/s' ? r.openhook / r.safe : r.safe / r.openhook;
}

export function printTable(rows: Row[]): void {
  const fmt = (n: number, unit: string): string =>
    unit === 'µs' ? n.toFixed(1) : n >= 1000 ? Math.round(n).toLocaleString('en') : n.toFixed(2);
  const header = ['case', 'metric', 'openhook', 'reference', 'ratio', 'target', 'C safe', 'vs C safe'];
  const lines = rows.map((r) => {
    const vsSafe = safeRatio(r);
    return [
      r.case,
      r.metric,
      `${fmt(r.openhook, r.unit)} ${r.unit}`.trim(),
      `${fmt(r.reference, r.unit)} ${r.unit}`.trim(),
      `${r.ratio.toFixed(2)}×`,
      r.target,
      r.safe === undefined ? '' : `${fmt(r.safe, r.unit)} ${r.unit}`.trim(),
      vsSafe === undefined ? '' : `${vsSafe.toFixed(2)}×`,
    ];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const row = (cells: string[]): string => '| ' + cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ') + ' |';
  console.log(row(header));
  console.log('|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|');
  for (const l of lines) console.log(row(l));
}

/** A small TCG VM that waits (-S): what the QMP-ready figures start. */
export const QEMU_MACHINE = ['-machine', 'pc,accel=tcg', '-S', '-nodefaults', '-display', 'none', '-m', '128'];

/** Starts QEMU (behind prefix, a launcher), waits for QMP to be ready, quits it; returns the ms until ready. */
export async function qmpReadyMs(args: string[], prefix: string[]): Promise<number> {
  const started = performance.now();
  const q = await spawnQemu(args, { prefix });
  const ms = performance.now() - started;
  const exit = await q.quit();
  if (exit.code !== 0) throw new Error(`QEMU exited with ${exit.signal ?? exit.code}: ${q.stderr()}`);
  return ms;
}
