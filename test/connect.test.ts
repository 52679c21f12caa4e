/**
 * The CONNECT extension (0x102): a fresh private connection with the requester's identity, on the
 * broker side; and the interposer against `openhook serve` by socket path (OPENHOOK_SOCKET), with
 * EIO while the broker is gone and reconnection when it is back.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createInterface } from 'node:readline';
import { Broker } from '../src/broker/broker.js';
import type { AuditRecord } from '../src/broker/audit.js';
import { PRELOAD_LIBRARY } from '../src/launch/preload.js';
import { C, native, PollMode, recvArena, recvMeta } from '../src/native.js';
import { Policy } from '../src/policy/policy.js';
import { parseAllowFlag } from '../src/policy/rule.js';
import { Command, Feature } from '../src/protocol/constants.js';
import { decodeReply, encodeConnect, encodeHello, encodeOpen } from '../src/protocol/frames.js';
import { fdCount, fixture, sleep, startServe, tempDir } from './helpers.js';
import { BASE_ENV, runChild } from './interposer-harness.js';
import { E } from '../src/errno.js';

const tmp = tempDir('openhook-connect-');
after(tmp.cleanup);
const file = join(tmp.path, 'data', 'file.txt');

before(() => {
  mkdirSync(join(tmp.path, 'data'));
  writeFileSync(file, 'contents\n');
});

/** Sends one frame on fd and waits for one reply message; returns the decoded reply and its fds. */
function exchange(fd: number, frame: Buffer): Promise<{ command: number; result: number; features: number; fds: number[] }> {
  return new Promise((resolve, reject) => {
    const p = new native.Poller(fd, PollMode.Receive, 1, (_events, count, status) => {
      if (count === 0) {
        p.close();
        reject(new Error(`no reply (status ${status})`));
        return;
      }
      const [offset, length, , nfds] = [recvMeta[0]!, recvMeta[1]!, recvMeta[2]!, recvMeta[3]!];
      const fds = Array.from(recvMeta.subarray(4, 4 + nfds));
      const reply = decodeReply(recvArena, offset, length);
      p.close();
      if (!reply) reject(new Error('malformed reply'));
      else resolve({ command: reply.command, result: reply.result, features: reply.features, fds });
    });
    p.start(C.UV_READABLE);
    assert.equal(native.send(fd, frame, 0, frame.length, -1), frame.length);
  });
}

function setup(maxDerivedConnections?: number): { broker: Broker; records: AuditRecord[]; client: number } {
  const records: AuditRecord[] = [];
  const broker = new Broker({
    policy: new Policy([parseAllowFlag(`${tmp.path}/data/:r`)]),
    audit: { record: (r) => void records.push(r) },
    log: () => {},
    maxDerivedConnections,
  });
  const [mine, client] = native.socketpair(C.SOCK_SEQPACKET, true);
  broker.adopt(mine, 'seqpacket', { session: 'vm1' });
  return { broker, records, client };
}

