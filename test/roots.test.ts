/**
 * The resolver's table of root directory fds (src/resolver/roots.ts): opened lazily, shared,
 * bounded, reference-counted; a reload (retireAll) never closes a root under an open in flight.
 */
import assert from 'node:assert/strict';
import { fstatSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import { E } from '../src/errno.js';
import { C, native } from '../src/native.js';
import { Policy } from '../src/policy/policy.js';
import { parseAllowFlag } from '../src/policy/rule.js';
import { PolicyOpener } from '../src/qemu/opener.js';
import { Resolver } from '../src/resolver/resolver.js';
import { RootTable, type RootHandle } from '../src/resolver/roots.js';
import { tempDir } from './helpers.js';

const tmp = tempDir();
after(tmp.cleanup);
const T = tmp.path;
for (const d of ['vm/g1', 'vm/g2', 'home/u']) mkdirSync(`${T}/${d}`, { recursive: true });

const handle = (h: RootHandle | number): RootHandle => {
  assert.equal(typeof h, 'object', `acquired (${String(h)})`);
  return h as RootHandle;
};

describe('root table', () => {
  it('opens roots lazily, shares them, and closes them when released after close', () => {
    const t = new RootTable();
    assert.equal(t.openCount, 0, 'nothing is opened before it is used');
    const a = handle(t.acquire(`${T}/vm`));
    const b = handle(t.acquire(`${T}/vm`));
    assert.equal(a.fd, b.fd, 'one fd for one directory');
    assert.equal(t.openCount, 1);
    t.close();
    assert.ok(fstatSync(a.fd).isDirectory(), 'still open while opens hold it');
    t.release(a);
    assert.ok(fstatSync(b.fd).isDirectory());
    t.release(b);
    assert.throws(() => fstatSync(a.fd), /EBADF/, 'closed once the last open is done');
    assert.equal(t.acquire(`${T}/vm`), -E.EBADF, 'a closed table opens nothing');
  });

  it('keeps at most limit roots open, reopening the oldest when needed', () => {
    const t = new RootTable(2);
    for (const d of ['vm/g1', 'vm/g2', 'home/u', 'vm/g1']) {
      t.release(handle(t.acquire(`${T}/${d}`)));
      assert.ok(t.openCount <= 2);
    }
    t.close();
  });

  it('keeps a root that a reload retires open until the open using it is done, and reopens it after', () => {
    const t = new RootTable();
    const inFlight = handle(t.acquire(`${T}/vm`));
    t.retireAll();
    assert.equal(t.openCount, 0);
    assert.ok(fstatSync(inFlight.fd).isDirectory(), 'the open in flight keeps its root');
    const next = handle(t.acquire(`${T}/vm`));
    assert.notEqual(next, inFlight, 'later opens get a fresh fd');
    t.release(inFlight);
    assert.throws(() => fstatSync(inFlight.fd), /EBADF/);
    t.release(next);
    t.close();
  });
});

describe('resolver: opens beneath a root named by path', () => {
  it('answers ENOENT, with the reason, while a root does not exist, and opens beneath it once it does', async () => {
    const r = new Resolver();
    try {
      const missing = r.openBeneath(`${T}/later`, 'f', 0, 0, { followSymlinks: false, directories: false }, null);
      assert.equal(typeof missing, 'object');
      assert.equal((missing as { errno: number }).errno, E.ENOENT);
      assert.match((missing as { reason: string }).reason, /cannot be opened \(ENOENT\)/);
      mkdirSync(`${T}/later`);
      writeFileSync(`${T}/later/f`, 'now');
      // (the first open beneath a new root runs on the pool, until statfs says where the root lies)
      const fd = await r.openBeneath(`${T}/later`, 'f', 0, 0, { followSymlinks: false, directories: false }, null);
      assert.equal(typeof fd, 'number');
      native.close(fd as number);
      assert.equal(r.roots.openCount, 1);
    } finally {
      r.close();
      rmSync(`${T}/later`, { recursive: true });
    }
  });
});

describe('PolicyOpener: roots', () => {
  it('closes the root fds its own resolver opened when it is closed', async () => {
    const opener = new PolicyOpener(new Policy([parseAllowFlag(`${T}/home/u/:rwc`)]));
    const before = readdirSync('/proc/self/fd').length;
    const fd = await opener.open(`${T}/home/u/img`, C.O_RDWR | C.O_CREAT, 0o600).catch((e: Error) => e);
    assert.equal(typeof fd, 'number', String(fd));
    native.close(fd as number);
    assert.ok(readdirSync('/proc/self/fd').length > before, 'the root stays open between opens');
    opener.close();
    assert.equal(readdirSync('/proc/self/fd').length, before, 'closed with the opener');
  });
});
