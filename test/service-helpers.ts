/**
 * Helpers for the service tests: a real `openhook serve` started the way systemd starts it (listening
 * fds passed from 3 on, LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES set for the daemon's own pid, and
 * NOTIFY_SOCKET), and a real datagram socket standing in for systemd's notify socket.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { C, native } from '../src/native.js';
import { CLI, fixture, receiveOne } from './helpers.js';

/** Processes started here and not yet reaped: a failing test must not leave them running. */
const live = new Set<ChildProcess>();

/** Kills whatever a test left running (register with after()). */
export function killLeftovers(): void {
  for (const child of live) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  live.clear();
}

function track(child: ChildProcess): void {
  live.add(child);
  child.on('exit', () => live.delete(child));
}

/**
 * A listening socket at path, made as systemd makes one for a .socket unit (bound in place, so
 * getsockname names path), held by this process as systemd holds it. Returns the fd. With state
 * 'bound', it is bound and not listening, as a broker's is for an instant while it starts.
 */
export async function systemdStyleSocket(
  path: string,
  kind: 'seqpacket' | 'stream',
  state: 'listening' | 'bound' = 'listening',
): Promise<number> {
  const [mine, theirs] = native.socketpair(C.SOCK_SEQPACKET, false);
  const r = spawnSync(fixture('listen-socket'), [path, kind, ...(state === 'bound' ? ['bound'] : [])], {
    stdio: ['ignore', 'inherit', 'inherit', theirs],
  });
  native.close(theirs);
  if (r.status !== 0) throw new Error(`listen-socket exited ${r.status}`);
  const { fds } = await receiveOne(mine);
  native.close(mine);
  return fds[0]!;
}

export interface Daemon {
  child: ChildProcess;
  pid: number;
  stderr(): string;
  /** resolves to the exit code (null if killed by a signal) */
  exited: Promise<number | null>;
  /** waits until stderr matches */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<void>;
  kill(signal: NodeJS.Signals): void;
  /** SIGTERM (or the signal given), then the exit code */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export interface DaemonOptions {
  /** listening fds to pass as 3, 4, ... with LISTEN_FDS */
  fds?: number[];
  /** LISTEN_FDNAMES, one per fd */
  names?: string[];
  /** LISTEN_PID: the daemon's own pid (default), or another number to see it ignored */
  listenPid?: number;
  env?: Record<string, string>;
  /** wait for the "serving" line (default true) */
  ready?: boolean;
  uid?: number;
  gid?: number;
}

/** Starts `openhook serve ARGS` as systemd would. */
export async function startDaemon(args: string[], options: DaemonOptions = {}): Promise<Daemon> {
  const fds = options.fds ?? [];
  const env: Record<string, string> = { ...(process.env as Record<string, string>), ...options.env };
  let command: string;
  let argv: string[];
  if (fds.length > 0) {
    env.LISTEN_FDS = String(fds.length);
    if (options.names) env.LISTEN_FDNAMES = options.names.join(':');
    // systemd sets LISTEN_PID after fork, to the pid that will exec the daemon. A shell does the
    // same here: $$ is its pid, and exec keeps it.
    command = '/bin/sh';
    argv = [
      '-c',
      options.listenPid === undefined ? 'LISTEN_PID=$$ exec "$@"' : `LISTEN_PID=${options.listenPid} exec "$@"`,
      'sh',
      process.execPath,
      CLI,
      'serve',
      ...args,
    ];
  } else {
    command = process.execPath;
    argv = [CLI, 'serve', ...args];
  }
  const child = spawn(command, argv, {
    stdio: ['ignore', 'pipe', 'pipe', ...fds],
    env,
    ...(options.uid !== undefined ? { uid: options.uid, gid: options.gid ?? options.uid } : {}),
  });
  track(child);
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  child.stdout!.resume();
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const daemon: Daemon = {
    child,
    pid: child.pid!,
    stderr: () => err,
    exited,
    async waitFor(pattern, timeoutMs = 10_000) {
      const until = Date.now() + timeoutMs;
      while (!pattern.test(err)) {
        if (child.exitCode !== null || child.signalCode !== null)
          throw new Error(`serve exited (${child.exitCode ?? child.signalCode}) before ${pattern}: ${err}`);
        if (Date.now() > until) throw new Error(`no ${pattern} from serve within ${timeoutMs} ms: ${err}`);
        await sleep(10);
      }
    },
    kill(signal) {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
    async stop(signal = 'SIGTERM') {
      daemon.kill(signal);
      return exited;
    },
  };
  if (options.ready ?? true) await daemon.waitFor(/serving on/);
  return daemon;
}

export interface NotifyListener {
  address: string;
  /** every message so far: "pid=N FIELD=VALUE|FIELD=VALUE" */
  messages: string[];
  /** the next message not yet taken (in order), waiting for it if need be */
  next(timeoutMs?: number): Promise<string>;
  close(): void;
}

/** A SOCK_DGRAM socket at address (a path or '@abstract'), read as systemd reads NOTIFY_SOCKET. */
export async function notifyListener(address: string): Promise<NotifyListener> {
  const child = spawn(fixture('notify-listener'), [address], { stdio: ['pipe', 'pipe', 'inherit'] });
  track(child);
  const messages: string[] = [];
  let taken = 0;
  let buffered = '';
  let ready = false;
  child.stdout!.on('data', (d) => {
    buffered += d;
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line === 'ready') ready = true;
      else messages.push(line);
    }
  });
  for (let i = 0; !ready; i++) {
    if (i > 500 || child.exitCode !== null) throw new Error('notify-listener did not start');
    await sleep(10);
  }
  return {
    address,
    messages,
    async next(timeoutMs = 10_000) {
      const until = Date.now() + timeoutMs;
      while (messages.length <= taken) {
        if (Date.now() > until) throw new Error(`no notify message within ${timeoutMs} ms (had: ${messages.join(' / ')})`);
        await sleep(5);
      }
      return messages[taken++]!;
    },
    close() {
      child.stdin!.end();
    },
  };
}

/** Parses "pid=N A=1|B=x" into { pid, fields }. */
export function parseNotify(line: string): { pid: number; fields: Record<string, string> } {
  const m = /^pid=(-?\d+) (.*)$/.exec(line);
  if (!m) throw new Error(`bad notify line: ${line}`);
  const fields: Record<string, string> = {};
  for (const part of m[2]!.split('|')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    fields[part.slice(0, eq)] = part.slice(eq + 1);
  }
  return { pid: Number(m[1]), fields };
}
