/**
 * UNIX sockets by path under the syscall hook (issue 16, part 3): connect() and bind() decided by
 * the policy (n connect, b bind) and performed by the broker beneath the rule's root; abstract,
 * unnamed and datagram sockets refused; other families untouched but never continued unchecked;
 * the races (a parent directory swapped for a symlink, the address family flipped under a trapped
 * connect); and real QEMU serving QMP on a path and reaching a manager's listener by path.
 * Real programs under the real launch helper: test/fixtures/unix-probe.c, qemu-system-x86_64.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { C, native } from '../src/native.js';
import { Access, explainAccess, parseAccess, ALL_ACCESS } from '../src/policy/access.js';
import { runJob } from '../src/qemu/jobs.js';
import { connectQmp, QmpListener, type QmpClient } from '../src/qemu/qmp.js';
import { CLI, fixture, tempDir } from './helpers.js';
import { guestFlush, guestWrite, holds, MACHINE, makeImage } from './qemu-helpers.js';

const tmp = tempDir('openhook-sockets-');
after(tmp.cleanup);
let PROBE = '';
before(() => {
  PROBE = fixture('unix-probe', ['-lpthread']);
});

function cleanEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const key of Object.keys(env)) if (key.startsWith('OPENHOOK_')) delete env[key];
  return env;
}

interface Ran {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** `openhook run --log POLICY -- unix-probe ARGS`, to its end. */
function probe(policy: string[], args: string[], extra: string[] = []): Promise<Ran> {
  const child = spawn(process.execPath, [CLI, 'run', '--log', ...extra, ...policy, '--ro', PROBE, '--', PROBE, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: cleanEnv(),
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((resolve) => child.on('close', (status) => resolve({ status, stdout, stderr })));
}

/** A listening UNIX socket held by the test, accepting (and counting) every connection. */
function listener(path: string, type: number = C.SOCK_STREAM): { accepted: () => number; close: () => void } {
  const { fd } = native.listenUnix(path, type, 0o666, 64);
  let count = 0;
  const drain = (): void => {
    for (let c = native.accept(fd); c >= 0; c = native.accept(fd)) {
      count++;
      native.close(c);
    }
  };
  const timer = setInterval(drain, 2);
  return {
    accepted: () => (drain(), count),
    close: () => {
      clearInterval(timer);
      native.close(fd);
    },
  };
}

function dirs(name: string): { inside: string; outside: string } {
  const base = join(tmp.path, name);
  const inside = join(base, 'inside'),
    outside = join(base, 'outside');
  mkdirSync(inside, { recursive: true });
  mkdirSync(outside, { recursive: true });
  return { inside, outside };
}

describe('policy letters n (connect) and b (bind)', () => {
  it('parse, explain, belong to all, and check names them', () => {
    assert.equal(parseAccess('nb'), Access.CONNECT | Access.BIND);
    assert.ok((ALL_ACCESS & (Access.CONNECT | Access.BIND)) === (Access.CONNECT | Access.BIND));
    assert.equal(explainAccess(Access.CONNECT | Access.BIND), 'n connect to UNIX sockets, b bind UNIX sockets (make socket files)');
    const allowed = spawnSync(process.execPath, [CLI, 'check', '--allow', '/run/vm/:n', '/run/vm/qmp.sock', 'connect'], {
      encoding: 'utf8',
    });
    assert.equal(allowed.status, 0, allowed.stderr);
    assert.match(allowed.stdout, /allow/i);
    const refused = spawnSync(process.execPath, [CLI, 'check', '--allow', '/run/vm/:n', '/run/vm/qmp.sock', 'bind'], { encoding: 'utf8' });
    assert.notEqual(refused.status, 0);
    assert.match(refused.stdout + refused.stderr, /b bind/);
  });
});

describe('run: UNIX sockets by path through the syscall hook', () => {
  it("binds and connects beneath an allowed tree; the program's socket keeps its flags", async () => {
    const { inside } = dirs('basic');
    const path = join(inside, 'srv.sock');
    const r = await probe(['--allow', `${inside}/:b`], ['bind', path]);
    assert.equal(r.stdout, 'ok\n', r.stderr);
    const st = lstatSync(path);
    assert.ok(st.isSocket());
    const umask = parseInt(/^Umask:\s*(\d+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]!, 8);
    assert.equal(st.mode & 0o777, 0o777 & ~umask, 'the socket file has mode 0777 less the umask');
    assert.match(r.stderr, /ALLOW socket-bind \S*srv\.sock/);

    // A confined server and a confined client meet through the broker.
    const served = join(inside, 'served.sock');
    const server = probe(['--allow', `${inside}/:b`], ['serve', served]);
    for (let i = 0; i < 200 && !existsSync(served); i++) await new Promise((ok) => setTimeout(ok, 10));
    const client = await probe(['--allow', `${inside}/:n`], ['connect', served, 'hello']);
    assert.equal(client.stdout, 'ok\nnonblock=0\nok\n', client.stderr);
    assert.equal((await server).stdout, 'listening\nread hello\n');

    const held = listener(join(inside, 'held.sock'));
    const seq = listener(join(inside, 'seq.sock'), C.SOCK_SEQPACKET);
    try {
      const nb = await probe(['--allow', `${inside}/:n`], ['connect-nb', join(inside, 'held.sock')]);
      assert.equal(nb.stdout, 'ok\nnonblock=1\n', nb.stderr);
      const sp = await probe(['--allow', `${inside}/:n`], ['seqpacket', join(inside, 'seq.sock')]);
      assert.equal(sp.stdout, 'ok\n', sp.stderr);
      assert.equal(held.accepted(), 1);
      assert.equal(seq.accepted(), 1);
      // Nothing there: ENOENT; a plain file is no socket: ECONNREFUSED, as the kernel says.
      const none = await probe(['--allow', `${inside}/:n`], ['connect', join(inside, 'nothing.sock')]);
      assert.equal(none.stdout, 'ENOENT\n');
      writeFileSync(join(inside, 'plain'), '');
      assert.equal((await probe(['--allow', `${inside}/:n`], ['connect', join(inside, 'plain')])).stdout, 'ECONNREFUSED\n');
    } finally {
      held.close();
      seq.close();
    }
  });

  it(
    'a listener whose backlog is full: a blocking connect waits until it accepts, a non-blocking one gets EAGAIN',
    { timeout: 60_000 },
    async () => {
      const { inside } = dirs('backlog');
      const path = join(inside, 'busy.sock');
      const { fd } = native.listenUnix(path, C.SOCK_STREAM, 0o666, 0);
      const queued: number[] = [];
      try {
        // Fill the backlog from here (non-blocking connects) until the kernel says EAGAIN.
        for (;;) {
          try {
            queued.push(native.connectUnix(path, C.SOCK_STREAM));
          } catch (err) {
            assert.equal((err as NodeJS.ErrnoException).code, 'EAGAIN');
            break;
          }
        }
        const nb = await probe(['--allow', `${inside}/:n`], ['connect-nb', path]);
        assert.equal(nb.stdout, 'EAGAIN\n', nb.stderr);
        let done = false;
        const blocking = probe(['--allow', `${inside}/:n`], ['connect', path]).finally(() => (done = true));
        await new Promise((ok) => setTimeout(ok, 500));
        assert.equal(done, false, 'the blocking connect waits while the backlog is full');
        const timer = setInterval(() => {
          for (let c = native.accept(fd); c >= 0; c = native.accept(fd)) queued.push(c);
        }, 5);
        const r = await blocking;
        clearInterval(timer);
        assert.equal(r.stdout, 'ok\nnonblock=0\n', r.stderr);
        assert.equal(r.stderr.match(/socket-connect/g)?.length, 1, 'the tries while it was full are not logged, the outcome once');
      } finally {
        for (const q of queued) native.close(q);
        native.close(fd);
      }
    },
  );

  it('refuses (EACCES, audited) connect and bind outside the policy, and each without its letter', async () => {
    const { inside, outside } = dirs('refused');
    const out = listener(join(outside, 'out.sock'));
    const inn = listener(join(inside, 'in.sock'));
    try {
      const connect = await probe(['--allow', `${inside}/:rwcnb`], ['connect', join(outside, 'out.sock')]);
      assert.equal(connect.stdout, 'EACCES\n');
      assert.match(connect.stderr, /DENY EACCES socket-connect \S*out\.sock/);
      const bind = await probe(['--allow', `${inside}/:rwcnb`], ['bind', join(outside, 'new.sock')]);
      assert.equal(bind.stdout, 'EACCES\n');
      assert.match(bind.stderr, /DENY EACCES socket-bind \S*new\.sock/);
      assert.ok(!existsSync(join(outside, 'new.sock')));
      assert.equal(
        (await probe(['--allow', `${inside}/:b`], ['connect', join(inside, 'in.sock')])).stdout,
        'EACCES\n',
        'b does not connect',
      );
      assert.equal((await probe(['--allow', `${inside}/:rwcn`], ['bind', join(inside, 'x.sock')])).stdout, 'EACCES\n', 'n does not bind');
      assert.equal(
        (await probe(['--allow', `${inside}/:rwc`], ['connect', join(inside, 'in.sock')])).stdout,
        'EACCES\n',
        'rwc is no socket access',
      );
      // A symlink inside, to the socket outside: its last component is never followed.
      symlinkSync(join(outside, 'out.sock'), join(inside, 'link.sock'));
      assert.equal((await probe(['--allow', `${inside}/:n`], ['connect', join(inside, 'link.sock')])).stdout, 'ELOOP\n');
      assert.equal(out.accepted(), 0, 'nothing reached the listener outside');
      assert.equal(inn.accepted(), 0);
    } finally {
      out.close();
      inn.close();
    }
  });

  it('refuses abstract addresses and datagram sockets; --allow-unix-sockets keeps its meaning', async () => {
    const { inside, outside } = dirs('abstract');
    const r = await probe(['--allow', `${inside}/:nb`], ['abstract', `openhook-test-${process.pid}`]);
    assert.equal(r.stdout, 'EACCES\nEACCES\n');
    assert.equal((await probe(['--allow', `${inside}/:nb`], ['dgram'])).stdout, 'EACCES\n');
    // --allow-unix-sockets: UNIX sockets are the program's own business, unchecked, as before.
    const out = listener(join(outside, 'out.sock'));
    try {
      const lifted = await probe([], ['connect', join(outside, 'out.sock')], ['--allow-unix-sockets']);
      assert.equal(lifted.stdout, 'ok\nnonblock=0\n', lifted.stderr);
      assert.equal(out.accepted(), 1);
    } finally {
      out.close();
    }
  });

  it('other families are performed as asked: a TCP connect (blocking, refused, and to a listener)', async () => {
    const server = createServer((s) => s.destroy());
    await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
    const port = (server.address() as AddressInfo).port;
    try {
      const ok = await probe([], ['inet', String(port)]);
      assert.equal(ok.stdout, 'ok\nnonblock=0\n', ok.stderr);
    } finally {
      await new Promise((done) => server.close(done));
    }
    assert.equal((await probe([], ['inet', String(port)])).stdout, 'ECONNREFUSED\n');
  });
});

describe('run: socket races', () => {
  /** Runs body while the swapper exchanges d (a directory inside) and l (a symlink to outside). */
  async function swapping<T>(d: string, l: string, body: () => Promise<T>): Promise<{ result: T; swaps: number }> {
    const swapper = spawn(fixture('swapper'), [d, l], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    swapper.stdout.setEncoding('utf8').on('data', (x: string) => (out += x));
    while (!out.includes('ready')) await new Promise((ok) => setTimeout(ok, 5));
    let result: T;
    try {
      result = await body();
    } finally {
      swapper.kill('SIGTERM');
      await new Promise((ok) => swapper.on('close', ok));
    }
    return { result, swaps: Number(/swaps=(\d+)/.exec(out)?.[1] ?? 0) };
  }

  it('a parent directory swapped for a symlink never binds or connects outside the root', { timeout: 120_000 }, async () => {
    const { inside, outside } = dirs('swap');
    const d = join(inside, 'd');
    mkdirSync(d);
    symlinkSync(outside, join(inside, 'l'));
    const out = listener(join(outside, 's.sock'));
    const inn = listener(join(d, 's.sock'));
    try {
      const { result, swaps } = await swapping(d, join(inside, 'l'), async () => {
        const binds = await probe(['--allow', `${inside}/:nbu`], ['bind-loop', join(d, 'b.sock'), '3000']);
        const connects = await probe(['--allow', `${inside}/:nbu`], ['connect-loop', join(d, 's.sock'), '3000']);
        return { binds: binds.stdout, connects: connects.stdout };
      });
      assert.ok(swaps > 0, 'the swapper raced');
      assert.match(result.binds, /^binds=\d+\n$/);
      assert.match(result.connects, /^connects=\d+\n$/);
      assert.deepEqual(readdirSync(outside).sort(), ['s.sock'], 'no socket file was made outside');
      assert.equal(out.accepted(), 0, 'no connection reached the listener outside');
    } finally {
      out.close();
      inn.close();
    }
  });

  it(
    "a family flipped under a trapped connect (and an AF_UNIX socket dup2'd in) never connects a path unchecked",
    { timeout: 120_000 },
    async () => {
      const { inside, outside } = dirs('flip');
      const out = listener(join(outside, 'out.sock'));
      try {
        const r = await probe(['--allow', `${inside}/:nb`], ['flip', join(outside, 'out.sock'), '1', '20000']);
        assert.match(r.stdout, /^connects=\d+ unix=0\n$/, r.stderr);
        assert.equal(out.accepted(), 0, 'no connection reached the listener outside');
      } finally {
        out.close();
      }
    },
  );
});

const qemu =
  spawnSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).status === 0 ? false : 'qemu-system-x86_64 is not installed';

describe('run: QEMU with QMP by path', { skip: qemu }, () => {
  const disk = (image: string): string[] => [
    '-blockdev',
    `driver=file,node-name=base-file,filename=${image}`,
    '-blockdev',
    'driver=qcow2,node-name=base,file=base-file',
    '-device',
    'virtio-blk-pci,drive=base,id=disk0',
  ];

  async function snapshotAndCommit(qmp: QmpClient, vm: string, base: string): Promise<void> {
    const overlay = join(vm, 'overlay.qcow2');
    await qmp.execute('blockdev-snapshot-sync', {
      'node-name': 'base',
      'snapshot-file': overlay,
      'snapshot-node-name': 'overlay',
      format: 'qcow2',
    });
    assert.ok(existsSync(overlay), 'the overlay was created (through the broker)');
    await qmp.execute('human-monitor-command', { 'command-line': guestWrite('disk0', 0x33) });
    await qmp.execute('human-monitor-command', { 'command-line': guestFlush('disk0') });
    await runJob(
      qmp,
      'block-commit',
      { 'job-id': 'commit', device: 'overlay', 'auto-dismiss': false },
      { complete: true, timeout: 60_000 },
    );
    const block = await qmp.execute<Array<{ qdev: string; inserted: { 'node-name': string } }>>('query-block');
    assert.equal(block.find((b) => b.qdev.includes('disk0'))?.inserted['node-name'], 'base');
    assert.ok(holds(base, 0x33, 0, 4096, 'qcow2', true), 'the commit merged the write into the base');
  }

  function startQemu(args: string[]): { exited: Promise<number | null>; stderr: () => string; kill: () => void } {
    const child = spawn(process.execPath, [CLI, 'run', '--log', ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: cleanEnv() });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    return { exited, stderr: () => stderr, kill: () => child.exitCode === null && child.kill('SIGKILL') };
  }

  it(
    '-qmp unix:PATH,server=on,wait=off: QEMU binds in its directory, a client connects, snapshot and commit',
    { timeout: 120_000 },
    async () => {
      const { inside: vm } = dirs('qmp-server');
      const base = join(vm, 'base.qcow2');
      makeImage(base, 'qcow2', 0x11);
      const path = join(vm, 'qmp.sock');
      const q = startQemu([
        '--allow',
        `${vm}/:rwcub`,
        '--',
        'qemu-system-x86_64',
        ...MACHINE,
        ...disk(base),
        '-qmp',
        `unix:${path},server=on,wait=off`,
      ]);
      try {
        let qmp: QmpClient | null = null;
        for (let i = 0; i < 600 && !qmp; i++) {
          qmp = await connectQmp({ path, timeout: 30_000 }).catch(() => null);
          if (!qmp) await new Promise((ok) => setTimeout(ok, 50));
        }
        assert.ok(qmp, q.stderr());
        assert.ok(lstatSync(path).isSocket());
        await snapshotAndCommit(qmp, vm, base);
        await qmp.execute('quit').catch(() => {});
        qmp.close();
        assert.equal(await q.exited, 0, q.stderr());
        assert.match(q.stderr(), /ALLOW socket-bind \S*qmp\.sock/);
      } finally {
        q.kill();
      }
    },
  );

  it('-chardev socket,path=...: QEMU connects to a listener the manager holds, snapshot and commit', { timeout: 120_000 }, async () => {
    const { inside: vm, outside: run } = dirs('qmp-client');
    const base = join(vm, 'base.qcow2');
    makeImage(base, 'qcow2', 0x11);
    const path = join(run, 'mon.sock');
    const listening = new QmpListener(path);
    const q = startQemu([
      '--allow',
      `${vm}/:rwc`,
      '--allow',
      `${path}:n`,
      '--',
      'qemu-system-x86_64',
      ...MACHINE,
      ...disk(base),
      '-chardev',
      `socket,id=mon,path=${path}`,
      '-mon',
      'chardev=mon,mode=control',
    ]);
    try {
      const qmp = await listening.accept({ timeout: 60_000 });
      await snapshotAndCommit(qmp, vm, base);
      await qmp.execute('quit').catch(() => {});
      qmp.close();
      assert.equal(await q.exited, 0, q.stderr());
      assert.match(q.stderr(), /ALLOW socket-connect \S*mon\.sock/);
    } finally {
      listening.close();
      q.kill();
    }
  });

  it('QEMU refused a socket outside its policy: -qmp on a path it may not bind fails to start', { timeout: 60_000 }, async () => {
    const { inside: vm, outside } = dirs('qmp-refused');
    const q = startQemu([
      '--allow',
      `${vm}/:rwcnb`,
      '--',
      'qemu-system-x86_64',
      ...MACHINE,
      '-qmp',
      `unix:${join(outside, 'qmp.sock')},server=on,wait=off`,
    ]);
    try {
      assert.notEqual(await q.exited, 0);
      // QEMU first unlinks a stale socket at the path, then binds: whichever it reaches is refused.
      assert.match(q.stderr(), /DENY EACCES (socket-bind|unlink) \S*\/outside\/qmp\.sock/);
      assert.ok(!existsSync(join(outside, 'qmp.sock')));
    } finally {
      q.kill();
    }
  });
});
