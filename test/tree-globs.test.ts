/**
 * A glob tree (`/srv/*\/`) covers the directories its glob names, as trees, and nothing else: the
 * regular file /srv/disk.img that the glob's name also matches is not allowed, /srv/a/disk.img is.
 * Checked with `openhook check` and with real opens through a broker.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, fstatSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect } from '../src/client/client.js';
import { C } from '../src/native.js';
import { CLI, readAndClose, startServe, tempDir, type ServeProcess } from './helpers.js';

const tmp = tempDir('openhook-tree-globs-');
const srv = join(tmp.path, 'srv');
const rule = `${srv}/*/:rwcd`;
let serve: ServeProcess;

before(async () => {
  mkdirSync(join(srv, 'a'), { recursive: true });
  writeFileSync(join(srv, 'disk.img'), 'top\n');
  writeFileSync(join(srv, 'a', 'disk.img'), 'inside\n');
  serve = await startServe(join(tmp.path, 's.sock'), ['--allow', rule]);
});
after(async () => {
  await serve?.stop();
  tmp.cleanup();
});

function check(path: string, access: string): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [CLI, 'check', '--allow', rule, path, access], { encoding: 'utf8' });
  return { status: r.status, out: r.stdout + r.stderr };
}

describe('a glob tree pattern, /srv/*/', () => {
  it('check: allows a file beneath a matched directory, and the directory itself with d', () => {
    assert.equal(check(join(srv, 'a', 'disk.img'), 'r').status, 0);
    assert.equal(check(join(srv, 'a', 'new'), 'rwc').status, 0);
    assert.equal(check(join(srv, 'a'), 'rd').status, 0);
  });

  it('check: does not allow a file directly under /srv, nor creating one there', () => {
    const file = check(join(srv, 'disk.img'), 'r');
    assert.equal(file.status, 1, file.out);
    assert.match(file.out, /only as a directory \(a tree's root\)/);
    assert.equal(check(join(srv, 'new.img'), 'rwc').status, 1);
  });

  it('a real open: the file beneath is served, the file directly under /srv is refused', async () => {
    await using client = await connect(serve.socket);
    assert.equal(readAndClose(await client.open(join(srv, 'a', 'disk.img'))), 'inside\n');
    await assert.rejects(client.open(join(srv, 'disk.img')), { code: 'EACCES' });
    await assert.rejects(client.open(join(srv, 'disk.img'), C.O_RDWR), { code: 'EACCES' });
    await assert.rejects(client.open(join(srv, 'new.img'), C.O_RDWR | C.O_CREAT, 0o600), { code: 'EACCES' });
    const dir = await client.open(join(srv, 'a'), C.O_RDONLY | C.O_DIRECTORY);
    assert.ok(fstatSync(dir).isDirectory());
    closeSync(dir);
  });

  it('with follow_symlinks, a link beneath a matched directory cannot reach the file directly under /srv', async () => {
    symlinkSync('../disk.img', join(srv, 'a', 'up'));
    symlinkSync('disk.img', join(srv, 'a', 'here'));
    const policy = join(tmp.path, 'follow.toml');
    writeFileSync(policy, `[[rule]]\nallow = "${srv}/*/"\naccess = "rd"\nfollow_symlinks = true\n`);
    const follow = await startServe(join(tmp.path, 'follow.sock'), ['--policy', policy]);
    try {
      await using client = await connect(follow.socket);
      assert.equal(readAndClose(await client.open(join(srv, 'a', 'here'))), 'inside\n');
      await assert.rejects(client.open(join(srv, 'a', 'up')), { code: 'EACCES' });
    } finally {
      await follow.stop();
    }
  });
});
