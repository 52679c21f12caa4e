/**
 * The QMP client against real QEMU (greeting, ids, errors, events, fds, the three wirings), and,
 * over a real socketpair, against a peer that misbehaves in ways QEMU cannot be made to (silence,
 * garbage), for timeouts, aborts and protocol errors.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AbortError } from '../src/client/errors.js';
import { C, native, PollMode, recvArena, recvMeta } from '../src/native.js';
import { QmpClosedError, QmpError, QmpProtocolError, QmpTimeoutError } from '../src/qemu/errors.js';
import { connectQmp, type QmpClient } from '../src/qemu/qmp.js';
import { spawnQemu, type QemuProcess } from '../src/qemu/spawn.js';
import { sleep, tempDir } from './helpers.js';
import { fdAccessMode, MACHINE } from './qemu-helpers.js';

describe('QMP client, real QEMU on a socket path', () => {
  const dir = tempDir('openhook-qmp-');
  const socket = join(dir.path, 'qmp.sock');
  let qemu: ReturnType<typeof spawn>;
  let qmp: QmpClient;

  before(async () => {
    // Connect before QEMU has created its socket: the client must wait for it.
    qemu = spawn('qemu-system-x86_64', [...MACHINE, '-qmp', `unix:${socket},server=on,wait=off`], { stdio: 'ignore' });
    qmp = await connectQmp({ path: socket, timeout: 30_000 });
  });

  after(async () => {
    qmp?.close();
    if (qemu.exitCode === null) qemu.kill('SIGKILL');
    dir.cleanup();
  });

  it('reads the greeting and leaves capabilities negotiation', async () => {
    assert.ok(qmp.greeting.version.qemu.major >= 7);
    assert.ok(Array.isArray(qmp.greeting.capabilities));
    // Outside negotiation mode, ordinary commands work.
    assert.deepEqual(await qmp.execute('query-status'), { status: 'prelaunch', singlestep: false, running: false });
  });

  it('matches replies to commands by id, many in flight', async () => {
    const results = await Promise.all([
      qmp.execute('query-status'),
      qmp.execute('query-name'),
      qmp.execute<{ qemu: { major: number } }>('query-version'),
      qmp.execute('query-status'),
    ]);
    assert.equal((results[0] as { status: string }).status, 'prelaunch');
    assert.deepEqual(results[1], {});
    assert.equal(results[2].qemu.major, qmp.greeting.version.qemu.major);
  });

  it('turns QEMU errors into QmpError with the class and desc', async () => {
    await assert.rejects(qmp.execute('no-such-command'), (err: QmpError) => {
      assert.ok(err instanceof QmpError);
      assert.equal(err.class, 'CommandNotFound');
      assert.match(err.desc, /no-such-command/);
      assert.equal(err.command, 'no-such-command');
      assert.equal(err.code, 'ERR_QMP_COMMAND');
      return true;
    });
    await assert.rejects(qmp.execute('blockdev-del', { 'node-name': 'nothing-here' }), { name: 'QmpError', class: 'GenericError' });
    // The connection is still good.
    assert.equal(((await qmp.execute('query-status')) as { status: string }).status, 'prelaunch');
  });

  it('delivers events, to listeners and to waiters registered before the command', async () => {
    const seen: string[] = [];
    const onEvent = (e: { event: string }): void => void seen.push(e.event);
    qmp.on('event', onEvent);
    const resumed = qmp.waitEvent('RESUME', { timeout: 10_000 });
    await qmp.execute('cont');
    const event = await resumed;
    assert.equal(event.event, 'RESUME');
    assert.ok(event.timestamp.seconds > 0);
    const stopped = qmp.waitEvent('STOP', { timeout: 10_000 });
    await qmp.execute('stop');
    await stopped;
    qmp.off('event', onEvent);
    assert.deepEqual(
      seen.filter((e) => e === 'RESUME' || e === 'STOP'),
      ['RESUME', 'STOP'],
    );
  });

  it('sends fds with add-fd, each set with its access mode, also when many are sent at once', async () => {
    const paths = ['/dev/null', '/dev/zero', '/dev/null', '/dev/zero', '/dev/null'];
    const fds = paths.map((p, i) => openSync(p, i % 2 ? 'r' : 'r+'));
    try {
      // QEMU keeps one fd slot per connection: the client must not let a later command's fds
      // overwrite an earlier one's before it has been consumed.
      const results = await Promise.all(
        fds.map((fd, i) => qmp.execute<{ 'fdset-id': number; fd: number }>('add-fd', { 'fdset-id': 40 + i }, { fds: [fd] })),
      );
      results.forEach((r, i) => {
        assert.equal(r['fdset-id'], 40 + i);
        assert.equal(fdAccessMode(qemu.pid!, r.fd), i % 2 ? 0 : 2);
      });
      const sets = await qmp.execute<Array<{ 'fdset-id': number }>>('query-fdsets');
      for (let i = 0; i < fds.length; i++) assert.ok(sets.some((s) => s['fdset-id'] === 40 + i));
      for (let i = 0; i < fds.length; i++) await qmp.execute('remove-fd', { 'fdset-id': 40 + i });
    } finally {
      fds.forEach((fd) => closeSync(fd));
    }
  });

  it('sends an fd with getfd, and a command that needs one fails without it', async () => {
    const fd = openSync('/dev/null', 'r');
    try {
      await qmp.execute('getfd', { fdname: 'probe' }, { fds: [fd] });
      await qmp.execute('closefd', { fdname: 'probe' });
    } finally {
      closeSync(fd);
    }
    await assert.rejects(qmp.execute('getfd', { fdname: 'nothing' }), { name: 'QmpError', desc: /No file descriptor/ });
  });

  it('ends cleanly when QEMU quits: SHUTDOWN, whenClosed, then QmpClosedError', async () => {
    const shutdown = qmp.waitEvent('SHUTDOWN', { timeout: 10_000 });
    await qmp.execute('quit').catch(() => {});
    assert.equal((await shutdown).data.reason, 'host-qmp-quit');
    await qmp.whenClosed;
    assert.equal(qmp.closed, true);
    await assert.rejects(qmp.execute('query-status'), QmpClosedError);
    await assert.rejects(qmp.waitEvent('RESUME'), QmpClosedError);
    await new Promise((r) => (qemu.exitCode === null ? qemu.on('exit', r) : r(null)));
  });
});

describe('QMP wirings for QEMU started by us', () => {
  it('stdin: QEMU inherits the other end of a socketpair as its stdin', async () => {
    const q = await spawnQemu(MACHINE);
    let exit: unknown;
    try {
      assert.equal(((await q.qmp.execute('query-status')) as { status: string }).status, 'prelaunch');
    } finally {
      exit = await q.quit();
    }
    assert.deepEqual(exit, { code: 0, signal: null }, 'QEMU quit cleanly');
  });

  it('listen: QEMU connects to us, and the socket file is gone once it has', async () => {
    const dir = tempDir('openhook-qmp-');
    const path = join(dir.path, 'qmp.sock');
    let q: QemuProcess | null = null;
    let exit: unknown;
    try {
      q = await spawnQemu(MACHINE, { qmp: { listen: path } });
      assert.equal(existsSync(path), false);
      assert.equal(((await q.qmp.execute('query-status')) as { status: string }).status, 'prelaunch');
    } finally {
      if (q) exit = await q.quit();
      dir.cleanup();
    }
    assert.deepEqual(exit, { code: 0, signal: null }, 'QEMU quit cleanly');
  });

  it('reports QEMU dying before QMP is ready, with its message', async () => {
    await assert.rejects(spawnQemu([...MACHINE, '-no-such-option']), /exited .*no-such-option/s);
  });
});

/** The other end of a socketpair, speaking just enough QMP to misbehave on purpose. */
class Peer {
  readonly fd: number;
  readonly lines: Array<{ text: string; fds: number }> = [];
  #poller;
  #partial = '';

