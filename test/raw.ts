/**
 * A raw client for hostile-client tests: sends whatever bytes (and fds) it is told to, and hands back
 * each reply exactly as it arrives. No codec of ours decides what is sent. Also: an in-process broker
 * on a temporary socket, and small facts about fds.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Broker, type BrokerOptions } from '../src/broker/broker.js';
import { C, native, PollMode, recvArena, recvMeta, type NativePoller } from '../src/native.js';
import { Policy } from '../src/policy/policy.js';
import { makeRule, parseDenyFlag, type RuleSpec } from '../src/policy/rule.js';
import { sleep, startServe, type ServeProcess } from './helpers.js';

export interface RawReply {
  /** the reply's bytes */
  bytes: Buffer;
  /** u32 command and s32 result, read from the bytes */
  command: number;
  result: number;
  /** OPEN_TAGGED: the id */
  id: number;
  fds: number[];
  msgFlags: number;
}

export class RawClient {
  readonly fd: number;
  readonly kind: 'seqpacket' | 'stream';
  #poller: NativePoller;
  #replies: RawReply[] = [];
  #waiters: Array<(r: RawReply | null) => void> = [];
  #pending = Buffer.alloc(0);
  #fds: number[] = [];
  #closed = false;
  /** set once the broker has closed the connection (EOF or reset) */
  ended = false;

  constructor(fd: number, kind: 'seqpacket' | 'stream') {
    this.fd = fd;
    this.kind = kind;
    this.#poller = new native.Poller(fd, PollMode.Receive, 64, (_e, count, status) => this.#onPoll(count, status));
    this.#poller.start(C.UV_READABLE);
  }

  static connect(path: string, kind: 'seqpacket' | 'stream' = 'seqpacket'): RawClient {
    return new RawClient(native.connectUnix(Buffer.from(path), kind === 'stream' ? C.SOCK_STREAM : C.SOCK_SEQPACKET), kind);
  }

  /** Sends bytes (with fds attached); returns what send returned. */
  send(bytes: Buffer, fds: number[] = []): number {
    return fds.length ? native.sendFds(this.fd, bytes, fds) : native.send(this.fd, bytes, 0, bytes.length, -1);
  }

