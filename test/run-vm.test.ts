/**
 * `openhook run` for VMs: device grants (`--device`, Landlock's IOCTL_DEV on the granted node only)
 * and passed fds (`--pass-fd`, kept at their numbers, the hook moved out of their way). Real confined
 * programs under the real launch helper; QEMU where the test needs a real VM monitor.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess, type StdioNull, type StdioPipe } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { passFdProblem } from '../src/cli/run.js';
import { HELPER_PATH } from '../src/launch/launch.js';
import { formatReport, emptyReport, parseReportLine } from '../src/launch/report.js';
import { C, native } from '../src/native.js';
import { connectQmp } from '../src/qemu/qmp.js';
import { openhookRun, spawnQemu } from '../src/qemu/spawn.js';
import { CLI, fixture, tempDir } from './helpers.js';
import { MACHINE } from './qemu-helpers.js';

const tmp = tempDir('openhook-run-vm-');
after(tmp.cleanup);

let DEVICE_PROBE = '';
let CONFINED_PROBE = '';
const isRoot = process.getuid?.() === 0;

before(() => {
  DEVICE_PROBE = fixture('device-probe');
  CONFINED_PROBE = fixture('confined-probe');
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

/** Starts `openhook run ARGS` with this process's fds given to run at chosen numbers ({ numberInRun: fdHere }), as a shell's N<FILE would. */
function start(args: string[], map: Record<number, number> = {}): ChildProcess {
  const top = Math.max(2, ...Object.keys(map).map(Number));
  const stdio: Array<StdioNull | StdioPipe | number> = ['ignore', 'pipe', 'pipe'];
  for (let n = 3; n <= top; n++) stdio.push(map[n] ?? 'ignore');
  return spawn(process.execPath, [CLI, 'run', ...args], { stdio, env: cleanEnv() });
}

async function run(args: string[], map: Record<number, number> = {}): Promise<Ran> {
  const child = start(args, map);
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const status = await new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return { status, stdout, stderr };
}

/** The device probe's lines: one record of open/ioctl/read results per path. */
function probeLines(stdout: string): Array<Record<string, string>> {
  return stdout
    .trim()
    .split('\n')
    .map((line) => Object.fromEntries(line.split(' ').map((pair) => pair.split('=') as [string, string])));
}

