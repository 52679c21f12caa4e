/**
 * QMP-ready time of confined QEMU against plain QEMU: from spawn until QEMU has answered
 * qmp_capabilities, with the same machine, the same disk image (opened through the hook when
 * confined) and the same QMP wiring (a socketpair on QEMU's stdin), in alternating runs.
 *
 * Three rows:
 * - `openhook run --preload -- qemu...` from the shell's point of view: the figure includes Node
 *   starting the CLI, which alone takes longer than plain QEMU's whole start with -S.
 * - a bare Node wrapper (bench/node-wrapper.mjs: start, spawn, nothing else) in front of QEMU: the
 *   floor that Node's own start-up sets for any command line written in Node.
 * - launch() in-process with the interposer, as an orchestrator written in Node embeds it: what the
 *   hook itself costs QEMU (launch helper, Landlock, seccomp, LD_PRELOAD, brokered image opens).
 *
 * With OPENHOOK_BENCH_CLI_COMPARE=OTHER/dist/cli/main.js, another revision's `openhook run` joins the
 * same rotation as a row of its own (a before/after comparison of start-up in one run).
 *
 * The target is at most 1.5x plain QEMU's time, a ratio of at least 0.67x in the table's convention
 * (>= 1.0 is as good as the reference).
 *
 *   npm run bench -- --only qemu        (once bench/run.ts calls benchQemu)
 *   node --import tsx bench/qemu.ts [--runs N]
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Broker } from '../src/broker/broker.js';
import { launch, type LaunchResult } from '../src/launch/launch.js';
import { PRELOAD_LIBRARY, preloadValue } from '../src/launch/preload.js';
import { C, native } from '../src/native.js';
import { Policy } from '../src/policy/policy.js';
import { parseAllowFlag } from '../src/policy/rule.js';
import { connectQmp } from '../src/qemu/qmp.js';
import { qmpArgs } from '../src/qemu/spawn.js';
import { CLI, median, printTable, ROOT, workspace, type Row, QEMU_MACHINE, qmpReadyMs } from './lib.js';

export interface QemuBenchOptions {
  runs: number;
}

/** The same start through launch() in this process: confined, with the interposer, served by an in-process broker. */
async function readyInProcess(args: string[], vm: string): Promise<number> {
  const broker = new Broker({ policy: new Policy([parseAllowFlag(`${vm}/:rwc`)]), log: () => {} });
  const [ours, theirs] = native.socketpair(C.SOCK_STREAM, false);
  const started = performance.now();
  let done: Promise<LaunchResult>;
  try {
    // launch() spawns before its first await: once it returns, QEMU holds its own copy of theirs.
    // What `openhook run --preload` does: the interposer first in LD_PRELOAD, and readable.
    done = launch({
      command: 'qemu-system-x86_64',
      args: [...args, ...qmpArgs('stdin')],
      broker,
      env: { LD_PRELOAD: preloadValue() },
      readOnly: [PRELOAD_LIBRARY],
      stdio: [theirs, 'ignore', 'ignore'],
    });
  } finally {
    native.close(theirs);
  }
  try {
    const qmp = await connectQmp({ fd: ours, timeout: 30_000 });
    const ms = performance.now() - started;
    await qmp.execute('quit').catch(() => {});
    qmp.close();
    const { status } = await done;
    if (status !== 0) throw new Error(`confined QEMU exited with status ${status}`);
    return ms;
  } finally {
    broker.close();
  }
}

export async function benchQemu(opts: QemuBenchOptions): Promise<Row[]> {
  const ws = workspace();
  const vm = join(ws.dir, 'vm');
  mkdirSync(vm);
  const image = join(vm, 'base.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
  const args = [
    ...QEMU_MACHINE,
    '-blockdev',
    `driver=file,node-name=base-file,filename=${image}`,
    '-blockdev',
    'driver=qcow2,node-name=base,file=base-file',
    '-device',
    'virtio-blk-pci,drive=base,id=disk0',
  ];
  const confined = [process.execPath, CLI, 'run', '--preload', '--allow', `${vm}/:rwc`, '--'];
  const wrapper = [process.execPath, join(ROOT, 'bench', 'node-wrapper.mjs')];
  const plain: number[] = [];
  const cli: number[] = [];
  const wrapped: number[] = [];
  const otherCli = process.env.OPENHOOK_BENCH_CLI_COMPARE;
  const other = otherCli ? [process.execPath, otherCli, 'run', '--preload', '--allow', `${vm}/:rwc`, '--'] : null;
  const compared: number[] = [];
  const inProcess: number[] = [];
  try {
    // Warm all three (page cache for QEMU, its firmware, Node and the CLI) before measuring.
    await qmpReadyMs(args, []);
    await qmpReadyMs(args, confined);
    await qmpReadyMs(args, wrapper);
    if (other) await qmpReadyMs(args, other);
    await readyInProcess(args, vm);
    for (let i = 0; i < opts.runs; i++) {
      plain.push(await qmpReadyMs(args, []));
      cli.push(await qmpReadyMs(args, confined));
      wrapped.push(await qmpReadyMs(args, wrapper));
      if (other) compared.push(await qmpReadyMs(args, other));
      inProcess.push(await readyInProcess(args, vm));
    }
  } finally {
    ws.cleanup();
  }
  const row = (name: string, times: number[]): Row => {
    const o = median(times),
      r = median(plain);
    return { case: name, metric: 'ms to QMP', openhook: o, reference: r, ratio: r / o, target: '≥ 0.67× (≤ 1.5× plain)', unit: 'ms' };
  };
  return [
    row('QEMU QMP-ready: openhook run --preload (CLI) vs plain', cli),
    ...(other ? [row(`QEMU QMP-ready: ${otherCli} run --preload vs plain`, compared)] : []),
    { ...row('QEMU QMP-ready: bare Node wrapper (spawn only) vs plain', wrapped), target: '(floor for a Node CLI)' },
    row('QEMU QMP-ready: launch() + interposer in-process vs plain', inProcess),
  ];
}

if (process.argv[1]?.endsWith('qemu.ts') || process.argv[1]?.endsWith('qemu.js')) {
  const { values } = parseArgs({ options: { runs: { type: 'string', default: '10' } } });
  const rows = await benchQemu({ runs: Number(values.runs) });
  printTable(rows);
  console.log();
  for (const row of rows)
    console.log(`${row.case}: confined/plain = ${(row.openhook / row.reference).toFixed(2)}× (medians of ${values.runs} alternating runs)`);
}
