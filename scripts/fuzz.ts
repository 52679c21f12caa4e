/**
 * `npm run fuzz`: throws mutated and random frames at two running brokers (`openhook serve`, one on
 * SOCK_SEQPACKET and one on SOCK_STREAM), from several clients at once, with and without fds
 * attached, with abrupt hang-ups and pauses in reading. Checks, all along and at the end:
 *
 * - both brokers stay up;
 * - every fd that comes back is a regular file inside an allowed tree (never outside, never in the
 *   denied subtree), and read-only where the rule says r;
 * - the files of the read-only tree and the file outside are unchanged;
 * - once the clients are gone, each broker's fd count is back where it started, and each answers a
 *   good request correctly.
 *
 *   npm run fuzz -- [--seconds N] [--seed N] [--clients N]
 *
 * Prints how many frames it sent, and what came back. Exits 1 on any violation.
 */
import { createHash } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  rmSync,
  symlinkSync,
  linkSync,
  writeFileSync,
  readdirSync,
  statSync,
} from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { C, native, PollMode, recvArena, recvMeta, type NativePoller } from '../src/native.js';
import { fdCount, sleep } from '../test/helpers.js';
import { fdFlags, startServeUnder } from '../test/raw.js';
import { encodeFileOp } from '../src/protocol/frames.js';
import { E } from '../src/errno.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '60' },
    seed: { type: 'string', default: String(Date.now() % 0x7fffffff) },
    clients: { type: 'string', default: '4' },
  },
});
const seconds = Number(values.seconds),
  clientsPer = Number(values.clients);
let seed = Number(values.seed) >>> 0 || 1;

/** xorshift32: reproducible with --seed. */
function rand(): number {
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  seed >>>= 0;
  return seed;
}
const below = (n: number): number => rand() % n;
const chance = (p: number): boolean => rand() / 0x100000000 < p;
const pick = <T>(xs: readonly T[]): T => xs[below(xs.length)]!;

// ---- the world ----------------------------------------------------------------------------------
const dir = realpathSync(mkdtempSync(join(tmpdir(), 'openhook-fuzz-')));
chmodSync(dir, 0o755);
const ro = join(dir, 'ro'),
  rw = join(dir, 'rwc'),
  priv = join(rw, 'private'),
  out = join(dir, 'outside');
for (const d of [join(ro, 'sub'), priv, out]) mkdirSync(d, { recursive: true });
writeFileSync(join(ro, 'a'), 'read-only a');
writeFileSync(join(ro, 'sub', 'b'), 'read-only b');
writeFileSync(join(rw, 'c'), 'writable c');
writeFileSync(join(priv, 'p'), 'denied');
writeFileSync(join(out, 'secret'), 'SECRET');
writeFileSync(join(out, 'linked'), 'hard-linked secret');
linkSync(join(out, 'linked'), join(rw, 'hard'));
symlinkSync(join(out, 'secret'), join(ro, 'abs'));
symlinkSync('../outside/secret', join(rw, 'rel'));
symlinkSync('sub', join(ro, 'in'));
symlinkSync('/proc/self/fd/0', join(rw, 'magic'));
execFileSync('mkfifo', [join(ro, 'fifo')]);
execFileSync('mkfifo', [join(rw, 'fifo')]);
execFileSync('mknod', [join(rw, 'null'), 'c', '1', '3']);

const digest = (): string => {
  const h = createHash('sha256');
  for (const f of [join(ro, 'a'), join(ro, 'sub', 'b'), join(out, 'secret'), join(out, 'linked'), join(priv, 'p')])
    h.update(readFileSync(f));
  h.update(readdirSync(ro).sort().join(',') + readdirSync(out).sort().join(',') + readdirSync(priv).sort().join(','));
  return h.digest('hex');
};
const before = digest();

const names: Buffer[] = [
  ...['a', 'sub/b', 'sub', 'abs', 'in/b', 'fifo', 'missing', '', '.', 'sub/../a', 'sub//b', 'a/', './a'].map((n) => join(ro, n)),
  ...['c', 'hard', 'rel', 'magic', 'fifo', 'null', 'private/p', 'private', 'new1', 'new2', 'new3', 'private/new'].map((n) => join(rw, n)),
  join(out, 'secret'),
  join(dir, 'ro2', 'a'),
  `${ro}X/a`,
  '/etc/passwd',
  '/proc/self/mem',
  'relative',
  '/',
  '//',
  `${ro}/${'x'.repeat(300)}`,
  `${ro}/` + 'y/'.repeat(2100),
  `${ro}/a\0/etc/passwd`,
].map((s) => Buffer.from(s, 'latin1'));
names.push(Buffer.concat([Buffer.from(`${rw}/`), Buffer.from([0xff, 0xfe, 0x80])]));
const commonFlags = [
  C.O_RDONLY,
  C.O_WRONLY,
  C.O_RDWR,
  C.O_RDWR | C.O_CREAT,
  C.O_WRONLY | C.O_CREAT | C.O_TRUNC,
  C.O_RDWR | C.O_CREAT | C.O_EXCL,
  C.O_RDONLY | C.O_TRUNC,
  C.O_RDONLY | C.O_DIRECTORY,
  C.O_PATH,
  C.O_TMPFILE | C.O_RDWR,
  C.O_ACCMODE,
  C.O_RDONLY | C.O_NOFOLLOW,
  C.O_RDWR | C.O_APPEND | C.O_NONBLOCK,
  C.O_RDONLY | C.O_CLOEXEC,
];
const commands = [1, 1, 1, 0x101, 0x101, 0x100, 0x102, 0x103, 0x110, 0x113, 0x119, 0, 2, 0xffffffff];

