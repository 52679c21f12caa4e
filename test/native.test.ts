import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { lstatSync, readFileSync, statSync, symlinkSync, writeFileSync, openSync, closeSync, existsSync } from 'node:fs';
import { join, relative } from 'node:path';
import { after, describe, it } from 'node:test';
import { C, native, PollMode, recvArena, recvMeta, check, systemError } from '../src/native.js';
import { E } from '../src/errno.js';
import { MAX_FRAME } from '../src/protocol/constants.js';
import { encodeTaggedOpen } from '../src/protocol/frames.js';
import { fdCount, ROOT, sleep, tempDir } from './helpers.js';
import { systemdStyleSocket } from './service-helpers.js';

const tmp = tempDir();
after(tmp.cleanup);

/** Waits for one receiving-poller callback on fd. */
function receiveOnce(fd: number, mode: PollMode): Promise<{ count: number; status: number; records: number[][]; data: string[] }> {
  return new Promise((resolve) => {
    const p = new native.Poller(fd, mode, 64, (_events, count, status) => {
      const records: number[][] = [];
      const data: string[] = [];
      for (let i = 0, m = 0; i < count; i++) {
        const nfds = mode === PollMode.Receive ? recvMeta[m + 3]! : 0;
        records.push(Array.from(recvMeta.subarray(m, m + 4 + nfds)));
        data.push(recvArena.toString('utf8', recvMeta[m]!, recvMeta[m]! + recvMeta[m + 1]!));
        m += 4 + nfds;
      }
      p.close();
      resolve({ count, status, records, data });
    });
    p.start(C.UV_READABLE);
  });
}