  constructor(fd: number) {
    this.fd = fd;
    this.#poller = new native.Poller(fd, PollMode.Receive, 16, (_e, count) => {
      for (let i = 0, m = 0; i < count; i++) {
        const off = recvMeta[m]!,
          len = recvMeta[m + 1]!,
          nfds = recvMeta[m + 3]!;
        for (let k = 0; k < nfds; k++) native.close(recvMeta[m + 4 + k]!);
        const chunk = this.#partial + recvArena.toString('utf8', off, off + len);
        const parts = chunk.split('\n');
        this.#partial = parts.pop()!;
        // Fds arrive with the chunk that carries the start of their message.
        parts.forEach((text, j) => this.lines.push({ text, fds: j === 0 ? nfds : 0 }));
        m += 4 + nfds;
      }
    });
    this.#poller.start(C.UV_READABLE);
  }

  send(obj: unknown): void {
    const buf = Buffer.from(typeof obj === 'string' ? obj : JSON.stringify(obj) + '\r\n');
    assert.equal(native.send(this.fd, buf, 0, buf.length, -1), buf.length);
  }

  greet(): void {
    this.send({ QMP: { version: { qemu: { major: 9, minor: 0, micro: 0 }, package: 'peer' }, capabilities: [] } });
  }

  async next(): Promise<{ execute: string; id: string; arguments?: unknown; fds: number }> {
    for (let i = 0; i < 500 && this.lines.length === 0; i++) await sleep(10);
    const line = this.lines.shift();
    if (!line) throw new Error('nothing from the client');
    return { ...JSON.parse(line.text), fds: line.fds };
  }

  close(): void {
    this.#poller.close();
    native.close(this.fd);
  }
}

