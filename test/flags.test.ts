/**
 * Invariant 3: flags are allow-listed. A sweep of every flag bit, alone and in pairs, against a
 * read-only rule never yields write access or another file, and never changes the file.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { C } from '../src/native.js';
import { fdCount, tempDir } from './helpers.js';
import { closeAll, fdFlags, inodeOf, inProcessBroker, openFrame, RawClient, type InProcessBroker } from './raw.js';
import { E } from '../src/errno.js';

const { EACCES, EINVAL } = E;

const tmp = tempDir('openhook-flags-');
const ro = join(tmp.path, 'ro');
const rw = join(tmp.path, 'rw');
const rwc = join(tmp.path, 'rwc');
for (const d of [ro, rw, rwc]) {
  mkdirSync(d);
  writeFileSync(join(d, 'file'), 'original contents');
}

describe('flags', () => {
  let broker: InProcessBroker;
  let client: RawClient;
  before(() => {
    broker = inProcessBroker(tmp.path, 'flags', { allow: [`${ro}/:r`, `${rw}/:rw`, `${rwc}/:rwc`] });
    client = RawClient.connect(broker.socket);
  });
  after(() => {
    client.close();
    broker.close();
    tmp.cleanup();
  });

  it('sweeps all 32 bits, alone and in pairs, against a read-only rule: never write access, never another file', async () => {
    const file = join(ro, 'file');
    const before = statSync(file);
    let opened = 0,
      refused = 0;
    for (let i = 0; i < 32; i++) {
      for (let j = i; j < 32; j++) {
        const flags = ((1 << i) | (1 << j)) >>> 0;
        for (const name of [file, join(ro, 'missing')]) {
          const r = (await client.request(openFrame(name, flags, 0o7777)))!;
          if (r.result === 0) {
            opened++;
            assert.equal(r.fds.length, 1);
            assert.equal(fdFlags(r.fds[0]!) & C.O_ACCMODE, C.O_RDONLY, `flags 0x${flags.toString(16)} gave write access`);
            assert.equal(inodeOf(r.fds[0]!), before.ino, `flags 0x${flags.toString(16)} opened another file`);
          } else {
            refused++;
            assert.ok(r.result < 0);
            assert.deepEqual(r.fds, []);
          }
          closeAll(r.fds);
        }
      }
    }
    const now = statSync(file);
    assert.equal(readFileSync(file, 'utf8'), 'original contents');
    assert.equal(now.mtimeMs, before.mtimeMs);
    assert.equal(now.size, before.size);
    assert.deepEqual(readdirSync(ro), ['file'], 'nothing was created');
    assert.ok(opened > 0 && refused > 0, `${opened} opened, ${refused} refused`);
  });

  it('refuses access mode 3, O_PATH, O_TMPFILE, FASYNC and unknown bits with EINVAL, whatever the rule', async () => {
    const known =
      C.O_ACCMODE |
      C.O_CREAT |
      C.O_EXCL |
      C.O_NOCTTY |
      C.O_TRUNC |
      C.O_APPEND |
      C.O_NONBLOCK |
      C.O_DSYNC |
      C.O_SYNC |
      C.O_DIRECT |
      C.O_LARGEFILE |
      C.O_DIRECTORY |
      C.O_NOFOLLOW |
      C.O_NOATIME |
      C.O_CLOEXEC;
    const unknown = Array.from({ length: 32 }, (_, i) => (1 << i) >>> 0).filter((bit) => (bit & known) === 0);
    assert.ok(unknown.length > 5);
    for (const flags of [
      C.O_ACCMODE,
      C.O_PATH,
      C.O_PATH | C.O_RDWR,
      C.O_TMPFILE | C.O_RDWR,
      C.O_TMPFILE & ~C.O_DIRECTORY,
      C.FASYNC,
      C.O_CREAT | C.O_DIRECTORY | C.O_RDWR,
      ...unknown,
      ...unknown.map((b) => b | C.O_RDONLY),
    ]) {
      const r = (await client.request(openFrame(join(rwc, 'file'), flags, 0o644)))!;
      assert.equal(r.result, -EINVAL, `0x${flags.toString(16)}`);
    }
    assert.deepEqual(readdirSync(rwc), ['file'], 'O_TMPFILE made nothing');
  });

  it('O_TRUNC needs w, even with O_RDONLY', async () => {
    for (const flags of [C.O_RDONLY | C.O_TRUNC, C.O_WRONLY | C.O_TRUNC]) {
      assert.equal((await client.request(openFrame(join(ro, 'file'), flags)))!.result, -EACCES);
    }
    assert.equal(readFileSync(join(ro, 'file'), 'utf8'), 'original contents');
    const r = (await client.request(openFrame(join(rw, 'file'), C.O_WRONLY | C.O_TRUNC)))!;
    assert.equal(r.result, 0);
    closeAll(r.fds);
    assert.equal(readFileSync(join(rw, 'file'), 'utf8'), '', 'a rw rule may truncate');
  });

  it('O_CREAT needs c, even when the file exists', async () => {
    assert.equal((await client.request(openFrame(join(rw, 'new'), C.O_RDWR | C.O_CREAT, 0o644)))!.result, -EACCES);
    assert.equal((await client.request(openFrame(join(rw, 'file'), C.O_RDWR | C.O_CREAT, 0o644)))!.result, -EACCES);
    assert.equal(existsSync(join(rw, 'new')), false);
    const r = (await client.request(openFrame(join(rwc, 'new'), C.O_RDWR | C.O_CREAT, 0o644)))!;
    assert.equal(r.result, 0);
    closeAll(r.fds);
    assert.equal(existsSync(join(rwc, 'new')), true);
  });

  it('passes O_CLOEXEC or not: the broker’s own copy is always close-on-exec and closed once sent', async () => {
    // FD_CLOEXEC belongs to an fd table, not to the open file, so it cannot travel with SCM_RIGHTS:
    // the receiver sets it (MSG_CMSG_CLOEXEC, or fcntl). Both requests are served alike.
    const warm = (await client.request(openFrame(join(rw, 'file'))))!; // the rule's root opens on first use
    closeAll(warm.fds);
    await new Promise((r) => setTimeout(r, 20));
    const before = fdCount(process.pid);
    for (const flags of [C.O_RDONLY, C.O_RDONLY | C.O_CLOEXEC, C.O_RDWR, C.O_RDWR | C.O_CLOEXEC]) {
      const r = (await client.request(openFrame(join(rw, 'file'), flags)))!;
      assert.equal(r.result, 0);
      closeAll(r.fds);
    }
    assert.equal(fdCount(process.pid), before, 'the broker (in this process) kept no copy');
  });
});
