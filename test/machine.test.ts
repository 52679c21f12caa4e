/**
 * The resolver's one state machine (src/resolver/machine.ts), through both of its drivers: every
 * scenario runs on the event loop (the sync driver) and on the thread pool (the pool driver), and
 * the two must give the same result, reasons included. Real files, real syscalls. (The EAGAIN bound
 * under a real renaming race, on both drivers: resolver.test.ts.)
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { linkSync, mkdirSync, statSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { E } from '../src/errno.js';
import { C, native } from '../src/native.js';
import type { OpenOptions } from '../src/policy/open-options.js';
import { OpenMachine, Step } from '../src/resolver/machine.js';
import { Resolver, type OpenResult } from '../src/resolver/resolver.js';
import { tempDir } from './helpers.js';
import { fdFlags, inodeOf } from './raw.js';

const tmp = tempDir('openhook-machine-');
const dir = tmp.path;
mkdirSync(join(dir, 'sub'));
writeFileSync(join(dir, 'file'), 'inside');
writeFileSync(join(dir, 'outside-linked'), 'two links');
linkSync(join(dir, 'outside-linked'), join(dir, 'hard'));
symlinkSync('made-through-link', join(dir, 'dangling'));
execFileSync('mkfifo', [join(dir, 'fifo')]);
execFileSync('mknod', [join(dir, 'null-dev'), 'c', '1', '3']);
const sock = native.listenUnix(Buffer.from(join(dir, 'sock')), C.SOCK_STREAM, 0o600, 1).fd;
const rootFd = native.open(dir, C.O_PATH | C.O_DIRECTORY, 0);

const PLAIN: OpenOptions = { followSymlinks: false, directories: false };
const FOLLOW: OpenOptions = { followSymlinks: true, directories: false };

after(() => {
  native.close(sock);
  native.close(rootFd);
  tmp.cleanup();
});

/** A result with its fd replaced by the inode it opened (closing the fd), so that results compare. */
function settle(r: OpenResult): { ino: number } | { errno: number; reason: string } {
  if (typeof r !== 'number') return { errno: r.errno, reason: r.reason };
  const ino = inodeOf(r);
  native.close(r);
  return { ino };
}

/** The same open through both drivers. */
async function both(
  resolver: Resolver,
  rest: string,
  flags: number,
  options: OpenOptions,
  mode = 0o644,
): Promise<[ReturnType<typeof settle>, ReturnType<typeof settle>]> {
  const sync = settle(resolver.open(rootFd, rest, flags, mode, options));
  const pool = settle(await resolver.openSlow(rootFd, rest, flags, mode, options, null));
  return [sync, pool];
}

