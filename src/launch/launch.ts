/**
 * Launching a confined program with its hook socket: the core of `openhook run`.
 *
 *   socketpair ──broker end──▶ broker.adopt(fd, 'seqpacket', { session })
 *        └──────client end──▶ openhook-launch (fd 3 → fd N, Landlock, seccomp) ──exec──▶ CMD
 *
 * The client end reaches CMD as fd N (OPENHOOK_FD=N); CMD's descendants inherit it and are served
 * as the same session. The helper's report arrives on a second socket, which closes when CMD is
 * exec'd. When CMD exits, its connection is closed: the session is over, even if a descendant still
 * holds the fd.
 */
import { spawn, type ChildProcess, type StdioNull, type StdioPipe } from 'node:child_process';
import { existsSync, fstatSync } from 'node:fs';
import type { Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Broker } from '../broker/broker.js';
import type { Peer } from '../policy/policy.js';
import { C, native } from '../native.js';
import { Continuation } from '../hook/continuation.js';
import { HookServer } from '../hook/server.js';
import { notify } from '../hook/native.js';
import { E } from '../errno.js';
import { PollMode } from '../native.js';
import { confinementFor } from './confinement.js';
import { describeExecDenied } from './exec-failure.js';
import { emptyReport, parseReportLine, type LaunchReport } from './report.js';

/** The launch helper, built by node-gyp next to the addon (src/launch and dist/launch alike). */
export const HELPER_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'Release', 'openhook-launch');

/** Exit statuses of `run` itself, as env(1) and the shells use them. */
export const EXIT_REFUSED = 125;
export const EXIT_CANNOT_EXEC = 126;
export const EXIT_NOT_FOUND = 127;

export const FORWARDED_SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

export interface LaunchOptions {
  command: string;
  args?: readonly string[];
  /** the broker that serves the program's hook socket; launch() adopts one connection into it */
  broker: Broker;
  /** the session name policy sections match on; default: the command's base name */
  session?: string;
  /** the fd number of the hook socket in the program (OPENHOOK_FD); default: the lowest from 3 up that is not passed */
  hookFd?: number;
  /**
   * fds of this process that the program gets at the same numbers (libvirt-style `fd=N` arguments:
   * a QMP listener, a tap device). Each must be open; none may be the hook's number.
   */
  passFds?: readonly number[];
  /** character devices the program may open itself, read-write with their ioctls (/dev/kvm) */
  devices?: readonly string[];
  /** more paths the program may read (and execute) itself, besides the system directories */
  readOnly?: readonly string[];
  /** environment changes for the program: a value sets, undefined removes (e.g. LD_PRELOAD) */
  env?: Readonly<Record<string, string | undefined>>;
  /** run even if Landlock or seccomp is unavailable (the report says what was not enforced) */
  allowUnconfined?: boolean;
  /** let the program create UNIX sockets (see docs/run.md: Landlock cannot check their connect) */
  allowUnixSockets?: boolean;
  /**
   * Called once with the helper's report: before CMD is exec'd when waitForReport is set (CMD waits
   * until the callback returns), else once the report is complete.
   */
  onReport?: (report: LaunchReport) => void;
  waitForReport?: boolean;
  /**
   * Trap the program's open family with seccomp user notification and answer it here (the syscall
   * hook, src/hook/): the default of `openhook run`. continueAlways: let the kernel run opens
   * beneath the launch's grants whatever the policy says (learn mode, whose policy decides nothing).
   */
  syscallHook?: { continueAlways?: boolean; onServer?: (server: HookServer) => void };
  /** signals of this process to pass on to the program while it runs; default none */
  forwardSignals?: readonly NodeJS.Signals[];
  /** the program's stdin, stdout and stderr; default: inherited */
  stdio?: [StdioNull | StdioPipe | number, StdioNull | StdioPipe | number, StdioNull | StdioPipe | number];
}

export interface LaunchResult {
  /** the status `run` exits with: CMD's exit code, 128+N for death by signal N, or 125-127 */
  status: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** CMD was exec'd (the helper neither refused nor failed to exec) */
  started: boolean;
  report: LaunchReport;
  pid: number;
}

export class LaunchError extends Error {
  override name = 'LaunchError';
  readonly code: string;
  constructor(message: string, code: string) {
    super(message);
    this.code = code;
  }
}

