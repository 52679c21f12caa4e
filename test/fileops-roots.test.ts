/**
 * File operations and the resolver's root table: an operation pins each root it works beneath (both,
 * for a rename or link between two rules) for as long as it runs, as an open does, so that neither
 * the table's bound nor a reload closes a root under it; and no operation leaves an fd behind.
 */
import assert from 'node:assert/strict';
import { closeSync, existsSync, mkdirSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { serveFileOperation, type FileOperation } from '../src/broker/operations.js';
import { Metrics } from '../src/broker/metrics.js';
import { E } from '../src/errno.js';
import { Policy } from '../src/policy/policy.js';
import { makeRule } from '../src/policy/rule.js';
import { Command } from '../src/protocol/constants.js';
import { Resolver } from '../src/resolver/resolver.js';
import { fdCount, tempDir } from './helpers.js';

const peer = { pid: process.pid, uid: 0, gid: 0, groups: [] };

function op(command: number, path: string, path2 = '', mode = 0): FileOperation {
  return { command, path, path2, flags: 0, mode, uid: 0, gid: 0, a: 0, b: 0, c: 0, d: 0 };
}

/** Two trees, each its own rule (and root), granted everything. */
function twoTrees(rootLimit: number) {
  const tmp = tempDir();
  const base = realpathSync(tmp.path);
  mkdirSync(join(base, 'a'));
  mkdirSync(join(base, 'b'));
  const ctx = {
    policy: new Policy([makeRule({ allow: `${base}/a/`, access: 'all' }, 'a'), makeRule({ allow: `${base}/b/`, access: 'all' }, 'b')]),
    resolver: new Resolver({ rootLimit }),
    audit: null,
    metrics: new Metrics(),
  };
  return {
    base,
    ctx,
    close() {
      ctx.resolver.close();
      tmp.cleanup();
    },
  };
}

describe('file operations and the root table', () => {
  it('a reload in the middle of an operation does not close the root under it; the root closes when it ends', () => {
    const t = twoTrees(1024);
    try {
      const resolver = t.ctx.resolver;
      const before = fdCount(process.pid);
      let during = -1;
      // The verify hook runs in the middle of the operation, between the lookup beneath the root
      // and the mkdirat: a reload (retireAll) there must leave the root's fd open until the end.
      const options = {
        followSymlinks: false,
        directories: false,
        verify: () => (resolver.roots.retireAll(), (during = fdCount(process.pid)), 0),
      };
      assert.equal(resolver.operations.mkdir({ root: `${t.base}/a`, rest: 'd', options }, 0o755), 0);
      assert.ok(existsSync(join(t.base, 'a', 'd')));
      assert.equal(during, before + 2, 'the root and the parent directory are open during the operation');
      assert.equal(fdCount(process.pid), before, 'both closed after it');
      assert.equal(resolver.roots.openCount, 0);
    } finally {
      t.close();
    }
  });

  it('a rename or link between two roots works with room for one root in the table', () => {
    const t = twoTrees(1);
    try {
      for (let i = 0; i < 20; i++) {
        writeFileSync(join(t.base, 'a', `f${i}`), `x${i}`);
        assert.equal(serveFileOperation(t.ctx, peer, op(Command.RENAME, `${t.base}/a/f${i}`, `${t.base}/b/g${i}`)), 0, `rename ${i}`);
        assert.equal(readFileSync(join(t.base, 'b', `g${i}`), 'utf8'), `x${i}`);
        assert.equal(serveFileOperation(t.ctx, peer, op(Command.LINK, `${t.base}/b/g${i}`, `${t.base}/a/h${i}`)), 0, `link ${i}`);
        assert.equal(readFileSync(join(t.base, 'a', `h${i}`), 'utf8'), `x${i}`);
      }
      assert.equal(t.ctx.resolver.roots.openCount, 1);
    } finally {
      t.close();
    }
  });

  it('a retired root (a reload) is reopened by the next operation, and closed once no operation holds it', async () => {
    const t = twoTrees(1024);
    try {
      const before = fdCount(process.pid);
      assert.equal(serveFileOperation(t.ctx, peer, op(Command.MKDIR, `${t.base}/a/d1`, '', 0o755)), 0);
      assert.equal(fdCount(process.pid), before + 1, 'the root of a/ stays open in the table');
      t.ctx.resolver.roots.retireAll();
      assert.equal(fdCount(process.pid), before, 'retired and unused: closed');
      assert.equal(serveFileOperation(t.ctx, peer, op(Command.MKDIR, `${t.base}/a/d2`, '', 0o755)), 0);
      assert.ok(existsSync(join(t.base, 'a', 'd2')));
      // a root that cannot be opened refuses with the open's errno
      t.ctx.resolver.roots.retireAll();
      mkdirSync(join(t.base, 'moved'));
      const { renameSync } = await import('node:fs');
      renameSync(join(t.base, 'a'), join(t.base, 'moved', 'a'));
      assert.equal(serveFileOperation(t.ctx, peer, op(Command.RMDIR, `${t.base}/a/d1`)), -E.ENOENT);
    } finally {
      t.close();
    }
  });

  it('leaves no fd behind: 10,000 operations of every kind, allowed and refused', () => {
    const t = twoTrees(1);
    try {
      const a = `${t.base}/a`,
        b = `${t.base}/b`;
      // warm up: the roots and the resolver's /proc/self/fd directory are opened once
      writeFileSync(join(a, 'w'), '');
      serveFileOperation(t.ctx, peer, op(Command.TRUNCATE, `${a}/w`));
      serveFileOperation(t.ctx, peer, op(Command.UNLINK, `${a}/w`));
      const before = fdCount(process.pid);
      for (let i = 0; i < 10_000 / 10; i++) {
        assert.equal(serveFileOperation(t.ctx, peer, op(Command.MKDIR, `${a}/d`, '', 0o755)), 0);
        assert.equal(serveFileOperation(t.ctx, peer, op(Command.RENAME, `${a}/d`, `${b}/d`)), 0);
        assert.equal(serveFileOperation(t.ctx, peer, op(Command.CHMOD, `${b}/d`, '', 0o700)), 0);
        assert.equal(serveFileOperation(t.ctx, peer, op(Command.RMDIR, `${b}/d`)), 0);
        assert.equal(serveFileOperation(t.ctx, peer, op(Command.SYMLINK, 'target', `${a}/s`)), 0);
        assert.equal(serveFileOperation(t.ctx, peer, op(Command.LINK, `${a}/s`, `${b}/s`)), 0);
        assert.equal(serveFileOperation(t.ctx, peer, op(Command.UNLINK, `${a}/s`)), 0);
        assert.equal(serveFileOperation(t.ctx, peer, op(Command.UNLINK, `${b}/s`)), 0);
        const tmp = serveFileOperation(t.ctx, peer, { ...op(Command.TMPFILE, a, '', 0o600), flags: 2 });
        assert.ok(tmp >= 0);
        closeSync(tmp);
        // refused by the policy
        assert.equal(serveFileOperation(t.ctx, peer, op(Command.MKDIR, `${t.base}/elsewhere`)), -E.EACCES);
      }
      // refused by the root rule (EBUSY) and by the kernel (ENOENT)
      for (let i = 0; i < 500; i++) {
        assert.equal(serveFileOperation(t.ctx, peer, op(Command.RMDIR, a)), -E.EBUSY);
        assert.equal(serveFileOperation(t.ctx, peer, op(Command.UNLINK, `${a}/nothing`)), -E.ENOENT);
      }
      assert.equal(fdCount(process.pid), before);
    } finally {
      t.close();
    }
  });
});
