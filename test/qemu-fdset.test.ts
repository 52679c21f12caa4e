/**
 * Fd-set mode with real QEMU: images opened under the policy, pushed with add-fd, used as
 * /dev/fdset/N; an external snapshot, guest-path writes, commits; and the images checked with
 * qemu-img and qemu-io after QEMU has exited.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { AuditRecord } from '../src/broker/audit.js';
import { display } from '../src/bytestring.js';
import { connect } from '../src/client/client.js';
import { FdSetImages } from '../src/qemu/fdset.js';
import { BrokerOpener, PolicyOpener } from '../src/qemu/opener.js';
import { spawnQemu } from '../src/qemu/spawn.js';
import { loadPolicyFile, Policy } from '../src/policy/index.js';
import { parseAllowFlag } from '../src/policy/rule.js';
import { startServe, tempDir } from './helpers.js';
import { fdAccessMode, guestWrite, holds, imageInfo, MACHINE, makeImage } from './qemu-helpers.js';

interface FdSetInfo {
  'fdset-id': number;
  fds: Array<{ fd: number; opaque?: string }>;
}

function layout(): { root: string; vm: string; outside: string; cleanup: () => void } {
  const dir = tempDir('openhook-fdset-');
  const vm = join(dir.path, 'vm');
  const outside = join(dir.path, 'outside');
  mkdirSync(vm);
  mkdirSync(outside);
  return { root: dir.path, vm, outside, cleanup: dir.cleanup };
}

describe('fd-set mode, real QEMU', () => {
  it('boots with a pushed image, snapshots it, writes land in the overlay, and the header names the real path', async (ctx) => {
    const t = layout();
    ctx.after(t.cleanup); // also when QEMU fails to start
    const base = join(t.vm, 'base.qcow2'),
      overlay = join(t.vm, 'overlay.qcow2');
    makeImage(base, 'qcow2', 0x11);
    const audit: AuditRecord[] = [];
    // The policy file a hooked QEMU would run under (docs/policy.md), decided by the same code.
    const policyFile = join(t.root, 'vm.toml');
    writeFileSync(policyFile, `[[rule]]\nallow = "${t.vm}/"\naccess = "rwc"\n`);
    const policy = loadPolicyFile(policyFile);
    ctx.after(() => policy.close());
    const q = await spawnQemu(MACHINE);
    let exit: unknown;
    try {
      const images = new FdSetImages(q.qmp, new PolicyOpener(policy, { audit: { record: (r) => void audit.push(r) } }));
      const node = await images.addImage(base, { nodeName: 'base' });
      await q.qmp.execute('device_add', { driver: 'virtio-blk-pci', drive: 'base', id: 'disk0' });

      // A read-write image goes in as a pair: QEMU picks by access mode when it (re)opens.
      assert.deepEqual(
        node.fdset.fds.map((f) => f.access),
        ['rw', 'r'],
      );
      assert.deepEqual(
        node.fdset.fds.map((f) => fdAccessMode(q.child.pid!, f.fd)),
        [2, 0],
      );
      const sets = await q.qmp.execute<FdSetInfo[]>('query-fdsets');
      assert.equal(sets.find((s) => s['fdset-id'] === node.fdset.id)?.fds.length, 2);

      const ov = await images.snapshot('base', overlay, { nodeName: 'overlay', mode: 0o640 });
      assert.equal(ov.fdset.path, `/dev/fdset/${ov.fdset.id}`);
      const block = await q.qmp.execute<Array<{ qdev: string; inserted: { 'node-name': string } }>>('query-block');
      assert.equal(block.find((b) => b.qdev.includes('disk0'))?.inserted['node-name'], 'overlay', 'the device now writes to the overlay');

      assert.equal(await q.qmp.execute('human-monitor-command', { 'command-line': guestWrite('disk0', 0x22) }), '');
      // The base is read-only below the overlay now; its read-only fd serves a read-only reopen.
      await q.qmp.execute('blockdev-reopen', {
        options: [{ driver: 'file', 'node-name': 'base-file', filename: node.fdset.path, 'read-only': true }],
      });

      // Every open went through the policy: the base twice (rw, r), the overlay created, then read-only.
      assert.deepEqual(
        audit.map((r) => [display(r.path), r.errno]),
        [
          [base, 0],
          [base, 0],
          [overlay, 0],
          [overlay, 0],
        ],
      );
      assert.equal(audit[2]!.flags & 0o300, 0o300, 'the overlay is created with O_CREAT|O_EXCL');
    } finally {
      exit = await q.quit();
      policy.close();
    }
    assert.deepEqual(exit, { code: 0, signal: null }, 'QEMU quit cleanly');
    try {
      const info = imageInfo(overlay);
      assert.equal(info.format, 'qcow2');
      assert.equal(info['backing-filename'], base, 'the overlay names the real base, not /dev/fdset/N');
      assert.equal(info['backing-filename-format'], 'qcow2');
      assert.equal(info['virtual-size'], 64 * 1024 * 1024);
      assert.ok(holds(overlay, 0x22, 0, 4096), 'the guest write is in the overlay');
      assert.ok(holds(overlay, 0x11, 4096, 4096), 'the rest reads through to the base');
      assert.ok(holds(base, 0x11, 0, 4096), 'the base is untouched');
    } finally {
      t.cleanup();
    }
  });

  it('commits an intermediate layer (the header above gets the real path) and the active layer', async (ctx) => {
    const t = layout();
    ctx.after(t.cleanup); // also when QEMU fails to start
    const base = join(t.vm, 'base.qcow2'),
      mid = join(t.vm, 'mid.qcow2'),
      top = join(t.vm, 'top.qcow2');
    makeImage(base, 'qcow2', 0x11);
    const policy = new Policy([parseAllowFlag(`${t.vm}/:rwc`)]);
    ctx.after(() => policy.close());
    const q = await spawnQemu(MACHINE);
    let exit: unknown;
    try {
      const images = new FdSetImages(q.qmp, new PolicyOpener(policy));
      await images.addImage(base, { nodeName: 'base' });
      await q.qmp.execute('device_add', { driver: 'virtio-blk-pci', drive: 'base', id: 'disk0' });
      await images.snapshot('base', mid, { nodeName: 'mid' });
      await q.qmp.execute('human-monitor-command', { 'command-line': guestWrite('disk0', 0x22, 0) });
      await images.snapshot('mid', top, { nodeName: 'top' });
      await q.qmp.execute('human-monitor-command', { 'command-line': guestWrite('disk0', 0x33, 4096) });
      assert.equal(imageInfo(top)['backing-filename'], mid);

      // mid into base: QEMU rewrites top's header, and would write /dev/fdset/N there by itself.
      await images.commit('mid', 'base', { device: 'top' });
      // top into base: the active layer; the device pivots to base.
      await images.commit('top', 'base');
      const block = await q.qmp.execute<Array<{ qdev: string; inserted: { 'node-name': string } }>>('query-block');
      assert.equal(block.find((b) => b.qdev.includes('disk0'))?.inserted['node-name'], 'base');
      await q.qmp.execute('human-monitor-command', { 'command-line': guestWrite('disk0', 0x44, 8192) });
    } finally {
      exit = await q.quit();
      policy.close();
    }
    assert.deepEqual(exit, { code: 0, signal: null }, 'QEMU quit cleanly');
    try {
      assert.equal(imageInfo(top)['backing-filename'], base, 'the rewritten header names the real base path');
      assert.ok(holds(base, 0x22, 0), 'mid was committed');
      assert.ok(holds(base, 0x33, 4096), 'top was committed');
      assert.ok(holds(base, 0x44, 8192), 'after the active commit the device writes to the base');
      assert.ok(holds(base, 0x11, 12288), 'the rest of the base is as it was');
    } finally {
      t.cleanup();
    }
  });

  it('with locking off, a node goes read-only and back to read-write through its pair, and commits', async (ctx) => {
    // With locking on, the set's own copies of the fds keep QEMU's old locks, and the commit after
    // such a round trip fails with 'Failed to get "write" lock' (docs/qemu.md, "Stale locks").
    const t = layout();
    ctx.after(t.cleanup); // also when QEMU fails to start
    const base = join(t.vm, 'base.qcow2'),
      overlay = join(t.vm, 'overlay.qcow2');
    makeImage(base, 'qcow2', 0x11);
    const policy = new Policy([parseAllowFlag(`${t.vm}/:rwc`)]);
    ctx.after(() => policy.close());
    const q = await spawnQemu(MACHINE);
    let exit: unknown;
    try {
      const images = new FdSetImages(q.qmp, new PolicyOpener(policy));
      const node = await images.addImage(base, { nodeName: 'base', fileOptions: { locking: 'off' } });
      await q.qmp.execute('device_add', { driver: 'virtio-blk-pci', drive: 'base', id: 'disk0' });
      await images.snapshot('base', overlay, { nodeName: 'overlay' });
      await q.qmp.execute('human-monitor-command', { 'command-line': guestWrite('disk0', 0x22) });
      const file = (readOnly: boolean): Record<string, unknown> => ({
        driver: 'file',
        'node-name': 'base-file',
        filename: node.fdset.path,
        locking: 'off',
        'read-only': readOnly,
      });
      await q.qmp.execute('blockdev-reopen', { options: [file(true)] });
      await q.qmp.execute('blockdev-reopen', { options: [file(false)] });
      await images.commit('overlay', 'base');
    } finally {
      exit = await q.quit();
      policy.close();
    }
    assert.deepEqual(exit, { code: 0, signal: null }, 'QEMU quit cleanly');
    try {
      assert.ok(holds(base, 0x22, 0), 'committed into the base');
    } finally {
      t.cleanup();
    }
  });

  it('refuses an image outside the policy: nothing is opened, nothing is pushed', async (ctx) => {
    const t = layout();
    ctx.after(t.cleanup); // also when QEMU fails to start
    const secret = join(t.outside, 'secret.qcow2'),
      overlay = join(t.outside, 'overlay.qcow2');
    const base = join(t.vm, 'base.qcow2');
    makeImage(secret, 'qcow2', 0x55);
    makeImage(base, 'qcow2', 0x11);
    const audit: AuditRecord[] = [];
    const policy = new Policy([parseAllowFlag(`${t.vm}/:rwc`), parseAllowFlag(`${t.outside}/:r`)]);
    ctx.after(() => policy.close());
    const q = await spawnQemu(MACHINE);
    let exit: unknown;
    try {
      const images = new FdSetImages(q.qmp, new PolicyOpener(policy, { audit: { record: (r) => void audit.push(r) } }));
      const before = await q.qmp.execute<FdSetInfo[]>('query-fdsets');
      await assert.rejects(images.addImage(join(t.root, 'elsewhere.qcow2'), { nodeName: 'x' }), { code: 'EACCES', syscall: 'open' });
      // Readable is not writable: the read-write open is refused, and no fd of the pair is pushed.
      await assert.rejects(images.addImage(secret, { nodeName: 'secret' }), { code: 'EACCES' });
      assert.deepEqual(await q.qmp.execute<FdSetInfo[]>('query-fdsets'), before);
      // An overlay may be created only where the policy allows creating.
      await images.addImage(base, { nodeName: 'base' });
      await assert.rejects(images.snapshot('base', overlay, { nodeName: 'ov' }), { code: 'EACCES' });
      assert.equal(existsSync(overlay), false);
      assert.deepEqual(
        audit.filter((r) => r.errno !== 0).map((r) => [display(r.path), r.errno]),
        [
          [join(t.root, 'elsewhere.qcow2'), 13],
          [secret, 13],
          [overlay, 13],
        ],
      );
      // Read-only is what the policy grants there, and works.
      const ro = await images.addImage(secret, { nodeName: 'secret', access: 'r' });
      assert.deepEqual(
        ro.fdset.fds.map((f) => fdAccessMode(q.child.pid!, f.fd)),
        [0],
      );
    } finally {
      exit = await q.quit();
      policy.close();
      t.cleanup();
    }
    assert.deepEqual(exit, { code: 0, signal: null }, 'QEMU quit cleanly');
  });

  it('opens through a broker over its socket (openhook serve) with the same outcome', async (ctx) => {
    const t = layout();
    ctx.after(t.cleanup); // also when QEMU fails to start
    const data = join(t.vm, 'data.raw'),
      secret = join(t.outside, 'secret.raw');
    makeImage(data, 'raw', 0x11, '1M');
    makeImage(secret, 'raw', 0x55, '1M');
    const serve = await startServe(join(t.root, 'broker.sock'), ['--allow', `${t.vm}/:rw`]);
    ctx.after(() => serve.stop());
    const hook = await connect(serve.socket);
    ctx.after(() => hook.close());
    const q = await spawnQemu(MACHINE);
    let exit: unknown;
    try {
      const images = new FdSetImages(q.qmp, new BrokerOpener(hook));
      await images.addImage(data, { nodeName: 'data', format: 'raw' });
      await q.qmp.execute('device_add', { driver: 'virtio-blk-pci', drive: 'data', id: 'disk1' });
      await q.qmp.execute('human-monitor-command', { 'command-line': guestWrite('disk1', 0x66) });
      await assert.rejects(images.addImage(secret, { nodeName: 'secret', format: 'raw' }), { code: 'EACCES' });
    } finally {
      exit = await q.quit();
      hook.close();
      await serve.stop();
    }
    assert.deepEqual(exit, { code: 0, signal: null }, 'QEMU quit cleanly');
    try {
      assert.ok(holds(data, 0x66, 0, 4096, 'raw'));
      assert.ok(holds(secret, 0x55, 0, 4096, 'raw'));
    } finally {
      t.cleanup();
    }
  });
});