describe('native: fd passing', () => {
  it('sends an fd with SCM_RIGHTS and receives it, in a batch, with CLOEXEC', async () => {
    const [a, b] = native.socketpair(C.SOCK_SEQPACKET, true);
    const file = join(tmp.path, 'passed');
    writeFileSync(file, 'payload');
    const fd = openSync(file, 'r');
    assert.equal(native.send(a, Buffer.from('one'), 0, 3, fd), 3);
    assert.equal(native.send(a, Buffer.from('two'), 0, 3, -1), 3);
    closeSync(fd);
    const got = await receiveOnce(b, PollMode.Receive);
    assert.equal(got.count, 2, 'both messages in one wake-up');
    assert.deepEqual(got.data, ['one', 'two']);
    const [, , flags, nfds, received] = got.records[0]!;
    assert.equal(flags, 0);
    assert.equal(nfds, 1);
    const st = new Float64Array(8);
    assert.equal(native.fstat(received!, st), 0);
    assert.equal(st[7], statSync(file).ino);
    assert.equal(readFileSync(`/proc/self/fd/${received}`, 'utf8'), 'payload');
    assert.match(readFileSync(`/proc/self/fdinfo/${received}`, 'utf8'), /flags:\s+0?2?[0-7]{5,}/);
    const fdinfo = readFileSync(`/proc/self/fdinfo/${received}`, 'utf8');
    const octal = parseInt(/flags:\s+([0-7]+)/.exec(fdinfo)![1]!, 8);
    assert.ok(octal & C.O_CLOEXEC, 'received with MSG_CMSG_CLOEXEC');
    assert.equal(got.records[1]![3], 0);
    native.close(received!);
    native.close(a);
    native.close(b);
  });

  it("never takes a client's fds in discard mode: the kernel drops them and flags MSG_CTRUNC", async () => {
    const [a, b] = native.socketpair(C.SOCK_SEQPACKET, true);
    const before = fdCount(process.pid);
    const fds = Array.from({ length: 10 }, () => openSync('/dev/null', 'r'));
    assert.equal(native.sendFds(a, Buffer.from('x'), fds), 1);
    for (const fd of fds) closeSync(fd);
    const got = await receiveOnce(b, PollMode.ReceiveDiscardFds);
    assert.equal(got.count, 1);
    assert.equal(got.records[0]![3], 0, 'no fd was installed');
    assert.ok(got.records[0]![2]! & C.MSG_CTRUNC, 'the message says its control data was cut');
    // <=, not ===: an fd an earlier test left to libuv may close meanwhile; none may be added.
    assert.ok(fdCount(process.pid) <= before, 'and none is kept');
    native.close(a);
    native.close(b);
  });

  it('reports EOF when the peer closes', async () => {
    const [a, b] = native.socketpair(C.SOCK_STREAM, true);
    native.close(a);
    const got = await receiveOnce(b, PollMode.Receive);
    assert.equal(got.status, C.STATUS_EOF);
    native.close(b);
  });

  it('receives the largest legal frame whole (an OPEN_TAGGED with a 65535-byte name)', async () => {
    assert.equal(C.FRAME_MAX, MAX_FRAME, 'the addon and the protocol agree on the largest frame');
    const [a, b] = native.socketpair(C.SOCK_SEQPACKET, true);
    const frame = encodeTaggedOpen(7, Buffer.alloc(65535, 0x61), 0, 0);
    assert.ok(native.send(a, frame, 0, frame.length, -1) > 0);
    const got = await receiveOnce(b, PollMode.Receive);
    assert.equal(got.records[0]![1], MAX_FRAME);
    assert.equal(got.records[0]![2]! & C.MSG_TRUNC, 0, 'not truncated');
    native.close(a);
    native.close(b);
  });

  it('reports MSG_TRUNC for a message longer than a frame can be', async () => {
    const [a, b] = native.socketpair(C.SOCK_SEQPACKET, true);
    const big = Buffer.alloc(C.FRAME_MAX + 1000);
    assert.ok(native.send(a, big, 0, big.length, -1) > 0);
    // The arena has room for several frames, so the first message fits whole; its length is exact.
    const got = await receiveOnce(b, PollMode.Receive);
    assert.equal(got.records[0]![1], big.length);
    native.close(a);
    native.close(b);
  });

  it('reads peer credentials', () => {
    const [a, b] = native.socketpair(C.SOCK_SEQPACKET, true);
    assert.deepEqual(native.peerCred(a), { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
    const groups = native.peerGroups(a);
    assert.ok(groups === null || Array.isArray(groups));
    const pidfd = native.peerPidfd(a);
    if (pidfd >= 0) native.close(pidfd);
    else assert.equal(pidfd, -E.ENOPROTOOPT, 'only ENOPROTOOPT is expected');
    native.close(a);
    native.close(b);
  });
});

describe('native: listening sockets', () => {
  it('binds with the requested mode, and 0600 by default in serve', () => {
    const path = join(tmp.path, 'm.sock');
    const l = native.listenUnix(Buffer.from(path), C.SOCK_SEQPACKET, 0o640, 8);
    assert.equal(lstatSync(path).mode & 0o7777, 0o640);
    assert.ok(lstatSync(path).isSocket());
    assert.equal(native.unlinkSocket(Buffer.from(path), l.identity), true);
    assert.equal(existsSync(path), false);
    native.close(l.fd);
  });

  it('never unlinks a non-socket at the path', () => {
    const path = join(tmp.path, 'regular');
    writeFileSync(path, 'keep me');
    assert.throws(() => native.listenUnix(Buffer.from(path), C.SOCK_SEQPACKET, 0o600, 8), { code: 'EEXIST' });
    assert.equal(readFileSync(path, 'utf8'), 'keep me');
  });

  it('never follows a symlink at the path', () => {
    const target = join(tmp.path, 'target');
    writeFileSync(target, 'untouched');
    const link = join(tmp.path, 'link.sock');
    symlinkSync(target, link);
    assert.throws(() => native.listenUnix(Buffer.from(link), C.SOCK_SEQPACKET, 0o600, 8), { code: 'EEXIST' });
    assert.ok(lstatSync(link).isSymbolicLink());
    assert.equal(readFileSync(target, 'utf8'), 'untouched');
  });

  it('replaces a stale socket, and unlinks only the socket it bound', async () => {
    const path = join(tmp.path, 'stale.sock');
    const first = native.listenUnix(Buffer.from(path), C.SOCK_SEQPACKET, 0o600, 8);
    native.close(first.fd);
    await sleep(20); // the inode number may be reused; the change time tells the sockets apart
    const second = native.listenUnix(Buffer.from(path), C.SOCK_SEQPACKET, 0o600, 8);
    assert.equal(native.unlinkSocket(Buffer.from(path), first.identity), false, 'not ours any more');
    assert.ok(existsSync(path));
    assert.equal(native.unlinkSocket(Buffer.from(path), second.identity), true);
    native.close(second.fd);
  });

  it('never steals the socket of a live listener, of either type', () => {
    const path = join(tmp.path, 'live.sock');
    const live = native.listenUnix(Buffer.from(path), C.SOCK_SEQPACKET, 0o600, 8);
    for (const type of [C.SOCK_SEQPACKET, C.SOCK_STREAM]) {
      assert.throws(() => native.listenUnix(Buffer.from(path), type, 0o600, 8), { code: 'EADDRINUSE' });
    }
    assert.equal(native.unlinkSocket(Buffer.from(path), live.identity), true, 'still the first listener’s socket');
    native.close(live.fd);
  });

  it('binds at the path itself, so that the kernel records the real name (ss -xlp, /proc/net/unix)', () => {
    const path = join(tmp.path, 'named.sock');
    for (const given of [path, relative(process.cwd(), path)]) {
      const l = native.listenUnix(Buffer.from(given), C.SOCK_SEQPACKET, 0o600, 8);
      assert.equal(native.socketInfo(l.fd).path, path, `bound as ${given}`);
      assert.ok(unixSocketNames().includes(path), '/proc/net/unix lists the path');
      assert.equal(native.unlinkSocket(Buffer.from(path), l.identity), true);
      native.close(l.fd);
    }
  });

  it('never takes a socket that is bound and not yet listening: a broker starting at this moment', async () => {
    for (const kind of ['seqpacket', 'stream'] as const) {
      const path = join(tmp.path, `starting-${kind}.sock`);
      const held = await systemdStyleSocket(path, kind, 'bound');
      const ino = lstatSync(path).ino;
      for (const type of [C.SOCK_SEQPACKET, C.SOCK_STREAM]) {
        assert.throws(() => native.listenUnix(Buffer.from(path), type, 0o600, 8), { code: 'EADDRINUSE' });
      }
      assert.equal(lstatSync(path).ino, ino, 'the starting socket keeps its file');
      native.close(held); // now nothing holds it: a stale socket, which may be replaced
      const l = native.listenUnix(Buffer.from(path), C.SOCK_SEQPACKET, 0o600, 8);
      assert.equal(native.unlinkSocket(Buffer.from(path), l.identity), true);
      native.close(l.fd);
    }
  });

  it('lets exactly one of several brokers starting at once replace a stale socket', async () => {
    const path = join(tmp.path, 'race.sock');
    // Each child waits for the same instant, then listens; the winner holds its socket until killed.
    const script = `
      const { native, C } = await import(process.env.NATIVE);
      while (Date.now() < Number(process.env.AT));
      try {
        native.listenUnix(Buffer.from(process.env.SOCK), C.SOCK_SEQPACKET, 0o600, 8);
        process.stdout.write('listening');
        setInterval(() => {}, 1000);
      } catch (e) { process.stdout.write(e.code); }`;
    for (let round = 0; round < 3; round++) {
      const stale = native.listenUnix(Buffer.from(path), C.SOCK_SEQPACKET, 0o600, 8);
      native.close(stale.fd);
      const env = { ...process.env, NATIVE: join(ROOT, 'dist', 'native.js'), SOCK: path, AT: String(Date.now() + 700) };
      const children = Array.from({ length: 6 }, () =>
        spawn(process.execPath, ['--input-type=module', '-e', script], { env, stdio: ['ignore', 'pipe', 'inherit'] }),
      );
      try {
        const said = await Promise.all(
          children.map(
            (child) =>
              new Promise<string>((resolve) => {
                let out = '';
                child.stdout!.on('data', (d: Buffer) => {
                  out += d.toString();
                  if (out === 'listening') resolve(out);
                });
                child.on('exit', () => resolve(out));
              }),
          ),
        );
        assert.deepEqual(
          said.filter((s) => s !== 'listening'),
          Array(5).fill('EADDRINUSE'),
          `round ${round}: ${said.join(' ')}`,
        );
        const winner = children[said.indexOf('listening')]!;
        const c = native.connectUnix(Buffer.from(path), C.SOCK_SEQPACKET);
        assert.equal(native.peerCred(c).pid, winner.pid, 'the socket at the path is the winner’s');
        native.close(c);
      } finally {
        for (const child of children) child.kill('SIGKILL');
        await Promise.all(
          children.map((child) => (child.exitCode !== null || child.signalCode !== null ? null : new Promise((r) => child.on('exit', r)))),
        );
      }
    }
  });

  it('accepts and connects over SOCK_SEQPACKET and SOCK_STREAM', () => {
    for (const type of [C.SOCK_SEQPACKET, C.SOCK_STREAM]) {
      const path = join(tmp.path, `ac${type}.sock`);
      const l = native.listenUnix(Buffer.from(path), type, 0o600, 8);
      assert.equal(native.accept(l.fd), -E.EAGAIN, 'EAGAIN when nothing is pending');
      const c = native.connectUnix(Buffer.from(path), type);
      const s = check(native.accept(l.fd), 'accept');
      assert.equal(native.socketType(s), type);
      assert.equal(native.peerCred(s).pid, process.pid);
      for (const fd of [c, s, l.fd]) native.close(fd);
      native.unlinkSocket(Buffer.from(path), l.identity);
    }
  });
});

describe('native: errors and files', () => {
  it('throws Node-style errors from set-up calls', () => {
    assert.throws(
      () => native.connectUnix(Buffer.from(join(tmp.path, 'nope.sock')), C.SOCK_SEQPACKET),
      (err: NodeJS.ErrnoException) => {
        assert.equal(err.code, 'ENOENT');
        assert.equal(err.errno, -E.ENOENT);
        assert.equal(err.syscall, 'connect');
        assert.match(err.message, /^ENOENT: /);
        return true;
      },
    );
  });

  it('builds every errno error in one place, systemError(), whichever side throws it', () => {
    // The addon reports errno and syscall only; its errors are the ones check() builds for a -errno.
    const fromC = (() => {
      try {
        native.connectUnix(Buffer.from(join(tmp.path, 'nope.sock')), C.SOCK_SEQPACKET);
      } catch (e) {
        return e as Error;
      }
    })()!;
    const fromTs = systemError(-E.ENOENT, 'connect');
    assert.equal(fromC.message, fromTs.message);
    assert.equal(fromC.message, 'ENOENT: no such file or directory, connect', "libuv's wording, as Node's own errors");
    assert.equal(Object.getPrototypeOf(fromC), Object.getPrototypeOf(fromTs));
    assert.deepEqual({ ...fromC }, { ...fromTs });
    // The listener's refusals keep the reason in the syscall, and use names the C side never had a table for.
    writeFileSync(join(tmp.path, 'plain'), '');
    assert.throws(() => native.listenUnix(Buffer.from(join(tmp.path, 'plain')), C.SOCK_SEQPACKET, 0o600, 8), {
      code: 'EEXIST',
      errno: -E.EEXIST,
      message: 'EEXIST: file already exists, bind (path exists and is not a socket)',
    });
    assert.equal(systemError(-E.EHOSTUNREACH, 'x').code, 'EHOSTUNREACH');
  });

  it('returns -errno from request-path calls, and openat2 stays beneath its root', () => {
    const root = native.open(tmp.path, C.O_PATH | C.O_DIRECTORY, 0);
    assert.ok(root >= 0);
    assert.equal(native.openat2(root, '../../etc/passwd', C.O_RDONLY, 0, C.RESOLVE_BENEATH), -18, 'EXDEV');
    assert.equal(native.openat2(root, 'missing', C.O_RDONLY, 0, C.RESOLVE_BENEATH), -E.ENOENT);
    assert.equal(native.openat2(root, 'a\u0100', C.O_RDONLY, 0, 0), -E.EINVAL, 'a char above 0xff is not a byte');
    native.close(root);
  });

  it('passes exceptions thrown in a poller callback to uncaughtException', () => {
    const script = `
      import { native, C, PollMode } from ${JSON.stringify(join(ROOT, 'dist', 'native.js'))};
      process.on('uncaughtException', (err) => { console.log('caught:' + err.message); process.exit(0); });
      const [a, b] = native.socketpair(C.SOCK_SEQPACKET, true);
      const p = new native.Poller(b, PollMode.Receive, 8, () => { throw new Error('from the callback'); });
      p.start(C.UV_READABLE);
      native.send(a, Buffer.from('x'), 0, 1, -1);
      setTimeout(() => { console.log('lost'); process.exit(1); }, 2000);
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    assert.equal(r.stdout.trim(), 'caught:from the callback', r.stderr);
  });

  it('lets the process exit while an unref’d watcher waits', () => {
    const script = `
      import { native, C, PollMode } from ${JSON.stringify(join(ROOT, 'dist', 'native.js'))};
      const [a, b] = native.socketpair(C.SOCK_SEQPACKET, true);
      const p = new native.Poller(b, PollMode.Receive, 8, () => {});
      p.start(C.UV_READABLE);
      p.ref(false);
      process.on('exit', () => console.log('exited'));
    `;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 5000 });
    assert.equal(out.trim(), 'exited');
  });

  it('runs callbacks in an async context that async_hooks can follow', () => {
    const script = `
      import { native, C, PollMode } from ${JSON.stringify(join(ROOT, 'dist', 'native.js'))};
      import { AsyncLocalStorage } from 'node:async_hooks';
      const als = new AsyncLocalStorage();
      const [a, b] = native.socketpair(C.SOCK_SEQPACKET, true);
      als.run('ctx', () => {
        const p = new native.Poller(b, PollMode.Receive, 8, () => {
          queueMicrotask(() => { console.log('microtask ran'); });
          console.log('store:' + als.getStore()); p.close();
        });
        p.start(C.UV_READABLE);
      });
      native.send(a, Buffer.from('x'), 0, 1, -1);
    `;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 5000 });
    assert.equal(out.trim(), 'store:ctx\nmicrotask ran');
  });
});

/** The names of the UNIX sockets in this network namespace, as /proc/net/unix (and ss -x) show them. */
function unixSocketNames(): string[] {
  return readFileSync('/proc/net/unix', 'utf8')
    .split('\n')
    .slice(1)
    .map((line) => line.trim().split(/\s+/))
    .filter((f) => f.length >= 8)
    .map((f) => f.slice(7).join(' '));
}
