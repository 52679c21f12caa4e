/**
 * Invariants 5, 6 and 7 at the connection: malformed frames get -EPROTO or a closed connection and
 * the broker serves the next good request; a client's fds never stay with the broker; a half-sent
 * frame and an unread reply hit deadlines; replies keep request order.
 *
 * The broker runs in this process, with short deadlines; the clients are raw sockets.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Broker } from '../src/broker/broker.js';
import { C, native } from '../src/native.js';
import { Policy } from '../src/policy/policy.js';
import { parseAllowFlag } from '../src/policy/rule.js';
import { fdCount, sleep, tempDir } from './helpers.js';
import { closeAll, inodeOf, inProcessBroker, openFrame, RawClient, taggedFrame, type InProcessBroker } from './raw.js';
import { E } from '../src/errno.js';

const { EPROTO, ENOENT, EPIPE, ECONNRESET, EAGAIN } = E;

const tmp = tempDir('openhook-conn-');
const file = join(tmp.path, 'data', 'file');
writeFileSync(join(tmp.path, 'placeholder'), '');

mkdirSync(join(tmp.path, 'data'));
writeFileSync(file, 'contents');
const fileIno = statSync(file).ino;

function frame(size: number, command: number, body: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(8 + body.length);
  b.writeUInt32LE(size >>> 0, 0);
  b.writeUInt32LE(command >>> 0, 4);
  body.copy(b, 8);
  return b;
}

/** An fd whose other end tells whether anyone still holds it: send() on `probe` fails with EPIPE once every copy of `given` is closed. */
function witness(): { given: number; probe: number } {
  const [given, probe] = native.socketpair(C.SOCK_STREAM, true);
  return { given, probe };
}