describe('run --device', () => {
  it(
    '/dev/net/tun opens and takes ioctls with --device (the driver answers), not without',
    { skip: !existsSync('/dev/net/tun') && 'no /dev/net/tun here' },
    async () => {
      const without = await run(['--ro', DEVICE_PROBE, '--', DEVICE_PROBE, '/dev/net/tun']);
      assert.equal(probeLines(without.stdout)[0]!.open, 'EACCES');
      const granted = await run(['--device', '/dev/net/tun', '--ro', DEVICE_PROBE, '--', DEVICE_PROBE, '/dev/net/tun']);
      const [tun] = probeLines(granted.stdout);
      assert.equal(tun!.open, 'ok', granted.stderr);
      assert.notEqual(tun!.ioctl, 'EACCES', 'Landlock let the ioctl through to the tun driver');
    },
  );

  it('grants a character device read-write with its ioctls; devices not granted are refused', async () => {
    const without = await run(['--ro', DEVICE_PROBE, '--', DEVICE_PROBE, '/dev/full', '/dev/zero']);
    assert.equal(without.status, 0, without.stderr);
    const [fullWithout, zeroWithout] = probeLines(without.stdout);
    assert.equal(fullWithout!.open, 'EACCES', 'a device that was not granted cannot be opened');
    assert.equal(zeroWithout!.open, 'ok', '/dev/zero is one of the defaults');
    assert.equal(zeroWithout!.ioctl, 'EACCES', 'the defaults get no ioctls (Landlock IOCTL_DEV)');

    const granted = await run([
      '--device',
      '/dev/full',
      '--ro',
      DEVICE_PROBE,
      '--',
      DEVICE_PROBE,
      '/dev/full',
      '/dev/zero',
      '/etc/hostname',
    ]);
    assert.equal(granted.status, 0, granted.stderr);
    const [full, zero, file] = probeLines(granted.stdout);
    assert.deepEqual(full, { open: 'ok', ioctl: 'ENOTTY', read: 'ok' }, 'ENOTTY: the ioctl reached the driver');
    assert.equal(zero!.ioctl, 'EACCES', 'the grant gives ioctls on the granted node only');
    assert.equal(file!.open, 'EACCES', 'the grant does not widen write access elsewhere (/etc is read-only)');
  });

  it(
    'applies to the granted inode only: the same device at another node is refused, and its directory stays closed',
    { skip: !isRoot && 'mknod needs CAP_MKNOD' },
    async () => {
      const dir = join(tmp.path, 'nodes');
      mkdirSync(dir);
      const a = join(dir, 'null-a');
      const b = join(dir, 'null-b');
      for (const node of [a, b]) assert.equal(spawnSync('mknod', [node, 'c', '1', '3']).status, 0);
      writeFileSync(join(dir, 'plain.txt'), 'plain\n');

      const r = await run(['--device', a, '--ro', DEVICE_PROBE, '--', DEVICE_PROBE, a, b, join(dir, 'plain.txt')]);
      assert.equal(r.status, 0, r.stderr);
      const [ra, rb, plain] = probeLines(r.stdout);
      assert.deepEqual(ra, { open: 'ok', ioctl: 'ENOTTY', read: 'ok' });
      assert.equal(rb!.open, 'EACCES', 'the same device (1:3) at a node that was not granted');
      assert.equal(plain!.open, 'EACCES', 'a file beside the granted node');

      const create = await run(['--device', a, '--', 'sh', '-c', `echo x > ${join(dir, 'new.txt')} && echo created`]);
      assert.equal(create.stdout, '', 'nothing may be created beside the granted node');
      assert.deepEqual(readdirSync(dir).sort(), ['null-a', 'null-b', 'plain.txt']);
    },
  );

  it('refuses anything but a character device, and a missing node, before starting anything', async () => {
    const file = join(tmp.path, 'regular');
    writeFileSync(file, '');
    const cases: Array<[string, RegExp]> = [
      [file, /--device .*regular: a regular file; only character devices may be granted/],
      [tmp.path, /: a directory; only character devices may be granted/],
      [join(tmp.path, 'missing'), /--device .*missing: no such device node/],
    ];
    if (isRoot) {
      const block = join(tmp.path, 'block');
      assert.equal(spawnSync('mknod', [block, 'b', '7', '250']).status, 0);
      cases.push([block, /: a block device; only character devices may be granted/]);
    }
    for (const [path, message] of cases) {
      const r = await run(['--device', path, '--', 'echo', 'started']);
      assert.equal(r.status, 125, path);
      assert.match(r.stderr, message);
      assert.equal(r.stdout, '', 'the command did not start');
    }
  });

  it('the helper itself refuses a device grant on anything but a character device, on the inode it grants', () => {
    const [ours, theirs] = native.socketpair(C.SOCK_SEQPACKET, false);
    try {
      for (const [path, code] of [
        ['/etc/hostname', 'ENODEV'],
        [join(tmp.path, 'nothing-here'), 'ENOENT'],
        ['/dev/full', null],
      ] as const) {
        const r = spawnSync(HELPER_PATH, ['--hook-from', '3', '--device', 'rwti', path, '--', 'true'], {
          stdio: ['ignore', 'pipe', 'pipe', theirs],
          encoding: 'utf8',
        });
        if (code) {
          assert.equal(r.status, 125, r.stderr);
          assert.ok(r.stderr.includes(`fatal\tdevice\t${code}\t${path}`), r.stderr);
        } else {
          assert.ok(r.stderr.includes('exec\ttrue'), r.stderr); // confinement done; true itself is not readable here
          assert.match(r.stderr, /device\tgrant\twrite_file,read_file,truncate,ioctl_dev\tioctl-enforced\t\/dev\/full/);
        }
      }
    } finally {
      native.close(ours);
      native.close(theirs);
    }
  });

  it('--report shows each device grant and whether Landlock restricts its ioctls', async () => {
    const r = await run(['--report', '--device', '/dev/full', '--', 'true']);
    assert.equal(r.status, 0, r.stderr);
    const abi = Number(
      /landlock: ABI \d+(?: \(enforcing the rights of ABI (\d+)|)/.exec(r.stderr)?.[1] ?? /landlock: ABI (\d+)/.exec(r.stderr)?.[1],
    );
    if (abi >= 5)
      assert.match(
        r.stderr,
        /device \/dev\/full: write_file,read_file,truncate,ioctl_dev; ioctls allowed on this node \(Landlock IOCTL_DEV\)/,
      );
    else assert.match(r.stderr, /device \/dev\/full: .*ioctls are not restricted by Landlock/);

    // Before ABI 5 the helper says so in its line, and the report says what that means.
    const old = emptyReport();
    for (const line of [
      'landlock\tabi\t4\t4',
      'landlock\trule\twrite_file,read_file,truncate\tfile\t/dev/kvm',
      'device\tgrant\twrite_file,read_file,truncate\tioctl-unrestricted\t/dev/kvm',
      'landlock\tenforced\t4',
    ])
      parseReportLine(old, line);
    assert.deepEqual(old.devices, [{ path: '/dev/kvm', rights: ['write_file', 'read_file', 'truncate'], ioctlEnforced: false }]);
    assert.ok(
      formatReport(old).includes(
        '  device /dev/kvm: write_file,read_file,truncate; ioctls are not restricted by Landlock (ABI 4 < 5, no IOCTL_DEV)',
      ),
      formatReport(old).join('\n'),
    );
  });

  const kvm = ((): string | false => {
    try {
      closeSync(openSync('/dev/kvm', 'r+'));
      return false;
    } catch (err) {
      return `no usable /dev/kvm here (${(err as NodeJS.ErrnoException).code})`;
    }
  })();
  it(
    'QEMU runs a guest with -accel kvm confined, given --device /dev/kvm (ioctls on the VM and vCPU fds are not device ioctls)',
    { skip: kvm, timeout: 60_000 },
    async () => {
      const args = ['-accel', 'kvm', '-S', '-nodefaults', '-display', 'none', '-m', '128'];
      const qemu = await spawnQemu(args, { prefix: openhookRun(['--device', '/dev/kvm']) });
      try {
        assert.deepEqual(await qemu.qmp.execute('query-kvm'), { enabled: true, present: true });
        await qemu.qmp.execute('cont');
        const status = await qemu.qmp.execute<{ status: string }>('query-status');
        assert.equal(status.status, 'running', 'the vCPU runs: KVM_RUN and the other vCPU ioctls went through');
      } finally {
        await qemu.quit();
      }
      await assert.rejects(spawnQemu(args, { prefix: openhookRun([]) }), /Could not access KVM kernel module: Permission denied/);
    },
  );
});

describe('run --pass-fd', () => {
  it('keeps passed fds at their numbers; the hook moves to a free number, named by OPENHOOK_FD', async () => {
    const one = join(tmp.path, 'one.txt');
    const two = join(tmp.path, 'two.txt');
    writeFileSync(one, 'first file\n');
    writeFileSync(two, 'second file\n');
    const fdOne = openSync(one, 'r');
    const fdTwo = openSync(two, 'r');
    try {
      // The test's own fds get whatever numbers; run gets them at 3 and 5 (and 6, not passed).
      const r = await run(['--pass-fd', '3', '--pass-fd', '5', '--', 'sh', '-c', 'echo hook=$OPENHOOK_FD; cat <&3; cat <&5'], {
        3: fdOne,
        5: fdTwo,
        6: fdOne,
      });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout, 'hook=4\nfirst file\nsecond file\n');

      const fds = await run(['--pass-fd', '3', '--pass-fd', '5', '--ro', CONFINED_PROBE, '--', CONFINED_PROBE, 'fds'], {
        3: fdOne,
        5: fdTwo,
        6: fdOne,
      });
      assert.equal(fds.stdout.trim(), 'fds=0,1,2,3,4,5', 'fd 6 of run was not passed: CMD does not see it');

      const report = await run(['--report', '--pass-fd', '3', '--pass-fd', '5', '--', 'true'], { 3: fdOne, 5: fdTwo });
      assert.match(report.stderr, /hook: fd 4 \(OPENHOOK_FD\); passed fds: 3, 5; every other fd above stdio closed/);

      const again = openSync(one, 'r'); // a fresh offset: the runs above read fdOne to its end
      const explicit = await run(['--pass-fd', '3', '--fd', '9', '--', 'sh', '-c', 'echo hook=$OPENHOOK_FD; cat <&3'], { 3: again });
      closeSync(again);
      assert.equal(explicit.stdout, 'hook=9\nfirst file\n');
    } finally {
      closeSync(fdOne);
      closeSync(fdTwo);
    }
  });

  it("refuses a hook number that is also passed, a passed fd that is not open, and one of run's own fds", async () => {
    const file = join(tmp.path, 'one.txt');
    writeFileSync(file, 'x\n');
    const fd = openSync(file, 'r');
    try {
      const collide = await run(['--pass-fd', '5', '--fd', '5', '--', 'echo', 'started'], { 5: fd });
      assert.equal(collide.status, 125);
      assert.match(collide.stderr, /--fd 5 is also a --pass-fd/);
      assert.equal(collide.stdout, '');

      const missing = await run(['--pass-fd', '200', '--', 'echo', 'started']);
      assert.equal(missing.status, 125);
      assert.match(missing.stderr, /--pass-fd 200: fd 200 is not open in openhook run/);
      assert.equal(missing.stdout, '');

      const stdio = await run(['--pass-fd', '1', '--', 'echo', 'started']);
      assert.equal(stdio.status, 125);
      assert.match(stdio.stderr, /a passed fd must be a number from 3 up/);
    } finally {
      closeSync(fd);
    }
    // Node's own fds (its event loop's epoll, eventfds, self-pipes) are never passed on by mistake.
    const own = readdirSync('/proc/self/fd')
      .map(Number)
      .filter((n) => {
        try {
          return readlinkSync(`/proc/self/fd/${n}`) === 'anon_inode:[eventpoll]';
        } catch {
          return false;
        }
      });
    assert.ok(own.length > 0, 'this Node process has an epoll fd');
    assert.match(passFdProblem(own[0]!) ?? '', /is one of openhook run's own \(anon_inode:\[eventpoll\]\)/);
    assert.equal(passFdProblem(0), null, 'an ordinary inherited fd may be passed');
  });

  it('a passed device fd was opened outside the sandbox: CMD may use it, ioctls included, without --device', async () => {
    const full = openSync('/dev/full', 'r+');
    try {
      const r = await run(['--pass-fd', '5', '--ro', DEVICE_PROBE, '--', DEVICE_PROBE, 'fd:5', '/dev/full'], { 5: full });
      assert.equal(r.status, 0, r.stderr);
      const [passed, opened] = probeLines(r.stdout);
      assert.deepEqual(passed, { open: 'ok', ioctl: 'ENOTTY', read: 'ok' });
      assert.equal(opened!.open, 'EACCES', 'opening the same device inside is still refused');
    } finally {
      closeSync(full);
    }
  });

  it('QEMU serves QMP on a listening socket passed with --pass-fd (-chardev socket,fd=N,server=on)', { timeout: 60_000 }, async () => {
    const path = join(tmp.path, 'qmp.sock');
    const listener = native.listenUnix(path, C.SOCK_STREAM, 0o600, 4);
    const N = 7;
    const args = [...MACHINE, '-chardev', `socket,id=c,fd=${N},server=on,wait=off`, '-mon', 'chardev=c,mode=control'];
    const child = start(['--pass-fd', String(N), '--', 'qemu-system-x86_64', ...args], { [N]: listener.fd });
    native.close(listener.fd); // QEMU holds the only listener now
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    try {
      const qmp = await connectQmp({ path, timeout: 30_000 });
      const status = await qmp.execute<{ status: string }>('query-status');
      assert.equal(status.status, 'prelaunch');
      await qmp.execute('quit').catch(() => {});
      qmp.close();
      assert.equal(await exited, 0, stderr);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});
