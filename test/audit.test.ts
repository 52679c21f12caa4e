/**
 * The audit log: one JSON line per decision with every field, exact bytes for non-UTF-8 paths, the
 * pretty form, and both failure settings (fail-closed refuses with EIO, fail-open serves on), with
 * /dev/full as a log that cannot be written.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { jsonLine } from '../src/broker/audit-log.js';
import { C } from '../src/native.js';
import { probe, rfcOpenFrame, rfcReplyHex, startServe, tempDir, waitForStderr } from './helpers.js';
import { E } from '../src/errno.js';

const tmp = tempDir();
after(tmp.cleanup);
const T = tmp.path;
mkdirSync(join(T, 'vm'));
mkdirSync(join(T, 'secret'));
writeFileSync(join(T, 'vm', 'disk.img'), 'disk');
const policy = join(T, 'p.toml');
writeFileSync(policy, `[[rule]]\nallow = "${T}/vm/"\naccess = "rwc"\n\n[[rule]]\ndeny = "${T}/secret/"\n`);

describe('audit log', () => {
  it('writes one JSON line per decision, with every field', async () => {
    const log = join(T, 'audit.jsonl');
    const socket = join(T, 'a.sock');
    const serve = await startServe(socket, ['--policy', policy, '--audit', log]);
    const badName = Buffer.concat([Buffer.from(`${T}/vm/`), Buffer.from([0x66, 0xff, 0xfe, 0x2e])]);
    probe(socket, 'seqpacket', [
      rfcOpenFrame(`${T}/vm/disk.img`, C.O_RDONLY),
      rfcOpenFrame(`${T}/secret/key`, C.O_RDONLY),
      rfcOpenFrame(`${T}/vm/new.qcow2`, C.O_RDWR | C.O_CREAT | C.O_EXCL, 0o640),
      rfcOpenFrame(badName, C.O_WRONLY | C.O_CREAT, 0o600),
      rfcOpenFrame(`${T}/vm/missing`, C.O_RDONLY),
      rfcOpenFrame(`${T}/vm/disk.img`, C.O_RDONLY | C.O_PATH),
    ]);
    assert.equal(await serve.stop(), 0);
    const lines = readFileSync(log, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.equal(lines.length, 6);
    const [ok, denied, created, bytes, missing, badFlags] = lines;
    assert.deepEqual(Object.keys(ok), [
      'time',
      'client',
      'command',
      'path',
      'flags',
      'mode',
      'access',
      'decision',
      'rule',
      'errno',
      'reason',
      'latency_us',
    ]);
    assert.ok(Math.abs(Date.parse(ok.time) - Date.now()) < 60_000);
    assert.equal(ok.client.uid, process.getuid!());
    assert.equal(ok.client.gid, process.getgid!());
    assert.ok(ok.client.pid > 0);
    assert.equal(ok.command, 'QEMU_OPEN');
    assert.equal(ok.path, `${T}/vm/disk.img`);
    assert.equal(ok.flags, 'O_RDONLY');
    assert.equal(ok.access, 'r');
    assert.equal(ok.decision, 'allow');
    assert.equal(ok.rule, `${policy}:1`);
    assert.equal(ok.errno, null);
    assert.equal(typeof ok.latency_us, 'number');
    assert.equal(denied.decision, 'deny');
    assert.equal(denied.errno, 'EACCES');
    assert.equal(denied.rule, `${policy}:5`);
    assert.equal(denied.reason, `denied by ${policy}:5`);
    assert.equal(created.flags, 'O_RDWR|O_CREAT|O_EXCL');
    assert.equal(created.mode, '0640');
    assert.equal(created.access, 'rwc');
    assert.equal(created.errno, null);
    // A name that is not UTF-8: readable form, and the exact bytes in base64.
    assert.equal(bytes.path, `${T}/vm/f\\xff\\xfe.`);
    assert.deepEqual(Buffer.from(bytes.path_base64, 'base64'), badName);
    assert.equal(bytes.decision, 'allow');
    // Allowed by the policy, but the open itself failed.
    assert.equal(missing.decision, 'allow');
    assert.equal(missing.errno, 'ENOENT');
    assert.equal(badFlags.errno, 'EINVAL');
    assert.equal(badFlags.rule, null);
    assert.match(badFlags.flags, /O_PATH/);
  });

  it('keeps UTF-8 names readable and exact', () => {
    const line = JSON.parse(
      jsonLine({
        time: 0,
        peer: { pid: 1, uid: 2, gid: 3, groups: null, session: 'vm1' },
        command: 1,
        path: Buffer.from('/srv/é"\n').toString('latin1'),
        flags: 0,
        mode: 0,
        access: 1,
        allowed: true,
        rule: null,
        errno: 0,
        reason: '',
        latencyUs: 1,
      }),
    );
    assert.equal(line.path, '/srv/é"\n');
    assert.equal(line.path_base64, undefined);
    assert.deepEqual(line.client, { pid: 1, uid: 2, gid: 3, session: 'vm1' });
  });

  it('writes a pretty form for a terminal', async () => {
    const socket = join(T, 'p.sock');
    const serve = await startServe(socket, ['--policy', policy, '--audit', '-', '--audit-format', 'pretty']);
    probe(socket, 'seqpacket', [rfcOpenFrame(`${T}/vm/disk.img`, C.O_RDONLY), rfcOpenFrame(`${T}/secret/key`, C.O_RDONLY)]);
    await waitForStderr(serve, /DENY EACCES/);
    await serve.stop();
    assert.match(
      serve.stderr(),
      new RegExp(
        `\\d\\d:\\d\\d:\\d\\d\\.\\d{3} ALLOW +${T}/vm/disk.img O_RDONLY \\[pid \\d+ uid \\d+\\] allowed by ${policy}:1 \\(\\d+ µs\\)`,
      ),
    );
    assert.match(serve.stderr(), new RegExp(`DENY EACCES +${T}/secret/key O_RDONLY .* denied by ${policy}:5`));
  });

  it('fail-closed (the default): once the log cannot be written, every request gets EIO', async () => {
    const socket = join(T, 'full-closed.sock');
    const serve = await startServe(socket, ['--policy', policy, '--audit', '/dev/full']);
    try {
      probe(socket, 'seqpacket', [rfcOpenFrame(`${T}/vm/disk.img`, C.O_RDONLY)]);
      await waitForStderr(
        serve,
        /cannot write the audit log \/dev\/full: ENOSPC.*refusing requests with EIO until it works again \(fail-closed\)/,
      );
      const lines = probe(socket, 'seqpacket', [rfcOpenFrame(`${T}/vm/disk.img`, C.O_RDONLY), rfcOpenFrame(`${T}/secret/key`, C.O_RDONLY)]);
      assert.deepEqual(lines, [`reply=${rfcReplyHex(1, -5)} fds=0`, `reply=${rfcReplyHex(1, -5)} fds=0`]);
    } finally {
      await serve.stop();
    }
  });

  it('fail-open: requests are served on while the log cannot be written', async () => {
    const socket = join(T, 'full-open.sock');
    const serve = await startServe(socket, ['--policy', policy, '--audit', '/dev/full', '--audit-failure', 'open']);
    try {
      probe(socket, 'seqpacket', [rfcOpenFrame(`${T}/vm/disk.img`, C.O_RDONLY)]);
      await waitForStderr(serve, /cannot write the audit log \/dev\/full: ENOSPC.*serving on, dropping records \(fail-open\)/);
      const lines = probe(socket, 'seqpacket', [rfcOpenFrame(`${T}/vm/disk.img`, C.O_RDONLY), rfcOpenFrame(`${T}/secret/key`, C.O_RDONLY)]);
      assert.match(lines[0]!, new RegExp(`^reply=${rfcReplyHex(1, 0)} fds=1`));
      assert.equal(lines[1], `reply=${rfcReplyHex(1, -E.EACCES)} fds=0`);
    } finally {
      await serve.stop();
    }
  });

  it('refuses to start when the log cannot be opened', async () => {
    await assert.rejects(
      startServe(join(T, 'x.sock'), ['--policy', policy, '--audit', join(T, 'no', 'such', 'dir', 'log')]),
      /cannot open the audit log/,
    );
  });
});