  /** The next reply, or null when the broker closed the connection first. */
  next(timeoutMs = 5000): Promise<RawReply | null> {
    const r = this.#replies.shift();
    if (r) return Promise.resolve(r);
    if (this.ended) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.#waiters.indexOf(done);
        if (i >= 0) this.#waiters.splice(i, 1);
        reject(new Error(`no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = (reply: RawReply | null): void => {
        clearTimeout(timer);
        resolve(reply);
      };
      this.#waiters.push(done);
    });
  }

  /** Sends a frame and waits for its reply. */
  async request(frame: Buffer, timeoutMs = 5000): Promise<RawReply | null> {
    const n = this.send(frame);
    if (n !== frame.length) throw new Error(`send returned ${n}`);
    return this.next(timeoutMs);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#poller.close();
    native.close(this.fd);
    for (const r of this.#replies) for (const fd of r.fds) native.close(fd);
    for (const fd of this.#fds) native.close(fd);
  }

  #onPoll(count: number, status: number): void {
    for (let i = 0, m = 0; i < count; i++) {
      const offset = recvMeta[m]!,
        length = recvMeta[m + 1]!,
        flags = recvMeta[m + 2]!,
        nfds = recvMeta[m + 3]!;
      const fds = Array.from(recvMeta.subarray(m + 4, m + 4 + nfds));
      m += 4 + nfds;
      const bytes = Buffer.from(recvArena.subarray(offset, offset + length));
      if (this.kind === 'seqpacket') this.#deliver(bytes, fds, flags);
      else {
        this.#fds.push(...fds);
        this.#pending = Buffer.concat([this.#pending, bytes]);
        while (this.#pending.length >= 4 && this.#pending.length >= this.#pending.readUInt32LE(0)) {
          const size = this.#pending.readUInt32LE(0);
          if (size < 12) throw new Error(`broker sent a frame of size ${size}`);
          const frame = this.#pending.subarray(0, size);
          this.#pending = this.#pending.subarray(size);
          const result = frame.readInt32LE(8);
          const fd = result === 0 && frame.readUInt32LE(4) !== 0x100 ? this.#fds.splice(0, 1) : [];
          this.#deliver(Buffer.from(frame), fd, flags);
        }
      }
    }
    if (status !== 0) {
      this.ended = true;
      this.#poller.start(0);
      for (const w of this.#waiters.splice(0)) w(null);
    }
  }

  #deliver(bytes: Buffer, fds: number[], msgFlags: number): void {
    const reply: RawReply = {
      bytes,
      command: bytes.length >= 8 ? bytes.readUInt32LE(4) : -1,
      result: bytes.length >= 12 ? bytes.readInt32LE(8) : 0,
      id: bytes.length >= 16 ? bytes.readUInt32LE(12) : 0,
      fds,
      msgFlags,
    };
    const w = this.#waiters.shift();
    if (w) w(reply);
    else this.#replies.push(reply);
  }
}

/** An RFC QEMU_OPEN frame, little-endian, byte for byte. */
export function openFrame(name: string | Buffer, flags = 0, mode = 0): Buffer {
  const bytes = typeof name === 'string' ? Buffer.from(name) : name;
  const buf = Buffer.alloc(18 + bytes.length);
  buf.writeUInt32LE(18 + bytes.length, 0);
  buf.writeUInt32LE(1, 4);
  buf.writeUInt32LE(flags >>> 0, 8);
  buf.writeUInt32LE(mode >>> 0, 12);
  buf.writeUInt16LE(bytes.length & 0xffff, 16);
  bytes.copy(buf, 18);
  return buf;
}

/** An OPEN_TAGGED frame. */
export function taggedFrame(id: number, name: string | Buffer, flags = 0, mode = 0): Buffer {
  const bytes = typeof name === 'string' ? Buffer.from(name) : name;
  const buf = Buffer.alloc(22 + bytes.length);
  buf.writeUInt32LE(22 + bytes.length, 0);
  buf.writeUInt32LE(0x101, 4);
  buf.writeUInt32LE(id >>> 0, 8);
  buf.writeUInt32LE(flags >>> 0, 12);
  buf.writeUInt32LE(mode >>> 0, 16);
  buf.writeUInt16LE(bytes.length, 20);
  bytes.copy(buf, 22);
  return buf;
}

export interface InProcessBroker {
  broker: Broker;
  socket: string;
  close(): void;
}

/**
 * A broker in this process, listening on dir/name.sock, with --allow/--deny style rules (the allow
 * rules all get `options`: follow_symlinks, fifos, hardlinks). In-process
 * brokers let a test set limits and options that the CLI does not expose, and read the resolver's
 * counters; the sockets, syscalls and clients are all real.
 */
export function inProcessBroker(
  dir: string,
  name: string,
  rules: { allow?: string[]; deny?: string[]; options?: Omit<RuleSpec, 'allow' | 'deny' | 'access'> },
  options: Partial<BrokerOptions> & { stream?: boolean } = {},
): InProcessBroker {
  const allow = (rules.allow ?? []).map((spec) => {
    const colon = spec.lastIndexOf(':');
    return makeRule({ allow: spec.slice(0, colon), access: spec.slice(colon + 1), ...rules.options }, `--allow ${spec}`);
  });
  const policy = new Policy([...allow, ...(rules.deny ?? []).map(parseDenyFlag)]);
  const broker = new Broker({ log: () => {}, ...options, policy });
  const socket = join(dir, `${name}.sock`);
  broker.listen(socket, { stream: options.stream });
  return { broker, socket, close: () => broker.close() };
}

const st = new Float64Array(8);

/** [dev, ino] of an fd. */
export function inodeOf(fd: number): number {
  if (native.fstat(fd, st) < 0) throw new Error(`fstat ${fd}`);
  return st[7]!;
}

/** The file status flags of an fd (as /proc/self/fdinfo shows them), e.g. O_RDWR|O_NONBLOCK|O_CLOEXEC. */
export function fdFlags(fd: number): number {
  const info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  return parseInt(/flags:\s+([0-7]+)/.exec(info)![1]!, 8);
}

export function closeAll(fds: number[]): void {
  for (const fd of fds) native.close(fd);
}

/** Starts `openhook serve` under a wrapper command (for example prlimit); see startServe. */
export function startServeUnder(wrapper: string[], socket: string, args: string[]): Promise<ServeProcess> {
  return startServe(socket, args, wrapper);
}

/** CPU time (user + system) a process has used, in seconds. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

/**
 * Makes one request under the rule that covers `name` and waits until the resolver knows the rule's
 * filesystem: from then on, opens under it run on the event loop (unless the filesystem or the rule
 * sends them to the thread pool).
 */
export async function warmUp(b: InProcessBroker, name: string): Promise<void> {
  const c = RawClient.connect(b.socket);
  try {
    const r = await c.request(openFrame(name));
    closeAll(r?.fds ?? []);
  } finally {
    c.close();
  }
  for (let i = 0; i < 200; i++) {
    const stats = b.broker.resolver.poolStats();
    if (!stats || stats[3] === 0) return;
    await sleep(5);
  }
}