describe('CONNECT (broker side)', () => {
  it('is announced by HELLO', async () => {
    const { broker, client } = setup();
    const r = await exchange(client, encodeHello(Feature.TAGGED_OPEN | Feature.CONNECT));
    assert.equal(r.features & Feature.CONNECT, Feature.CONNECT);
    native.close(client);
    broker.close();
  });

  it('answers with one connected socket, served with the same session as the requester', async () => {
    const { broker, records, client } = setup();
    const r = await exchange(client, encodeConnect());
    assert.deepEqual([r.command, r.result, r.fds.length], [Command.CONNECT, 0, 1]);
    const fresh = r.fds[0]!;
    assert.equal(native.socketType(fresh), C.SOCK_SEQPACKET);
    const opened = await exchange(fresh, encodeOpen(file, C.O_RDONLY, 0));
    assert.equal(opened.result, 0);
    assert.equal(opened.fds.length, 1);
    native.close(opened.fds[0]!);
    assert.equal(records.at(-1)!.peer.session, 'vm1');
    // A connection made from a derived one is derived too, with the same identity.
    const second = await exchange(fresh, encodeConnect());
    assert.equal(second.result, 0);
    const denied = await exchange(second.fds[0]!, encodeOpen('/etc/shadow', C.O_RDONLY, 0));
    assert.equal(denied.result, -E.EACCES);
    assert.equal(records.at(-1)!.peer.session, 'vm1');
    for (const fd of [client, fresh, second.fds[0]!]) native.close(fd);
    broker.close();
  });

  it('refuses unknown flags with -EINVAL', async () => {
    const { broker, client } = setup();
    const r = await exchange(client, encodeConnect(1));
    assert.deepEqual([r.command, r.result, r.fds.length], [Command.CONNECT, -E.EINVAL, 0]);
    native.close(client);
    broker.close();
  });

  it('caps the connections one client may derive (-EMFILE), and frees the budget when they close', async () => {
    const { broker, client } = setup(3);
    const got: number[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await exchange(client, encodeConnect());
      assert.equal(r.result, 0);
      got.push(r.fds[0]!);
    }
    const over = await exchange(client, encodeConnect());
    assert.deepEqual([over.result, over.fds.length], [-24, 0]);
    native.close(got.pop()!);
    for (let i = 0; i < 100 && broker.connectionCount > 3; i++) await sleep(5);
    const again = await exchange(client, encodeConnect());
    assert.equal(again.result, 0);
    for (const fd of [...got, again.fds[0]!, client]) native.close(fd);
    broker.close();
  });

  it('closes the derived connections when the connection they came from is closed (the session ends)', async () => {
    const { broker, client } = setup();
    const a = await exchange(client, encodeConnect());
    const b = await exchange(a.fds[0]!, encodeConnect());
    assert.equal(broker.connectionCount, 3);
    // The launcher closes the session's connection when its program exits; here, the client hangs up.
    native.close(client);
    for (let i = 0; i < 200 && broker.connectionCount > 0; i++) await sleep(5);
    assert.equal(broker.connectionCount, 0);
    const late = native.send(b.fds[0]!, encodeOpen(file, C.O_RDONLY, 0), 0, 18 + Buffer.byteLength(file), -1);
    assert.equal(late, -E.EPIPE, ' nobody serves a derived connection once its root is gone');
    native.close(a.fds[0]!);
    native.close(b.fds[0]!);
    broker.close();
  });

  it('keeps nothing: the broker holds the same number of fds after many CONNECTs are closed', async () => {
    const { broker, client } = setup();
    const warm = await exchange(client, encodeConnect());
    native.close(warm.fds[0]!);
    await sleep(20);
    const start = fdCount(process.pid);
    for (let i = 0; i < 200; i++) {
      const r = await exchange(client, encodeConnect());
      native.close(r.fds[0]!);
    }
    for (let i = 0; i < 200 && broker.connectionCount > 1; i++) await sleep(5);
    assert.equal(broker.connectionCount, 1);
    assert.equal(fdCount(process.pid), start);
    native.close(client);
    broker.close();
  });
});

describe('interposer with OPENHOOK_SOCKET (openhook serve)', () => {
  it('opens through a broker reached by path, and is denied outside the policy', async () => {
    const socket = join(tmp.path, 'serve-1.sock');
    const serve = await startServe(socket, ['--allow', `${tmp.path}/data/:r`]);
    try {
      const env = { ...BASE_ENV, LD_PRELOAD: PRELOAD_LIBRARY, OPENHOOK_SOCKET: socket };
      const ok = await runChild('cat', [file], env);
      assert.equal(ok.stdout, 'contents\n', ok.stderr);
      const denied = await runChild('cat', [join(tmp.path, 'elsewhere')], env);
      assert.equal(denied.code, 1);
      assert.match(denied.stderr, /Permission denied/);
    } finally {
      await serve.stop();
    }
  });

  it('fails opens with EIO while the broker is gone, and reconnects when it is back at the same path', async () => {
    const socket = join(tmp.path, 'serve-2.sock');
    const args = ['--allow', `${tmp.path}/data/:r`];
    let serve = await startServe(socket, args);
    const child = spawn(fixture('opener', ['-pthread']), ['loop', file], {
      env: { ...BASE_ENV, LD_PRELOAD: PRELOAD_LIBRARY, OPENHOOK_SOCKET: socket },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    const ask = async (): Promise<string> => {
      child.stdin!.write('\n');
      return (await lines.next()).value as string;
    };
    try {
      assert.equal(await ask(), 'ok');
      assert.equal(await ask(), 'ok');
      await serve.stop();
      assert.equal(await ask(), 'EIO');
      assert.equal(await ask(), 'EIO');
      serve = await startServe(socket, args);
      assert.equal(await ask(), 'ok');
    } finally {
      child.stdin!.end();
      await new Promise((resolve) => child.on('close', resolve));
      await serve.stop();
    }
  });
});
