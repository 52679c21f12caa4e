/**
 * `openhook serve` driven the way systemd drives it, with no systemd: listening sockets made here and
 * passed as fds 3, 4, ... with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES; a datagram socket read
 * here as NOTIFY_SOCKET; SIGHUP as ExecReload sends it; SIGTERM as systemctl stop sends it.
 */
import assert from 'node:assert/strict';
import { get } from 'node:http';
import { closeSync, existsSync, mkdirSync, openSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { MetricsAddressError, parseMetricsAddress } from '../src/broker/metrics-server.js';
import { connect } from '../src/client/client.js';
import { ActivationError, listenFds } from '../src/systemd/activation.js';
import { C, native } from '../src/native.js';
import { readAndClose, receiveOne, rfcOpenFrame, rfcReplyHex, tempDir } from './helpers.js';
import { killLeftovers, notifyListener, parseNotify, startDaemon, systemdStyleSocket } from './service-helpers.js';

const tmp = tempDir();
const vm = join(tmp.path, 'vm');
mkdirSync(vm);
writeFileSync(join(vm, 'disk.img'), 'disk');
after(() => {
  killLeftovers();
  tmp.cleanup();
});

/** A listening socket made as systemd makes it from a .socket unit, and held here as systemd holds it. */
async function systemdSocket(name: string, kind: 'seqpacket' | 'stream' = 'seqpacket'): Promise<{ path: string; fd: number }> {
  const path = join(tmp.path, name);
  return { path, fd: await systemdStyleSocket(path, kind) };
}

describe('socket activation', () => {
  it('serves on the socket systemd passed, never unlinks it, and a connection queued between two brokers is served by the second', async () => {
    const sock = await systemdSocket('activated.sock');
    const first = await startDaemon([`--allow=${vm}/:r`], { fds: [sock.fd], names: ['openhook'] });
    assert.match(first.stderr(), new RegExp(`serving on ${sock.path} \\(SOCK_SEQPACKET, from systemd\\)`));
    {
      await using client = await connect({ path: sock.path, reconnect: false });
      assert.equal(readAndClose(await client.open(join(vm, 'disk.img'))), 'disk');
      const report = await client.status();
      assert.deepEqual(report.listeners, [{ path: sock.path, kind: 'seqpacket', activated: true }]);
    }
    assert.equal(await first.stop(), 0);
    assert.ok(statSync(sock.path).isSocket(), 'the socket file systemd owns is still there');

    // Between two brokers, systemd's socket still listens: a client connects and sends its request,
    // which waits in the backlog until the next broker accepts it.
    const waiting = native.connectUnix(Buffer.from(sock.path), C.SOCK_SEQPACKET);
    const frame = rfcOpenFrame(join(vm, 'disk.img'), C.O_RDONLY);
    assert.equal(native.send(waiting, frame, 0, frame.length, -1), frame.length);
    const second = await startDaemon([`--allow=${vm}/:r`], { fds: [sock.fd] });
    const reply = await receiveOne(waiting);
    assert.equal(reply.bytes, rfcReplyHex(1, 0));
    assert.equal(readAndClose(reply.fds[0]!), 'disk');
    native.close(waiting);
    assert.equal(await second.stop(), 0);
    assert.ok(existsSync(sock.path));
    native.close(sock.fd);
  });

  it('serves several sockets, of both kinds, and Prometheus on the one named "metrics"', async () => {
    const seq = await systemdSocket('multi-seq.sock');
    const stream = await systemdSocket('multi-stream.sock', 'stream');
    const metrics = await systemdSocket('multi-metrics.sock', 'stream');
    const d = await startDaemon([`--allow=${vm}/:r`], { fds: [seq.fd, stream.fd, metrics.fd], names: ['seq', 'stream', 'metrics'] });
    for (const [path, isStream] of [
      [seq.path, false],
      [stream.path, true],
    ] as const) {
      await using client = await connect({ path, stream: isStream, reconnect: false });
      assert.equal(readAndClose(await client.open(join(vm, 'disk.img'))), 'disk');
    }
    const body = await new Promise<string>((resolve, reject) => {
      get({ socketPath: metrics.path, path: '/metrics' }, (res) => {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => resolve(text));
      }).on('error', reject);
    });
    assert.match(body, /^openhook_requests_total 2$/m);
    assert.equal(await d.stop(), 0);
    for (const s of [seq, stream, metrics]) {
      assert.ok(existsSync(s.path));
      native.close(s.fd);
    }
  });

  it('ignores LISTEN_FDS meant for another process', async () => {
    const sock = await systemdSocket('other-pid.sock');
    const d = await startDaemon([`--allow=${vm}/:r`], { fds: [sock.fd], listenPid: 1, ready: false });
    assert.equal(await d.exited, 2);
    assert.match(d.stderr(), /LISTEN_PID is 1, not this process .*ignoring it/);
    assert.match(d.stderr(), /give --socket PATH, or start under systemd socket activation/);
    native.close(sock.fd);
  });

  it('refuses an fd that is not a listening UNIX socket of a kind it speaks', async () => {
    const file = openSync(join(vm, 'disk.img'), 'r');
    const unbound = native.socket(C.SOCK_SEQPACKET);
    const [dgram] = native.socketpair(C.SOCK_DGRAM, false);
    for (const [fd, message] of [
      [file, /ENOTSOCK/],
      [unbound, /not a listening socket/],
      [dgram, /neither SOCK_SEQPACKET nor SOCK_STREAM/],
    ] as const) {
      const d = await startDaemon([`--allow=${vm}/:r`], { fds: [fd], ready: false });
      assert.equal(await d.exited, 1, d.stderr());
      assert.match(d.stderr(), message);
    }
    closeSync(file);
    native.close(unbound);
    native.close(dgram);
  });

  it('fails clearly on malformed activation variables', async () => {
    const sock = await systemdSocket('bad-names.sock');
    const d = await startDaemon([`--allow=${vm}/:r`], { fds: [sock.fd], names: ['a', 'b'], ready: false });
    assert.equal(await d.exited, 2);
    assert.match(d.stderr(), /LISTEN_FDNAMES names 2 fds, LISTEN_FDS says 1/);
    native.close(sock.fd);
  });
});

