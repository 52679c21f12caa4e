/**
 * Shared test helpers: temporary directories, a real `openhook serve` process, C fixtures compiled on
 * demand, and fd counting through /proc. Nothing here mocks a socket or a syscall.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { C, native, PollMode, recvArena, recvMeta } from '../src/native.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const CLI = join(ROOT, 'dist', 'cli', 'main.js');

let forOthersDir: string | null = null;

/**
 * A directory every uid may enter, for what a test runs as another user: the checkout itself may sit
 * under a directory that others cannot enter (a clone in a 0700 temporary directory). Removed at exit.
 */
function othersDir(): string {
  if (forOthersDir) return forOthersDir;
  const dir = mkdtempSync(join(tmpdir(), 'openhook-for-others-'));
  chmodSync(dir, 0o755);
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  return (forOthersDir = dir);
}

/** A copy of the program at PATH (a fixture binary) that another uid may run. */
export function forOthers(path: string): string {
  const bin = join(othersDir(), 'bin');
  mkdirSync(bin, { recursive: true, mode: 0o755 });
  const copy = join(bin, basename(path));
  copyFileSync(path, copy);
  chmodSync(copy, 0o755);
  return copy;
}

/**
 * The CLI as another uid may run it: a copy of the built package (package.json, dist, the native
 * build and the runtime dependencies, which have none of their own) made once per test process.
 */
export function cliForOthers(): string {
  const root = join(othersDir(), 'openhook');
  if (!existsSync(root)) {
    const copy = (rel: string): void => cpSync(join(ROOT, rel), join(root, rel), { recursive: true });
    copy('package.json');
    copy('dist');
    for (const f of readdirSync(join(ROOT, 'build', 'Release'))) if (f !== 'obj.target') copy(join('build', 'Release', f));
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
    for (const dep of Object.keys(pkg.dependencies ?? {})) copy(join('node_modules', dep));
  }
  return join(root, 'dist', 'cli', 'main.js');
}

/** A fresh directory, removed by the returned cleanup. */
export function tempDir(prefix = 'openhook-test-'): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

/** Compiles test/fixtures/NAME.c once per run into build/test-fixtures/NAME; returns the binary's path. */
export function fixture(name: string, extraFlags: string[] = []): string {
  const src = join(ROOT, 'test', 'fixtures', `${name}.c`);
  const outDir = join(ROOT, 'build', 'test-fixtures');
  const out = join(outDir, name);
  if (!existsSync(out) || statSync(out).mtimeMs < statSync(src).mtimeMs) {
    mkdirSync(outDir, { recursive: true });
    execFileSync('cc', ['-O2', '-Wall', '-o', out, src, ...extraFlags], { stdio: 'inherit' });
  }
  return out;
}

export interface ServeProcess {
  child: ChildProcess;
  socket: string;
  stderr: () => string;
  /** SIGTERM, then wait for exit; resolves to the exit code */
  stop: (signal?: NodeJS.Signals) => Promise<number | null>;
}

/**
 * Starts `openhook serve` and waits until it serves at its socket. With a wrapper command (for
 * example prlimit), the wrapper runs the broker; it must exec it, so that the child's pid is the
 * broker's.
 */
