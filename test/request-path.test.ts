/**
 * The native pieces of the fast request path, on their own: openFile (lookup, and the reopen only
 * for what the type check always allows), a wake-up's messages read with one recvmmsg, and a
 * wake-up's replies sent with one sendmmsg that closes the fds it sent.
 *
 * Each test file runs in a process of its own, and nothing here starts a broker, so registering the
 * reply batch area below takes it from nobody.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { linkSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { C, native, PollMode, recvArena, recvMeta } from '../src/native.js';
import { tempDir } from './helpers.js';

const tmp = tempDir();
after(tmp.cleanup);
const T = tmp.path;
writeFileSync(join(T, 'file'), 'contents');
writeFileSync(join(T, 'linked'), 'two names');
linkSync(join(T, 'linked'), join(T, 'linked2'));
mkdirSync(join(T, 'dir'));
execFileSync('mkfifo', [join(T, 'fifo')]);
symlinkSync('file', join(T, 'link'));

const RESOLVE = C.RESOLVE_BENEATH | C.RESOLVE_NO_MAGICLINKS | C.RESOLVE_NO_XDEV | C.RESOLVE_NO_SYMLINKS;
const O_PATH_LOOKUP = C.O_PATH | C.O_CLOEXEC;

/** open(2) flags of an fd, from /proc/self/fdinfo. */
function fdFlags(fd: number): number {
  return parseInt(/flags:\s+([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8);
}

function isOpen(fd: number): boolean {
  return native.fstat(fd, new Float64Array(8)) === 0;
}

describe('openFile', () => {
  const root = native.open(T, C.O_PATH | C.O_DIRECTORY, 0);
  after(() => native.close(root));
  const out = new Float64Array(9);

  it('reopens a regular file with one link at once, with the real flags', () => {
    const fd = native.openFile(root, 'file', O_PATH_LOOKUP, RESOLVE, C.O_RDONLY | C.O_CLOEXEC | C.O_NOCTTY, out);
    assert.ok(fd >= 0);
    assert.equal(out[8], 1, 'opened for I/O');
    assert.equal(out[0]! & C.S_IFMT, C.S_IFREG);
    assert.equal(fdFlags(fd) & C.O_PATH, 0);
    assert.equal(readFileSync(`/proc/self/fd/${fd}`, 'utf8'), 'contents');
    native.close(fd);
  });

  for (const [name, what, flags] of [
    ['dir', 'a directory', C.O_RDONLY],
    ['fifo', 'a FIFO', C.O_RDONLY | C.O_NONBLOCK],
    ['linked', 'a file with two links', C.O_RDONLY],
    ['file', 'a file asked for with O_DIRECTORY', C.O_RDONLY | C.O_DIRECTORY],
  ] as const) {
    it(`hands back ${what} unopened, as an O_PATH fd for the type check`, () => {
      const fd = native.openFile(root, name, O_PATH_LOOKUP, RESOLVE, flags | C.O_CLOEXEC, out);
      assert.ok(fd >= 0);
      assert.equal(out[8], 0, 'not opened for I/O');
      assert.ok(fdFlags(fd) & C.O_PATH, 'an O_PATH fd');
      native.close(fd);
    });
  }

  it('hands back a symlink found with O_NOFOLLOW unopened', () => {
    const fd = native.openFile(root, 'link', O_PATH_LOOKUP | C.O_NOFOLLOW, C.RESOLVE_BENEATH | C.RESOLVE_NO_MAGICLINKS, C.O_RDONLY, out);
    assert.ok(fd >= 0);
    assert.equal(out[8], 0);
    assert.equal(out[0]! & C.S_IFMT, C.S_IFLNK);
    native.close(fd);
  });

  it('answers lookup errors as -errno, and never leaves the root', () => {
    assert.equal(native.openFile(root, 'missing', O_PATH_LOOKUP, RESOLVE, C.O_RDONLY, out), -2);
    assert.equal(out[8], 0);
    assert.equal(native.openFile(root, '../etc/passwd', O_PATH_LOOKUP, RESOLVE, C.O_RDONLY, out), -18, 'EXDEV from RESOLVE_BENEATH');
    assert.equal(native.openFile(root, 'link', O_PATH_LOOKUP, RESOLVE, C.O_RDONLY, out), -40, 'ELOOP from RESOLVE_NO_SYMLINKS');
  });

  it('resolves with O_PATH only', () => {
    assert.throws(() => native.openFile(root, 'file', C.O_RDONLY, RESOLVE, C.O_RDONLY, out), /O_PATH/);
  });
});

describe('a wake-up in one recvmmsg (SOCK_SEQPACKET, fds discarded)', () => {
  function receiveOnce(fd: number): Promise<{ count: number; status: number; messages: string[]; flags: number[] }> {
    return new Promise((resolve) => {
      const p = new native.Poller(fd, PollMode.ReceiveDiscardFds, 64, (_events, count, status) => {
        const messages: string[] = [],
          flags: number[] = [];
        for (let i = 0; i < count; i++) {
          messages.push(recvArena.toString('latin1', recvMeta[4 * i]!, recvMeta[4 * i]! + recvMeta[4 * i + 1]!));
          flags.push(recvMeta[4 * i + 2]!);
        }
        p.close();
        resolve({ count, status, messages, flags });
      });
      p.start(C.UV_READABLE);
    });
  }

  it('reads every ready message, then the end of the stream, in one wake-up', async () => {
    const [a, b] = native.socketpair(C.SOCK_SEQPACKET, true);
    for (const m of ['one', 'two', 'three']) native.send(a, Buffer.from(m), 0, m.length, -1);
    native.close(a);
    const got = await receiveOnce(b);
    assert.deepEqual(got.messages, ['one', 'two', 'three']);
    assert.equal(got.status, C.STATUS_EOF);
    native.close(b);
  });

  it('flags a message longer than any frame as truncated, and one with fds as MSG_CTRUNC', async () => {
    const [a, b] = native.socketpair(C.SOCK_SEQPACKET, true);
    const big = Buffer.alloc(70_000, 0x61);
    assert.equal(native.send(a, big, 0, big.length, -1), big.length);
    const fd = native.open('/dev/null', C.O_RDONLY, 0);
    native.send(a, Buffer.from('x'), 0, 1, fd);
    native.close(fd);
    const got = await receiveOnce(b);
    assert.equal(got.count, 2);
    assert.ok(got.flags[0]! & C.MSG_TRUNC);
    assert.ok(got.flags[1]! & C.MSG_CTRUNC);
    native.close(a);
    native.close(b);
  });
});

describe('a wake-up in one sendmmsg', () => {
  const arena = Buffer.alloc(64 * 32);
  const meta = new Int32Array(64 * 3);
  native.setReplyArena(arena, meta);

  function put(i: number, text: string, fd: number): void {
    arena.write(text, i * 32, 'latin1');
    meta.set([i * 32, text.length, fd], i * 3);
  }

  it('sends the replies in order, each with its fd, and closes the fds it sent', async () => {
    const [a, b] = native.socketpair(C.SOCK_SEQPACKET, true);
    const fds = [native.open(join(T, 'file'), C.O_RDONLY, 0), -1, native.open(join(T, 'file'), C.O_RDONLY, 0)];
    fds.forEach((fd, i) => put(i, `reply${i}`, fd));
    assert.equal(native.sendReplies(a, 3), 3);
    for (const fd of fds) if (fd >= 0) assert.equal(isOpen(fd), false, 'the broker keeps no copy of a sent fd');
    const got = await new Promise<{ text: string; nfds: number; fd: number }[]>((resolve) => {
      const p = new native.Poller(b, PollMode.Receive, 64, (_e, count) => {
        const r: { text: string; nfds: number; fd: number }[] = [];
        for (let i = 0, m = 0; i < count; i++) {
          const nfds = recvMeta[m + 3]!;
          r.push({
            text: recvArena.toString('latin1', recvMeta[m]!, recvMeta[m]! + recvMeta[m + 1]!),
            nfds,
            fd: nfds ? recvMeta[m + 4]! : -1,
          });
          m += 4 + nfds;
        }
        p.close();
        resolve(r);
      });
      p.start(C.UV_READABLE);
    });
    assert.deepEqual(
      got.map((r) => [r.text, r.nfds]),
      [
        ['reply0', 1],
        ['reply1', 0],
        ['reply2', 1],
      ],
    );
    for (const r of got)
      if (r.fd >= 0) {
        assert.equal(readFileSync(`/proc/self/fd/${r.fd}`, 'utf8'), 'contents');
        native.close(r.fd);
      }
    native.close(a);
    native.close(b);
  });

  it('keeps the fds of replies the socket cannot take, and says so', () => {
    const [a, b] = native.socketpair(C.SOCK_SEQPACKET, true);
    const filler = Buffer.alloc(1024);
    while (native.send(a, filler, 0, filler.length, -1) > 0);
    const fd = native.open(join(T, 'file'), C.O_RDONLY, 0);
    put(0, 'reply', fd);
    assert.equal(native.sendReplies(a, 1), -11, 'EAGAIN');
    assert.equal(isOpen(fd), true, "still the caller's");
    native.close(fd);
    native.close(a);
    native.close(b);
  });

  it('reports a peer that is gone', () => {
    const [a, b] = native.socketpair(C.SOCK_SEQPACKET, true);
    native.close(b);
    const fd = native.open(join(T, 'file'), C.O_RDONLY, 0);
    put(0, 'reply', fd);
    assert.equal(native.sendReplies(a, 1), -32, 'EPIPE');
    assert.equal(isOpen(fd), true, "still the caller's to close");
    native.close(fd);
    native.close(a);
  });

  it("tells the send buffer's size, and how much of it the peer has not read", () => {
    const [a, b] = native.socketpair(C.SOCK_SEQPACKET, true);
    assert.ok(native.sendBufferSize(a) > 64 * 1024, `SO_SNDBUF ${native.sendBufferSize(a)}`);
    assert.equal(native.sendQueued(a), 0);
    native.send(a, Buffer.alloc(100), 0, 100, -1);
    assert.ok(native.sendQueued(a) >= 100, 'an unread message takes room');
    native.close(a);
    native.close(b);
  });
});
