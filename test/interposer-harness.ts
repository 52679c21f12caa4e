/**
 * Runs real programs under the interposer against a real broker in this process: each program gets
 * one end of a fresh socketpair as fd 3 (OPENHOOK_FD=3), adopted by the broker as a session, exactly
 * as the launcher does. Every decision is collected from the broker's audit sink.
 */
import { spawn } from 'node:child_process';
import { Broker } from '../src/broker/broker.js';
import type { AuditRecord } from '../src/broker/audit.js';
import { PRELOAD_LIBRARY } from '../src/launch/preload.js';
import { C, native } from '../src/native.js';
import { Policy } from '../src/policy/policy.js';
import { parseAllowFlag, parseDenyFlag } from '../src/policy/rule.js';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  env?: Record<string, string>;
  cwd?: string;
  input?: string;
  /** no hook fd at all: the program runs with LD_PRELOAD only */
  noHook?: boolean;
}

/** A plain environment: real binaries first (no shims), C locale. */
export const BASE_ENV: Record<string, string> = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C', HOME: '/nonexistent' };

export class Session {
  readonly broker: Broker;
  readonly records: AuditRecord[] = [];
  readonly name: string;

  constructor(allow: string[], deny: string[] = [], name = 'interposer-test') {
    this.name = name;
    const policy = new Policy([...allow.map(parseAllowFlag), ...deny.map(parseDenyFlag)]);
    this.broker = new Broker({ policy, audit: { record: (r) => void this.records.push(r) }, log: () => {} });
  }

  /** Runs cmd with the interposer and the hook at fd 3; resolves when it has exited and its output is read. */
  run(cmd: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
    let theirs = -1;
    const stdio: Array<'pipe' | number> = ['pipe', 'pipe', 'pipe'];
    const env: Record<string, string> = { ...BASE_ENV, LD_PRELOAD: PRELOAD_LIBRARY, ...options.env };
    if (!options.noHook) {
      const [mine, other] = native.socketpair(C.SOCK_SEQPACKET, false);
      this.broker.adopt(mine, 'seqpacket', { session: this.name });
      theirs = other;
      stdio.push(theirs);
      env.OPENHOOK_FD = '3';
    }
    return runChild(cmd, args, stdio, env, options, () => {
      if (theirs >= 0) native.close(theirs);
    });
  }

  /** Records of opens that reached the broker, as [path, errno]. */
  opens(): Array<[string, number]> {
    return this.records.map((r) => [r.path, r.errno]);
  }

  close(): void {
    this.broker.close();
  }
}

/** Spawns and collects; `spawned` runs once the child holds its copies of the fds. */
export function runChild(cmd: string, args: string[], stdio: Array<'pipe' | 'ignore' | number>, env: Record<string, string>, options: RunOptions, spawned = (): void => {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio, env, cwd: options.cwd });
    spawned();
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
    child.stdin!.on('error', () => {}); // a program that exits without reading its input
    child.stdin!.end(options.input ?? '');
  });
}
