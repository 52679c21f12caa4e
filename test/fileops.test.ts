/**
 * File operations through the broker, the socket way in (the client library over a real socket to a
 * broker in this process): every operation allowed and refused with the right errno, by the letters
 * of the rule that decides; the two-rule cases (rename, link); chmod's mode; access() answered by the
 * policy; and refused operations leaving the tree byte for byte as it was.
 */
import assert from 'node:assert/strict';
import {
  closeSync,
  existsSync,
  fstatSync,
  linkSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  statSync,
  symlinkSync,
  writeFileSync,
  writeSync,
  chmodSync,
} from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Broker } from '../src/broker/broker.js';
import { E } from '../src/errno.js';
import { connect, type OpenHookClient } from '../src/client/client.js';
import { Access, ALL_ACCESS, formatAccess, parseAccess, parseRequestAccess } from '../src/policy/access.js';
import { Policy } from '../src/policy/policy.js';
import { makeRule, type RuleSpec } from '../src/policy/rule.js';
import { Command, Feature } from '../src/protocol/constants.js';
import { encodeFileOp, encodeHello } from '../src/protocol/frames.js';
import { tempDir } from './helpers.js';
import { RawClient } from './raw.js';

/** A broker in this process with these rules, and a client connected to it. */
async function brokerWith(socket: string, rules: RuleSpec[]): Promise<{ broker: Broker; client: OpenHookClient; close: () => void }> {
  const broker = new Broker({ policy: new Policy(rules.map((r, i) => makeRule(r, `rule ${i + 1}`))), log: () => {} });
  broker.listen(socket);
  const client = await connect(socket);
  return { broker, client, close: () => (client.close(), broker.close()) };
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
}