/** Starts the program confined, serves its hook, and resolves when it has exited. */
export async function launch(options: LaunchOptions): Promise<LaunchResult> {
  const passFds = checkPassFds(options.passFds ?? []);
  const hookFd = options.hookFd ?? lowestFree(passFds);
  if (!Number.isInteger(hookFd) || hookFd < 3)
    throw new LaunchError(`the hook fd must be an integer of 3 or more, not ${hookFd}`, 'ERR_INVALID_ARG_VALUE');
  if (passFds.has(hookFd))
    throw new LaunchError(
      `the hook fd ${hookFd} is also a passed fd: give the hook another number, or leave it to be chosen`,
      'ERR_INVALID_ARG_VALUE',
    );
  if (!existsSync(HELPER_PATH))
    throw new LaunchError(`the launch helper is missing (${HELPER_PATH}); run npm install to build it`, 'ERR_HELPER_MISSING');
  const confinement = confinementFor(options.readOnly, options.devices);

  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.OPENHOOK_SOCKET; // the program's hook is its fd, never a broker it might find by path
  for (const [key, value] of Object.entries(options.env ?? {})) {
    if (value === undefined) delete env[key];
    else env[key] = value;
  }
  env.OPENHOOK_FD = String(hookFd);
  env.OPENHOOK_PASSTHROUGH = confinement.passthrough.join(':');

  // The helper gets each passed fd at its own number, and the hook and its report at free numbers
  // beside them; it moves the hook to hookFd.
  const hookFrom = lowestFree(passFds);
  const reportFrom = lowestFree(new Set([...passFds, hookFrom]));
  const notifyFrom = options.syscallHook ? lowestFree(new Set([...passFds, hookFrom, reportFrom])) : -1;
  const args = [
    '--hook-from',
    String(hookFrom),
    '--hook-fd',
    String(hookFd),
    '--report-fd',
    String(reportFrom),
    '--parent',
    String(process.pid),
  ];
  if (options.waitForReport) args.push('--wait');
  if (options.allowUnconfined) args.push('--allow-unconfined');
  if (options.allowUnixSockets) args.push('--allow-unix-sockets');
  if (notifyFrom >= 0) args.push('--notify-to', String(notifyFrom));
  for (const grant of confinement.grants) args.push(grant.device ? '--device' : '--path', grant.access, grant.path);
  for (const fd of passFds) args.push('--pass-fd', String(fd));
  args.push('--', options.command, ...(options.args ?? []));

  // Forward signals from before the spawn: a signal that arrived between the spawn and the handlers
  // would otherwise kill this process with its default action and orphan the program.
  let child: ChildProcess | null = null;
  const early: NodeJS.Signals[] = [];
  const forward = (signal: NodeJS.Signals): void => {
    if (!child) early.push(signal);
    else if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  };
  const signals = options.forwardSignals ?? [];
  for (const s of signals) process.on(s, forward);
  const unforward = (): void => {
    for (const s of signals) process.off(s, forward);
  };

  const [brokerEnd, clientEnd] = native.socketpair(C.SOCK_SEQPACKET, false);
  // The syscall hook: the helper sends its seccomp listener over this pair (SCM_RIGHTS).
  const [listenerEnd, helperEnd] = options.syscallHook ? native.socketpair(C.SOCK_SEQPACKET, false) : [-1, -1];
  const [stdin, stdout, stderr] = options.stdio ?? ['inherit', 'inherit', 'inherit'];
  const stdio: Array<StdioNull | StdioPipe | number> = [stdin, stdout, stderr];
  for (let fd = 3; fd <= Math.max(hookFrom, reportFrom, notifyFrom, ...passFds); fd++) stdio.push(passFds.has(fd) ? fd : 'ignore');
  stdio[hookFrom] = clientEnd;
  stdio[reportFrom] = 'pipe';
  if (notifyFrom >= 0) stdio[notifyFrom] = helperEnd;
  try {
    child = spawn(HELPER_PATH, args, { stdio, env });
  } catch (err) {
    unforward();
    native.close(brokerEnd);
    native.close(clientEnd);
    if (listenerEnd >= 0) {
      native.close(listenerEnd);
      native.close(helperEnd);
    }
    throw err;
  }
  if (helperEnd >= 0) native.close(helperEnd);
  const spawned: ChildProcess = child;
  for (const s of early.splice(0)) forward(s);
  native.close(clientEnd); // the program's end lives only in the program now
  const pid = spawned.pid ?? -1;
  const connection = options.broker.adopt(brokerEnd, 'seqpacket', {
    session: options.session ?? basename(options.command),
    ...(pid > 0 ? { pid } : {}),
  });
  const hook =
    options.syscallHook && listenerEnd >= 0
      ? serveSyscallHook(
          listenerEnd,
          options.broker,
          { ...connection.peer },
          new Continuation(confinement.grants, options.syscallHook.continueAlways),
          options.syscallHook,
        )
      : null;

  const report = emptyReport();
  let reported = false;
  const deliver = (): void => {
    if (reported) return;
    reported = true;
    options.onReport?.(report);
  };
  const channel = spawned.stdio[reportFrom] as Socket;
  channel.setEncoding('latin1');
  let pending = '';
  channel.on('data', (chunk: string) => {
    pending += chunk;
    for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      parseReportLine(report, line);
      if (line === 'ready') {
        deliver();
        channel.write('g');
      }
    }
  });
  channel.on('error', () => {}); // the helper died or exec'd while we wrote: its status tells
  const reportDone = new Promise<void>((resolve) => channel.on('close', () => resolve()));

  try {
    const { code, signal } = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
      spawned.once('error', reject);
      spawned.once('exit', (c, s) => resolve({ code: c, signal: s }));
    });
    await reportDone;
    deliver();
    const started = report.exec !== null && report.execError === null && report.fatal === null;
    const status = signal ? 128 + (osConstants.signals[signal] ?? 0) : (code ?? 1);
    return { status, code, signal, started, report, pid };
  } finally {
    unforward();
    connection.close();
    hook?.close();
  }
}