describe('Type=notify', () => {
  for (const kind of ['path', 'abstract'] as const) {
    it(`sends READY=1, RELOADING=1 with MONOTONIC_USEC then READY=1 on SIGHUP, and STOPPING=1, in order, from its main pid (${kind} NOTIFY_SOCKET)`, async () => {
      const address = kind === 'path' ? join(tmp.path, 'notify.sock') : `@openhook-test-notify-${process.pid}-${Date.now()}`;
      const notify = await notifyListener(address);
      const sock = join(tmp.path, `notify-${kind}.sock`);
      const policy = join(tmp.path, `notify-${kind}.toml`);
      writeFileSync(policy, `[[rule]]\nallow = "${vm}/"\naccess = "r"\n`);
      const d = await startDaemon(['--socket', sock, '--policy', policy], { env: { NOTIFY_SOCKET: address } });

      const ready = parseNotify(await notify.next());
      assert.equal(ready.pid, d.pid, 'sent by the main process, as NotifyAccess=main requires');
      assert.equal(ready.fields.READY, '1');
      assert.match(ready.fields.STATUS!, /^serving: 0 connection\(s\), 0 request\(s\) .* policy generation 1$/);

      const before = process.hrtime.bigint() / 1000n;
      d.kill('SIGHUP');
      const reloading = parseNotify(await notify.next());
      const afterwards = process.hrtime.bigint() / 1000n;
      assert.equal(reloading.fields.RELOADING, '1');
      const usec = BigInt(reloading.fields.MONOTONIC_USEC!);
      assert.ok(usec >= before && usec <= afterwards, `MONOTONIC_USEC ${usec} is CLOCK_MONOTONIC, between ${before} and ${afterwards}`);
      const reloaded = parseNotify(await notify.next());
      assert.equal(reloaded.fields.READY, '1');
      assert.match(reloaded.fields.STATUS!, /policy generation 2$/);

      d.kill('SIGTERM');
      const stopping = parseNotify(await notify.next());
      assert.equal(stopping.fields.STOPPING, '1');
      assert.match(stopping.fields.STATUS!, /stopping on SIGTERM/);
      assert.equal(await d.exited, 0);
      assert.equal(notify.messages.length, 4, notify.messages.join('\n'));
      notify.close();
    });
  }

  it('reloads through systemd’s path: the new policy is in force after READY=1, and a policy that fails keeps the old one', async () => {
    for (const name of ['a', 'b']) {
      mkdirSync(join(tmp.path, name));
      writeFileSync(join(tmp.path, name, 'f'), `tree ${name}`);
    }
    const allow = (name: string): string => `[[rule]]\nallow = "${join(tmp.path, name)}/"\naccess = "r"\n`;
    const policy = join(tmp.path, 'reload.toml');
    writeFileSync(policy, allow('a'));
    const notify = await notifyListener(join(tmp.path, 'notify-reload.sock'));
    const sock = join(tmp.path, 'reload.sock');
    const d = await startDaemon(['--socket', sock, '--policy', policy], { env: { NOTIFY_SOCKET: notify.address } });
    assert.equal(parseNotify(await notify.next()).fields.READY, '1');
    await using client = await connect(sock);
    const tryOpen = (name: string): Promise<string> =>
      client.open(join(tmp.path, name, 'f')).then(readAndClose, (e: NodeJS.ErrnoException) => e.code!);
    assert.deepEqual([await tryOpen('a'), await tryOpen('b')], ['tree a', 'EACCES']);

    // ExecReload=kill -HUP $MAINPID
    writeFileSync(policy, allow('b'));
    d.kill('SIGHUP');
    assert.equal(parseNotify(await notify.next()).fields.RELOADING, '1');
    assert.equal(parseNotify(await notify.next()).fields.READY, '1');
    assert.deepEqual([await tryOpen('a'), await tryOpen('b')], ['EACCES', 'tree b']);
    assert.equal((await client.status()).policy.generation, 2);

    // A policy that does not load leaves generation 2 in force, and says so.
    writeFileSync(policy, allow('a').replace('access', 'acess'));
    d.kill('SIGHUP');
    assert.equal(parseNotify(await notify.next()).fields.RELOADING, '1');
    const ready = parseNotify(await notify.next());
    assert.equal(ready.fields.READY, '1');
    assert.match(ready.fields.STATUS!, /policy generation 2; last reload FAILED/);
    assert.deepEqual([await tryOpen('a'), await tryOpen('b')], ['EACCES', 'tree b']);
    const report = await client.status();
    assert.equal(report.policy.generation, 2);
    assert.equal(report.policy.reloadFailures, 1);
    assert.match(report.policy.lastReloadError!, /reload\.toml:3:1: unknown key 'acess'/);
    assert.match(d.stderr(), /policy reload \(SIGHUP\) failed, the old policy stays in force/);

    client.close();
    assert.equal(await d.stop(), 0);
    notify.close();
  });

  it('tells systemd about reloads that --watch makes, and answers SIGHUP without a policy file', async () => {
    const policy = join(tmp.path, 'watch.toml');
    writeFileSync(policy, `[[rule]]\nallow = "${vm}/"\naccess = "r"\n`);
    const notify = await notifyListener(join(tmp.path, 'notify-watch.sock'));
    const d = await startDaemon(['--socket', join(tmp.path, 'watch.sock'), '--policy', policy, '--watch'], {
      env: { NOTIFY_SOCKET: notify.address },
    });
    assert.equal(parseNotify(await notify.next()).fields.READY, '1');
    writeFileSync(policy, `[[rule]]\nallow = "${vm}/"\naccess = "rw"\n`);
    assert.equal(parseNotify(await notify.next()).fields.RELOADING, '1');
    assert.match(parseNotify(await notify.next()).fields.STATUS!, /policy generation 2$/);
    assert.equal(await d.stop(), 0);
    notify.close();

    // With rules from the command line there is nothing to reload, but `systemctl reload` must not
    // wait for an answer that never comes.
    const flags = await notifyListener(join(tmp.path, 'notify-flags.sock'));
    const f = await startDaemon(['--socket', join(tmp.path, 'flags.sock'), `--allow=${vm}/:r`], { env: { NOTIFY_SOCKET: flags.address } });
    assert.equal(parseNotify(await flags.next()).fields.READY, '1');
    f.kill('SIGHUP');
    assert.equal(parseNotify(await flags.next()).fields.RELOADING, '1');
    assert.match(parseNotify(await flags.next()).fields.STATUS!, /policy generation 1$/);
    assert.match(f.stderr(), /SIGHUP: nothing to reload/);
    assert.equal(await f.stop(), 0);
    flags.close();
  });

  it('pings WATCHDOG=1 when systemd asks for it', async () => {
    const notify = await notifyListener(join(tmp.path, 'notify-watchdog.sock'));
    const d = await startDaemon(['--socket', join(tmp.path, 'watchdog.sock'), `--allow=${vm}/:r`], {
      env: { NOTIFY_SOCKET: notify.address, WATCHDOG_USEC: '100000' },
    });
    assert.equal(parseNotify(await notify.next()).fields.READY, '1');
    assert.equal(parseNotify(await notify.next()).fields.WATCHDOG, '1');
    assert.equal(parseNotify(await notify.next()).fields.WATCHDOG, '1');
    assert.equal(await d.stop(), 0);
    notify.close();
  });
});

