/**
 * The client library against a real broker (in this process, on a real socket) and against a socket
 * whose far end the test drives by hand, to hold requests in flight.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, fstatSync, mkdirSync, openSync, readSync, statSync, writeFileSync } from 'node:fs';
import { getEventListeners } from 'node:events';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Broker } from '../src/broker/broker.js';
import { connect } from '../src/client/client.js';
import { AbortError, ClientClosedError, TimeoutError } from '../src/client/errors.js';
import { C, native } from '../src/native.js';
import { Policy } from '../src/policy/policy.js';
import { parseAllowFlag } from '../src/policy/rule.js';
import { encodeReply } from '../src/protocol/frames.js';
import { fdCount, ROOT, tempDir } from './helpers.js';
import { E } from '../src/errno.js';

const tmp = tempDir();
const dir = join(tmp.path, 'data');
mkdirSync(dir);
for (let i = 0; i < 50; i++) writeFileSync(join(dir, `f${i}`), `file ${i}`);

function readAll(fd: number): string {
  const buf = Buffer.alloc(256);
  return buf.toString('utf8', 0, readSync(fd, buf, 0, buf.length, 0));
}

describe('client library against a broker', () => {
  let broker: Broker;
  const seq = join(tmp.path, 'seq.sock');
  const stream = join(tmp.path, 'stream.sock');
  before(() => {
    broker = new Broker({ policy: new Policy([parseAllowFlag(`${dir}/:rwc`)]), log: () => {} });
    broker.listen(seq);
    broker.listen(stream, { stream: true });
  });
  after(() => {
    broker.close();
    tmp.cleanup();
  });

  for (const [label, options] of [
    ['SOCK_SEQPACKET, tagged', { path: seq }],
    ['SOCK_SEQPACKET, RFC frames', { path: seq, protocol: 'rfc' as const }],
    ['SOCK_STREAM, tagged', { path: stream, stream: true }],
    ['SOCK_STREAM, RFC frames', { path: stream, stream: true, protocol: 'rfc' as const }],
  ] as const) {
    it(`opens files and reads them through the fd (${label})`, async () => {
      await using client = await connect(options);
      assert.equal(client.tagged, !('protocol' in options));
      const fd = await client.open(join(dir, 'f1'));
      assert.equal(readAll(fd), 'file 1');
      closeSync(fd);
    });

    it(`keeps many requests in flight on one connection (${label})`, async () => {
      await using client = await connect(options);
      const names = Array.from({ length: 500 }, (_, i) => join(dir, `f${i % 50}`));
      const fds = await Promise.all(names.map((n) => client.open(n)));
      fds.forEach((fd, i) => {
        assert.equal(fstatSync(fd).ino, statSync(names[i]!).ino, 'each reply matched to its own request');
        closeSync(fd);
      });
    });

    it(`rejects a denied open with a SystemError carrying the errno (${label})`, async () => {
      await using client = await connect(options);
      await assert.rejects(client.open('/etc/passwd'), (err: NodeJS.ErrnoException) => {
        assert.equal(err.code, 'EACCES');
        assert.equal(err.errno, -E.EACCES);
        assert.equal(err.syscall, 'open');
        assert.equal(err.path, '/etc/passwd');
        return true;
      });
      await assert.rejects(client.open(join(dir, 'nope')), { code: 'ENOENT' });
    });
  }

  it('leaves no abort listener behind on a shared signal: connect, then 10,000 opens', async () => {
    const ac = new AbortController();
    await using client = await connect({ path: seq, signal: ac.signal });
    assert.equal(getEventListeners(ac.signal, 'abort').length, 0, 'connect left its listener');
    for (let round = 0; round < 10; round++) {
      const opens = Array.from({ length: 1000 }, (_, i) =>
        client.open(join(dir, `f${i % 50}`), 'r', 0, { signal: ac.signal, timeout: 60_000 }),
      );
      const fds = await Promise.all(opens);
      for (const fd of fds) closeSync(fd);
    }
    assert.equal(getEventListeners(ac.signal, 'abort').length, 0, 'answered requests left their abort listeners');
    ac.abort();
    const fd = await client.open(join(dir, 'f1'));
    closeSync(fd);
  });

  it('creates files with fs-style flag strings and a mode', async () => {
    await using client = await connect(seq);
    const fd = await client.open(join(dir, 'new.txt'), 'wx', 0o640);
    closeSync(fd);
    assert.equal(statSync(join(dir, 'new.txt')).mode & 0o777, 0o640);
    await assert.rejects(client.open(join(dir, 'new.txt'), 'wx'), { code: 'EEXIST' });
    await assert.rejects(client.open(join(dir, 'x'), 'bogus' as 'r'), TypeError);
  });

  it('connects through OPENHOOK_FD in a child process', async () => {
    const [brokerEnd, childEnd] = native.socketpair(C.SOCK_SEQPACKET, false);
    broker.adopt(brokerEnd, 'seqpacket');
    const script = `
      import { connect } from ${JSON.stringify(join(ROOT, 'dist', 'index.js'))};
      import { readSync, closeSync } from 'node:fs';
      const hook = await connect();
      const fd = await hook.open(${JSON.stringify(join(dir, 'f7'))});
      const b = Buffer.alloc(64); console.log(b.toString('utf8', 0, readSync(fd, b, 0, 64, 0)));
      closeSync(fd); hook.close();
    `;
    // Asynchronous spawn: the broker in this process must keep serving while the child runs.
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'pipe', childEnd],
      env: { ...process.env, OPENHOOK_FD: '3' },
    });
    native.close(childEnd);
    let out = '',
      err = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    await new Promise((r) => child.on('close', r));
    assert.equal(out.trim(), 'file 7', err);
  });

  it('fails clearly without a target', async () => {
    const saved = process.env.OPENHOOK_FD;
    delete process.env.OPENHOOK_FD;
    await assert.rejects(connect(), /OPENHOOK_FD is not set/);
    process.env.OPENHOOK_FD = 'x1';
    await assert.rejects(connect(), /not an fd number/);
    if (saved === undefined) delete process.env.OPENHOOK_FD;
    else process.env.OPENHOOK_FD = saved;
    await assert.rejects(connect(join(tmp.path, 'absent.sock')), { code: 'ENOENT' });
  });
});

describe('client library with requests held in flight', () => {
  /** A connected pair whose far end nobody serves until the test answers by hand. The client owns near. */
  async function held() {
    const [near, far] = native.socketpair(C.SOCK_SEQPACKET, true);
    const client = await connect({ fd: near, protocol: 'rfc' });
    return { client, far };
  }

  it('rejects with AbortError when the signal fires, and closes the late fd', async () => {
    const { client, far } = await held();
    const ac = new AbortController();
    const p = client.open('/x', 'r', 0, { signal: ac.signal });
    ac.abort();
    await assert.rejects(p, AbortError);
    const before = fdCount(process.pid);
    const reply = Buffer.alloc(12);
    encodeReply(reply, 0, 1, 0);
    const late = openSync('/dev/null', 'r');
    native.send(far, reply, 0, 12, late);
    closeSync(late);
    // Wait for the late reply to be taken (a fixed pause is too short on a loaded machine, and the
    // fd count below would then pass with the reply still in the socket).
    for (let i = 0; i < 500 && client.pending > 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(client.pending, 0);
    assert.equal(fdCount(process.pid), before, 'the fd of the abandoned request was closed');
    client.close();
    native.close(far);
    await assert.rejects(client.open('/y'), ClientClosedError);
  });

  it('rejects an already-aborted request at once', async () => {
    const { client, far } = await held();
    await assert.rejects(client.open('/x', 'r', 0, { signal: AbortSignal.abort() }), AbortError);
    client.close();
    native.close(far);
  });

  it("rejects an aborted connect with openhook's AbortError (ABORT_ERR), not the DOM's", async () => {
    const reason = new Error('changed my mind');
    await assert.rejects(connect({ path: join(tmp.path, 'nobody.sock'), signal: AbortSignal.abort(reason) }), (err: Error) => {
      assert.ok(err instanceof AbortError, `not openhook's AbortError: ${err}`);
      assert.equal((err as AbortError).code, 'ABORT_ERR');
      assert.equal(err.cause, reason);
      return true;
    });
  });

  it('gives up connecting when the signal fires while the HELLO goes unanswered', async () => {
    // A listener nobody accepts on: connect(2) succeeds into the backlog, and no HELLO reply comes.
    const own = tempDir();
    const path = join(own.path, 'silent.sock');
    const silent = native.listenUnix(path, C.SOCK_SEQPACKET, 0o600, 4);
    try {
      const ac = new AbortController();
      const connecting = connect({ path, signal: ac.signal });
      setTimeout(() => ac.abort(), 50);
      await assert.rejects(connecting, (err: Error) => err instanceof AbortError && (err as AbortError).code === 'ABORT_ERR');
    } finally {
      native.close(silent.fd);
      own.cleanup();
    }
  });

  it('times out', async () => {
    const { client, far } = await held();
    await assert.rejects(client.open('/x', 'r', 0, { timeout: 30 }), TimeoutError);
    client.close();
    native.close(far);
  });

  it('rejects pending requests when closed, or when the broker goes away', async () => {
    const a = await held();
    const p = a.client.open('/x');
    a.client.close();
    await assert.rejects(p, ClientClosedError);
    native.close(a.far);

    const b = await held();
    const q = b.client.open('/x');
    native.close(b.far);
    await assert.rejects(q, /broker closed the connection/);
  });

  it('treats a reply with the wrong number of fds as a protocol error', async () => {
    const { client, far } = await held();
    const p = client.open('/x');
    const reply = Buffer.alloc(12);
    encodeReply(reply, 0, 1, 0);
    native.send(far, reply, 0, 12, -1);
    await assert.rejects(p, { code: 'ERR_OPENHOOK_PROTOCOL' });
    native.close(far);
  });
});
