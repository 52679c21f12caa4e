/**
 * Runs real programs under the interposer, confined exactly as `openhook run --preload` confines
 * them: through the launcher's launch() (Landlock, seccomp, the hook at fd 3), against a real broker
 * in this process whose audit sink collects every decision. The programs cannot open the test's files
 * themselves; what they get, they get through the broker.
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Broker } from '../src/broker/broker.js';
import type { AuditRecord } from '../src/broker/audit.js';
import { launch } from '../src/launch/launch.js';
import { PRELOAD_LIBRARY } from '../src/launch/preload.js';
import { Policy } from '../src/policy/policy.js';
import { parseAllowFlag, parseDenyFlag } from '../src/policy/rule.js';
import { ROOT } from './helpers.js';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** environment changes; a value of undefined removes the variable */
  env?: Record<string, string | undefined>;
  input?: string;
  /** without the interposer: to show that the program cannot open the files by itself */
  noPreload?: boolean;
}

/** A plain environment: real binaries first (no shims), C locale. */
export const BASE_ENV: Record<string, string> = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  LANG: 'C',
  HOME: '/nonexistent',
};

/** Where fixture() puts the compiled C fixtures: confined programs may run them. */
export const FIXTURES_DIR = join(ROOT, 'build', 'test-fixtures');

export class Session {
  readonly broker: Broker;
  readonly records: AuditRecord[] = [];
  readonly name: string;

  constructor(allow: string[], deny: string[] = [], name = 'interposer-test') {
    this.name = name;
    const policy = new Policy([...allow.map(parseAllowFlag), ...deny.map(parseDenyFlag)]);
    this.broker = new Broker({ policy, audit: { record: (r) => void this.records.push(r) }, log: () => {} });
  }

  /** Runs cmd confined, with the interposer, and resolves once it has exited. */
  async run(cmd: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
    const io = mkdtempSync(join(tmpdir(), 'openhook-io-'));
    writeFileSync(join(io, 'in'), options.input ?? '');
    const fds: [number, number, number] = [openSync(join(io, 'in'), 'r'), openSync(join(io, 'out'), 'w'), openSync(join(io, 'err'), 'w')];
    try {
      const result = await launch({
        command: cmd,
        args,
        broker: this.broker,
        session: this.name,
        readOnly: [PRELOAD_LIBRARY, FIXTURES_DIR],
        env: { ...BASE_ENV, LD_PRELOAD: options.noPreload ? undefined : PRELOAD_LIBRARY, ...options.env },
        stdio: fds,
      });
      return {
        code: result.code,
        signal: result.signal,
        stdout: readFileSync(join(io, 'out'), 'utf8'),
        stderr: readFileSync(join(io, 'err'), 'utf8'),
      };
    } finally {
      for (const fd of fds) closeSync(fd);
      rmSync(io, { recursive: true, force: true });
    }
  }

  close(): void {
    this.broker.close();
  }
}

export interface PlainOptions {
  input?: string;
}

/** Spawns a program unconfined (no launcher) and collects its output. */
export function runChild(cmd: string, args: string[], env: Record<string, string>, options: PlainOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
    child.stdin.on('error', () => {}); // a program that exits without reading its input
    child.stdin.end(options.input ?? '');
  });
}
