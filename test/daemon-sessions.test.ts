/**
 * Daemon-backed sessions with real processes: `openhook serve --policy` hosting programs that the
 * native launcher (openhook-exec) started, each under its own session section; refusals; four
 * confined QEMUs under one daemon, each kept to its own directory; and what a program gets when the
 * daemon dies under it.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, it } from 'node:test';
import type { StatusReport } from '../src/broker/metrics.js';
import { authorise, LAUNCHER_PATH } from '../src/hook/sessions.js';
import { compilePolicy, parsePolicyText } from '../src/policy/file.js';
import { C, native } from '../src/native.js';
import { Command, Feature } from '../src/protocol/constants.js';
import { decodeReply, encodeHello, encodeSession } from '../src/protocol/frames.js';
import { spawnQemu, type QemuProcess } from '../src/qemu/spawn.js';
import { CLI, forOthers, receiveOne, tempDir } from './helpers.js';
import { E } from '../src/errno.js';
import { MACHINE, makeImage } from './qemu-helpers.js';
import { killLeftovers, startDaemon, type Daemon } from './service-helpers.js';

const PYTHON = '/usr/bin/python3';
const hasQemu = spawnSync('qemu-system-x86_64', ['--version']).status === 0;
const NOBODY = 65534;

const tmp = tempDir('openhook-sessions-');
chmodSync(tmp.path, 0o711); // others reach the socket (the daemon decides), and list nothing
after(() => {
  killLeftovers();
  tmp.cleanup();
});

/** A policy with one section per session, each allowed its own directory only. */
function sessionPolicy(name: string, sessions: string[], extra = ''): string {
  const file = join(tmp.path, `${name}.toml`);
  let text = 'unmatched = "refuse"\n';
  for (const s of sessions) {
    const dir = join(tmp.path, s);
    mkdirSync(dir, { recursive: true });
    text += `[[client]]\nname = "${s}"\nsession = "${s}"\n[[client.rule]]\nallow = "${dir}/"\naccess = "rwcm"\n`;
  }
  writeFileSync(file, text + extra);
  return file;
}

