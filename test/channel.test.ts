/**
 * The one client-side channel (src/client/channel.ts) under the client's Link and the QMP client:
 * how it ends, on both socket types, on real socketpairs; its outbox; and that both of its users
 * report the peer going away the same way whichever syscall saw it.
 */
import assert from 'node:assert/strict';
import { closeSync, openSync } from 'node:fs';
import { describe, it } from 'node:test';
import { Channel } from '../src/client/channel.js';
import { connect } from '../src/client/client.js';
import { ClientClosedError } from '../src/client/errors.js';
import { C, native, PollMode, recvArena, recvMeta, type SystemError } from '../src/native.js';
import { connectQmp } from '../src/qemu/qmp.js';
import { QmpClosedError } from '../src/qemu/errors.js';
import { fdCount, sleep } from './helpers.js';

class PeerClosed extends Error {}

interface Opened {
  channel: Channel;
  far: number;
  records: string[];
  /** resolves with the error the channel ended with */
  ended: Promise<Error>;
  /** fds received with records, in order */
  fds: number[];
}

function open(type: number, batch = 16): Opened {
  const [near, far] = native.socketpair(type, true);
  const records: string[] = [];
  const fds: number[] = [];
  let end!: (err: Error) => void;
  const ended = new Promise<Error>((resolve) => (end = resolve));
  const channel = new Channel(near, {
    ownsFd: true,
    fds: 'keep',
    batch,
    record: (offset, length, _flags, fdStart, nfds) => {
      records.push(recvArena.toString('utf8', offset, offset + length));
      for (let k = 0; k < nfds; k++) fds.push(recvMeta[fdStart + k]!);
    },
    ended: (err) => end(err),
    peerClosed: (cause) => new PeerClosed('gone', { cause }),
  });
  return { channel, far, records, ended, fds };
}

function sendFrom(fd: number, text: string): void {
  const buf = Buffer.from(text);
  assert.equal(native.send(fd, buf, 0, buf.length, -1), buf.length);
}

const kinds = [
  ['SOCK_SEQPACKET', C.SOCK_SEQPACKET],
  ['SOCK_STREAM', C.SOCK_STREAM],
] as const;

describe('Channel: how it ends', () => {
  for (const [label, type] of kinds) {
    it(`end-of-file is the peer closing, after the records before it (${label})`, async () => {
      const o = open(type);
      sendFrom(o.far, 'last words');
      native.close(o.far);
      const err = await o.ended;
      assert.ok(err instanceof PeerClosed, `ended with ${err}`);
      assert.equal(err.cause, undefined, 'a plain end-of-file has no errno');
      assert.equal(o.records.join(''), 'last words');
      assert.equal(o.channel.closed, true);
    });

    it(`ECONNRESET on receive is the peer closing (${label})`, async () => {
      const o = open(type);
      o.channel.send(Buffer.from('never read'));
      native.close(o.far); // closed with our bytes unread: the kernel resets the connection
      const err = await o.ended;
      assert.ok(err instanceof PeerClosed, `ended with ${err}`);
      // SOCK_STREAM reports the reset; SOCK_SEQPACKET may report a plain end-of-file first.
      if (err.cause) assert.equal((err.cause as SystemError).code, 'ECONNRESET');
      if (type === C.SOCK_STREAM) assert.equal((err.cause as SystemError | undefined)?.code, 'ECONNRESET');
    });

    it(`EPIPE on send is the peer closing, reported before send returns (${label})`, async () => {
      const o = open(type);
      native.close(o.far);
      let ended: Error | null = null;
      void o.ended.then((err) => (ended = err));
      o.channel.send(Buffer.from('too late'));
      assert.equal(o.channel.closed, true, 'the failed send closed the channel at once');
      const err = await o.ended;
      assert.ok(err instanceof PeerClosed, `ended with ${err}`);
      assert.equal((err.cause as SystemError).code, 'EPIPE');
      assert.equal((err.cause as SystemError).syscall, 'sendmsg');
      assert.ok(ended);
    });
  }

  it('ECONNRESET on send is the peer closing (SOCK_SEQPACKET, peer closed with our bytes unread)', async () => {
    const o = open(C.SOCK_SEQPACKET);
    // Hold the receive side's report back: the send below must be the first to see the reset.
    o.channel.send(Buffer.from('unread'));
    native.close(o.far);
    o.channel.send(Buffer.from('after the reset'));
    const err = await o.ended;
    assert.ok(err instanceof PeerClosed, `ended with ${err}`);
    assert.equal((err.cause as SystemError).code, 'ECONNRESET');
  });

  it('any other errno is a SystemError, not the peer closing (EMSGSIZE on SOCK_SEQPACKET)', async () => {
    const o = open(C.SOCK_SEQPACKET);
    o.channel.send(Buffer.alloc(64 * 1024 * 1024));
    const err = await o.ended;
    assert.ok(!(err instanceof PeerClosed), 'EMSGSIZE is not the peer closing');
    assert.equal((err as SystemError).code, 'EMSGSIZE');
    assert.equal((err as SystemError).syscall, 'sendmsg');
    native.close(o.far);
  });

  it('close() reports nothing, and later sends do nothing', async () => {
    const o = open(C.SOCK_STREAM);
    let reported = false;
    void o.ended.then(() => (reported = true));
    o.channel.close();
    o.channel.send(Buffer.from('x'));
    native.close(o.far);
    await sleep(30);
    assert.equal(reported, false);
  });
});