describe('connection: malformed input', () => {
  let broker: InProcessBroker;
  let streamBroker: InProcessBroker;
  before(() => {
    broker = inProcessBroker(tmp.path, 'malformed', { allow: [`${tmp.path}/data/:r`] });
    streamBroker = inProcessBroker(tmp.path, 'malformed-stream', { allow: [`${tmp.path}/data/:r`] }, { stream: true });
  });
  after(() => {
    broker.close();
    streamBroker.close();
  });

  it('SOCK_SEQPACKET: answers lying sizes, short frames, oversized messages and unknown commands with -EPROTO, then serves', async () => {
    const c = RawClient.connect(broker.socket);
    const good = openFrame(file);
    const lyingUp = Buffer.from(good);
    lyingUp.writeUInt32LE(good.length + 10, 0);
    const lyingDown = Buffer.from(good);
    lyingDown.writeUInt32LE(good.length - 1, 0);
    const lyingLen = Buffer.from(good);
    lyingLen.writeUInt16LE(good.length, 16);
    const zeroSize = Buffer.from(good);
    zeroSize.writeUInt32LE(0, 0);
    const hugeSize = Buffer.from(good);
    hugeSize.writeUInt32LE(0xffffffff, 0);
    const oversized = Buffer.alloc(100_000, 0x41);
    oversized.writeUInt32LE(100_000, 0);
    oversized.writeUInt32LE(1, 4);
    const cases: Array<[string, Buffer, number]> = [
      ['size too big', lyingUp, 1],
      ['size too small', lyingDown, 1],
      ['len disagrees', lyingLen, 1],
      ['size 0', zeroSize, 1],
      ['size 2^32-1', hugeSize, 1],
      ['4 bytes', Buffer.from([1, 2, 3, 4]), 0],
      ['1 byte', Buffer.from([9]), 0],
      ['header only', frame(8, 1), 1],
      ['open header cut', good.subarray(0, 17), 1],
      ['unknown command', frame(12, 0x4242, Buffer.alloc(4)), 0x4242],
      ['command 0', frame(8, 0), 0],
      ['hello, wrong size', frame(20, 0x100, Buffer.alloc(12)), 0x100],
      ['tagged, cut', taggedFrame(7, 'x').subarray(0, 21), 0x101],
      ['100 kB message', oversized, 1],
    ];
    for (const [what, bytes, command] of cases) {
      const fixed = Buffer.from(bytes);
      if (what === 'header only' || what === 'open header cut' || what === 'tagged, cut') fixed.writeUInt32LE(fixed.length, 0);
      const r = (await c.request(fixed))!;
      assert.ok(r, `${what}: the connection stays open`);
      assert.equal(r.result, -EPROTO, what);
      assert.equal(r.command, command, what);
      assert.deepEqual(r.fds, []);
      const ok = (await c.request(good))!;
      assert.equal(ok.result, 0, `${what}: the next good request is served`);
      assert.equal(inodeOf(ok.fds[0]!), fileIno);
      closeAll(ok.fds);
    }
    c.close();
  });

  it('SOCK_STREAM: an impossible size gets -EPROTO and a closed connection; the broker serves the next client', async () => {
    for (const size of [0, 4, 7, 65558, 0x7fffffff, 0xffffffff]) {
      const c = RawClient.connect(streamBroker.socket, 'stream');
      const r = (await c.request(frame(size, 1, Buffer.alloc(16))))!;
      assert.equal(r.result, -EPROTO, `size ${size}`);
      assert.equal(await c.next(), null, 'then the connection is closed');
      c.close();
      const d = RawClient.connect(streamBroker.socket, 'stream');
      const ok = (await d.request(openFrame(file)))!;
      assert.equal(ok.result, 0);
      closeAll(ok.fds);
      d.close();
    }
  });

  it('SOCK_STREAM: a malformed frame of a legal size gets -EPROTO and the stream goes on', async () => {
    const c = RawClient.connect(streamBroker.socket, 'stream');
    const good = openFrame(file);
    const lyingLen = Buffer.from(good);
    lyingLen.writeUInt16LE(3, 16);
    const unknown = frame(30, 0x999, Buffer.alloc(22));
    c.send(Buffer.concat([lyingLen, unknown, good, frame(8, 1), good]));
    const replies = [await c.next(), await c.next(), await c.next(), await c.next(), await c.next()];
    assert.deepEqual(
      replies.map((r) => r!.result),
      [-EPROTO, -EPROTO, 0, -EPROTO, 0],
    );
    assert.deepEqual(
      replies.map((r) => r!.command),
      [1, 0x999, 1, 1, 1],
    );
    for (const r of replies) closeAll(r!.fds);
    c.close();
  });

  it('never keeps a fd a client attaches (SOCK_SEQPACKET): -EPROTO, and the fd is gone at once', async () => {
    const c = RawClient.connect(broker.socket);
    const before = fdCount(process.pid);
    const w = witness();
    const many = Array.from({ length: 250 }, () => native.open('/dev/null', C.O_RDONLY, 0));
    assert.equal(c.send(openFrame(file), [w.given, ...many]), openFrame(file).length);
    native.close(w.given);
    closeAll(many);
    const r = (await c.next())!;
    assert.equal(r.result, -EPROTO, 'control data the broker will not take is a protocol error');
    assert.equal(native.send(w.probe, Buffer.from('x'), 0, 1, -1), -EPIPE, 'no copy of the attached fd survives anywhere');
    native.close(w.probe);
    assert.equal(fdCount(process.pid), before);
    const ok = (await c.request(openFrame(file)))!;
    assert.equal(ok.result, 0);
    closeAll(ok.fds);
    c.close();
  });

  it('never keeps a fd a client attaches (SOCK_STREAM): -EPROTO and a closed connection', async () => {
    const c = RawClient.connect(streamBroker.socket, 'stream');
    const w = witness();
    c.send(openFrame(file), [w.given]);
    native.close(w.given);
    const r = (await c.next())!;
    assert.equal(r.result, -EPROTO);
    assert.equal(await c.next(), null);
    assert.equal(native.send(w.probe, Buffer.from('x'), 0, 1, -1), -EPIPE);
    native.close(w.probe);
    c.close();
  });

  it('keeps replies in request order on one connection, and answers tagged opens by id', async () => {
    const c = RawClient.connect(broker.socket);
    const names = Array.from({ length: 200 }, (_, i) => (i % 3 === 0 ? join(tmp.path, 'data', 'missing') : file));
    for (const [i, n] of names.entries()) c.send(i % 5 === 4 ? taggedFrame(i, n) : openFrame(n));
    for (const [i, n] of names.entries()) {
      const r = (await c.next())!;
      assert.equal(r.command, i % 5 === 4 ? 0x101 : 1);
      if (i % 5 === 4) assert.equal(r.id, i);
      assert.equal(r.result, n === file ? 0 : -ENOENT, `reply ${i}`);
      closeAll(r.fds);
    }
    c.close();
  });
});

