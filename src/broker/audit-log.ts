/**
 * The audit log: one line per decision, as JSON (one object per line) or in a pretty form for a
 * terminal, to a file or to stderr.
 *
 * It never blocks the broker: record() only queues the record; lines are formatted and written in
 * batches by asynchronous writes (libuv's thread pool), one write in flight at a time. A batch is
 * written FLUSH_MS after its first record, or at once when BATCH records wait: a write per request
 * would cost a thread pool round trip (two futex wake-ups and context switches) for every open, more
 * than the open itself.
 *
 * When the log cannot be written (a write fails, or the queue passes its bound because the disk is
 * too slow), the log is *failing* until a later write succeeds (retried every second). What the
 * broker does meanwhile is the `failure` setting:
 * - 'closed' (fail-closed): every request is refused with EIO, so nothing happens unaudited;
 * - 'open' (fail-open): requests are served; records beyond the queue's bound are dropped and
 *   counted, and a line says how many once the log works again.
 */
import { isUtf8 } from 'node:buffer';
import { close, openSync, write } from 'node:fs';
import { display } from '../bytestring.js';
import { errnoName } from '../errno.js';
import { formatAccess } from '../policy/access.js';
import { Command, COMMAND_NAMES, FILE_OP_COMMANDS, HOOK_OPERATIONS, HookOperation } from '../protocol/constants.js';
import type { Peer } from '../policy/policy.js';
import type { Rule } from '../policy/rule.js';
import { verdict, type AuditRecord, type AuditSink } from './audit.js';
import { describeFlags } from './flags.js';

export type AuditFormat = 'json' | 'pretty';
export type AuditFailure = 'closed' | 'open';

export interface AuditLogOptions {
  /** a file (appended to), or '-' for stderr */
  target: string;
  format?: AuditFormat;
  failure?: AuditFailure;
  /** records that may wait; past this the log counts as failing (default 65536) */
  maxQueue?: number;
  /** where the log's own troubles are reported (once per failure, and on recovery) */
  warn?: (message: string) => void;
}

const RETRY_MS = 1000;
/** Lines per write: big enough to amortise the syscall, small enough to bound a write's size. */
const BATCH = 4096;
/** How long a record may wait for the next write: short for people watching, long enough to batch. */
const FLUSH_MS = 10;

const commandNames = new Map<number, string>([...Object.entries(Command), ...Object.entries(HookOperation)].map(([k, v]) => [v, k]));

export class AuditLog implements AuditSink {
  readonly format: AuditFormat;
  readonly failure: AuditFailure;
  readonly target: string;
  #fd: number;
  #ownFd: boolean;
  #queue: AuditRecord[] = [];
  #maxQueue: number;
  #writing = false;
  #scheduled = false;
  #timer: NodeJS.Timeout | null = null;
  #format: (e: AuditRecord) => string;
  #failing = false;
  #dropped = 0;
  #retry: NodeJS.Timeout | null = null;
  #warn: (message: string) => void;
  #idle: (() => void)[] = [];
  #closed = false;

  /** Opens the target at once (throws if it cannot be opened: a bad --audit is a start-up error). */
  constructor(options: AuditLogOptions) {
    this.target = options.target;
    this.format = options.format ?? 'json';
    this.failure = options.failure ?? 'closed';
    this.#maxQueue = options.maxQueue ?? 65536;
    this.#warn = options.warn ?? ((m) => process.stderr.write(`openhook: ${m}\n`));
    this.#ownFd = options.target !== '-';
    this.#fd = this.#ownFd ? openSync(options.target, 'a', 0o640) : 2;
    this.#format = this.format === 'json' ? jsonLine : prettyLine;
  }

  /** Fail-closed and unable to write: the broker refuses requests with EIO meanwhile. */
  get refusing(): boolean {
    return this.#failing && this.failure === 'closed';
  }

  get failing(): boolean {
    return this.#failing;
  }

  /** Records dropped since the last report (fail-open only). */
  get dropped(): number {
    return this.#dropped;
  }