describe('parsing what systemd and operators say', () => {
  it('reads LISTEN_* as sd_listen_fds does, and removes them from the environment', () => {
    const env: NodeJS.ProcessEnv = { LISTEN_FDS: '2', LISTEN_PID: '42', LISTEN_FDNAMES: 'openhook:metrics' };
    assert.deepEqual(listenFds(env, 42), {
      sockets: [
        { fd: 3, name: 'openhook' },
        { fd: 4, name: 'metrics' },
      ],
      ignored: null,
    });
    assert.deepEqual(env, {}, 'no child inherits them');
    assert.deepEqual(listenFds({ LISTEN_FDS: '1', LISTEN_PID: '42' }, 42).sockets, [{ fd: 3, name: 'unknown' }]);
    assert.deepEqual(listenFds({}, 42), { sockets: [], ignored: null });
    assert.match(listenFds({ LISTEN_FDS: '1', LISTEN_PID: '7' }, 42).ignored!, /LISTEN_PID is 7, not this process \(42\)/);
    assert.throws(() => listenFds({ LISTEN_FDS: 'x', LISTEN_PID: '42' }, 42), ActivationError);
    assert.throws(() => listenFds({ LISTEN_FDS: '1' }, 42), /LISTEN_PID is missing/);
    assert.throws(() => listenFds({ LISTEN_FDS: '0', LISTEN_PID: '42' }, 42), /not a count/);
  });

  it('serves metrics on UNIX sockets and loopback addresses only', () => {
    assert.deepEqual(parseMetricsAddress('unix:/run/openhook/metrics.sock'), { kind: 'unix', path: '/run/openhook/metrics.sock' });
    assert.deepEqual(parseMetricsAddress('127.0.0.1:9464'), { kind: 'tcp', host: '127.0.0.1', port: 9464 });
    assert.deepEqual(parseMetricsAddress('127.1.2.3:0'), { kind: 'tcp', host: '127.1.2.3', port: 0 });
    assert.deepEqual(parseMetricsAddress('[::1]:9464'), { kind: 'tcp', host: '::1', port: 9464 });
    for (const bad of [
      '0.0.0.0:9464',
      '10.0.0.1:9464',
      '[::]:9464',
      'localhost:9464',
      'unix:relative.sock',
      '127.0.0.1',
      '127.0.0.1:70000',
    ]) {
      assert.throws(() => parseMetricsAddress(bad), MetricsAddressError, bad);
    }
  });
});