describe('connection: deadlines and slow readers', () => {
  let broker: InProcessBroker;
  let streamBroker: InProcessBroker;
  const limits = { stallMs: 400, frameMs: 300 };
  before(() => {
    broker = inProcessBroker(tmp.path, 'deadlines', { allow: [`${tmp.path}/data/:r`] }, { limits });
    streamBroker = inProcessBroker(tmp.path, 'deadlines-stream', { allow: [`${tmp.path}/data/:r`] }, { stream: true, limits });
  });
  after(() => {
    broker.close();
    streamBroker.close();
  });

  it('SOCK_STREAM: a half-sent frame hits the deadline: -EPROTO, then closed', async () => {
    const c = RawClient.connect(streamBroker.socket, 'stream');
    const good = openFrame(file);
    const t0 = Date.now();
    c.send(good.subarray(0, 10));
    const r = (await c.next(3000))!;
    assert.equal(r.result, -EPROTO);
    assert.equal(await c.next(), null);
    assert.ok(Date.now() - t0 >= 250, 'not before the deadline');
    c.close();
  });

  it('SOCK_STREAM: a frame trickled byte by byte is held to the same deadline', async () => {
    const c = RawClient.connect(streamBroker.socket, 'stream');
    const good = openFrame(file);
    let i = 0;
    const timer = setInterval(() => {
      if (i < good.length && !c.ended) c.send(good.subarray(i, ++i));
    }, 40);
    try {
      const r = (await c.next(3000))!;
      assert.equal(r.result, -EPROTO);
      assert.ok(i < good.length, 'closed before the trickle ended');
    } finally {
      clearInterval(timer);
      c.close();
    }
  });

  it('SOCK_STREAM: whole frames in slow succession are fine', async () => {
    const c = RawClient.connect(streamBroker.socket, 'stream');
    for (let k = 0; k < 4; k++) {
      const r = (await c.request(openFrame(file)))!;
      assert.equal(r.result, 0);
      closeAll(r.fds);
      await sleep(150);
    }
    c.close();
  });

  for (const kind of ['seqpacket', 'stream'] as const) {
    it(`${kind}: a client that never reads its replies is dropped, holding at most one fd, while others are served`, async () => {
      const b = kind === 'stream' ? streamBroker : broker;
      const req = openFrame(file);
      const other = RawClient.connect(b.socket, kind);
      const warm = (await other.request(req))!; // the rule's root is opened, and its filesystem known
      closeAll(warm.fds);
      await sleep(50); // earlier tests' connections finish closing on the broker's side
      const baseline = fdCount(process.pid);
      const greedy = native.connectUnix(Buffer.from(b.socket), kind === 'stream' ? C.SOCK_STREAM : C.SOCK_SEQPACKET);
      let sent = 0,
        peak = 0;
      const t0 = Date.now();
      let dropped = false;
      let served = 0;
      while (Date.now() - t0 < 5000 && !dropped) {
        for (let k = 0; k < 256; k++) {
          const n = native.send(greedy, req, 0, req.length, -1);
          if (n === req.length) sent++;
          else if (n === -EPIPE || n === -ECONNRESET) dropped = true;
          if (n !== req.length) break;
        }
        peak = Math.max(peak, fdCount(process.pid) - baseline);
        const r = (await other.request(req, 2000))!;
        assert.equal(r.result, 0, 'the other client is served meanwhile');
        closeAll(r.fds);
        served++;
        await sleep(20);
      }
      assert.ok(dropped, `the greedy client was dropped (sent ${sent})`);
      assert.ok(served >= 5, `the other client was served ${served} times`);
      // greedy + its broker-side end = 2; plus at most one reply fd waiting in the queue.
      assert.ok(peak <= 3, `the broker held ${peak - 2} extra fds for the greedy client`);
      native.close(greedy);
      other.close();
      await sleep(50);
      assert.equal(fdCount(process.pid), baseline - 2, 'all gone, with the other client');
    });
  }

  it('a client that hangs up with replies pending costs nothing: its fds are closed', async () => {
    await sleep(50);
    const baseline = fdCount(process.pid);
    for (const kind of ['seqpacket', 'stream'] as const) {
      const b = kind === 'stream' ? streamBroker : broker;
      const fd = native.connectUnix(Buffer.from(b.socket), kind === 'stream' ? C.SOCK_STREAM : C.SOCK_SEQPACKET);
      const req = openFrame(file);
      for (let k = 0; k < 2000; k++) if (native.send(fd, req, 0, req.length, -1) !== req.length) break;
      native.close(fd);
    }
    await sleep(200);
    assert.equal(fdCount(process.pid), baseline);
    const c = RawClient.connect(broker.socket);
    const r = (await c.request(openFrame(file)))!;
    assert.equal(r.result, 0);
    closeAll(r.fds);
    c.close();
  });
});