function randomFlags(): number {
  if (chance(0.6)) return pick(commonFlags);
  if (chance(0.5)) return (pick(commonFlags) | (1 << below(32))) >>> 0;
  return rand();
}

/** A well-formed file operation (0x110 to 0x11b: every one but TMPFILE, whose fd the checks below do not expect) on the fuzzed names. */
function fileOpFrame(): Buffer {
  const command = 0x110 + below(12);
  const two = command === 0x113 || command === 0x114 || command === 0x115;
  const args = {
    flags: chance(0.7) ? 0 : randomFlags() & (chance(0.5) ? 0x3 : 0xffff),
    mode: chance(0.5) ? 0o755 : rand() & 0xffff,
    uid: chance(0.5) ? 0xffffffff : rand(),
    gid: chance(0.5) ? 0xffffffff : rand(),
    a: below(1 << 20),
    b: below(1e9),
  };
  return encodeFileOp(command, pick(names).subarray(0, 4096), two ? pick(names).subarray(0, 4096) : null, args);
}

function validFrame(): Buffer {
  if (chance(0.15)) return fileOpFrame();
  const command = chance(0.1) ? 0x100 : chance(0.3) ? 0x101 : 1;
  if (command === 0x100) {
    const b = Buffer.alloc(16);
    b.writeUInt32LE(16, 0);
    b.writeUInt32LE(0x100, 4);
    b.writeUInt32LE(1, 8);
    b.writeUInt32LE(rand(), 12);
    return b;
  }
  const name = pick(names).subarray(0, 0xffff);
  const head = command === 1 ? 18 : 22;
  const b = Buffer.alloc(head + name.length);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt32LE(command, 4);
  let o = 8;
  if (command === 0x101) {
    b.writeUInt32LE(rand(), o);
    o += 4;
  }
  b.writeUInt32LE(randomFlags(), o);
  b.writeUInt32LE(chance(0.5) ? 0o644 : rand() & 0xffff, o + 4);
  b.writeUInt16LE(name.length, o + 8);
  name.copy(b, head);
  return b;
}

function mutate(f: Buffer): Buffer {
  let b: Buffer = Buffer.from(f);
  for (let n = 1 + below(4); n > 0; n--) {
    switch (below(8)) {
      case 0:
        if (b.length) b[below(b.length)]! ^= 1 << below(8);
        break;
      case 1:
        if (b.length) b[below(b.length)] = rand() & 0xff;
        break;
      case 2:
        b = b.subarray(0, below(b.length + 1));
        break;
      case 3:
        b = Buffer.concat([b, Buffer.from(Array.from({ length: 1 + below(64) }, () => rand() & 0xff))]);
        break;
      case 4:
        if (b.length >= 4) b.writeUInt32LE(pick([0, 4, 7, 8, b.length - 1, b.length + 1, 65557, 65558, rand()]) >>> 0, 0);
        break;
      case 5:
        if (b.length >= 8) b.writeUInt32LE(pick(commands) >>> 0, 4);
        break;
      case 6:
        if (b.length >= 18) b.writeUInt16LE(rand() & 0xffff, 16);
        break;
      case 7:
        if (b.length >= 12) b.writeUInt32LE(randomFlags(), 8);
        break;
    }
  }
  return b;
}

function frame(): Buffer {
  const r = rand() % 100;
  if (r < 45) return validFrame();
  if (r < 90) return mutate(validFrame());
  return Buffer.from(Array.from({ length: below(40) }, () => rand() & 0xff));
}