export async function startServe(socket: string, args: string[], wrapper: string[] = []): Promise<ServeProcess> {
  const [cmd, ...rest] = wrapper.length ? wrapper : [process.execPath];
  const argv = [...rest, ...(wrapper.length ? [process.execPath] : []), CLI, 'serve', '--socket', socket, ...args];
  const child = spawn(cmd!, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  child.stdout!.resume();
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  for (let i = 0; i < 1000 && !(existsSync(socket) && err.includes('serving')); i++) {
    if (child.exitCode !== null) throw new Error(`serve exited with ${child.exitCode}: ${err}`);
    await sleep(10);
  }
  if (!existsSync(socket) || !err.includes('serving')) throw new Error(`serve did not start at ${socket}: ${err}`);
  return {
    child,
    socket,
    stderr: () => err,
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** Reads an fd's first bytes (from offset 0) as text, and closes it. */
export function readAndClose(fd: number, max = 64): string {
  const buf = Buffer.alloc(max);
  const n = readSync(fd, buf, 0, max, 0);
  closeSync(fd);
  return buf.toString('utf8', 0, n);
}

/** Waits until serve's stderr has matched pattern count times (10 s at most); throws with the stderr if not. */
export async function waitForStderr(serve: ServeProcess, pattern: RegExp, count = 1): Promise<void> {
  const all = new RegExp(pattern.source, pattern.flags.includes('g') ? pattern.flags : pattern.flags + 'g');
  for (let i = 0; i < 1000; i++) {
    if ((serve.stderr().match(all) ?? []).length >= count) return;
    await sleep(10);
  }
  throw new Error(`no ${pattern} (x${count}) in serve's stderr:\n${serve.stderr()}`);
}

/** The number of open fds of a process. */
export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/**
 * The fd count once it has stopped moving (connections from earlier tests may still be closing):
 * the same figure three times, 50 ms apart.
 */
export async function settledFdCount(pid: number): Promise<number> {
  let last = fdCount(pid),
    same = 0;
  for (let i = 0; i < 100 && same < 2; i++) {
    await sleep(50);
    const now = fdCount(pid);
    same = now === last ? same + 1 : 0;
    last = now;
  }
  return last;
}

/** Runs rfc-probe with frames; returns its output lines. */
export function probe(socket: string, kind: 'stream' | 'seqpacket', frames: Buffer[]): string[] {
  const out = execFileSync(fixture('rfc-probe'), [socket, kind, ...frames.map((f) => f.toString('hex'))], { encoding: 'utf8' });
  return out.trim().split('\n');
}

/** Little-endian helpers to write frames byte for byte in tests, independent of the codec. */
export function rfcOpenFrame(name: string | Buffer, flags: number, mode = 0): Buffer {
  const bytes = typeof name === 'string' ? Buffer.from(name) : name;
  const buf = Buffer.alloc(18 + bytes.length);
  buf.writeUInt32LE(18 + bytes.length, 0);
  buf.writeUInt32LE(1, 4);
  buf.writeUInt32LE(flags >>> 0, 8);
  buf.writeUInt32LE(mode >>> 0, 12);
  buf.writeUInt16LE(bytes.length, 16);
  bytes.copy(buf, 18);
  return buf;
}

/** The 12-byte RFC reply as hex, for exact comparison. */
export function rfcReplyHex(command: number, result: number): string {
  const buf = Buffer.alloc(12);
  buf.writeUInt32LE(12, 0);
  buf.writeUInt32LE(command, 4);
  buf.writeInt32LE(result, 8);
  return buf.toString('hex');
}

/** Waits for the next message on a socket; returns its bytes as hex and the fds that came with it. */
export function receiveOne(fd: number, timeoutMs = 5000): Promise<{ bytes: string; fds: number[] }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (poller.close(), reject(new Error('no message'))), timeoutMs);
    const poller = new native.Poller(fd, PollMode.Receive, 1, (_events, count, status) => {
      if (count === 0) {
        if (status !== 0) {
          clearTimeout(timer);
          poller.close();
          reject(new Error(`socket status ${status}`));
        }
        return;
      }
      const nfds = recvMeta[3]!;
      const bytes = recvArena.toString('hex', recvMeta[0]!, recvMeta[0]! + recvMeta[1]!);
      const fds = Array.from(recvMeta.subarray(4, 4 + nfds));
      clearTimeout(timer);
      poller.close();
      resolve({ bytes, fds });
    });
    poller.start(C.UV_READABLE);
  });
}

export { sleep };

/** A program's run, for comparing a confined run with an unconfined one. */
export interface Ran {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** A confined run's stderr less `openhook run`'s own notes: what is left is the program's. */
export function programStderr(stderr: string): string {
  return stderr
    .split('\n')
    .filter((l) => !l.startsWith('openhook run:') && !l.startsWith('openhook:'))
    .join('\n');
}