  record(entry: AuditRecord): void {
    if (this.#closed) return;
    if (this.#queue.length >= this.#maxQueue) {
      this.#fail('the audit log is not keeping up (queue full)');
      this.#dropped++;
      return;
    }
    this.#queue.push(entry);
    if (this.#writing || this.#retry || this.#scheduled) return;
    if (this.#queue.length >= BATCH) this.#soon();
    else this.#timer ??= setTimeout(this.#onTimer, FLUSH_MS);
  }

  #onTimer = (): void => {
    this.#timer = null;
    this.#flush();
  };

  /** Writes at the next turn of the loop, rather than at the timer. */
  #soon(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#flush();
    });
  }

  #flush(): void {
    if (this.#writing || this.#queue.length === 0) return this.#settle();
    const n = Math.min(this.#queue.length, BATCH);
    const reported = this.#failing ? 0 : this.#dropped;
    let text = reported > 0 ? this.#droppedLine(reported) : '';
    const format = this.#format;
    for (let i = 0; i < n; i++) text += format(this.#queue[i]!);
    const buf = Buffer.from(text, 'utf8');
    this.#writing = true;
    this.#writeAll(buf, 0, (err) => {
      this.#writing = false;
      if (err) {
        this.#fail(`cannot write the audit log ${this.target}: ${err.message}`);
        // Keep the batch for the retry; records past the bound are dropped in record().
        this.#retry ??= setTimeout(() => {
          this.#retry = null;
          this.#flush();
        }, RETRY_MS);
        return;
      }
      this.#queue.splice(0, n);
      this.#dropped -= reported;
      if (this.#failing) {
        this.#failing = false;
        this.#warn(`audit log ${this.target} works again${this.#dropped ? ` (${this.#dropped} records were dropped)` : ''}`);
      }
      // What came in meanwhile waits for its timer, unless a full batch is already there.
      if (this.#queue.length >= BATCH || (this.#queue.length > 0 && this.#idle.length > 0)) this.#soon();
      else if (this.#queue.length > 0) this.#timer ??= setTimeout(this.#onTimer, FLUSH_MS);
      else this.#settle();
    });
  }

  #writeAll(buf: Buffer, offset: number, done: (err: NodeJS.ErrnoException | null) => void): void {
    write(this.#fd, buf, offset, buf.length - offset, null, (err, written) => {
      if (err) return done(err);
      if (offset + written < buf.length) return this.#writeAll(buf, offset + written, done);
      done(null);
    });
  }

  #droppedLine(count: number): string {
    const time = new Date().toISOString();
    return this.format === 'json'
      ? `{"time":"${time}","dropped":${count}}\n`
      : `dropped ${count} audit records (the log could not be written)\n`;
  }

  #fail(message: string): void {
    if (this.#failing) return;
    this.#failing = true;
    this.#warn(
      `${message}; ${this.failure === 'closed' ? 'refusing requests with EIO until it works again (fail-closed)' : 'serving on, dropping records (fail-open)'}`,
    );
  }

  #settle(): void {
    if (this.#queue.length === 0 && !this.#writing) for (const f of this.#idle.splice(0)) f();
  }

  /** Resolves when everything queued so far is written (or the log is failing). */
  flushed(): Promise<void> {
    if (this.#queue.length === 0 && !this.#writing) return Promise.resolve();
    return new Promise((resolve) => {
      this.#idle.push(resolve);
      if (this.#failing) resolve();
      else if (!this.#writing && !this.#retry) this.#soon(); // someone waits: no point in batching longer
    });
  }

  /** Writes what is queued (if it can), then closes the file. */
  async close(): Promise<void> {
    if (this.#closed) return;
    await this.flushed();
    this.#closed = true;
    if (this.#retry) clearTimeout(this.#retry);
    if (this.#timer) clearTimeout(this.#timer);
    if (this.#ownFd) await new Promise<void>((r) => close(this.#fd, () => r()));
  }
}

/**
 * Paths are exact bytes. A path that is valid UTF-8 is written as a JSON string; one that is not is
 * written for people (with \xNN escapes for the bad bytes) and, losslessly, as `path_base64`.
 */
function pathFields(path: string, key = 'path'): string {
  // The common case: printable ASCII with nothing to escape.
  // eslint-disable-next-line no-control-regex
  if (!/[\x00-\x1f"\\\x80-\xff]/.test(path)) return `"${key}":"${path}"`;
  if (!/[\x80-\xff]/.test(path)) return `"${key}":${JSON.stringify(path)}`;
  const bytes = Buffer.from(path, 'latin1');
  if (isUtf8(bytes)) return `"${key}":${JSON.stringify(bytes.toString('utf8'))}`;
  return `"${key}":${JSON.stringify(display(path))},"${key}_base64":"${bytes.toString('base64')}"`;
}

// A broker writes the same few values over and over (a client's identity, a rule, a flag word, a
// reason): each is formatted once and remembered, so that a line costs little more than joining
// strings. Caches keyed by value are bounded; those keyed by object go with the object.
const MEMO_MAX = 1024;

function memo<K, V>(map: Map<K, V>, key: K, make: (key: K) => V): V {
  let v = map.get(key);
  if (v === undefined) {
    if (map.size >= MEMO_MAX) map.clear();
    map.set(key, (v = make(key)));
  }
  return v;
}

let lastTime = NaN;
let lastIso = '';
function isoTime(ms: number): string {
  if (ms !== lastTime) {
    lastTime = ms;
    lastIso = new Date(ms).toISOString();
  }
  return lastIso;
}

const clientJson = new WeakMap<Peer, string>();
function clientField(p: Peer): string {
  let s = clientJson.get(p);
  if (s === undefined) {
    const session = p.session !== undefined ? `,"session":${JSON.stringify(p.session)}` : '';
    s = `{"pid":${p.pid},"uid":${p.uid},"gid":${p.gid}${session}}`;
    clientJson.set(p, s);
  }
  return s;
}

const ruleJson = new WeakMap<Rule, string>();
function ruleField(rule: Rule | null): string {
  if (rule === null) return 'null';
  let s = ruleJson.get(rule);
  if (s === undefined) ruleJson.set(rule, (s = JSON.stringify(rule.origin)));
  return s;
}

const flagsText = new Map<number, string>();
const modeText = new Map<number, string>();
const accessText = new Map<number, string>();
const errnoText = new Map<number, string>();
const reasonJson = new Map<string, string>();
const describeMode = (mode: number): string => `0${(mode & 0o7777).toString(8)}`;
const quotedErrno = (errno: number): string => `"${errnoName(errno)}"`;

export function jsonLine(e: AuditRecord): string {
  return (
    `{"time":"${isoTime(e.time)}","client":${clientField(e.peer)},` +
    `"command":"${commandNames.get(e.command) ?? e.command}",${pathFields(e.path)},${e.path2 !== undefined ? `${pathFields(e.path2, 'to')},"to_access":"${formatAccess(e.access2 ?? 0)}",` : ''}"flags":"${memo(flagsText, e.flags, describeFlags)}",` +
    `"mode":"${memo(modeText, e.mode, describeMode)}","access":"${memo(accessText, e.access, formatAccess)}","decision":"${e.allowed ? 'allow' : 'deny'}",` +
    `"rule":${ruleField(e.rule)},"errno":${e.errno ? memo(errnoText, e.errno, quotedErrno) : 'null'},` +
    `"reason":${memo(reasonJson, e.reason, JSON.stringify)},"latency_us":${e.latencyUs}}\n`
  );
}

export function prettyLine(e: AuditRecord): string {
  const t = new Date(e.time);
  const time = `${String(t.getHours()).padStart(2, '0')}:${String(t.getMinutes()).padStart(2, '0')}:${String(t.getSeconds()).padStart(2, '0')}.${String(t.getMilliseconds()).padStart(3, '0')}`;
  const who = `pid ${e.peer.pid} uid ${e.peer.uid}${e.peer.session !== undefined ? ` ${e.peer.session}` : ''}`;
  const what =
    FILE_OP_COMMANDS.has(e.command) || HOOK_OPERATIONS.has(e.command)
      ? `${COMMAND_NAMES[e.command]} ${display(e.path)}${e.path2 !== undefined ? ` -> ${display(e.path2)}` : ''}`
      : `${display(e.path)} ${memo(flagsText, e.flags, describeFlags)}`;
  return `${time} ${verdict(e).padEnd(13)} ${what} [${who}] ${e.reason} (${e.latencyUs} µs)\n`;
}