// ---- the oracle ---------------------------------------------------------------------------------
const violations: string[] = [];
const stat = new Float64Array(8);
function checkFd(fd: number, broker: string): void {
  let path = '';
  try {
    path = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    path = '?';
  }
  native.fstat(fd, stat);
  const type = stat[0]! & C.S_IFMT;
  const acc = fdFlags(fd) & C.O_ACCMODE;
  // `rwc/private x` (a mutated name) is a sibling of the denied `rwc/private/`, not inside it.
  const inRo = path.startsWith(ro + '/'),
    inRw = path.startsWith(rw + '/') && !path.startsWith(priv + '/');
  if (!inRo && !inRw) violations.push(`${broker}: an fd for ${path}`);
  else if (type !== C.S_IFREG) violations.push(`${broker}: an fd of type ${type.toString(8)} for ${path}`);
  else if (inRo && acc !== C.O_RDONLY) violations.push(`${broker}: write access to ${path}`);
  native.close(fd);
}

// ---- clients ------------------------------------------------------------------------------------
const stats = { frames: 0, bytes: 0, withFds: 0, replies: 0, fds: 0, hangups: 0, dropped: 0, connects: 0, sendErrors: 0 };
const results = new Map<number, number>();
const spareFds = Array.from({ length: 8 }, () => native.open('/dev/null', C.O_RDONLY, 0));

class FuzzClient {
  fd = -1;
  #poller: NativePoller | null = null;
  #pending = Buffer.alloc(0);
  #paused = false;
  constructor(
    readonly socket: string,
    readonly kind: 'seqpacket' | 'stream',
    readonly label: string,
  ) {}

  connect(): void {
    try {
      this.fd = native.connectUnix(Buffer.from(this.socket), this.kind === 'stream' ? C.SOCK_STREAM : C.SOCK_SEQPACKET);
    } catch {
      this.fd = -1;
      return;
    }
    stats.connects++;
    this.#pending = Buffer.alloc(0);
    this.#poller = new native.Poller(this.fd, PollMode.Receive, 64, (_e, count, status) => this.#onPoll(count, status));
    this.#poller.start(C.UV_READABLE);
  }

  close(): void {
    this.#poller?.close();
    this.#poller = null;
    if (this.fd >= 0) native.close(this.fd);
    this.fd = -1;
  }

  step(): void {
    if (this.fd < 0) return this.connect();
    const r = rand() % 1000;
    if (r < 15) {
      stats.hangups++;
      this.close();
      return;
    }
    if (r < 25 && !this.#paused) {
      // Stop reading for a while: the broker must cope with a client that does not read.
      this.#paused = true;
      this.#poller!.start(0);
      setTimeout(() => {
        this.#paused = false;
        this.#poller?.start(C.UV_READABLE);
      }, below(300));
    }
    const burst = 1 + below(16);
    let bytes: Buffer[] = [];
    for (let i = 0; i < burst; i++) bytes.push(frame());
    if (this.kind === 'stream') {
      // Re-cut the byte stream at random places.
      const all = Buffer.concat(bytes);
      bytes = [];
      for (let at = 0; at < all.length;) {
        const n = 1 + below(Math.max(1, all.length - at));
        bytes.push(all.subarray(at, at + n));
        at += n;
      }
    }
    for (const b of bytes) {
      if (b.length === 0 && this.kind === 'stream') continue;
      const attach = chance(0.05) ? spareFds.slice(0, 1 + below(spareFds.length)) : [];
      const n = attach.length ? native.sendFds(this.fd, b, attach) : native.send(this.fd, b, 0, b.length, -1);
      if (n < 0) {
        if (n !== -E.EAGAIN) {
          stats.sendErrors++;
          this.close();
        }
        return;
      }
      stats.frames++;
      stats.bytes += n;
      if (attach.length) stats.withFds++;
    }
  }

  #onPoll(count: number, status: number): void {
    for (let i = 0, m = 0; i < count; i++) {
      const offset = recvMeta[m]!,
        length = recvMeta[m + 1]!,
        nfds = recvMeta[m + 3]!;
      for (let k = 0; k < nfds; k++) {
        stats.fds++;
        checkFd(recvMeta[m + 4 + k]!, this.label);
      }
      m += 4 + nfds;
      if (this.kind === 'seqpacket') {
        this.#reply(recvArena, offset, length);
        if (length >= 12) {
          const command = recvArena.readUInt32LE(offset + 4),
            result = recvArena.readInt32LE(offset + 8);
          const wants = result === 0 && (command === 1 || command === 0x101 || command === 0x11c) ? 1 : 0;
          if (nfds !== wants) violations.push(`${this.label}: a reply (command ${command}, result ${result}) with ${nfds} fds`);
        }
      } else {
        this.#pending = Buffer.concat([this.#pending, recvArena.subarray(offset, offset + length)]);
        while (this.#pending.length >= 12) {
          const size = this.#pending.readUInt32LE(0);
          if (size < 12 || size > 64) {
            violations.push(`${this.label}: a reply of size ${size}`);
            this.#pending = Buffer.alloc(0);
            break;
          }
          if (this.#pending.length < size) break;
          this.#reply(this.#pending, 0, size);
          this.#pending = this.#pending.subarray(size);
        }
      }
    }
    if (status !== 0) {
      stats.dropped++;
      this.close();
    }
  }

