/**
 * The broker as users run it: a real `openhook serve` process, driven by a C client that sends the
 * RFC's frames byte for byte, and by the client library.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect } from '../src/client/client.js';
import { C, native } from '../src/native.js';
import {
  CLI,
  fixture,
  settledFdCount,
  probe,
  receiveOne,
  rfcOpenFrame,
  rfcReplyHex,
  sleep,
  startServe,
  tempDir,
  type ServeProcess,
} from './helpers.js';
import { E } from '../src/errno.js';

const { EACCES, ENOENT, EEXIST, EISDIR, EPROTO, EINVAL } = E;

const tmp = tempDir();
const vm = join(tmp.path, 'vm');
const secret = join(tmp.path, 'secret');
mkdirSync(join(vm, 'sub'), { recursive: true });
mkdirSync(secret);
writeFileSync(join(vm, 'disk.img'), 'disk contents');
writeFileSync(join(secret, 'key'), 'secret');
const diskIno = statSync(join(vm, 'disk.img')).ino;

for (const kind of ['seqpacket', 'stream'] as const) {
  describe(`serve over SOCK_${kind.toUpperCase()}`, () => {
    let serve: ServeProcess;
    const socket = join(tmp.path, `${kind}.sock`);
    before(async () => {
      serve = await startServe(socket, [`--allow=${vm}/:rwc`, ...(kind === 'stream' ? ['--stream'] : [])]);
    });
    after(async () => {
      await serve.stop();
    });

    it('answers an allowed RFC open with result 0 and exactly one fd, of the right file', () => {
      const [line] = probe(socket, kind, [rfcOpenFrame(join(vm, 'disk.img'), C.O_RDONLY)]);
      assert.match(line!, new RegExp(`^reply=${rfcReplyHex(1, 0)} fds=1 dev=\\d+ ino=${diskIno} mode=100\\d+ acc=r$`));
    });

    it('answers a denied open with -EACCES and no fd', () => {
      const [line] = probe(socket, kind, [rfcOpenFrame(join(secret, 'key'), C.O_RDONLY)]);
      assert.equal(line, `reply=${rfcReplyHex(1, -EACCES)} fds=0`);
    });

    it('passes the open’s own errors through as -errno', () => {
      const lines = probe(socket, kind, [
        rfcOpenFrame(join(vm, 'missing'), C.O_RDONLY),
        rfcOpenFrame(join(vm, 'disk.img'), C.O_RDWR | C.O_CREAT | C.O_EXCL, 0o600),
        rfcOpenFrame(join(vm, 'sub'), C.O_RDWR),
        rfcOpenFrame('relative/name', C.O_RDONLY),
      ]);
      assert.deepEqual(lines, [
        `reply=${rfcReplyHex(1, -ENOENT)} fds=0`,
        `reply=${rfcReplyHex(1, -EEXIST)} fds=0`,
        `reply=${rfcReplyHex(1, -EISDIR)} fds=0`,
        `reply=${rfcReplyHex(1, -EINVAL)} fds=0`,
      ]);
    });

    it('creates a file at run time with the requested access', () => {
      const name = join(vm, `created-${kind}.qcow2`);
      const [line] = probe(socket, kind, [rfcOpenFrame(name, C.O_RDWR | C.O_CREAT | C.O_CLOEXEC, 0o644)]);
      assert.match(line!, new RegExp(`^reply=${rfcReplyHex(1, 0)} fds=1 .* acc=rw$`));
      assert.equal(statSync(name).mode & 0o777, 0o644);
    });

    it('answers a malformed frame and an unknown command with -EPROTO and keeps serving', () => {
      const lying = rfcOpenFrame(join(vm, 'disk.img'), C.O_RDONLY);
      lying.writeUInt16LE(3, 16);
      const unknown = Buffer.alloc(12);
      unknown.writeUInt32LE(12, 0);
      unknown.writeUInt32LE(0x4242, 4);
      const lines = probe(socket, kind, [lying, unknown, rfcOpenFrame(join(vm, 'disk.img'), C.O_RDONLY)]);
      assert.equal(lines[0], `reply=${rfcReplyHex(1, -EPROTO)} fds=0`);
      assert.equal(lines[1], `reply=${rfcReplyHex(0x4242, -EPROTO)} fds=0`);
      assert.match(lines[2]!, new RegExp(`^reply=${rfcReplyHex(1, 0)} fds=1`));
    });

    it('serves many concurrent clients', async () => {
      const frames = Array.from({ length: 40 }, (_, i) =>
        rfcOpenFrame(join(vm, i % 2 ? 'disk.img' : 'missing'), C.O_RDONLY).toString('hex'),
      );
      const runs = Array.from(
        { length: 24 },
        () =>
          new Promise<string>((resolve, reject) => {
            const child = spawn(fixture('rfc-probe'), [socket, kind, ...frames]);
            let out = '';
            child.stdout.on('data', (d) => (out += d));
            child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`probe exited ${code}`))));
          }),
      );
      for (const out of await Promise.all(runs)) {
        const lines = out.trim().split('\n');
        assert.equal(lines.length, 40);
        lines.forEach((l, i) => assert.ok(l.startsWith(`reply=${rfcReplyHex(1, i % 2 ? 0 : -ENOENT)} fds=${i % 2}`), l));
      }
    });

    it('keeps its fd count flat over 10,000 requests', async () => {
      const pid = serve.child.pid!;
      await using client = await connect({ path: socket, stream: kind === 'stream' });
      const warm = await client.open(join(vm, 'disk.img'));
      closeSync(warm);
      const before = await settledFdCount(pid);
      for (let batch = 0; batch < 100; batch++) {
        const fds = await Promise.all(
          Array.from({ length: 100 }, (_, i) =>
            client.open(join(vm, i % 3 ? 'disk.img' : 'missing')).catch((e: NodeJS.ErrnoException) => e.code),
          ),
        );
        for (const fd of fds) if (typeof fd === 'number') closeSync(fd);
        assert.equal(fds.filter((f) => f === 'ENOENT').length, 34);
      }
      assert.equal(await settledFdCount(pid), before);
    });
  });
}

describe('serve: the socket file and shutdown', () => {
  after(tmp.cleanup);

  it('creates the socket with mode 0600 unless told otherwise', async () => {
    const a = await startServe(join(tmp.path, 'mode-a.sock'), [`--allow=${vm}/:r`]);
    assert.equal(statSync(join(tmp.path, 'mode-a.sock')).mode & 0o7777, 0o600);
    await a.stop();
    const b = await startServe(join(tmp.path, 'mode-b.sock'), [`--allow=${vm}/:r`, '--mode', '0660']);
    assert.equal(statSync(join(tmp.path, 'mode-b.sock')).mode & 0o7777, 0o660);
    await b.stop();
  });

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`removes the socket and exits 0 on ${signal}`, async () => {
      const path = join(tmp.path, `${signal}.sock`);
      const s = await startServe(path, [`--allow=${vm}/:r`]);
      const client = await connect(path);
      assert.equal(await s.stop(signal), 0);
      assert.equal(existsSync(path), false);
      client.close();
    });
  }

  it('is listed under its own path in /proc/net/unix, held by the broker, so that an operator can find who serves it', async () => {
    const path = join(tmp.path, 'named.sock');
    const s = await startServe(path, [`--allow=${vm}/:r`]);
    try {
      // Num RefCount Protocol Flags Type St Inode Path: a listening socket has St 01.
      const listed = readFileSync('/proc/net/unix', 'utf8')
        .split('\n')
        .map((l) => l.trim().split(/\s+/))
        .filter((f) => f.length >= 8 && f.slice(7).join(' ') === path);
      assert.equal(listed.length, 1, `one socket named ${path}`);
      assert.equal(listed[0]![5], '01', 'listening');
      const held = readdirSync(`/proc/${s.child.pid}/fd`).map((fd) => {
        try {
          return readlinkSync(`/proc/${s.child.pid}/fd/${fd}`);
        } catch {
          return '';
        }
      });
      assert.ok(held.includes(`socket:[${listed[0]![6]}]`), 'the socket is the broker’s (what ss -xlp shows)');
    } finally {
      await s.stop();
    }
  });

  it('refuses to replace a file that is not a socket', async () => {
    const path = join(tmp.path, 'not-a-socket');
    writeFileSync(path, 'precious');
    await assert.rejects(startServe(path, [`--allow=${vm}/:r`]), /not a socket/);
    assert.equal(readFileSync(path, 'utf8'), 'precious');
  });

  it('warns once per read-only root that rules would write or create beneath', async () => {
    const ro = join(tmp.path, 'ro');
    mkdirSync(ro);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'openhook-test-ro', ro]);
    try {
      const serve = await startServe(join(tmp.path, 'ro.sock'), [
        '--allow',
        `${ro}/:rwc`,
        '--allow',
        `${ro}/*.img:rw`,
        '--allow',
        `${vm}/:rwc`,
      ]);
      const stopped = serve.stop();
      await stopped;
      const warnings = serve
        .stderr()
        .split('\n')
        .filter((l) => l.includes('read-only for the broker'));
      assert.equal(warnings.length, 1, serve.stderr());
      assert.match(warnings[0]!, new RegExp(`${ro}/? is read-only for the broker`));
    } finally {
      execFileSync('umount', [ro]);
    }
  });

  it('exits with status 2 and a clear message for a bad policy', () => {
    const r = spawnSync(process.execPath, [CLI, 'serve', '--socket', join(tmp.path, 'bad.sock'), '--allow', `${vm}/:rq`], {
      encoding: 'utf8',
    });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /unknown access letter 'q'/);
    const none = spawnSync(process.execPath, [CLI, 'serve', '--socket', join(tmp.path, 'bad.sock')], { encoding: 'utf8' });
    assert.equal(none.status, 2);
    assert.match(none.stderr, /no rules/);
  });

  it('reassembles a frame that arrives in pieces on SOCK_STREAM', async () => {
    const path = join(tmp.path, 'pieces.sock');
    const s = await startServe(path, [`--allow=${vm}/:r`, '--stream']);
    const fd = native.connectUnix(Buffer.from(path), C.SOCK_STREAM);
    const frame = rfcOpenFrame(join(vm, 'disk.img'), C.O_RDONLY);
    for (const [from, to] of [
      [0, 3],
      [3, 17],
      [17, frame.length],
    ] as const) {
      assert.equal(native.send(fd, frame, from, to - from, -1), to - from);
      await sleep(30);
    }
    const reply = await receiveOne(fd);
    assert.equal(reply.bytes, rfcReplyHex(1, 0));
    assert.equal(reply.fds.length, 1);
    const st = new Float64Array(8);
    native.fstat(reply.fds[0]!, st);
    assert.equal(st[7], diskIno);
    reply.fds.forEach((f) => native.close(f));
    native.close(fd);
    await s.stop();
  });
});