describe('Channel: outbox and received fds', () => {
  it('sends what the socket does not take at once later, in order, fds on the first byte', async () => {
    const o = open(C.SOCK_STREAM);
    const big = Buffer.alloc(4 * 1024 * 1024, 'a');
    const fd = openSync('/dev/null', 'r');
    o.channel.send(big);
    o.channel.send(Buffer.from('tail'), [fd]); // the caller keeps fd open until the message has gone
    let got = '';
    const received: number[] = [];
    const reader = new native.Poller(o.far, PollMode.Receive, 16, (_e, count) => {
      for (let i = 0, m = 0; i < count; i++) {
        const off = recvMeta[m]!,
          len = recvMeta[m + 1]!,
          nfds = recvMeta[m + 3]!;
        // The kernel hands an fd over with the read that takes the bytes of its message: the record
        // carrying it ends with 'tail'. Sent too early, it would come with a read of the big buffer.
        for (let k = 0; k < nfds; k++) {
          received.push(got.length + len);
          native.close(recvMeta[m + 4 + k]!);
        }
        got += recvArena.toString('latin1', off, off + len);
        m += 4 + nfds;
      }
    });
    reader.start(C.UV_READABLE);
    for (let i = 0; i < 500 && got.length < big.length + 4; i++) await sleep(10);
    reader.close();
    closeSync(fd);
    assert.equal(got.length, big.length + 4);
    assert.ok(got.endsWith('atail'));
    assert.deepEqual(received, [big.length + 4], 'one fd, with the bytes of its own message');
    o.channel.close();
    native.close(o.far);
  });

  it('closes the fds of the rest of a batch when a record handler closes the channel', async () => {
    const [near, far] = native.socketpair(C.SOCK_SEQPACKET, true);
    const seen: number[] = [];
    const channel: Channel = new Channel(near, {
      ownsFd: true,
      fds: 'keep',
      batch: 16,
      record: (_o, _l, _f, fdStart, nfds) => {
        for (let k = 0; k < nfds; k++) seen.push(recvMeta[fdStart + k]!);
        channel.close();
      },
      ended: () => {},
      peerClosed: () => new PeerClosed(),
    });
    const a = openSync('/dev/null', 'r');
    const before = fdCount(process.pid);
    for (let i = 0; i < 3; i++) assert.equal(native.send(far, Buffer.from('m'), 0, 1, a), 1);
    closeSync(a);
    for (let i = 0; i < 100 && seen.length === 0; i++) await sleep(10);
    assert.equal(seen.length, 1, 'only the first record was delivered');
    closeSync(seen[0]!);
    // The sender's copy of a is closed (one fewer); the three received are all closed (the first
    // by us, the other two by the channel), and so is the channel's own socket (one fewer).
    assert.equal(fdCount(process.pid), before - 2, 'received fds leaked');
    native.close(far);
  });
});

describe('both users map the peer closing the same way, on send as on receive', () => {
  it('client: a request sent after the broker closed rejects with ClientClosedError, not EPIPE', async () => {
    const [near, far] = native.socketpair(C.SOCK_SEQPACKET, true);
    const client = await connect({ fd: near, protocol: 'rfc' });
    native.close(far);
    // The poller has not yet seen the end-of-file: the send is the first to find the broker gone.
    const p = client.open('/x');
    await assert.rejects(p, (err: Error) => err instanceof ClientClosedError && (err.cause as SystemError).code === 'EPIPE');
    assert.equal(client.closed, true);
  });

  it('client: the broker closing, seen on receive, is ClientClosedError on both socket types', async () => {
    for (const type of [C.SOCK_SEQPACKET, C.SOCK_STREAM]) {
      const [near, far] = native.socketpair(type, true);
      const client = await connect({ fd: near, protocol: 'rfc' });
      const p = client.open('/x');
      await sleep(20);
      native.close(far);
      await assert.rejects(p, ClientClosedError);
    }
  });

  it('QMP: a command sent after QEMU closed rejects with QmpClosedError, not EPIPE', async () => {
    const [near, far] = native.socketpair(C.SOCK_STREAM, true);
    sendFrom(far, JSON.stringify({ QMP: { version: { qemu: { major: 9, minor: 0, micro: 0 }, package: '' }, capabilities: [] } }) + '\n');
    const connecting = connectQmp({ fd: near, timeout: 5000 });
    // Answer qmp_capabilities: read its id from the wire.
    let line = '';
    const reader = new native.Poller(far, PollMode.Receive, 16, (_e, count) => {
      for (let i = 0, m = 0; i < count; i++) {
        line += recvArena.toString('utf8', recvMeta[m]!, recvMeta[m]! + recvMeta[m + 1]!);
        m += 4 + recvMeta[m + 3]!;
      }
    });
    reader.start(C.UV_READABLE);
    for (let i = 0; i < 500 && !line.includes('\n'); i++) await sleep(10);
    reader.close();
    const { id } = JSON.parse(line) as { id: string };
    sendFrom(far, JSON.stringify({ return: {}, id }) + '\n');
    const qmp = await connecting;
    native.close(far);
    const p = qmp.execute('query-status');
    await assert.rejects(p, (err: Error) => err instanceof QmpClosedError && (err.cause as SystemError).code === 'EPIPE');
    assert.equal(qmp.closed, true);
  });
});
