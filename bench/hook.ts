/**
 * The syscall hook's costs, each against its yardstick in the same run, one broker in this process:
 *
 *   - a trapped open answered with an fd (ADDFD) against the same open over the hook socket (the
 *     interposer), same broker, same program (bench/hook-opens.c): goal ≤ 1.2×;
 *   - `python3 -c 'import json, email, http.client'` confined against unconfined, the start-up of
 *     the launch itself (the same launch of /bin/true) subtracted: goal ≤ 1.5×;
 *   - `tar xf` of 1,000 files (a flat archive) into a granted directory, confined against unconfined,
 *     with the same subtraction: goal ≤ 2×;
 *   - the p99 of a trapped open while the same broker serves a busy socket client.
 * In the table's convention, ≥ 1.0 is as good as the yardstick; a cost goal of 1.2× reads ≥ 0.83×.
 *
 *   npm run bench -- --only hook
 */
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Broker } from '../src/broker/broker.js';
import { launch } from '../src/launch/launch.js';
import { PRELOAD_LIBRARY } from '../src/launch/preload.js';
import { Policy } from '../src/policy/policy.js';
import { parseAllowFlag } from '../src/policy/rule.js';
import { compile, latencyRow, ROOT, type Row } from './lib.js';

export interface HookBenchOptions {
  runs: number;
  count: number;
}

interface Opens {
  meanUs: number;
  p99Us: number;
}

export async function benchHook(opts: HookBenchOptions): Promise<Row[]> {
  const opener = compile(join(ROOT, 'bench', 'hook-opens.c'), 'hook-opens');
  const dir = mkdtempSync(join(tmpdir(), 'openhook-bench-hook-'));
  const data = join(dir, 'data');
  mkdirSync(data);
  const file = join(data, 'disk.img');
  writeFileSync(file, 'x'.repeat(4096));
  const broker = new Broker({ policy: new Policy([parseAllowFlag(`${dir}/:rwcd`)]), log: () => {} });
  const bin = join(ROOT, 'build', 'bench');
  let outputs = 0;

  /** Runs a command confined, its stdout to a file; resolves with the wall time in ms and the output. */
  const confined = async (command: string, args: string[], hook: boolean): Promise<{ ms: number; out: string }> => {
    const outFile = join(dir, `out-${outputs++}`);
    const fd = openSync(outFile, 'w');
    const t = performance.now();
    let status: number;
    try {
      status = (
        await launch({
          command,
          args,
          broker,
          readOnly: [bin, ...(hook ? [] : [PRELOAD_LIBRARY])],
          stdio: ['ignore', fd, 'inherit'],
          ...(hook ? { syscallHook: {} } : { env: { LD_PRELOAD: PRELOAD_LIBRARY } }),
        })
      ).status;
    } finally {
      closeSync(fd);
    }
    const ms = performance.now() - t;
    const out = readFileSync(outFile, 'utf8');
    if (status !== 0) throw new Error(`${command} exited with ${status}: ${out}`);
    return { ms, out };
  };
  const opens = (out: string): Opens => ({
    meanUs: Number(/^mean_us ([0-9.]+)$/m.exec(out)![1]),
    p99Us: Number(/^p99_us ([0-9.]+)$/m.exec(out)![1]),
  });
  const free = (command: string, args: string[]): Promise<number> =>
    new Promise((resolve, reject) => {
      const t = performance.now();
      const child = spawn(command, args, { stdio: 'ignore' });
      child.on('error', reject);
      child.on('close', (code) => (code === 0 ? resolve(performance.now() - t) : reject(new Error(`${command} exited with ${code}`))));
    });

  const rows: Row[] = [];
  try {
    // 1. trapped vs hook socket, alternating runs
    const trapped: number[] = [],
      socket: number[] = [];
    await confined(opener, [file, '2000'], true); // warm up
    for (let i = 0; i < opts.runs; i++) {
      trapped.push(opens((await confined(opener, [file, String(opts.count)], true)).out).meanUs);
      socket.push(opens((await confined(opener, [file, String(opts.count)], false)).out).meanUs);
    }
    rows.push(
      latencyRow(
        'trapped open (syscall hook, ADDFD) vs hook socket (interposer), same broker',
        'µs/open',
        trapped,
        socket,
        '≥ 0.83× (cost ≤ 1.2×)',
      ),
    );

    // 2. python imports, launch start-up subtracted
    const py = ['-c', 'import json, email, http.client'];
    const pyIn: number[] = [],
      pyOut: number[] = [];
    for (let i = 0; i < opts.runs; i++) {
      const base = (await confined('/bin/true', [], true)).ms;
      pyIn.push((await confined('/usr/bin/python3', py, true)).ms - base);
      pyOut.push((await free('/usr/bin/python3', py)) - (await free('/bin/true', [])));
    }
    rows.push(
      latencyRow(
        "python3 -c 'import json, email, http.client' confined vs unconfined",
        'µs wall',
        pyIn.map((x) => x * 1000),
        pyOut.map((x) => x * 1000),
        '≥ 0.67× (cost ≤ 1.5×)',
      ),
    );

    // 3. tar xf of 1,000 files into a granted directory
    const src = join(dir, 'src');
    mkdirSync(src);
    for (let i = 0; i < 1000; i++) writeFileSync(join(src, `f${i}`), `file ${i}\n`);
    const archive = join(dir, 'files.tar');
    execFileSync('tar', ['cf', archive, '-C', src, '.']);
    const tarIn: number[] = [],
      tarOut: number[] = [];
    for (let i = 0; i < opts.runs; i++) {
      const a = join(dir, `in${i}`),
        b = join(dir, `out${i}`);
      mkdirSync(a);
      mkdirSync(b);
      const base = (await confined('/bin/true', [], true)).ms;
      tarIn.push((await confined('tar', ['xmf', archive, '--no-same-owner', '--no-same-permissions', '-C', a], true)).ms - base);
      tarOut.push(
        (await free('tar', ['xmf', archive, '--no-same-owner', '--no-same-permissions', '-C', b])) - (await free('/bin/true', [])),
      );
    }
    rows.push(
      latencyRow(
        'tar xf of 1,000 files confined vs unconfined',
        'µs wall',
        tarIn.map((x) => x * 1000),
        tarOut.map((x) => x * 1000),
        '≥ 0.5× (cost ≤ 2×)',
      ),
    );

    // 4. p99 of a trapped open while a socket client keeps the same broker busy
    const quietP99: number[] = [],
      busyP99: number[] = [];
    for (let i = 0; i < opts.runs; i++) {
      quietP99.push(opens((await confined(opener, [file, String(opts.count)], true)).out).p99Us);
      const busy = confined(opener, [file, String(opts.count * 4)], false);
      busyP99.push(opens((await confined(opener, [file, String(opts.count)], true)).out).p99Us);
      await busy;
    }
    rows.push(latencyRow('p99 of a trapped open, busy socket client vs idle broker', 'µs p99', busyP99, quietP99, 'report it'));
  } finally {
    broker.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}
