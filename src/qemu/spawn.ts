/**
 * Starting QEMU with its QMP monitor already wired to us, for the demo, the benchmark and the tests,
 * and for orchestrators that want the same. Two wirings:
 *
 * - 'stdin' (default): QEMU's stdin is one end of a socketpair (`-chardev socket,id=qmp,fd=0`).
 *   No path at all, and it works confined: `openhook run` keeps stdio and closes every other
 *   inherited fd, and its seccomp filter refuses socket(AF_UNIX), but a socket QEMU already holds
 *   needs neither. QEMU's stdout stays free for what it prints (HMP qemu-io writes there).
 * - { listen: PATH }: we listen on PATH and QEMU connects to us (`-chardev socket,...,server=off`).
 *   QEMU must create a socket for this: under `openhook run` only with --allow-unix-sockets, which
 *   lets it connect to any socket it can name. Use it for QEMU that is not confined.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { C, native } from '../native.js';
import { QmpClosedError } from './errors.js';
import { connectQmp, QmpListener, type QmpClient } from './qmp.js';

export type QmpWiring = 'stdin' | { listen: string };

export interface SpawnQemuOptions {
  /** default 'qemu-system-x86_64' */
  binary?: string;
  /** a command that runs QEMU, such as ['openhook', 'run', '--preload', '--'] */
  prefix?: string[];
  /** default 'stdin' */
  qmp?: QmpWiring;
  /** ms until QMP is ready; default 30 000 */
  timeout?: number;
  env?: NodeJS.ProcessEnv;
  /** default: stdout ignored, stderr collected */
  stdout?: 'ignore' | 'inherit' | 'pipe';
  /** called with each line QEMU (or the prefix command) writes to stderr, as it comes */
  onStderrLine?: (line: string) => void;
}

export interface QemuProcess {
  child: ChildProcess;
  qmp: QmpClient;
  /** what QEMU (and the prefix command) wrote to stderr so far */
  stderr(): string;
  /** resolves when the process exits */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** quit over QMP and wait for the exit; SIGTERM (then SIGKILL) if it has not exited within ms */
  quit(ms?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * The command prefix that runs QEMU under `openhook run` (this package's own CLI, with the same
 * Node): openhookRun(['--preload', '--policy', 'vm.toml']) for spawnQemu's `prefix`.
 */
export function openhookRun(runArgs: readonly string[]): string[] {
  const here = fileURLToPath(import.meta.url);
  const main = join(dirname(here), '..', 'cli', here.endsWith('.ts') ? 'main.ts' : 'main.js');
  return [process.execPath, ...(here.endsWith('.ts') ? ['--import', 'tsx'] : []), main, 'run', ...runArgs, '--'];
}

/** The QMP monitor options for a wiring. */
export function qmpArgs(wiring: QmpWiring): string[] {
  const chardev = wiring === 'stdin' ? 'socket,id=qmp,fd=0' : `socket,id=qmp,path=${wiring.listen},server=off`;
  return ['-chardev', chardev, '-mon', 'chardev=qmp,mode=control'];
}

/** Starts QEMU (through the prefix command, if any) and returns it with its QMP client ready. */
export async function spawnQemu(args: string[], options: SpawnQemuOptions = {}): Promise<QemuProcess> {
  const wiring = options.qmp ?? 'stdin';
  const timeout = options.timeout ?? 30_000;
  const command = [...(options.prefix ?? []), options.binary ?? 'qemu-system-x86_64', ...args, ...qmpArgs(wiring)];
  let ours = -1,
    theirs = -1;
  let listener: QmpListener | null = null;
  if (wiring === 'stdin') [ours, theirs] = native.socketpair(C.SOCK_STREAM, false);
  else listener = new QmpListener(wiring.listen);

  let err = '';
  let child: ChildProcess;
  try {
    child = spawn(command[0]!, command.slice(1), {
      stdio: [theirs >= 0 ? theirs : 'ignore', options.stdout ?? 'ignore', 'pipe'],
      env: options.env ?? process.env,
    });
  } finally {
    if (theirs >= 0) native.close(theirs);
  }
  let partial = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    err += d;
    if (!options.onStderrLine) return;
    const lines = (partial + d).split('\n');
    partial = lines.pop()!;
    for (const line of lines) options.onStderrLine(line);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }));
    // A command that cannot be started (ENOENT) may report only an error.
    child.on('error', (e) => {
      err += `${e.message}\n`;
      resolve({ code: null, signal: null });
    });
  });
  const running = (): boolean => child.exitCode === null && child.signalCode === null;
  /**
   * SIGTERM first: `openhook run` passes it on to QEMU, which shuts down cleanly; SIGKILL to run
   * would kill QEMU too (the launch helper's parent-death signal), but without that shutdown.
   * SIGKILL if it is still there after a grace period.
   */
  const stop = async (graceMs = 3000): Promise<void> => {
    if (!running()) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => running() && child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  };
  const died = exited.then(({ code, signal }) => {
    throw new Error(`${command[0]} exited (${signal ?? code}) before QMP was ready: ${err.trim()}`);
  });
  died.catch(() => {});

  let qmp: QmpClient;
  try {
    const ready = listener ? listener.accept({ timeout }) : connectQmp({ fd: ours, timeout });
    ready.then(
      (q) => died.catch(() => q.close()),
      () => {},
    ); // the loser of the race must not leak
    qmp = await Promise.race([ready, died]);
  } catch (e) {
    listener?.close();
    const diedFirst = !running();
    await stop();
    if (!diedFirst && !(e instanceof QmpClosedError)) throw e;
    // It died by itself (its QMP socket closing may be seen first): its stderr says why.
    await new Promise((r) => (child.stderr!.readableEnded ? r(null) : child.stderr!.once('end', r)));
    throw new Error(`${command[0]} exited before QMP was ready: ${err.trim() || 'no message'}`, { cause: e });
  }
  return {
    child,
    qmp,
    stderr: () => err,
    exited,
    async quit(ms = 10_000) {
      if (running()) {
        const timer = setTimeout(() => void stop(), ms);
        await qmp.execute('quit').catch(() => {}); // QEMU may close the socket before its reply
        await exited;
        clearTimeout(timer);
      }
      qmp.close();
      return exited;
    },
  };
}
