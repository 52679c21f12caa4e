/**
 * Graceful stop and restart: SIGTERM with requests really in flight, the stop deadline, and library
 * clients that live through a broker's `kill -9` and restart.
 */
import assert from 'node:assert/strict';
import { closeSync, constants as fsConstants, existsSync, fstatSync, mkdirSync, openSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect } from '../src/client/client.js';
import { ClientClosedError, ConnectionLostError } from '../src/client/errors.js';
import { C, native, PollMode, recvArena, recvMeta } from '../src/native.js';
import { execFileSync, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { PRELOAD_LIBRARY } from '../src/launch/preload.js';
import { encodeConnect } from '../src/protocol/frames.js';
import { fixture, readAndClose, receiveOne, rfcOpenFrame, rfcReplyHex, tempDir } from './helpers.js';
import { killLeftovers, startDaemon, systemdStyleSocket } from './service-helpers.js';

const tmp = tempDir();
const vm = join(tmp.path, 'vm');
mkdirSync(vm);
for (let i = 0; i < 10; i++) writeFileSync(join(vm, `f${i}`), `file ${i}`);
const ino = statSync(join(vm, 'f0')).ino;
after(() => {
  killLeftovers();
  tmp.cleanup();
});

/**
 * A raw RFC client that sends requests and reads nothing, so that the broker's replies back up and
 * it stops reading: every request it has not read yet is in flight. Sends in rounds until the
 * broker has stopped deciding; returns the socket and how many were sent.
 */
async function backedUpClient(socket: string): Promise<{ fd: number; sent: number }> {
  const fd = native.connectUnix(Buffer.from(socket), C.SOCK_SEQPACKET);
  const frame = rfcOpenFrame(join(vm, 'f0'), C.O_RDONLY);
  let sent = 0;
  for (let round = 0; round < 10; round++) {
    while (sent < 5000 && native.send(fd, frame, 0, frame.length, -1) === frame.length) sent++;
    await sleep(30);
  }
  return { fd, sent };
}

/**
 * A broker whose policy allows FIFOs, and 50 opens of FIFOs without writers from 5 library clients:
 * every one blocks on the broker's thread pool until its other end opens. Waits until STATUS counts
 * all 50 as under way.
 */
async function slowOpensInFlight(name: string, stopTimeout: number) {
  const dir = join(tmp.path, name);
  mkdirSync(dir);
  const fifos = Array.from({ length: 50 }, (_, i) => join(dir, `p${i}`));
  for (const f of fifos) execFileSync('mkfifo', [f]);
  const policy = join(tmp.path, `${name}.toml`);
  writeFileSync(policy, `[[rule]]\nallow = "${dir}/"\naccess = "r"\nfifos = true\n`);
  const sock = join(tmp.path, `${name}.sock`);
  const d = await startDaemon(['--socket', sock, '--policy', policy, '--stop-timeout', String(stopTimeout)]);
  const clients = await Promise.all(Array.from({ length: 5 }, () => connect({ path: sock, reconnect: false })));
  const opens = fifos.map((f, i) => clients[i % 5]!.open(f, 'r'));
  opens.forEach((p) => p.catch(() => {})); // settled by the tests; never unhandled
  for (let i = 0; ; i++) {
    const pending = (await statusOf(sock)).requests.pending;
    if (pending === 50) break;
    if (i > 200) throw new Error(`only ${pending} slow opens under way`);
    await sleep(20);
  }
  return { d, sock, clients, opens, fifos };
}

/**
 * Opens the write end of each FIFO once its reader (a broker thread) is there. The pool runs some of
 * the opens at a time, so go round the FIFOs until each has its writer (ENXIO: no reader yet).
 */
async function openWriters(fifos: string[]): Promise<number[]> {
  const fds: number[] = [];
  let waiting = [...fifos];
  while (waiting.length > 0) {
    waiting = waiting.filter((f) => {
      try {
        fds.push(openSync(f, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK));
        return false;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENXIO') throw err;
        return true;
      }
    });
    if (waiting.length > 0) await sleep(5);
  }
  return fds;
}

/** Reads replies until the broker closes the socket; checks each is a success with one fd. */
function readAllReplies(fd: number): Promise<{ replies: number; bad: string[] }> {
  return new Promise((resolve) => {
    let replies = 0;
    const bad: string[] = [];
    const st = new Float64Array(8);
    const poller = new native.Poller(fd, PollMode.Receive, 64, (_events, count, status) => {
      for (let i = 0, m = 0; i < count; i++) {
        const offset = recvMeta[m]!,
          length = recvMeta[m + 1]!,
          nfds = recvMeta[m + 3]!;
        const bytes = recvArena.toString('hex', offset, offset + length);
        for (let k = 0; k < nfds; k++) {
          const got = recvMeta[m + 4 + k]!;
          native.fstat(got, st);
          if (st[7] !== ino) bad.push(`fd of inode ${st[7]}`);
          native.close(got);
        }
        if (bytes !== rfcReplyHex(1, 0) || nfds !== 1) bad.push(`${bytes} with ${nfds} fds`);
        replies++;
        m += 4 + nfds;
      }
      if (status !== 0) {
        poller.close();
        resolve({ replies, bad });
      }
    });
    poller.start(C.UV_READABLE);
  });
}

describe('graceful stop', () => {
  it('on SIGTERM stops accepting, answers every request in flight, then exits 0 and removes its socket', async () => {
    const sock = join(tmp.path, 'term.sock');
    const d = await startDaemon(['--socket', sock, `--allow=${vm}/:r`, '--stop-timeout', '20000']);
    const { fd, sent } = await backedUpClient(sock);
    let decided: number;
    {
      await using probe = await connect({ path: sock, reconnect: false });
      decided = (await probe.status()).requests.total;
    }
    assert.ok(sent - decided >= 50, `at least 50 requests in flight (sent ${sent}, decided ${decided})`);

    d.kill('SIGTERM');
    await sleep(200);
    assert.equal(existsSync(sock), false, 'stopped accepting: the socket file is gone');
    assert.equal(d.child.exitCode, null, 'still answering the backed-up client');
    await assert.rejects(connect({ path: sock, reconnect: false }), { code: 'ENOENT' });

    const { replies, bad } = await readAllReplies(fd);
    native.close(fd);
    assert.deepEqual(bad, []);
    assert.equal(replies, sent, 'every request sent before SIGTERM was answered, with its fd');
    assert.equal(await d.exited, 0);
    assert.match(d.stderr(), /SIGTERM, stopped\n/);
    assert.doesNotMatch(d.stderr(), /cut/);
  });

  it('on SIGTERM waits for 50 slow opens under way on the thread pool, answers each, then exits 0', async () => {
    const { d, sock, clients, opens, fifos } = await slowOpensInFlight('slow-term', 20_000);
    d.kill('SIGTERM');
    await sleep(200);
    assert.equal(existsSync(sock), false, 'stopped accepting');
    assert.equal(d.child.exitCode, null, 'still waiting for the opens under way');

    // The other ends arrive: every open completes, and its fd reaches its client.
    const writers = await openWriters(fifos);
    const fds = await Promise.all(opens);
    for (const fd of fds) {
      assert.ok(fstatSync(fd).isFIFO());
      closeSync(fd);
    }
    for (const w of writers) closeSync(w);
    assert.equal(await d.exited, 0);
    assert.match(d.stderr(), /SIGTERM, stopped\n/);
    for (const c of clients) c.close();
  });

  it('refuses the slow opens still under way at the deadline: the clients see the broker go, and exit is 0', async () => {
    const { d, clients, opens } = await slowOpensInFlight('slow-deadline', 300);
    const settled = opens.map((p) =>
      p.then(
        () => 'fd',
        (err: Error) => err.constructor.name,
      ),
    );
    d.kill('SIGTERM');
    assert.equal(await d.exited, 0);
    assert.match(d.stderr(), /SIGTERM, stopped; 5 busy connection\(s\) cut at the 300 ms deadline/);
    assert.deepEqual(new Set(await Promise.all(settled)), new Set(['ClientClosedError']));
    for (const c of clients) c.close();
  });

  it('keeps a connection open while one made from it by CONNECT still has an open under way', async () => {
    const dir = join(tmp.path, 'derived');
    mkdirSync(dir);
    const fifo = join(dir, 'pipe');
    execFileSync('mkfifo', [fifo]);
    const policy = join(tmp.path, 'derived.toml');
    writeFileSync(policy, `[[rule]]\nallow = "${dir}/"\naccess = "r"\nfifos = true\n`);
    const sock = join(tmp.path, 'derived.sock');
    const d = await startDaemon(['--socket', sock, '--policy', policy]);
    // The root connection asks for a private one (as the interposer does on its hook fd) and goes idle.
    const root = native.connectUnix(Buffer.from(sock), C.SOCK_SEQPACKET);
    const connectFrame = encodeConnect();
    native.send(root, connectFrame, 0, connectFrame.length, -1);
    const granted = await receiveOne(root);
    assert.equal(granted.fds.length, 1);
    await using derived = await connect({ fd: granted.fds[0]! });
    const open = derived.open(fifo, 'r');
    for (let i = 0; (await statusOf(sock)).requests.pending !== 1; i++) {
      if (i > 200) throw new Error('the FIFO open never started');
      await sleep(20);
    }
    d.kill('SIGTERM');
    await sleep(300);
    assert.equal(d.child.exitCode, null, 'the root stays while its derived connection is busy');
    const [writer] = await openWriters([fifo]);
    const fd = await open;
    assert.ok(fstatSync(fd).isFIFO());
    closeSync(fd);
    closeSync(writer!);
    assert.equal(await d.exited, 0);
    assert.doesNotMatch(d.stderr(), /cut/);
    native.close(root);
  });

  it('cuts a connection that is still busy at the deadline, and exits 0', async () => {
    const sock = join(tmp.path, 'deadline.sock');
    const d = await startDaemon(['--socket', sock, `--allow=${vm}/:r`, '--stop-timeout', '300']);
    const { fd, sent } = await backedUpClient(sock);
    const t0 = Date.now();
    d.kill('SIGTERM');
    assert.equal(await d.exited, 0);
    const took = Date.now() - t0;
    assert.ok(took >= 250 && took < 10_000, `stopped at the deadline (${took} ms)`);
    assert.match(d.stderr(), /SIGTERM, stopped; 1 busy connection\(s\) cut at the 300 ms deadline/);
    const { replies, bad } = await readAllReplies(fd);
    native.close(fd);
    assert.deepEqual(bad, []);
    assert.ok(replies < sent, 'the client sees the end of the connection instead of its last replies');
  });

  it('closes idle connections at once, and library clients are told', async () => {
    const sock = join(tmp.path, 'idle.sock');
    const d = await startDaemon(['--socket', sock, `--allow=${vm}/:r`]);
    const client = await connect({ path: sock, reconnect: false });
    const closed = new Promise((resolve) => client.once('close', resolve));
    const t0 = Date.now();
    assert.equal(await d.stop(), 0);
    assert.ok(Date.now() - t0 < 4000);
    await closed;
    await assert.rejects(client.open(join(vm, 'f0')), ClientClosedError);
  });
});

describe('restart with a connected library client', () => {
  it('keeps working through kill -9 and a new broker: safe requests in flight are sent again, O_CREAT|O_EXCL ones fail', async () => {
    const sock = join(tmp.path, 'kill9.sock');
    let d = await startDaemon(['--socket', sock, `--allow=${vm}/:rwc`]);
    await using client = await connect({ path: sock, reconnect: { initialDelay: 5, maxDelay: 100, timeout: 20_000 } });
    const events: string[] = [];
    client.on('disconnect', () => events.push('disconnect'));
    client.on('reconnect', () => events.push('reconnect'));
    assert.equal(readAndClose(await client.open(join(vm, 'f1'))), 'file 1');

    // Requests the broker has received but not answered when it dies.
    d.kill('SIGSTOP');
    const safe = Array.from({ length: 10 }, (_, i) => client.open(join(vm, `f${i}`)));
    const creating = client.open(join(vm, 'created-once'), 'wx').then(
      () => null,
      (err: Error) => err,
    );
    await sleep(50);
    d.kill('SIGKILL');
    assert.equal(await d.exited, null);
    assert.ok(existsSync(sock), 'kill -9 leaves a stale socket file behind');

    const lost = await creating;
    assert.ok(lost instanceof ConnectionLostError, String(lost));
    assert.match(lost.message, /may or may not have been done/);
    // While no broker listens, the safe requests wait (the client retries with backoff).
    await sleep(300);
    assert.ok(client.pending >= 10);

    d = await startDaemon(['--socket', sock, `--allow=${vm}/:rwc`]);
    const contents = await Promise.all(safe.map(async (p) => readAndClose(await p)));
    assert.deepEqual(
      contents,
      Array.from({ length: 10 }, (_, i) => `file ${i}`),
    );
    assert.deepEqual(events, ['disconnect', 'reconnect']);
    assert.notEqual(client.fd, -1);

    // And it goes on working, tagged opens included.
    assert.equal(client.tagged, true);
    const fd = await client.open(join(vm, 'after-restart'), 'wx', 0o600);
    assert.equal(fstatSync(fd).mode & 0o777, 0o600);
    closeSync(fd);
    assert.equal(await d.stop(), 0);
  });

  it('reconnects after a graceful restart when it next has a request', async () => {
    const sock = join(tmp.path, 'graceful.sock');
    let d = await startDaemon(['--socket', sock, `--allow=${vm}/:r`]);
    await using client = await connect(sock);
    assert.equal(readAndClose(await client.open(join(vm, 'f2'))), 'file 2');
    assert.equal(await d.stop(), 0);
    d = await startDaemon(['--socket', sock, `--allow=${vm}/:r`]);
    assert.equal(readAndClose(await client.open(join(vm, 'f3'))), 'file 3');
    assert.equal(await d.stop(), 0);
  });

  it('fails a request within the reconnect timeout when no broker comes back, and never hangs', async () => {
    const sock = join(tmp.path, 'gone.sock');
    const d = await startDaemon(['--socket', sock, `--allow=${vm}/:r`]);
    await using client = await connect({ path: sock, reconnect: { timeout: 300 } });
    d.kill('SIGSTOP');
    const pending = client.open(join(vm, 'f4'));
    await sleep(50);
    d.kill('SIGKILL');
    const t0 = Date.now();
    await assert.rejects(pending, (err: Error) => {
      assert.ok(err instanceof ConnectionLostError);
      assert.match(err.message, /no broker at .*gone\.sock for 300 ms \(ECONNREFUSED/);
      return true;
    });
    assert.ok(Date.now() - t0 < 5000);
    // A client made from an fd cannot reconnect: a request in flight fails at once.
    const d2 = await startDaemon(['--socket', sock, `--allow=${vm}/:r`]);
    const raw = native.connectUnix(Buffer.from(sock), C.SOCK_SEQPACKET);
    await using byFd = await connect({ fd: raw });
    d2.kill('SIGSTOP');
    const inFlight = byFd.open(join(vm, 'f5'));
    await sleep(50);
    d2.kill('SIGKILL');
    await assert.rejects(inFlight, /broker closed the connection/);
  });
});

describe('the interposer across restarts under socket activation', () => {
  it('never sees an error: opens made while the broker restarts wait in the backlog of systemd’s socket', async () => {
    const path = join(tmp.path, 'interposed.sock');
    const fd = await systemdStyleSocket(path, 'seqpacket');
    const args = [`--allow=${vm}/:r`];
    let d = await startDaemon(args, { fds: [fd] });
    const child = spawn(fixture('opener', ['-pthread']), ['loop', join(vm, 'f0')], {
      env: { PATH: '/usr/bin:/bin', LD_PRELOAD: PRELOAD_LIBRARY, OPENHOOK_SOCKET: path },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    const ask = (): Promise<string> => {
      child.stdin!.write('\n');
      return lines.next().then((r) => r.value as string);
    };
    try {
      assert.equal(await ask(), 'ok');
      assert.equal((await statusOf(path)).requests.total, 1, 'the open went through the broker');

      // A graceful restart: the open is asked while no broker runs, and answered by the next one.
      assert.equal(await d.stop(), 0);
      const during = ask();
      await sleep(200);
      d = await startDaemon(args, { fds: [fd] });
      assert.equal(await during, 'ok');

      // kill -9, then the same.
      d.kill('SIGKILL');
      await d.exited;
      const afterKill = ask();
      await sleep(200);
      d = await startDaemon(args, { fds: [fd] });
      assert.equal(await afterKill, 'ok');
      assert.equal(await ask(), 'ok');
    } finally {
      child.stdin!.end();
      await new Promise((resolve) => child.on('close', resolve));
      await d.stop();
      native.close(fd);
    }
  });
});

async function statusOf(path: string): Promise<import('../src/broker/metrics.js').StatusReport> {
  await using c = await connect({ path, reconnect: false });
  return await c.status();
}
