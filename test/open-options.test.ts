/**
 * Per-rule open options. Directories (the d letter): opened read-only only where the rule grants d.
 * follow_symlinks: symlinks beneath the rule's root are followed, but deny carve-outs hold on the
 * real path, checked before anything is opened for I/O (so O_TRUNC never touches a denied file), and
 * no file is ever created through a symlink. Without the option, no symlink is followed.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { C } from '../src/native.js';
import { probe, rfcOpenFrame, rfcReplyHex, startServe, tempDir, type ServeProcess } from './helpers.js';
import { E } from '../src/errno.js';

const { EACCES, ELOOP, EXDEV } = E;
const tmp = tempDir();
after(tmp.cleanup);
const T = tmp.path;
mkdirSync(join(T, 'vm', 'private'), { recursive: true });
mkdirSync(join(T, 'vm', 'sub'));
mkdirSync(join(T, 'secret'));
writeFileSync(join(T, 'vm', 'disk.img'), 'disk');
writeFileSync(join(T, 'vm', 'private', 'key'), 'private key');
writeFileSync(join(T, 'secret', 'x'), 'secret');
symlinkSync('disk.img', join(T, 'vm', 'ok'));
symlinkSync('../disk.img', join(T, 'vm', 'sub', 'up'));
symlinkSync('private/key', join(T, 'vm', 'link'));
symlinkSync('private', join(T, 'vm', 'dlink'));
symlinkSync('sub', join(T, 'vm', 'sublink'));
symlinkSync('../secret/x', join(T, 'vm', 'out'));
const diskIno = statSync(join(T, 'vm', 'disk.img')).ino;

function reply(line: string | undefined): string {
  const m = /^reply=([0-9a-f]+) fds=(\d)(?: .* ino=(\d+))?/.exec(line ?? '');
  if (!m) return `?${line}`;
  for (const [name, errno] of [
    ['EACCES', EACCES],
    ['ELOOP', ELOOP],
    ['EXDEV', EXDEV],
    ['ok', 0],
  ] as const) {
    if (m[1] === rfcReplyHex(1, -errno)) return name === 'ok' ? (Number(m[3]) === diskIno ? 'disk' : 'ok') : name;
  }
  return m[1]!;
}

describe('follow_symlinks', () => {
  let serve: ServeProcess;
  const socket = join(T, 'f.sock');
  before(async () => {
    writeFileSync(
      join(T, 'p.toml'),
      `[[rule]]\nallow = "${T}/vm/"\naccess = "rwc"\nfollow_symlinks = true\n\n[[rule]]\ndeny = "${T}/vm/private/"\n`,
    );
    serve = await startServe(socket, ['--policy', join(T, 'p.toml')]);
  });
  after(async () => {
    await serve.stop();
  });
  const open = (name: string, flags = C.O_RDONLY, mode = 0): string =>
    reply(probe(socket, 'seqpacket', [rfcOpenFrame(join(T, 'vm', name), flags, mode)])[0]);

  it('follows symlinks that stay beneath the root and land on allowed files', () => {
    assert.equal(open('ok'), 'disk');
    assert.equal(open('sub/up'), 'disk');
    assert.equal(open('sublink/up'), 'disk');
  });

  it('holds a deny carve-out on the real path, for files and for directories on the way', () => {
    assert.equal(open('link'), 'EACCES');
    assert.equal(open('dlink/key'), 'EACCES');
    assert.equal(open('private/key'), 'EACCES', 'and lexically, of course');
  });

  it('refuses before any I/O open: O_TRUNC through a symlink leaves the denied file whole', () => {
    assert.equal(open('link', C.O_WRONLY | C.O_TRUNC), 'EACCES');
    assert.equal(readFileSync(join(T, 'vm', 'private', 'key'), 'utf8'), 'private key');
  });

  it('never creates a file through a symlink', () => {
    assert.equal(open('dlink/new', C.O_RDWR | C.O_CREAT, 0o600), 'ELOOP');
    assert.equal(existsSync(join(T, 'vm', 'private', 'new')), false);
    assert.equal(open('sublink/new', C.O_RDWR | C.O_CREAT, 0o600), 'ELOOP', 'not even into an allowed place');
    assert.equal(open('sub/new', C.O_RDWR | C.O_CREAT, 0o600), 'ok', 'a plain path creates');
  });

  it('never leaves the root, whatever the symlink says', () => {
    assert.equal(open('out'), 'EXDEV');
  });
});

describe('without follow_symlinks (the default)', () => {
  it('follows no symlink at all', async () => {
    const socket = join(T, 'n.sock');
    const serve = await startServe(socket, ['--allow', `${T}/vm/:r`]);
    try {
      const lines = probe(socket, 'seqpacket', [
        rfcOpenFrame(join(T, 'vm', 'ok'), C.O_RDONLY),
        rfcOpenFrame(join(T, 'vm', 'sublink', 'up'), C.O_RDONLY),
        rfcOpenFrame(join(T, 'vm', 'disk.img'), C.O_RDONLY),
      ]);
      assert.deepEqual(lines.map(reply), ['ELOOP', 'ELOOP', 'disk']);
    } finally {
      await serve.stop();
    }
  });
});

describe('directories (the d letter)', () => {
  it('opens a directory read-only only where the rule grants d', async () => {
    const socket = join(T, 'd.sock');
    const serve = await startServe(socket, ['--allow', `${T}/vm/:rd`, '--allow', `${T}/secret/:rw`]);
    try {
      const lines = probe(socket, 'seqpacket', [
        rfcOpenFrame(join(T, 'vm', 'sub'), C.O_RDONLY | C.O_DIRECTORY),
        rfcOpenFrame(join(T, 'vm'), C.O_RDONLY),
        rfcOpenFrame(join(T, 'vm', 'sub'), C.O_RDWR),
        rfcOpenFrame(join(T, 'secret'), C.O_RDONLY | C.O_DIRECTORY),
      ]);
      assert.match(lines[0]!, new RegExp(`^reply=${rfcReplyHex(1, 0)} fds=1 .* mode=40`));
      assert.match(lines[1]!, new RegExp(`^reply=${rfcReplyHex(1, 0)} fds=1 .* mode=40`));
      assert.equal(lines[2], `reply=${rfcReplyHex(1, -EACCES)} fds=0`, 'rd grants no write');
      assert.equal(lines[3], `reply=${rfcReplyHex(1, -EACCES)} fds=0`, 'no d, no directory');
    } finally {
      await serve.stop();
    }
  });
});