interface Exec {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** openhook-exec ARGS -- CMD, to its end (bounded). */
function exec(
  socket: string,
  session: string,
  cmd: string[],
  options: { uid?: number; input?: string; launcher?: string } = {},
): Promise<Exec> {
  return new Promise((resolve, reject) => {
    const child = spawn(options.launcher ?? LAUNCHER_PATH, ['--socket', socket, '--session', session, '--', ...cmd], {
      stdio: ['pipe', 'pipe', 'pipe'],
      ...(options.uid !== undefined ? { uid: options.uid, gid: options.uid } : {}),
    });
    let stdout = '',
      stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.stdin.on('error', () => {}); // a refused launcher may exit before it reads
    child.stdin.end(options.input ?? '');
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`openhook-exec ${session} ${cmd.join(' ')} did not finish within 20 s: ${stderr}`));
    }, 20_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

async function statusJson(socket: string): Promise<StatusReport> {
  const r = spawnSync(process.execPath, [CLI, 'status', '--json', '--socket', socket], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as StatusReport;
}

/** One request on a fresh SOCK_SEQPACKET connection to path, its reply and the fd that came with it. */
async function ask(
  path: string,
  frame: Buffer,
): Promise<{ command: number; result: number; features: number; payload: string; fd: number }> {
  const fd = native.connectUnix(Buffer.from(path), C.SOCK_SEQPACKET);
  try {
    assert.equal(native.send(fd, frame, 0, frame.length, -1), frame.length);
    const { bytes, fds } = await receiveOne(fd);
    const buf = Buffer.from(bytes, 'hex');
    const reply = decodeReply(buf, 0, buf.length);
    assert.ok(reply, `a malformed reply: ${bytes}`);
    for (const extra of fds.slice(1)) native.close(extra);
    return {
      command: reply.command,
      result: reply.result,
      features: reply.features,
      payload: reply.payload?.toString('utf8') ?? '',
      fd: fds[0] ?? -1,
    };
  } finally {
    native.close(fd);
  }
}

type AuditLine = { client: { session?: string }; path: string; decision: string };

function auditLines(path: string): AuditLine[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditLine);
}

/** The audit log once it holds a line for each test (it is written in batches), or as it is after 10 s. */
async function auditHas(path: string, tests: Array<(l: AuditLine) => boolean>): Promise<AuditLine[]> {
  let lines = auditLines(path);
  for (let i = 0; i < 1000 && !tests.every((t) => lines.some(t)); i++) {
    await sleep(10);
    lines = auditLines(path);
  }
  return lines;
}

describe('daemon-backed sessions: openhook-exec under openhook serve', () => {
  it('the launcher is built', () => {
    assert.ok(existsSync(LAUNCHER_PATH), `${LAUNCHER_PATH}: run npm install`);
  });

  it("serves a program's opens from its session's section, audited under the session; refuses others", async () => {
    const policy = sessionPolicy('basic', ['s1', 's2']);
    writeFileSync(join(tmp.path, 's1', 'mine.txt'), 'mine\n');
    writeFileSync(join(tmp.path, 's2', 'theirs.txt'), 'theirs\n');
    const sock = join(tmp.path, 'basic.sock');
    const audit = join(tmp.path, 'basic-audit.log');
    const d = await startDaemon(['--socket', sock, '--policy', policy, '--audit', audit]);
    try {
      const own = await exec(sock, 's1', ['/bin/cat', join(tmp.path, 's1', 'mine.txt')]);
      assert.equal(own.code, 0, own.stderr);
      assert.equal(own.stdout, 'mine\n');
      const other = await exec(sock, 's1', ['/bin/cat', join(tmp.path, 's2', 'theirs.txt')]);
      assert.equal(other.code, 1);
      assert.match(other.stderr, /Permission denied/);
      // The program may create files and directories in its own directory (the daemon does it:
      // Landlock gives the program no write), and nothing outside it.
      const created = await exec(sock, 's2', [
        '/bin/sh',
        '-c',
        `echo new > ${join(tmp.path, 's2', 'new.txt')} && mkdir ${join(tmp.path, 's2', 'sub')}`,
      ]);
      assert.equal(created.code, 0, created.stderr);
      assert.equal(readFileSync(join(tmp.path, 's2', 'new.txt'), 'utf8'), 'new\n');
      assert.ok(existsSync(join(tmp.path, 's2', 'sub')));
      const outside = await exec(sock, 's2', ['/bin/mkdir', join(tmp.path, 's1', 'sub')]);
      assert.equal(outside.code, 1);
      assert.ok(!existsSync(join(tmp.path, 's1', 'sub')));
      await d.waitFor(/session s2 \(pid \d+\) ended/);
      const allowed = (l: AuditLine): boolean => l.client.session === 's1' && l.path.endsWith('s1/mine.txt') && l.decision === 'allow';
      const denied = (l: AuditLine): boolean => l.client.session === 's1' && l.path.endsWith('s2/theirs.txt') && l.decision === 'deny';
      const lines = await auditHas(audit, [allowed, denied]);
      assert.ok(lines.some(allowed), JSON.stringify(lines));
      assert.ok(lines.some(denied), JSON.stringify(lines));
      // Ended sessions are no longer listed.
      assert.deepEqual((await statusJson(sock)).sessions, { list: [], more: 0 });
    } finally {
      await d.stop();
    }
  });

  it('refuses, with the reason and exit status 125, a session no section names, one whose uid does not match, and a uid-less section to another uid', async () => {
    const policy = sessionPolicy(
      'refuse',
      ['r1'],
      `[[client]]\nname = "r2"\nsession = "r2"\nuid = 4242\n[[client.rule]]\nallow = "${tmp.path}/r2/"\naccess = "r"\n`,
    );
    const sock = join(tmp.path, 'refuse.sock');
    const d = await startDaemon(['--socket', sock, '--mode', '0666', '--policy', policy]);
    try {
      const unknown = await exec(sock, 'nope', ['/bin/true']);
      assert.equal(unknown.code, 125);
      assert.match(unknown.stderr, /^openhook-exec: session nope refused: no section of the policy .* is for session "nope" \(EACCES\)\n$/);
      const wrongUid = await exec(sock, 'r2', ['/bin/true']);
      assert.equal(wrongUid.code, 125);
      assert.match(wrongUid.stderr, /session r2 refused: section r2 is for session "r2", but not for uid 0, gid 0 \(EACCES\)/);
      // r1 names no uid: only the daemon's own uid (root here) and root may have it, not nobody,
      // whom no session would be granted, so that unmatched = "refuse" closes its connection at once.
      const other = await exec(sock, 'r1', ['/bin/true'], { uid: NOBODY, launcher: forOthers(LAUNCHER_PATH) });
      assert.equal(other.code, 125);
      assert.match(other.stderr, /the daemon closed the connection without answering/);
      const root = await exec(sock, 'r1', ['/bin/true']);
      assert.equal(root.code, 0, root.stderr);
      const noDaemon = await exec(join(tmp.path, 'none.sock'), 'r1', ['/bin/true']);
      assert.equal(noDaemon.code, 125);
      assert.match(noDaemon.stderr, /cannot connect to the daemon at .*none\.sock: No such file or directory/);
      assert.match(d.stderr(), /session refused to pid \d+ \(uid 0\): no section/);
    } finally {
      await d.stop();
    }
    const streamSock = join(tmp.path, 'refuse-stream.sock');
    const s = await startDaemon(['--socket', streamSock, '--stream', '--policy', policy]);
    try {
      const stream = await exec(streamSock, 'r1', ['/bin/true']);
      assert.equal(stream.code, 125);
      assert.match(stream.stderr, /is a SOCK_STREAM socket: sessions need the daemon's SOCK_SEQPACKET socket \(serve without --stream\)/);
    } finally {
      await s.stop();
    }
  });

  it(
    "SESSION is offered by HELLO, answered only on a connection to the socket: never on a session's own hook socket",
    { skip: !existsSync(PYTHON) && 'no /usr/bin/python3' },
    async () => {
      const policy = sessionPolicy('proto', ['p1', 'p2']);
      const sock = join(tmp.path, 'proto.sock');
      const d = await startDaemon(['--socket', sock, '--policy', policy]);
      try {
        const hello = await ask(sock, encodeHello(0xffff_ffff));
        assert.equal(hello.command, Command.HELLO);
        assert.ok(hello.features & Feature.SESSION, 'serve offers SESSION');
        const granted = await ask(sock, encodeSession('p1'));
        assert.equal(granted.result, 0);
        assert.ok(granted.fd >= 0, 'the hook socket comes with the reply');
        assert.match(granted.payload, /^rx \/usr\0/);
        native.close(granted.fd);
        const bad = await ask(sock, encodeSession('p1', [{ kind: 'ro', path: 'relative' }]));
        assert.equal(bad.result, -E.EINVAL);
        // From inside session p1, on its hook socket: asking for p2 is refused.
        const script = [
          'import os, socket, struct',
          's = socket.socket(fileno=int(os.environ["OPENHOOK_FD"]))',
          'name = b"p2"',
          `s.send(struct.pack("=IIIH", 14 + len(name), ${Command.SESSION}, 0, len(name)) + name)`,
          'size, cmd, result = struct.unpack("=IIi", s.recv(65536)[:12])',
          'print(cmd, result)',
        ].join('\n');
        const r = await exec(sock, 'p1', [PYTHON, '-c', script]);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stdout.trim(), `${Command.SESSION} -${E.EACCES}`);
      } finally {
        await d.stop();
      }
    },
  );

  it('ends a session whose launcher sends an fd that is not a seccomp listener, and one whose launcher hangs up without one', async () => {
    const policy = sessionPolicy('fake', ['f1']);
    const sock = join(tmp.path, 'fake.sock');
    const d = await startDaemon(['--socket', sock, '--policy', policy]);
    try {
      for (const send of [true, false]) {
        const conn = native.connectUnix(Buffer.from(sock), C.SOCK_SEQPACKET);
        const frame = encodeSession('f1');
        assert.equal(native.send(conn, frame, 0, frame.length, -1), frame.length);
        const { fds } = await receiveOne(conn);
        assert.equal(fds.length, 1);
        native.close(fds[0]!);
        assert.equal((await statusJson(sock)).sessions?.list[0]?.state, 'starting');
        if (send) {
          const notAListener = native.open('/dev/null', C.O_RDONLY, 0);
          assert.equal(native.sendFds(conn, Buffer.from('L'), [notAListener]), 1);
          native.close(notAListener);
          await d.waitFor(/session f1 \(pid \d+\): the launcher sent an fd that is not a seccomp listener; session ended/);
        }
        native.close(conn);
        for (let i = 0; i < 500 && (await statusJson(sock)).sessions?.list.length; i++) await sleep(10);
        assert.deepEqual((await statusJson(sock)).sessions, { list: [], more: 0 });
      }
    } finally {
      await d.stop();
    }
  });

  it(
    'a daemon that dies under a program: its next trapped open fails with ENOSYS at once, it does not hang',
    { skip: !existsSync(PYTHON) && 'no /usr/bin/python3' },
    async () => {
      const policy = sessionPolicy('restart', ['k1']);
      const file = join(tmp.path, 'k1', 'data');
      writeFileSync(file, 'data');
      const sock = join(tmp.path, 'restart.sock');
      const d: Daemon = await startDaemon(['--socket', sock, '--policy', policy]);
      const script = [
        'import errno, sys',
        `print(open(${JSON.stringify(file)}).read(), flush=True)`,
        'sys.stdin.readline()',
        'try:',
        `    open(${JSON.stringify(file)})`,
        '    print("opened", flush=True)',
        'except OSError as e:',
        '    print(errno.errorcode[e.errno], flush=True)',
      ].join('\n');
      const child = spawn(LAUNCHER_PATH, ['--socket', sock, '--session', 'k1', '--', PYTHON, '-c', script], {
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let out = '',
        err = '';
      child.stdout.on('data', (x) => (out += x));
      child.stderr.on('data', (x) => (err += x));
      child.stdin.on('error', () => {});
      const closed = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
      try {
        for (let i = 0; i < 1000 && !out.includes('\n'); i++) await sleep(10);
        assert.equal(out, 'data\n', err);
        const listed = await statusJson(sock);
        assert.equal(listed.sessions?.list.length, 1);
        assert.equal(listed.sessions?.list[0]?.name, 'k1');
        assert.equal(listed.sessions?.list[0]?.pid, child.pid);
        d.kill('SIGKILL');
        await d.exited;
        child.stdin.end('go\n');
        const code = await Promise.race([closed, sleep(10_000).then(() => 'hung' as const)]);
        assert.notEqual(code, 'hung', 'the program hangs after the daemon died');
        assert.equal(code, 0, err);
        assert.equal(out, 'data\nENOSYS\n');
      } finally {
        child.kill('SIGKILL');
        d.kill('SIGKILL');
      }
    },
  );
});

describe('who may have a session (authorise)', () => {
  const policy = compilePolicy(
    parsePolicyText(
      [
        '[[client]]\nname = "by-uid"\nuid = 500\n[[client.rule]]\nallow = "/srv/a/"\naccess = "r"',
        '[[client]]\nname = "s1"\nsession = "s1"\nuid = [500, 501]\n[[client.rule]]\nallow = "/srv/s1/"\naccess = "r"',
        '[[client]]\nname = "open"\nsession = "open"\n[[client.rule]]\nallow = "/srv/open/"\naccess = "r"',
      ].join('\n'),
      'authorise.toml',
    ),
  );
  const peer = (uid: number): { pid: number; uid: number; gid: number; groups: number[] } => ({ pid: 1, uid, gid: uid, groups: [] });

  it('grants the section that names the session and decides for the peer', () => {
    const s = authorise(policy, peer(501), 's1', 0);
    assert.equal(typeof s === 'string' ? s : s.name, 's1');
  });

  it('refuses when a broader section comes first for that peer, when none names the session, and a uid-less section to others than root and the daemon', () => {
    assert.match(
      authorise(policy, peer(500), 's1', 0) as string,
      /for uid 500 and session "s1", section by-uid comes first, and it does not name the session/,
    );
    assert.match(authorise(policy, peer(501), 'nope', 0) as string, /no section of the policy \(authorise\.toml\) is for session "nope"/);
    assert.match(authorise(policy, peer(502), 's1', 0) as string, /section s1 is for session "s1", but not for uid 502/);
    assert.match(
      authorise(policy, peer(502), 'open', 0) as string,
      /section open names no uid or gid, so only the daemon's own uid \(0\) and root may have session "open"/,
    );
    assert.equal(typeof authorise(policy, peer(502), 'open', 502), 'object');
    assert.equal(typeof authorise(policy, peer(0), 'open', 502), 'object');
  });
});

describe('four confined QEMUs under one daemon', { skip: !hasQemu && 'no qemu-system-x86_64' }, () => {
  it('each opens its own image, a cross-access is denied and audited, and status lists the 4 sessions', { timeout: 120_000 }, async () => {
    const names = ['vm1', 'vm2', 'vm3', 'vm4'];
    const policy = sessionPolicy('qemu', names);
    for (const n of names) makeImage(join(tmp.path, n, 'disk.qcow2'));
    const sock = join(tmp.path, 'qemu.sock');
    const audit = join(tmp.path, 'qemu-audit.log');
    const d = await startDaemon(['--socket', sock, '--policy', policy, '--audit', audit]);
    const vms: QemuProcess[] = [];
    try {
      const started = await Promise.allSettled(
        names.map((n) =>
          spawnQemu([...MACHINE, '-blockdev', `driver=file,node-name=disk,filename=${join(tmp.path, n, 'disk.qcow2')}`], {
            prefix: [LAUNCHER_PATH, '--socket', sock, '--session', n, '--'],
            timeout: 60_000,
          }),
        ),
      );
      for (const s of started) if (s.status === 'fulfilled') vms.push(s.value);
      for (const s of started) if (s.status === 'rejected') throw s.reason;
      // Each has its own image open.
      for (const [i, q] of vms.entries()) {
        const nodes = await q.qmp.execute<Array<{ 'node-name': string; file: string }>>('query-named-block-nodes');
        assert.ok(
          nodes.some((x) => x.file.endsWith(`${names[i]}/disk.qcow2`)),
          JSON.stringify(nodes),
        );
      }
      const report = await statusJson(sock);
      assert.deepEqual(report.sessions?.list.map((s) => s.name).sort(), names);
      assert.deepEqual(report.sessions?.list.map((s) => s.pid).sort(), vms.map((q) => q.child.pid).sort());
      assert.ok(report.sessions?.list.every((s) => s.state === 'running' && s.hook.installed >= 1));
      const text = spawnSync(process.execPath, [CLI, 'status', '--socket', sock], { encoding: 'utf8' }).stdout;
      for (const n of names) assert.match(text, new RegExp(`^    ${n}  pid \\d+, uid 0, running, up `, 'm'));
      // vm1 reaches for vm2's image: denied, and the audit log says who.
      await assert.rejects(
        vms[0]!.qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'theirs', filename: join(tmp.path, 'vm2', 'disk.qcow2') }),
        { name: 'QmpError', desc: /Could not open '.*vm2\/disk\.qcow2': Permission denied/ },
      );
      const cross = (l: AuditLine): boolean => l.client.session === 'vm1' && l.path.endsWith('vm2/disk.qcow2') && l.decision === 'deny';
      const own = names.map(
        (n) =>
          (l: AuditLine): boolean =>
            l.client.session === n && l.path.endsWith(`${n}/disk.qcow2`) && l.decision === 'allow',
      );
      const lines = await auditHas(audit, [cross, ...own]);
      assert.ok(lines.some(cross), JSON.stringify(lines.slice(-5)));
      for (const [i, n] of names.entries()) assert.ok(lines.some(own[i]!), n);
    } finally {
      await Promise.all(vms.map((q) => q.quit(5000)));
      await d.stop();
    }
  });
});