async function pairWithPeer(): Promise<{ qmp: QmpClient; peer: Peer }> {
  const [a, b] = native.socketpair(C.SOCK_STREAM, true);
  const peer = new Peer(b);
  peer.greet();
  const connecting = connectQmp({ fd: a, timeout: 5000 });
  const caps = await peer.next();
  assert.equal(caps.execute, 'qmp_capabilities');
  peer.send({ return: {}, id: caps.id });
  return { qmp: await connecting, peer };
}

describe('QMP client against a misbehaving peer (real socketpair)', () => {
  it('times out a command, drops its late reply, and keeps serving the next ones', async () => {
    const { qmp, peer } = await pairWithPeer();
    try {
      const slow = qmp.execute('slow', undefined, { timeout: 100 });
      const req = await peer.next();
      await assert.rejects(slow, (err: Error) => err instanceof QmpTimeoutError && err.code === 'ERR_QMP_TIMEOUT');
      const next = qmp.execute<number>('next');
      const req2 = await peer.next();
      peer.send({ return: 'late', id: req.id });
      peer.send({ return: 42, id: req2.id });
      assert.equal(await next, 42);
    } finally {
      qmp.close();
      peer.close();
    }
  });

  it('aborts a command with an AbortSignal', async () => {
    const { qmp, peer } = await pairWithPeer();
    try {
      const ac = new AbortController();
      const pending = qmp.execute('hang', undefined, { signal: ac.signal });
      await peer.next();
      ac.abort();
      await assert.rejects(pending, (err: Error) => err instanceof AbortError && err.name === 'AbortError');
      await assert.rejects(qmp.execute('x', undefined, { signal: AbortSignal.abort() }), AbortError);
      await assert.rejects(qmp.waitEvent('NEVER', { timeout: 50 }), QmpTimeoutError);
    } finally {
      qmp.close();
      peer.close();
    }
  });

  it('sends a command and its fds in one message, and the next command with fds only after the reply', async () => {
    const { qmp, peer } = await pairWithPeer();
    const fd1 = openSync('/dev/null', 'r'),
      fd2 = openSync('/dev/null', 'r');
    try {
      const first = qmp.execute('add-fd', { 'fdset-id': 1 }, { fds: [fd1] });
      const second = qmp.execute('add-fd', { 'fdset-id': 2 }, { fds: [fd2] });
      const plain = qmp.execute('query-fdsets');
      const r1 = await peer.next();
      assert.equal(r1.execute, 'add-fd');
      assert.equal(r1.fds, 1, 'the fd travels with the first byte of its command');
      // Without fds, query-fdsets may pass; the second add-fd must wait for the first reply.
      const r2 = await peer.next();
      assert.equal(r2.execute, 'query-fdsets');
      await sleep(100);
      assert.equal(peer.lines.length, 0, 'a second command with fds went out before the first was answered');
      peer.send({ return: { 'fdset-id': 1, fd: 10 }, id: r1.id });
      const r3 = await peer.next();
      assert.deepEqual([r3.execute, r3.fds], ['add-fd', 1]);
      peer.send({ return: [], id: r2.id });
      peer.send({ error: { class: 'GenericError', desc: 'no' }, id: r3.id });
      assert.deepEqual(await first, { 'fdset-id': 1, fd: 10 });
      assert.deepEqual(await plain, []);
      await assert.rejects(second, { name: 'QmpError', desc: 'no' });
    } finally {
      closeSync(fd1);
      closeSync(fd2);
      qmp.close();
      peer.close();
    }
  });

  it('closes with QmpProtocolError on bytes that are not QMP', async () => {
    const { qmp, peer } = await pairWithPeer();
    try {
      const pending = qmp.execute('x');
      await peer.next();
      peer.send('this is not json\n');
      await assert.rejects(pending, QmpProtocolError);
      assert.equal(qmp.closed, true);
    } finally {
      peer.close();
    }
  });

  it('fails connecting when the peer closes before its greeting, or never greets', async () => {
    const [a, b] = native.socketpair(C.SOCK_STREAM, true);
    native.close(b);
    await assert.rejects(connectQmp({ fd: a, timeout: 5000 }), QmpClosedError);
    const [c, d] = native.socketpair(C.SOCK_STREAM, true);
    await assert.rejects(connectQmp({ fd: c, timeout: 100 }), QmpTimeoutError);
    native.close(d);
  });
});
