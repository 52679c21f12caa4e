/**
 * Daemon-backed sessions (issue 16, part 4): what starting a confined program costs when a running
 * `openhook serve` hosts it and the launcher is native (openhook-exec), against `openhook run`,
 * which starts Node for every program. In alternating runs, on one machine:
 *
 * - QMP-ready of QEMU through openhook-exec vs plain QEMU (same machine, same image, opened through
 *   the daemon when confined, same QMP wiring): goal ≤ 1.5×.
 * - `/bin/true` through openhook-exec (connect, SESSION, Landlock, seccomp, listener handed over,
 *   exec, and the program's own loader opens served by the daemon): goal ≤ 20 ms. The reference is
 *   plain /bin/true spawned the same way (Node's spawnSync, whose own cost is in both).
 * - `openhook run -- /bin/true`, and a bare Node wrapper that only spawns /bin/true: what is left
 *   of `run` beyond Node's own start-up is the CLI's module loading, the broker and the launch.
 *
 *   npm run bench -- --only daemon
 *   node --import tsx bench/daemon.ts [--runs N]
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { LAUNCHER_PATH } from '../src/hook/sessions.js';
import { CLI, median, printTable, ROOT, startOpenhook, workspace, type Row, QEMU_MACHINE, qmpReadyMs } from './lib.js';

export interface DaemonBenchOptions {
  runs: number;
}

function trueMs(command: string[]): number {
  const started = performance.now();
  const r = spawnSync(command[0]!, command.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  const ms = performance.now() - started;
  if (r.status !== 0) throw new Error(`${command.join(' ')} exited with ${r.status}: ${r.stderr}`);
  return ms;
}

export async function benchDaemon(opts: DaemonBenchOptions): Promise<Row[]> {
  const ws = workspace();
  const vm = join(ws.dir, 'vm');
  mkdirSync(vm);
  const image = join(vm, 'base.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
  const policy = join(ws.dir, 'sessions.toml');
  writeFileSync(policy, `[[client]]\nsession = "vm"\n[[client.rule]]\nallow = "${vm}/"\naccess = "rwc"\n`);
  const socket = join(ws.dir, 'daemon.sock');
  const daemon = await startOpenhook(socket, ['--policy', policy]);
  const args = [
    ...QEMU_MACHINE,
    '-blockdev',
    `driver=file,node-name=base-file,filename=${image}`,
    '-blockdev',
    'driver=qcow2,node-name=base,file=base-file',
    '-device',
    'virtio-blk-pci,drive=base,id=disk0',
  ];
  const exec = [LAUNCHER_PATH, '--socket', socket, '--session', 'vm', '--'];
  const run = [process.execPath, CLI, 'run', '--'];
  const wrapper = [process.execPath, join(ROOT, 'bench', 'node-wrapper.mjs')];
  const plainQmp: number[] = [],
    execQmp: number[] = [];
  const plainTrue: number[] = [],
    execTrue: number[] = [],
    runTrue: number[] = [],
    wrapperTrue: number[] = [];
  try {
    await qmpReadyMs(args, []);
    await qmpReadyMs(args, exec);
    for (const c of [['/bin/true'], [...exec, '/bin/true'], [...run, '/bin/true'], [...wrapper, '/bin/true']]) trueMs(c);
    for (let i = 0; i < opts.runs; i++) {
      plainQmp.push(await qmpReadyMs(args, []));
      execQmp.push(await qmpReadyMs(args, exec));
    }
    for (let i = 0; i < Math.max(opts.runs, 10); i++) {
      plainTrue.push(trueMs(['/bin/true']));
      execTrue.push(trueMs([...exec, '/bin/true']));
      runTrue.push(trueMs([...run, '/bin/true']));
      wrapperTrue.push(trueMs([...wrapper, '/bin/true']));
    }
  } finally {
    await daemon.stop();
    ws.cleanup();
  }
  const ms = (name: string, times: number[], ref: number[], target: string): Row => {
    const o = median(times),
      r = median(ref);
    return { case: name, metric: 'ms', openhook: o, reference: r, ratio: r / o, target, unit: 'ms' };
  };
  return [
    {
      ...ms('QEMU QMP-ready: openhook-exec under openhook serve vs plain', execQmp, plainQmp, '≥ 0.67× (≤ 1.5× plain)'),
      metric: 'ms to QMP',
    },
    ms('/bin/true: openhook-exec under openhook serve vs plain', execTrue, plainTrue, '≤ 20 ms'),
    ms('/bin/true: openhook run vs plain', runTrue, plainTrue, '(report)'),
    ms('/bin/true: bare Node wrapper (spawn only) vs plain', wrapperTrue, plainTrue, '(floor for a Node CLI)'),
  ];
}

if (process.argv[1]?.endsWith('daemon.ts') || process.argv[1]?.endsWith('daemon.js')) {
  const { values } = parseArgs({ options: { runs: { type: 'string', default: '10' } } });
  printTable(await benchDaemon({ runs: Number(values.runs) }));
}