describe('connection: receiving while the queue is blocked', () => {
  it('serves requests read behind a blocked reply in order, opening each only at its turn', async () => {
    const b = inProcessBroker(tmp.path, 'deferred', { allow: [`${tmp.path}/data/:r`] });
    const fd = native.connectUnix(Buffer.from(b.socket), C.SOCK_SEQPACKET);
    try {
      // Fill the broker's send queue towards us, then read everything back in order.
      const names = Array.from({ length: 3000 }, (_, i) => (i % 2 ? file : join(tmp.path, 'data', `missing-${i}`)));
      let sent = 0;
      const c = new RawClient(fd, 'seqpacket');
      for (const n of names) {
        const f = openFrame(n);
        while (native.send(fd, f, 0, f.length, -1) === -EAGAIN) await sleep(1);
        sent++;
      }
      for (let i = 0; i < sent; i++) {
        const r = (await c.next())!;
        assert.equal(r.result, i % 2 ? 0 : -ENOENT, `reply ${i}`);
        closeAll(r.fds);
      }
      c.close();
    } finally {
      b.close();
    }
  });
});

after(tmp.cleanup);

describe('connection: CONNECT and the caps', () => {
  it('counts connections made by CONNECT against the per-uid cap', async () => {
    const b = inProcessBroker(tmp.path, 'connect-cap', { allow: [`${tmp.path}/data/:r`] }, { limits: { connectionsPerUid: 2 } });
    const c = RawClient.connect(b.socket);
    const connect = Buffer.alloc(12);
    connect.writeUInt32LE(12, 0);
    connect.writeUInt32LE(0x102, 4);
    try {
      const first = (await c.request(connect))!;
      assert.equal(first.result, 0, 'a second connection for this uid is within the cap');
      assert.equal(first.fds.length, 1);
      const second = (await c.request(connect))!;
      assert.equal(second.result, -E.EMFILE, 'a third is not: EMFILE');
      assert.deepEqual(second.fds, []);
      const d = new RawClient(first.fds[0]!, 'seqpacket');
      const r = (await d.request(openFrame(file)))!;
      assert.equal(r.result, 0, 'the derived connection serves');
      closeAll(r.fds);
      d.close();
      await sleep(50);
      const again = (await c.request(connect))!;
      assert.equal(again.result, 0, 'once it is gone, there is room again');
      closeAll(again.fds);
    } finally {
      c.close();
      b.close();
    }
  });
});

describe('broker: close', () => {
  it('closes every listener and connection even when closing one listener fails, then reports the failure', async () => {
    const broker = new Broker({ policy: new Policy([parseAllowFlag(`${tmp.path}/:r`)]), log: () => {} });
    const second = join(tmp.path, 'close-b.sock');
    const failing = broker.listen(join(tmp.path, 'close-a.sock'));
    broker.listen(second);
    const c = RawClient.connect(second);
    for (let i = 0; i < 100 && broker.connectionCount === 0; i++) await sleep(10);
    assert.equal(broker.connectionCount, 1);
    native.close(failing.fd); // behind the listener's back: its close() now fails with EBADF
    assert.throws(() => broker.close(), /EBADF/);
    assert.equal(existsSync(second), false, 'the other listener was closed, and its socket file removed');
    assert.equal(broker.connectionCount, 0, 'every connection was closed');
    c.close();
  });
});