  #reply(buf: Buffer, offset: number, length: number): void {
    stats.replies++;
    if (length < 12) {
      violations.push(`${this.label}: a reply of ${length} bytes`);
      return;
    }
    const result = buf.readInt32LE(offset + 8);
    results.set(result, (results.get(result) ?? 0) + 1);
  }
}

// ---- run ----------------------------------------------------------------------------------------
const args = [`--allow=${ro}/:r`, `--allow=${rw}/:rwc`, `--deny=${priv}/`];
const brokers = [
  { label: 'seqpacket', serve: await startServeUnder([], join(dir, 'seq.sock'), args) },
  { label: 'stream', serve: await startServeUnder([], join(dir, 'stream.sock'), [...args, '--stream']) },
];
let crashed = '';
for (const b of brokers)
  b.serve.child.on(
    'exit',
    (code, signal) => (crashed ||= `${b.label} broker exited (${code ?? signal}): ${b.serve.stderr().slice(-2000)}`),
  );

async function goodRequest(label: string, socket: string, kind: 'seqpacket' | 'stream', file = join(ro, 'a')): Promise<boolean> {
  const { RawClient, openFrame, inodeOf } = await import('../test/raw.js');
  const c = RawClient.connect(socket, kind);
  try {
    const r = await c.request(openFrame(file), 5000);
    const ok = r !== null && r.result === 0 && r.fds.length === 1 && inodeOf(r.fds[0]!) === statSync(file).ino;
    for (const fd of r?.fds ?? []) native.close(fd);
    if (!ok) violations.push(`${label}: the good request got ${r ? r.result : 'no reply'}`);
    return ok;
  } finally {
    c.close();
  }
}

// Every allow rule once: the policy opens a rule's root on first use and keeps it, which is not a leak.
for (const b of brokers)
  for (const f of [join(ro, 'a'), join(rw, 'c')]) await goodRequest(b.label, b.serve.socket, b.label as 'seqpacket' | 'stream', f);
await sleep(100);
const baseline = brokers.map((b) => fdCount(b.serve.child.pid!));
console.log(
  `openhook fuzz: ${seconds} s, seed ${values.seed}, ${clientsPer} clients per broker; broker fds at start: ${baseline.join(', ')}`,
);

const clients = brokers.flatMap((b) =>
  Array.from({ length: clientsPer }, (_, i) => new FuzzClient(b.serve.socket, b.label as 'seqpacket' | 'stream', `${b.label}#${i}`)),
);
const end = Date.now() + seconds * 1000;
let lastReport = Date.now();
while (Date.now() < end && !crashed) {
  for (const c of clients) c.step();
  await new Promise((r) => setImmediate(r));
  if (Date.now() - lastReport > 60_000) {
    lastReport = Date.now();
    console.log(
      `  ${Math.round((end - Date.now()) / 1000)} s left: ${stats.frames} frames, ${stats.replies} replies, ${stats.fds} fds, ${violations.length} violations`,
    );
  }
}
for (const c of clients) c.close();

if (!crashed) {
  for (let i = 0; i < 100; i++) {
    if (brokers.every((b, k) => fdCount(b.serve.child.pid!) === baseline[k])) break;
    await sleep(50);
  }
  brokers.forEach((b, k) => {
    const now = fdCount(b.serve.child.pid!);
    if (now !== baseline[k]) violations.push(`${b.label}: fd count ${baseline[k]} at start, ${now} at the end`);
  });
  for (const b of brokers) await goodRequest(b.label, b.serve.socket, b.label as 'seqpacket' | 'stream');
}
if (digest() !== before) violations.push('a file in the read-only tree, the denied tree or outside changed');
if (crashed) violations.push(crashed);
for (const b of brokers) await b.serve.stop();
for (const fd of spareFds) closeSync(fd);

const top = [...results.entries()]
  .sort((a, b) => b[1] - a[1])
  .map(([r, n]) => `${r}: ${n}`)
  .join(', ');
console.log(
  `sent ${stats.frames.toLocaleString('en')} frames (${stats.bytes.toLocaleString('en')} bytes; ${stats.withFds} with fds attached) over ${stats.connects} connections (${stats.hangups} hung up by us, ${stats.dropped} closed by a broker)`,
);
console.log(`got ${stats.replies.toLocaleString('en')} replies and ${stats.fds} fds; results: ${top}`);
console.log(
  violations.length
    ? `VIOLATIONS (${violations.length}):\n  ${[...new Set(violations)].slice(0, 20).join('\n  ')}`
    : 'no violations: both brokers stayed up, fd counts flat, every fd allowed, good requests answered',
);
rmSync(dir, { recursive: true, force: true });
process.exit(violations.length ? 1 : 0);