/** Names, types, modes, sizes, contents, link targets and mtimes of everything under dir. */
function snapshot(dir: string): string {
  const lines: string[] = [];
  const walk = (d: string): void => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const st = lstatSync(p);
      const what = st.isSymbolicLink()
        ? `-> ${readlinkSync(p)}`
        : st.isFile()
          ? readFileSync(p).toString('hex')
          : st.isDirectory()
            ? 'dir'
            : 'other';
      lines.push(`${p} ${st.mode.toString(8)} ${st.nlink} ${st.size} ${st.mtimeMs} ${what}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return lines.join('\n');
}

describe('access letters', () => {
  it('parses every letter, all, and says what is wrong', () => {
    assert.equal(parseAccess('rwcdmusaxnb'), ALL_ACCESS);
    assert.equal(parseAccess('all'), ALL_ACCESS);
    assert.equal(formatAccess(ALL_ACCESS), 'all');
    assert.equal(parseAccess('m'), Access.MKDIR);
    assert.equal(parseAccess('u'), Access.REMOVE);
    assert.equal(parseAccess('s'), Access.SYMLINK);
    assert.equal(parseAccess('a'), Access.ATTRIBUTES);
    assert.equal(parseAccess('x'), Access.EXECUTE);
    assert.equal(formatAccess(parseAccess('rwcmu')), 'rwcmu');
    assert.throws(() => parseAccess('rz'), /unknown access letter 'z'.*rwcdmusaxnb, or 'all'/);
    assert.throws(() => parseAccess('mm'), /repeated/);
    assert.throws(() => parseAccess('c'), /'c' \(create\) needs 'w'/);
    assert.throws(() => parseAccess('All'), /unknown access letter 'A'/);
    assert.throws(() => parseAccess(''), /empty access/);
  });

  it('check takes letters without the pairing rules, and operation names', () => {
    assert.equal(parseRequestAccess('c'), Access.CREATE);
    assert.equal(parseRequestAccess('rename-from'), Access.REMOVE);
    assert.equal(parseRequestAccess('rename-dir-to'), Access.MKDIR);
    assert.equal(parseRequestAccess('link-from'), Access.READ);
    assert.equal(parseRequestAccess('create'), Access.WRITE | Access.CREATE);
    assert.throws(() => parseRequestAccess('toString'), /unknown access/);
  });

  it('a TOML policy takes the new letters and all', async () => {
    const { parsePolicyText } = await import('../src/policy/index.js');
    const policy = parsePolicyText('[[rule]]\nallow = "/srv/a/"\naccess = "all"\n[[rule]]\nallow = "/srv/b/"\naccess = "rmu"\n', 'p.toml');
    assert.deepEqual(
      policy.rules.map((r) => formatAccess(r.access)),
      ['all', 'rmu'],
    );
    assert.throws(() => parsePolicyText('[[rule]]\nallow = "/srv/a/"\naccess = "rq"\n', 'p.toml'), /p\.toml:3.*unknown access letter 'q'/);
  });
});

describe('file operations, allowed and refused by the letters', () => {
  const tmp = tempDir();
  const base = realpathSync(tmp.path);
  const all = join(base, 'all');
  const ro = join(base, 'ro');
  const fifos = join(base, 'fifos');
  const outside = join(base, 'outside');
  let h: Awaited<ReturnType<typeof brokerWith>>;
  before(async () => {
    for (const d of [all, ro, fifos, outside]) mkdirSync(d);
    writeFileSync(join(outside, 'secret'), 'SECRET');
    writeFileSync(join(ro, 'f'), 'read only');
    mkdirSync(join(ro, 'd'));
    h = await brokerWith(join(base, 's'), [
      { allow: `${all}/`, access: 'all' },
      { allow: `${ro}/`, access: 'rd' },
      { allow: `${fifos}/`, access: 'rwc', fifos: true },
      { allow: `${base}/only-c/`, access: 'rwc' },
      { allow: `${base}/only-m/`, access: 'm' },
      { allow: `${base}/only-u/`, access: 'ru' },
      { allow: `${base}/refuse-links/`, access: 'rwcu', hardlinks: 'refuse' },
      { deny: `${all}/denied/` },
    ]);
  });
  after(() => {
    h.close();
    tmp.cleanup();
  });

  it('HELLO offers FILE_OPS', async () => {
    const raw = RawClient.connect(join(base, 's'));
    try {
      const reply = await raw.request(encodeHello(Feature.FILE_OPS));
      // size 20, command HELLO, result 0, version, features = FILE_OPS
      assert.equal(reply!.bytes.readUInt32LE(16), Feature.FILE_OPS);
    } finally {
      raw.close();
    }
  });

  it('mkdir needs m, and gets exactly the mode less the umask', async () => {
    assert.equal(await code(h.client.mkdir(join(all, 'made'), 0o2775)), 'ok');
    assert.equal(statSync(join(all, 'made')).mode & 0o7777, 0o755);
    assert.equal(await code(h.client.mkdir(join(all, 'made'))), 'EEXIST');
    assert.equal(await code(h.client.mkdir(join(ro, 'no'))), 'EACCES');
    assert.equal(await code(h.client.mkdir(join(base, 'only-c', 'no'))), 'EACCES');
    assert.equal(await code(h.client.mkdir(join(all, 'denied'))), 'EACCES');
    assert.equal(await code(h.client.mkdir(join(outside, 'no'))), 'EACCES');
    assert.equal(await code(h.client.mkdir(join(all, 'nope', 'deeper'))), 'ENOENT');
    assert.equal(await code(h.client.mkdir(all)), 'EBUSY'); // the rule's root itself
    assert.ok(!existsSync(join(ro, 'no')) && !existsSync(join(outside, 'no')));
  });

  it('unlink and rmdir need u', async () => {
    writeFileSync(join(all, 'gone'), 'x');
    mkdirSync(join(all, 'gone-dir'));
    assert.equal(await code(h.client.unlink(join(all, 'gone-dir'))), 'EISDIR');
    assert.equal(await code(h.client.rmdir(join(all, 'gone'))), 'ENOTDIR');
    assert.equal(await code(h.client.unlink(join(all, 'gone'))), 'ok');
    assert.equal(await code(h.client.rmdir(join(all, 'gone-dir'))), 'ok');
    assert.ok(!existsSync(join(all, 'gone')) && !existsSync(join(all, 'gone-dir')));
    assert.equal(await code(h.client.unlink(join(ro, 'f'))), 'EACCES');
    assert.equal(await code(h.client.rmdir(join(ro, 'd'))), 'EACCES');
    assert.equal(await code(h.client.unlink(join(outside, 'secret'))), 'EACCES');
    assert.equal(await code(h.client.rmdir(all)), 'EBUSY');
    assert.ok(existsSync(join(ro, 'f')) && existsSync(join(ro, 'd')) && existsSync(join(outside, 'secret')));
  });

  it('rename needs u at the source and c (a directory: m) at the destination', async () => {
    writeFileSync(join(all, 'r1'), 'one');
    assert.equal(await code(h.client.rename(join(all, 'r1'), join(all, 'r2'))), 'ok');
    assert.equal(readFileSync(join(all, 'r2'), 'utf8'), 'one');
    // from a tree without u
    assert.equal(await code(h.client.rename(join(ro, 'f'), join(all, 'stolen'))), 'EACCES');
    // a file to where only c is granted: fine; a directory there needs m
    assert.equal(await code(h.client.rename(join(all, 'r2'), join(base, 'only-c-missing'))), 'EACCES');
    mkdirSync(join(all, 'dir-to-move'));
    mkdirSync(join(base, 'only-c'), { recursive: true });
    mkdirSync(join(base, 'only-m'), { recursive: true });
    assert.equal(await code(h.client.rename(join(all, 'dir-to-move'), join(base, 'only-c', 'moved'))), 'EACCES');
    assert.equal(await code(h.client.rename(join(all, 'r2'), join(base, 'only-m', 'moved'))), 'EACCES');
    assert.equal(await code(h.client.rename(join(all, 'dir-to-move'), join(base, 'only-m', 'moved'))), 'ok');
    assert.equal(await code(h.client.rename(join(all, 'r2'), join(base, 'only-c', 'moved'))), 'ok');
    assert.ok(statSync(join(base, 'only-m', 'moved')).isDirectory());
    assert.equal(readFileSync(join(base, 'only-c', 'moved'), 'utf8'), 'one');
    // to outside every rule
    writeFileSync(join(all, 'r3'), 'three');
    assert.equal(await code(h.client.rename(join(all, 'r3'), join(outside, 'r3'))), 'EACCES');
    assert.ok(existsSync(join(all, 'r3')) && !existsSync(join(outside, 'r3')));
  });

  it('a rename that would replace a file needs u at the destination too', async () => {
    writeFileSync(join(all, 'new'), 'new');
    writeFileSync(join(base, 'only-c', 'old'), 'old');
    assert.equal(await code(h.client.rename(join(all, 'new'), join(base, 'only-c', 'old'))), 'EACCES');
    assert.equal(readFileSync(join(base, 'only-c', 'old'), 'utf8'), 'old');
    writeFileSync(join(all, 'old'), 'old');
    assert.equal(await code(h.client.rename(join(all, 'new'), join(all, 'old'))), 'ok');
    assert.equal(readFileSync(join(all, 'old'), 'utf8'), 'new');
    writeFileSync(join(all, 'n2'), 'n2');
    assert.equal(await code(h.client.rename(join(all, 'n2'), join(all, 'old'), 'noreplace')), 'EEXIST');
  });

  it('RENAME_EXCHANGE needs u and c at both ends', async () => {
    writeFileSync(join(all, 'x1'), 'one');
    writeFileSync(join(all, 'x2'), 'two');
    assert.equal(await code(h.client.rename(join(all, 'x1'), join(all, 'x2'), 'exchange')), 'ok');
    assert.equal(readFileSync(join(all, 'x1'), 'utf8'), 'two');
    writeFileSync(join(base, 'only-c', 'x3'), 'three');
    assert.equal(await code(h.client.rename(join(all, 'x1'), join(base, 'only-c', 'x3'), 'exchange')), 'EACCES');
    assert.equal(readFileSync(join(base, 'only-c', 'x3'), 'utf8'), 'three');
    assert.equal(await code(h.client.rename(join(all, 'x1'), join(all, 'x-missing'), 'exchange')), 'ENOENT');
  });

  it('a rename across two rules with different rights: both ends decide', async () => {
    mkdirSync(join(base, 'only-u'), { recursive: true });
    writeFileSync(join(base, 'only-u', 'src'), 'from only-u');
    // only-u grants r and u: a file may leave it for a tree that grants c ...
    assert.equal(await code(h.client.rename(join(base, 'only-u', 'src'), join(all, 'from-u'))), 'ok');
    assert.equal(readFileSync(join(all, 'from-u'), 'utf8'), 'from only-u');
    // ... but nothing may arrive in it (no c), and nothing leaves ro (no u)
    assert.equal(await code(h.client.rename(join(all, 'from-u'), join(base, 'only-u', 'back'))), 'EACCES');
    assert.equal(await code(h.client.rename(join(ro, 'f'), join(base, 'only-u', 'f'))), 'EACCES');
    assert.ok(existsSync(join(all, 'from-u')) && existsSync(join(ro, 'f')));
  });

  it('link needs r at the source and c at the new name; never a file outside every rule', async () => {
    writeFileSync(join(all, 'l-src'), 'linked');
    assert.equal(await code(h.client.link(join(all, 'l-src'), join(all, 'l-dst'))), 'ok');
    assert.equal(statSync(join(all, 'l-src')).ino, statSync(join(all, 'l-dst')).ino);
    assert.equal(await code(h.client.link(join(ro, 'f'), join(all, 'ro-link'))), 'ok'); // r at the source is enough
    assert.equal(await code(h.client.link(join(outside, 'secret'), join(all, 'secret'))), 'EACCES');
    assert.ok(!existsSync(join(all, 'secret')));
    assert.equal(await code(h.client.link(join(all, 'l-src'), join(ro, 'nope'))), 'EACCES');
    assert.equal(await code(h.client.link(join(all, 'made'), join(all, 'dir-link'))), 'EPERM');
    // a symlink inside the tree that points out: linked as the symlink itself, never its target
    symlinkSync(join(outside, 'secret'), join(all, 'points-out'));
    assert.equal(await code(h.client.link(join(all, 'points-out'), join(all, 'link-of-symlink'))), 'ok');
    assert.ok(lstatSync(join(all, 'link-of-symlink')).isSymbolicLink());
    assert.notEqual(lstatSync(join(all, 'link-of-symlink')).ino, statSync(join(outside, 'secret')).ino);
    // the source's rule refuses hard-linked files: the link would make one
    mkdirSync(join(base, 'refuse-links'), { recursive: true });
    writeFileSync(join(base, 'refuse-links', 'f'), 'x');
    assert.equal(await code(h.client.link(join(base, 'refuse-links', 'f'), join(base, 'refuse-links', 'g'))), 'EACCES');
    assert.equal(statSync(join(base, 'refuse-links', 'f')).nlink, 1);
  });

  it('symlink needs s; the target is stored as given', async () => {
    assert.equal(await code(h.client.symlink('../../anywhere/at all', join(all, 'sl'))), 'ok');
    assert.equal(readlinkSync(join(all, 'sl')), '../../anywhere/at all');
    assert.equal(await code(h.client.symlink('x', join(base, 'only-c', 'sl'))), 'EACCES');
    assert.equal(await code(h.client.symlink('x', join(all, 'sl'))), 'EEXIST');
    // following it later is checked as every resolution is: out of the root, refused (a rule with
    // s follows symlinks beneath its root; the kernel answers EXDEV for one that leaves it)
    symlinkSync(join(outside, 'secret'), join(all, 'sl-out'));
    assert.equal(await code(h.client.open(join(all, 'sl-out'))), 'EXDEV');
  });

  it('chmod needs a and never sets set-id bits; directories keep sticky', async () => {
    writeFileSync(join(all, 'm'), 'x');
    assert.equal(await code(h.client.chmod(join(all, 'm'), 0o6755)), 'ok');
    assert.equal(statSync(join(all, 'm')).mode & 0o7777, 0o755);
    assert.equal(await code(h.client.chmod(join(all, 'm'), 0o1644)), 'ok');
    assert.equal(statSync(join(all, 'm')).mode & 0o7777, 0o644);
    mkdirSync(join(all, 'sticky'));
    assert.equal(await code(h.client.chmod(join(all, 'sticky'), 0o3777)), 'ok');
    assert.equal(statSync(join(all, 'sticky')).mode & 0o7777, 0o1777);
    assert.equal(await code(h.client.chmod(join(ro, 'f'), 0o777)), 'EACCES');
    assert.equal(await code(h.client.chmod(join(all, 'sl-out'), 0o777)), 'EXDEV');
    assert.equal(await code(h.client.chmod(join(all, 'sl-out'), 0o777, { noFollow: true })), 'ENOTSUP'); // EOPNOTSUPP, as lchmod
    assert.equal(statSync(join(outside, 'secret')).mode & 0o777, 0o644);
  });

  it('chown succeeds only when nothing changes', async () => {
    const st = statSync(join(all, 'm'));
    assert.equal(await code(h.client.chown(join(all, 'm'), st.uid, st.gid)), 'ok');
    assert.equal(await code(h.client.chown(join(all, 'm'), -1, -1)), 'ok');
    assert.equal(await code(h.client.chown(join(all, 'm'), st.uid + 1, -1)), 'EPERM');
    assert.equal(await code(h.client.chown(join(all, 'm'), -1, st.gid + 1)), 'EPERM');
    assert.equal(await code(h.client.chown(join(ro, 'f'), -1, -1)), 'EACCES');
    assert.equal(statSync(join(all, 'm')).uid, st.uid);
  });

  it('utimes needs a; touch (both now) needs a or w', async () => {
    assert.equal(await code(h.client.utimes(join(all, 'm'), 1000, 2000.25)), 'ok');
    const st = statSync(join(all, 'm'));
    assert.equal(st.atimeMs, 1_000_000);
    assert.equal(st.mtimeMs, 2_000_250);
    assert.equal(await code(h.client.utimes(join(all, 'm'), 'omit', 3000)), 'ok');
    assert.equal(statSync(join(all, 'm')).atimeMs, 1_000_000);
    assert.equal(await code(h.client.utimes(join(ro, 'f'), 'now', 'now')), 'EACCES');
    mkdirSync(join(base, 'only-c'), { recursive: true });
    writeFileSync(join(base, 'only-c', 't'), 't');
    assert.equal(await code(h.client.utimes(join(base, 'only-c', 't'), 1, 1)), 'EACCES');
    assert.equal(await code(h.client.utimes(join(base, 'only-c', 't'), 'now', 'now')), 'ok');
  });

  it('truncate needs w', async () => {
    writeFileSync(join(all, 't'), 'long content');
    assert.equal(await code(h.client.truncate(join(all, 't'), 4)), 'ok');
    assert.equal(readFileSync(join(all, 't'), 'utf8'), 'long');
    assert.equal(await code(h.client.truncate(join(ro, 'f'), 0)), 'EACCES');
    assert.equal(readFileSync(join(ro, 'f'), 'utf8'), 'read only');
    assert.equal(await code(h.client.truncate(join(all, 'made'), 0)), 'EISDIR');
  });

  it('access is answered by the policy, so that test -w tells the truth', async () => {
    assert.equal(await code(h.client.access(join(ro, 'f'))), 'ok');
    assert.equal(await code(h.client.access(join(ro, 'f'), 4)), 'ok');
    assert.equal(await code(h.client.access(join(ro, 'f'), 2)), 'EACCES');
    assert.equal(await code(h.client.access(join(ro, 'missing'))), 'ENOENT');
    assert.equal(await code(h.client.access(join(outside, 'secret'))), 'EACCES');
    assert.equal(await code(h.client.access(join(all, 't'), 2)), 'ok');
    assert.equal(await code(h.client.access(join(all, 't'), 1)), 'ok'); // x granted
    assert.equal(await code(h.client.access(join(fifos), 2)), 'ok'); // a directory with c
    assert.equal(await code(h.client.access(join(ro, 'd'), 2)), 'EACCES');
    writeFileSync(join(fifos, 'prog'), '#!/bin/sh\n');
    chmodSync(join(fifos, 'prog'), 0o755);
    assert.equal(await code(h.client.access(join(fifos, 'prog'), 1)), 'EACCES'); // no x
  });

  it("mkfifo needs c and the rule's fifos; elsewhere refused", async () => {
    assert.equal(await code(h.client.mkfifo(join(fifos, 'p'), 0o644)), 'ok');
    assert.ok(lstatSync(join(fifos, 'p')).isFIFO());
    assert.equal(lstatSync(join(fifos, 'p')).mode & 0o777, 0o644);
    assert.equal(await code(h.client.mkfifo(join(all, 'p'))), 'EACCES');
    assert.ok(!existsSync(join(all, 'p')));
  });

  it('tmpfile gives an unnamed file in a directory with c', async () => {
    const fd = await h.client.tmpfile(all);
    const before = readdirSync(all).length;
    writeSync(fd, 'scratch');
    assert.equal(fstatSync(fd).nlink, 0);
    assert.equal(fstatSync(fd).mode & 0o777, 0o600);
    closeSync(fd);
    assert.equal(readdirSync(all).length, before);
    assert.equal(await code(h.client.tmpfile(ro)), 'EACCES');
  });

  it('bad flags and malformed frames get clear answers', async () => {
    assert.equal(await code(h.client.rename(join(all, 'x1'), join(all, 'x2'), 'exchange' as never)), 'ok');
    const both = encodeFileOp(Command.RENAME, join(all, 'x1'), join(all, 'x2'), { flags: 3 });
    const unknown = encodeFileOp(Command.MKDIR, join(all, 'q'), null, { flags: 1 });
    const noSecond = encodeFileOp(Command.RENAME, join(all, 'x1'), null);
    const raw = RawClient.connect(join(base, 's'));
    try {
      const replies = [];
      for (const frame of [both, unknown, noSecond]) replies.push((await raw.request(frame))!.result);
      assert.deepEqual(replies, [-E.EINVAL, -E.EINVAL, -E.EPROTO]);
    } finally {
      raw.close();
    }
  });
});

describe('refused operations leave nothing behind', () => {
  it('a read-only tree is byte for byte as it was after every destructive operation', async () => {
    const tmp = tempDir();
    const base = realpathSync(tmp.path);
    const tree = join(base, 'tree');
    mkdirSync(join(tree, 'sub'), { recursive: true });
    writeFileSync(join(tree, 'a'), 'alpha');
    writeFileSync(join(tree, 'sub', 'b'), 'beta');
    symlinkSync('a', join(tree, 'ln'));
    linkSync(join(tree, 'a'), join(tree, 'hard'));
    const h = await brokerWith(join(base, 's'), [
      { allow: `${tree}/`, access: 'rd' },
      { allow: `${base}/rw/`, access: 'rwcdmusa' },
    ]);
    mkdirSync(join(base, 'rw'));
    writeFileSync(join(base, 'rw', 'w'), 'w');
    try {
      const before = snapshot(tree);
      const c = h.client;
      const results = await Promise.all([
        code(c.mkdir(join(tree, 'new'))),
        code(c.unlink(join(tree, 'a'))),
        code(c.rmdir(join(tree, 'sub'))),
        code(c.rename(join(tree, 'a'), join(tree, 'z'))),
        code(c.rename(join(tree, 'sub'), join(base, 'rw', 'sub'))),
        code(c.rename(join(base, 'rw', 'w'), join(tree, 'a'))),
        code(c.rename(join(tree, 'a'), join(base, 'rw', 'w'), 'exchange')),
        code(c.link(join(tree, 'a'), join(tree, 'l2'))),
        code(c.symlink('x', join(tree, 's2'))),
        code(c.chmod(join(tree, 'a'), 0o777)),
        code(c.chown(join(tree, 'a'), -1, -1)),
        code(c.utimes(join(tree, 'a'), 1, 1)),
        code(c.utimes(join(tree, 'a'), 'now', 'now')),
        code(c.truncate(join(tree, 'a'), 0)),
        code(c.mkfifo(join(tree, 'p'))),
        code(c.tmpfile(tree)),
        code(c.open(join(tree, 'a'), 'w')),
        code(c.open(join(tree, 'c'), 'wx')),
      ]);
      assert.ok(
        results.every((r) => r === 'EACCES'),
        results.join(' '),
      );
      assert.equal(snapshot(tree), before);
      assert.equal(readFileSync(join(base, 'rw', 'w'), 'utf8'), 'w');
    } finally {
      h.close();
      tmp.cleanup();
    }
  });
});

describe('the tools speak the whole vocabulary', () => {
  it('audit records name the operation and both ends; status counts per operation; learn records each end', async () => {
    const { jsonLine, prettyLine } = await import('../src/broker/audit-log.js');
    const { LearnRecorder } = await import('../src/launch/learn.js');
    const { minimalRules, formatPolicy } = await import('../src/launch/learned-policy.js');
    const tmp = tempDir();
    const base = realpathSync(tmp.path);
    const tree = join(base, 'tree');
    mkdirSync(join(tree, 'sub'), { recursive: true });
    writeFileSync(join(tree, 'a'), 'a');
    const records: import('../src/broker/audit.js').AuditRecord[] = [];
    const recorder = new LearnRecorder();
    const broker = new Broker({
      policy: new Policy([makeRule({ allow: `${tree}/`, access: 'all' }, 'tree rule')]),
      audit: { record: (e) => (records.push(e), recorder.record(e)) },
      log: () => {},
    });
    broker.listen(join(base, 's'));
    const c = await connect(join(base, 's'));
    try {
      await c.rename(join(tree, 'a'), join(tree, 'sub', 'b'));
      await c.mkdir(join(tree, 'made'));
      assert.equal(await code(c.mkdir(join(base, 'outside'))), 'EACCES');
      const status = await c.status();
      assert.deepEqual(status.operations.rename, { done: 1, denied: 0, failed: 0 });
      assert.deepEqual(status.operations.mkdir, { done: 1, denied: 1, failed: 0 });
      const { prometheusText } = await import('../src/broker/prometheus.js');
      assert.match(prometheusText(status), /^openhook_file_operations_total\{operation="mkdir",outcome="denied"\} 1$/m);
      // `openhook status` for people (run asynchronously: this process serves the broker)
      const { execFile } = await import('node:child_process');
      const { CLI } = await import('./helpers.js');
      const out = await new Promise<string>((resolve, reject) =>
        execFile(process.execPath, [CLI, 'status', '--socket', join(base, 's')], (err, stdout) => (err ? reject(err) : resolve(stdout))),
      );
      assert.match(out, /^ {2}operations +rename 1 · mkdir 1 \(1 denied\)$/m);
      const rename = JSON.parse(jsonLine(records[0]!));
      assert.equal(rename.command, 'RENAME');
      assert.equal(rename.path, join(tree, 'a'));
      assert.equal(rename.to, join(tree, 'sub', 'b'));
      assert.equal(rename.access, 'u');
      assert.equal(rename.to_access, 'c');
      assert.match(prettyLine(records[0]!), /ALLOW +rename .*\/a -> .*\/sub\/b/);
      assert.equal(JSON.parse(jsonLine(records[1]!)).command, 'MKDIR');
      assert.equal(JSON.parse(jsonLine(records[1]!)).access, 'm');
      const learned = formatPolicy(minimalRules(recorder.used));
      // Every entry of the tree was used, so it collapses: u (rename's source), c (its destination, with
      // the w that c needs), m (mkdir); nothing the program did not ask for.
      assert.match(learned, new RegExp(`allow = "${tree}/"\\naccess = "wcmu"`));
      assert.match(learned, new RegExp(`allow = "${base}/outside"\\naccess = "m"`));
    } finally {
      c.close();
      broker.close();
      tmp.cleanup();
    }
  });

  it('openhook check explains a file operation by letters or by name', async () => {
    const { spawnSync } = await import('node:child_process');
    const { CLI } = await import('./helpers.js');
    const r = spawnSync(process.execPath, [CLI, 'check', '--allow', '/srv/t/:rwc', '/srv/t/x', 'rename-from'], { encoding: 'utf8' });
    assert.equal(r.status, 1);
    assert.match(r.stdout, /^deny \(EACCES\) \/srv\/t\/x u\n/);
    assert.match(r.stdout, /grants 'rwc', the request needs 'u'/);
    assert.match(r.stdout, /needs: u remove files and directories/);
    const bad = spawnSync(process.execPath, [CLI, 'check', '--allow', '/srv/t/:rwq', '/srv/t/x', 'r'], { encoding: 'utf8' });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /unknown access letter 'q'/);
  });
});

describe('the entry points the syscall hook calls', () => {
  it('serveLinkUnnamed names an O_TMPFILE file (c at the name), and nothing that has a name', async () => {
    const { serveLinkUnnamed, serveFileOperation } = await import('../src/broker/operations.js');
    const { Resolver } = await import('../src/resolver/resolver.js');
    const { Metrics } = await import('../src/broker/metrics.js');
    const { openSync } = await import('node:fs');
    const tmp = tempDir();
    const base = realpathSync(tmp.path);
    mkdirSync(join(base, 'rw'));
    mkdirSync(join(base, 'ro'));
    writeFileSync(join(base, 'outside'), 'SECRET');
    const ctx = {
      policy: new Policy([makeRule({ allow: `${base}/rw/`, access: 'rwc' }, 'rw'), makeRule({ allow: `${base}/ro/`, access: 'r' }, 'ro')]),
      resolver: new Resolver(),
      audit: null,
      metrics: new Metrics(),
    };
    const peer = { pid: process.pid, uid: 0, gid: 0, groups: [] };
    const fd = serveFileOperation(ctx, peer, {
      command: Command.TMPFILE,
      path: `${base}/rw`,
      path2: '',
      flags: 2,
      mode: 0o640,
      uid: 0,
      gid: 0,
      a: 0,
      b: 0,
      c: 0,
      d: 0,
    });
    assert.ok(fd >= 0, `tmpfile: ${fd}`);
    try {
      writeSync(fd, 'journal');
      assert.equal(serveLinkUnnamed(ctx, peer, fd, `${base}/ro/j`), -E.EACCES);
      assert.equal(serveLinkUnnamed(ctx, peer, fd, `${base}/rw/j`), 0);
      assert.equal(readFileSync(join(base, 'rw', 'j'), 'utf8'), 'journal');
      assert.equal(statSync(join(base, 'rw', 'j')).mode & 0o777, 0o640);
      // now it has a name: linking it by fd again is refused (link by path instead)
      assert.equal(serveLinkUnnamed(ctx, peer, fd, `${base}/rw/j2`), -E.EACCES);
    } finally {
      closeSync(fd);
    }
    // a file from outside every rule, held by fd, is never pulled into the tree
    const secret = openSync(join(base, 'outside'), 'r');
    try {
      assert.equal(serveLinkUnnamed(ctx, peer, secret, `${base}/rw/stolen`), -E.EACCES);
      assert.ok(!existsSync(join(base, 'rw', 'stolen')));
    } finally {
      closeSync(secret);
      ctx.policy.close();
      ctx.resolver.close();
      tmp.cleanup();
    }
  });

  it("deny carve-outs hold on the parent's real path where symlinks are followed", async () => {
    const tmp = tempDir();
    const base = realpathSync(tmp.path);
    const tree = join(base, 'tree');
    mkdirSync(join(tree, 'private'), { recursive: true });
    writeFileSync(join(tree, 'private', 'key'), 'KEY');
    symlinkSync('private', join(tree, 'via'));
    const h = await brokerWith(join(base, 's'), [
      { allow: `${tree}/`, access: 'all', follow_symlinks: true },
      { deny: `${tree}/private/` },
    ]);
    try {
      assert.equal(await code(h.client.mkdir(join(tree, 'via', 'x'))), 'EACCES');
      assert.equal(await code(h.client.unlink(join(tree, 'via', 'key'))), 'EACCES');
      assert.equal(await code(h.client.rename(join(tree, 'via', 'key'), join(tree, 'key'))), 'EACCES');
      assert.equal(await code(h.client.chmod(join(tree, 'via', 'key'), 0o777)), 'EACCES');
      assert.ok(existsSync(join(tree, 'private', 'key')) && !existsSync(join(tree, 'private', 'x')));
      assert.equal(await code(h.client.mkdir(join(tree, 'ok'))), 'ok');
    } finally {
      h.close();
      tmp.cleanup();
    }
  });
});

describe('file-operation frames', () => {
  it('encode and decode: every field in host byte order, two names, negative times', async () => {
    const { decodeRequest, newRequest, DecodeError } = await import('../src/protocol/frames.js');
    const frame = encodeFileOp(Command.UTIMES, '/a/é', null, { flags: 0x100, a: -5, b: 999_999_999, c: 2 ** 40, d: (1 << 30) - 1 });
    const req = newRequest();
    assert.equal(decodeRequest(frame, 0, frame.length, req), DecodeError.OK);
    assert.deepEqual(
      [req.command, req.flags, req.a, req.b, req.c, req.d, req.uid, req.gid],
      [Command.UTIMES, 0x100, -5, 999_999_999, 2 ** 40, (1 << 30) - 1, 0xffffffff, 0xffffffff],
    );
    assert.equal(frame.subarray(req.nameOffset, req.nameOffset + req.nameLength).toString(), '/a/é');
    const two = encodeFileOp(Command.RENAME, '/a', '/bb', { flags: 1 });
    assert.equal(decodeRequest(two, 0, two.length, req), DecodeError.OK);
    assert.equal(two.subarray(req.name2Offset, req.name2Offset + req.name2Length).toString(), '/bb');
    assert.equal(decodeRequest(two, 0, two.length - 1, req), DecodeError.SIZE_MISMATCH);
    assert.equal(decodeRequest(two.subarray(0, 40), 0, 40, req), DecodeError.SIZE_MISMATCH);
    const oneTooMany = encodeFileOp(Command.MKDIR, '/a', '/b');
    assert.equal(decodeRequest(oneTooMany, 0, oneTooMany.length, req), DecodeError.EMPTY_NAME);
  });

  it('work over SOCK_STREAM too', async () => {
    const tmp = tempDir();
    const base = realpathSync(tmp.path);
    mkdirSync(join(base, 't'));
    const broker = new Broker({ policy: new Policy([makeRule({ allow: `${base}/t/`, access: 'all' }, 'r')]), log: () => {} });
    broker.listen(join(base, 's'), { stream: true });
    const c = await connect({ path: join(base, 's'), stream: true });
    try {
      await Promise.all([c.mkdir(join(base, 't', 'a')), c.symlink('x', join(base, 't', 'b')), c.mkdir(join(base, 't', 'c'))]);
      const fd = await c.tmpfile(join(base, 't'));
      closeSync(fd);
      assert.equal(await code(c.rmdir(join(base, 't', 'b'))), 'ENOTDIR');
      assert.deepEqual(readdirSync(join(base, 't')).sort(), ['a', 'b', 'c']);
    } finally {
      c.close();
      broker.close();
      tmp.cleanup();
    }
  });
});