describe('the open machine, through the sync and the pool driver alike', () => {
  let resolver: Resolver;
  before(() => (resolver = new Resolver()));
  after(() => resolver.close());

  it('opens a regular file to the same inode', async () => {
    const [sync, pool] = await both(resolver, 'file', C.O_RDONLY, PLAIN);
    assert.deepEqual(sync, { ino: statSync(join(dir, 'file')).ino });
    assert.deepEqual(pool, sync);
  });

  it('refuses special files and unwanted types with the same errno and reason', async () => {
    const cases: [string, number, OpenOptions, number, string][] = [
      ['fifo', C.O_RDONLY, PLAIN, E.EACCES, 'FIFO refused'],
      ['sock', C.O_RDONLY, PLAIN, E.EACCES, 'socket refused'],
      ['null-dev', C.O_RDONLY, PLAIN, E.EACCES, 'device refused'],
      ['sub', C.O_RDONLY, PLAIN, E.EACCES, 'directories are not allowed by this rule'],
      ['sub', C.O_RDWR, { followSymlinks: false, directories: true }, E.EISDIR, ''],
      ['file', C.O_RDONLY | C.O_DIRECTORY, PLAIN, E.ENOTDIR, ''],
      ['hard', C.O_RDWR, PLAIN, E.EACCES, 'file has more than one hard link: write access refused'],
      ['hard', C.O_RDONLY, { ...PLAIN, hardlinks: 'refuse' }, E.EACCES, 'file has more than one hard link'],
      ['dangling', C.O_RDONLY | C.O_NOFOLLOW, FOLLOW, E.ELOOP, ''],
      ['file', C.O_RDWR | C.O_CREAT | C.O_EXCL, PLAIN, E.EEXIST, ''],
      ['missing', C.O_RDONLY, PLAIN, E.ENOENT, ''],
    ];
    for (const [rest, flags, options, errno, reason] of cases) {
      const [sync, pool] = await both(resolver, rest, flags, options);
      assert.deepEqual(sync, { errno, reason }, `${rest} on the event loop`);
      assert.deepEqual(pool, sync, `${rest} on the pool`);
    }
  });

  it('refuses O_CREAT through a dangling symlink, after one more look (the EEXIST race path)', async () => {
    const [sync, pool] = await both(resolver, 'dangling', C.O_RDWR | C.O_CREAT, FOLLOW);
    assert.deepEqual(sync, { errno: E.EACCES, reason: 'O_CREAT through a dangling symlink' });
    assert.deepEqual(pool, sync);
    assert.throws(() => statSync(join(dir, 'made-through-link')), /ENOENT/, 'nothing was created');
  });

  it('creates a missing file once, with the resolver mode, on either driver', async () => {
    for (const [name, run] of [
      ['made-sync', (f: number) => Promise.resolve(resolver.open(rootFd, 'made-sync', f, 0o4777, PLAIN))],
      ['made-pool', (f: number) => resolver.openSlow(rootFd, 'made-pool', f, 0o4777, PLAIN, null)],
    ] as const) {
      const made = settle(await run(C.O_RDWR | C.O_CREAT));
      assert.deepEqual(made, { ino: statSync(join(dir, name)).ino });
      assert.equal(statSync(join(dir, name)).mode & 0o7777, 0o755, `${name}: setuid and the umask removed`);
      assert.deepEqual(settle(await run(C.O_RDWR | C.O_CREAT | C.O_EXCL)), { errno: E.EEXIST, reason: '' });
    }
  });

  it('strips O_NOATIME from the open it makes, on either driver (defect 1)', async () => {
    // The broker runs as root here, so the kernel would grant O_NOATIME to it on any file: a client
    // would then read without touching atime. The fd must come back without the flag.
    const sync = resolver.open(rootFd, 'file', C.O_RDONLY | C.O_NOATIME, 0, PLAIN);
    const pool = await resolver.openSlow(rootFd, 'file', C.O_RDONLY | C.O_NOATIME, 0, PLAIN, null);
    const slow = resolver.open(rootFd, 'file', C.O_RDONLY | C.O_NOATIME, 0, { ...PLAIN, verify: () => 0 });
    for (const fd of [sync, pool, slow]) {
      assert.equal(typeof fd, 'number');
      assert.equal(fdFlags(fd as number) & C.O_NOATIME, 0, 'O_NOATIME is not on the fd');
      native.close(fd as number);
    }
  });
});

describe('the open machine, step by step', () => {
  it('opens what another process created between the lookup and the create (the EEXIST race)', () => {
    // The interleaving is made by hand: the steps are real syscalls, run here one by one.
    const settings = { hardlinks: 'read-only' as const, eagainRetries: 8, stats: { eagain: 0, eagainFailures: 0 } };
    const m = new OpenMachine(settings);
    let step = m.start(rootFd, 'raced', C.O_RDWR | C.O_CREAT, 0o600, PLAIN);
    assert.equal(step, Step.LOOKUP);
    const stat = new Float64Array(9);
    step = m.advance(native.lookup(m.dirfd, m.path, m.flags, m.resolve, stat), 0, 0, false);
    assert.equal(step, Step.CREATE, 'not found: create');
    writeFileSync(join(dir, 'raced'), 'made by someone else');
    step = m.advance(native.create(m.dirfd, m.path, m.flags, m.mode, m.resolve), 0, 0, false);
    assert.equal(step, Step.LOOKUP, 'EEXIST: look again');
    step = m.advance(native.lookup(m.dirfd, m.path, m.flags, m.resolve, stat), stat[0]!, stat[1]!, false);
    assert.equal(step, Step.REOPEN);
    step = m.advance(native.reopen(m.dirfd, m.flags), 0, 0, false);
    assert.equal(step, Step.DONE);
    assert.equal(typeof m.result, 'number');
    assert.equal(inodeOf(m.result as number), statSync(join(dir, 'raced')).ino, 'the file someone else made');
    native.close(m.result as number);
    unlinkSync(join(dir, 'raced'));
  });

  it('gives up after eagainRetries EAGAINs, counting each', () => {
    const settings = { hardlinks: 'read-only' as const, eagainRetries: 2, stats: { eagain: 0, eagainFailures: 0 } };
    const m = new OpenMachine(settings);
    let step = m.start(rootFd, 'file', C.O_RDONLY, 0, PLAIN);
    for (let i = 0; i < 3; i++) {
      assert.equal(step, Step.LOOKUP);
      step = m.advance(-E.EAGAIN, 0, 0, false);
    }
    assert.equal(step, Step.DONE);
    assert.deepEqual(m.result, { errno: E.EAGAIN, reason: '' });
    assert.deepEqual(settings.stats, { eagain: 3, eagainFailures: 1 });
  });
});