/**
 * Waits for the helper to send its seccomp listener over socket, then serves it. The program's
 * first trapped open waits in the kernel until then.
 */
function serveSyscallHook(
  socket: number,
  broker: Broker,
  peer: Peer,
  continuation: Continuation,
  hook: { onServer?: (server: HookServer) => void },
): { close(): void } {
  let server: HookServer | null = null;
  let closed = false;
  const watcher = new native.Poller(socket, PollMode.Notify, 1, () => {
    const fd = notify.receiveListener(socket);
    if (fd === -E.EAGAIN) return;
    watcher.close();
    native.close(socket);
    if (fd < 0) return; // the helper refused or failed before sending: its report says why
    if (closed) {
      native.close(fd);
      return;
    }
    server = new HookServer({ listener: fd, broker, peer, continuation });
    hook.onServer?.(server);
  });
  watcher.start(C.UV_READABLE | C.UV_DISCONNECT);
  return {
    close(): void {
      if (closed) return;
      closed = true;
      if (server) server.close();
      else {
        watcher.close();
        native.close(socket);
      }
    },
  };
}

/** The lowest fd number from 3 up that is not in taken. */
function lowestFree(taken: ReadonlySet<number>): number {
  let fd = 3;
  while (taken.has(fd)) fd++;
  return fd;
}

/** The passed fds as a set, each an fd of this process that is open now. */
function checkPassFds(fds: readonly number[]): Set<number> {
  for (const fd of fds) {
    if (!Number.isInteger(fd) || fd < 3)
      throw new LaunchError(`a passed fd must be an integer of 3 or more (0-2 are stdio), not ${fd}`, 'ERR_INVALID_ARG_VALUE');
    try {
      fstatSync(fd);
    } catch (err) {
      throw new LaunchError(
        `fd ${fd} cannot be passed: it is not open (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
        'EBADF',
      );
    }
  }
  return new Set(fds);
}

/** Why CMD did not start, in words for people, or null if it started. */
export function describeFailure(result: LaunchResult, command: string): string | null {
  const { report } = result;
  if (report.fatal) {
    const { stage, code, message } = report.fatal;
    if (stage === 'landlock' || stage === 'seccomp') {
      const what = stage === 'landlock' ? 'Landlock' : 'seccomp';
      return (
        `${what} is not available (${code}: ${message}); refusing to run ${command} unconfined. ` +
        `Use --allow-unconfined to run it without this protection.`
      );
    }
    if (stage === 'notify') {
      return (
        `the syscall hook is not available (${code}: ${message}); ${command} cannot get its files this way. ` +
        `Use --preload to route a dynamically linked program's opens through the interposer instead.`
      );
    }
    if (stage === 'device')
      return `--device ${message}: ${code === 'ENODEV' ? 'not a character device' : code === 'ENOENT' ? 'no such device node' : code}; refusing to start ${command}`;
    return `cannot confine ${command}: ${stage}: ${code}: ${message}`;
  }
  if (report.execError) {
    if (report.execError === 'ENOENT') return `${command}: command not found`;
    if (report.execError === 'EACCES') return describeExecDenied(command);
    return `${command}: cannot execute: ${report.execError}`;
  }
  if (!result.started && report.exec === null) return `the launch helper exited with status ${result.status} before starting ${command}`;
  return null;
}
