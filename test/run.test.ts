/**
 * `openhook run`: real confined processes. Every check runs a real program under the real launch
 * helper, with Landlock and seccomp applied by the kernel, and looks at what the program could and
 * could not do.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { HELPER_PATH } from '../src/launch/launch.js';
import { C, native } from '../src/native.js';
import { CLI, fixture, ROOT, tempDir } from './helpers.js';

const tmp = tempDir('openhook-run-');
after(tmp.cleanup);

let PROBE = '';
let WITHOUT = '';
let FIXTURES = '';
const outside = join(tmp.path, 'outside');
const secret = join(outside, 'secret.txt');
const other = join(tmp.path, 'other', 'other.txt');

before(() => {
  PROBE = fixture('confined-probe');
  WITHOUT = fixture('without');
  FIXTURES = dirname(PROBE);
  mkdirSync(outside);
  mkdirSync(dirname(other));
  writeFileSync(secret, 'the secret\n');
  writeFileSync(other, 'not in any rule\n');
});

/** The environment of a run, without any hook variables of the test runner's own. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const key of Object.keys(env)) if (key.startsWith('OPENHOOK_')) delete env[key];
  return env;
}

function run(args: string[], prefix: string[] = []): SpawnSyncReturns<string> {
  const argv = [...prefix, process.execPath, CLI, 'run', ...args];
  return spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', env: cleanEnv(), timeout: 60_000, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Runs the probe confined (its directory readable); returns its stdout lines by name. */
function probe(
  steps: string[],
  runArgs: string[] = [],
): { status: number | null; signal: string | null; out: Record<string, string>; stdout: string; stderr: string } {
  const r = run([...runArgs, '--ro', FIXTURES, '--', PROBE, ...steps]);
  const out: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    for (const pair of line.split(' ')) {
      const eq = pair.indexOf('=');
      if (eq > 0) out[pair.slice(0, eq)] = pair.slice(eq + 1);
    }
  }
  return { status: r.status, signal: r.signal, out, stdout: r.stdout, stderr: r.stderr };
}

function landlockAbi(): number {
  const r = run(['--report', '--', 'true']);
  const m = /landlock: ABI (\d+)/.exec(r.stderr);
  return m ? Number(m[1]) : 0;
}

describe('run: the program cannot open files itself', () => {
  it('refuses open, openat, openat2, creat and write outside the system paths', () => {
    const unconfined = spawnSync(PROBE, ['opens', secret], { encoding: 'utf8' });
    assert.match(unconfined.stdout, /^open=ok openat=ok openat2=ok/, 'the probe can open the file when not confined');
    rmSync(`${secret}.creat`, { force: true });

    const { status, out, stderr } = probe(['opens', secret]);
    assert.equal(status, 0, stderr);
    for (const call of ['open', 'openat', 'openat2', 'creat', 'write'])
      assert.match(out[call] ?? '', /^(EACCES|EPERM)$/, `${call}: ${out[call]}`);
    assert.equal(existsSync(`${secret}.creat`), false);
  });

  it('may read the system paths, but write nowhere, not even as root', () => {
    const { out } = probe(['opens', '/etc/hostname']);
    assert.equal(out.open, 'ok');
    assert.equal(out.openat2, 'ok');
    assert.match(out.write ?? '', /^(EACCES|EPERM)$/);
    assert.match(out.creat ?? '', /^(EACCES|EPERM)$/, 'no file may be created in /etc');
  });

  it('may read and write /dev/null', () => {
    const { out } = probe(['opens', '/dev/null']);
    assert.equal(out.open, 'ok');
    assert.equal(out.write, 'ok');
  });

  it('refuses reads of files outside /usr /lib /bin /sbin /etc, and reaches --ro additions', () => {
    assert.equal(probe(['opens', secret], ['--ro', outside]).out.open, 'ok');
    assert.match(probe(['opens', other], ['--ro', outside]).out.open ?? '', /^(EACCES|EPERM)$/);
  });

  it('refuses io_uring_setup', () => {
    const outsideRun = spawnSync(PROBE, ['io_uring'], { encoding: 'utf8' }).stdout.trim();
    const { out } = probe(['io_uring']);
    assert.equal(out.io_uring_setup, 'ENOSYS', `unconfined: ${outsideRun}`);
  });

  it('refuses open_by_handle_at and name_to_handle_at', () => {
    const { out } = probe(['handles', '/etc/hostname']);
    assert.equal(out.name_to_handle_at, 'EPERM');
    assert.equal(out.open_by_handle_at, 'EPERM');
  });

  it('refuses UNIX datagram sockets (even with high bits set), allows stream and seqpacket ones (the hook decides their connect and bind) and socketpair', () => {
    const { out } = probe(['unix']);
    assert.equal(out.socket, 'ok');
    assert.equal(out.socket_highbits, 'ok');
    assert.equal(out.seqpacket, 'ok');
    assert.equal(out.dgram, 'EACCES');
    assert.equal(out.dgram_flags, 'EACCES');
    assert.equal(out.dgram_highbits, 'EACCES');
    assert.equal(out.socketpair, 'ok');
  });

  it('without the syscall hook (--preload), refuses every UNIX socket (even with high bits set in the domain) but allows socketpair', () => {
    const { out } = probe(['unix'], ['--preload']);
    assert.equal(out.socket, 'EACCES');
    assert.equal(out.socket_highbits, 'EACCES');
    assert.equal(out.seqpacket, 'EACCES');
    assert.equal(out.dgram, 'EACCES');
    assert.equal(out.socketpair, 'ok');
  });

  it('refuses metadata changes by path (chmod, chown, utimes, xattrs, truncate)', () => {
    const { out } = probe(['metadata', secret]);
    const calls = [
      'chmod',
      'fchmodat',
      'fchmodat2',
      'utimensat',
      'setxattr',
      'lsetxattr',
      'removexattr',
      'lremovexattr',
      'chown',
      'lchown',
      'fchownat',
      'truncate',
    ];
    // xattrs by path: EOPNOTSUPP under the hook (programs then fall back to chmod, which the policy decides)
    for (const call of calls) assert.match(out[call] ?? '', /^(EACCES|EPERM|EOPNOTSUPP)$/, `${call}: ${out[call]}`);
    assert.equal(readFileSync(secret, 'utf8'), 'the secret\n');
  });

  it('refuses ptrace, TIOCSTI even with high bits in the command, and TIOCLINUX', () => {
    const { out } = probe(['ptrace', 'tiocsti']);
    assert.equal(out.ptrace, 'EPERM');
    assert.equal(out.tiocsti, 'EPERM');
    assert.equal(out.tiocsti_highbits, 'EPERM');
    assert.equal(out.tioclinux, 'EPERM');
  });

  it('kills a program that makes x32 syscalls', { skip: process.arch !== 'x64' && 'x86_64 only' }, () => {
    const r = probe(['x32']);
    assert.equal(r.status, 128 + 31, `x32: killed by SIGSYS (status ${r.status}, ${r.stdout})`);
    assert.equal(r.stdout, '');
  });

  it('kills a program that makes i386 syscalls (int $0x80)', { skip: process.arch !== 'x64' && 'x86_64 only' }, (t) => {
    // A kernel without i386 emulation (IA32_EMULATION=n, or ia32_emulation=0 on the command line)
    // faults int $0x80 before any seccomp filter sees it, confined or not: nothing to test there.
    const unconfined = spawnSync(PROBE, ['int80'], { encoding: 'utf8' });
    if (unconfined.status !== 0) {
      return t.skip(
        `int $0x80 fails unconfined too (${unconfined.signal ?? `status ${unconfined.status}`}): this kernel has no i386 emulation`,
      );
    }
    assert.match(unconfined.stdout, /^int80=\d+\n$/, 'unconfined, the i386 getpid works');
    const r = probe(['int80']);
    assert.equal(r.status, 128 + 31, `int80: killed by SIGSYS (status ${r.status}, ${r.stdout})`);
    assert.equal(r.stdout, '');
  });

  it('holds no capabilities and has no_new_privs set', () => {
    const { out } = probe(['caps', 'nnp']);
    assert.equal(out.effective, '000000000');
    assert.equal(out.permitted, '000000000');
    assert.equal(out.inheritable, '000000000');
    if (process.getuid?.() === 0) assert.equal(out.bounding, '0');
    assert.equal(out.nnp, '1');
  });

  it('cannot signal processes outside its sandbox, nor reach outside abstract sockets (Landlock ABI 6)', { timeout: 30_000 }, async (t) => {
    if (landlockAbi() < 6) return t.skip('Landlock ABI < 6');
    const { out } = probe(['kill-parent']);
    assert.equal(out.kill, 'EPERM');

    const name = `openhook-test-${process.pid}`;
    const listener = spawn(PROBE, ['listen-abstract', name], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve) => listener.stdout.once('data', () => resolve()));
      const unconfined = spawnSync(PROBE, ['abstract', name], { encoding: 'utf8' });
      assert.equal(unconfined.stdout.trim(), 'abstract=ok', 'the socket is reachable from outside the sandbox');
      const r = probe(['abstract', name], ['--allow-unix-sockets']);
      assert.equal(r.out.abstract, 'EPERM');
    } finally {
      listener.kill('SIGKILL');
    }
  });
});

describe('run: fds', () => {
  it('closes every fd but stdio and the hook, even ones run itself inherited', { timeout: 30_000 }, async () => {
    const leaked = openSync(secret, 'r');
    const child = spawn(process.execPath, [CLI, 'run', '--ro', FIXTURES, '--', PROBE, 'fds'], {
      env: cleanEnv(),
      stdio: ['ignore', 'pipe', 'pipe', leaked, leaked, leaked, leaked, leaked],
    });
    closeSync(leaked);
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    const status = await new Promise((res) => child.on('close', res));
    assert.equal(status, 0);
    assert.equal(out.trim(), 'fds=0,1,2,3');
  });

  it('puts the hook at --fd N and exports OPENHOOK_FD=N', () => {
    const r = run(['--fd', '9', '--ro', FIXTURES, '--', PROBE, 'fds']);
    assert.equal(r.stdout.trim(), 'fds=0,1,2,9');
    const env = run(['--fd', '9', '--', 'sh', '-c', 'echo $OPENHOOK_FD; echo $OPENHOOK_PASSTHROUGH']);
    const [fd, passthrough] = env.stdout.trim().split('\n');
    assert.equal(fd, '9');
    assert.ok(passthrough!.split(':').includes('/usr/'), passthrough);
  });

  it('never passes on OPENHOOK_SOCKET: the program is served through its hook, never by a broker it finds by path', () => {
    const argv = [CLI, 'run', '--', 'sh', '-c', 'echo "socket=${OPENHOOK_SOCKET-unset}"'];
    const r = spawnSync(process.execPath, argv, {
      encoding: 'utf8',
      env: { ...cleanEnv(), OPENHOOK_SOCKET: join(tmp.path, 'another-broker.sock') },
    });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'socket=unset');
  });
});

describe('run: files through the hook', () => {
  it('a C program gets a denied file through the hook with an RFC frame on fd 3', () => {
    const { status, out, stdout } = probe(['opens', secret, 'hook', secret], ['--allow', `${outside}/:r`]);
    assert.equal(status, 0);
    // Its own open(2) is trapped and answered by the same broker (the syscall hook): allowed too.
    assert.equal(out.open, 'ok');
    assert.match(stdout, /hook=ok content=the secret/);
  });

  it('the broker still refuses what the policy does not allow', () => {
    const r = probe(['hook', other, 'hookcreate', join(outside, 'new.txt')], ['--allow', `${outside}/:r`]);
    assert.match(r.stdout, /^hook=EACCES$/m);
    assert.match(r.stdout, /^hookcreate=EACCES$/m);
  });

  it('a created file comes through the hook, and only through it', () => {
    const created = join(outside, 'created.txt');
    const r = probe(['hookcreate', created], ['--allow', `${outside}/:rwc`]);
    assert.match(r.stdout, /hookcreate=ok/);
    assert.equal(readFileSync(created, 'utf8'), 'created\n');
    rmSync(created);
  });

  it('a Node program gets the file with the client library (OPENHOOK_FD)', () => {
    const lib = pathToFileURL(join(ROOT, 'dist', 'index.js')).href;
    const r = run([
      '--allow',
      `${outside}/:r`,
      '--ro',
      ROOT,
      '--',
      process.execPath,
      join(ROOT, 'test', 'fixtures', 'hook-client.mjs'),
      lib,
      secret,
    ]);
    assert.equal(r.status, 0, r.stderr);
    const got = JSON.parse(r.stdout) as { direct: string; hook: string; content: string; tagged: boolean };
    assert.equal(got.direct, 'ok'); // the syscall hook answers its own open under the same policy
    assert.equal(got.hook, 'ok');
    assert.equal(got.content, 'the secret');
  });

  it('ends the session when the program exits, even if a descendant keeps the hook', { timeout: 30_000 }, async () => {
    const child = spawn(
      process.execPath,
      [CLI, 'run', '--allow', `${outside}/:r`, '--ro', FIXTURES, '--', PROBE, 'linger', '1500', secret],
      { env: cleanEnv() },
    );
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const closed = new Promise((res) => child.stdout.on('close', res)); // when the descendant exits too
    const status = await new Promise<number | null>((res) => child.on('exit', res));
    assert.equal(status, 0, 'run ends with the program, not with its descendants');
    await closed;
    assert.match(out, /linger-parent=exiting/);
    assert.match(out, /linger=(ECONNRESET|EPIPE)/, out);
  });
});

describe('run: sessions', () => {
  it('serves the program as its session: sections match --session, or the command name by default', () => {
    const policyFile = join(tmp.path, 'sessions.toml');
    writeFileSync(
      policyFile,
      [
        'unmatched = "refuse"',
        '[[client]]',
        'session = "vm1"',
        '[[client.rule]]',
        `allow = "${outside}/"`,
        'access = "r"',
        '[[client]]',
        'session = "confined-probe"',
        '[[client.rule]]',
        `allow = "${other}"`,
        'access = "r"',
        '',
      ].join('\n'),
    );
    const vm1 = probe(['hook', secret, 'hook', other], ['--policy', policyFile, '--session', 'vm1']);
    assert.deepEqual(vm1.stdout.trim().split('\n'), ['hook=ok content=the secret', 'hook=EACCES']);
    const byName = probe(['hook', secret, 'hook', other], ['--policy', policyFile]);
    assert.deepEqual(byName.stdout.trim().split('\n'), ['hook=EACCES', 'hook=ok content=not in any rule']);
    const none = probe(['hook', secret], ['--policy', policyFile, '--session', 'nobody-knows']);
    assert.match(none.stderr, /no section for session nobody-knows/);
    assert.equal(none.stdout.trim(), 'hook=EACCES');
  });
});

describe('run: exit status and signals', () => {
  it('passes on the exit code', () => {
    assert.equal(run(['--', 'sh', '-c', 'exit 7']).status, 7);
    assert.equal(run(['--', 'true']).status, 0);
  });

  it('turns death by signal N into 128+N', () => {
    assert.equal(run(['--', 'sh', '-c', 'kill -TERM $$']).status, 143);
    assert.equal(probe(['raise', '9']).status, 137);
  });

  it('says so when the command is missing or cannot run', () => {
    const missing = run(['--', 'openhook-no-such-command']);
    assert.equal(missing.status, 127);
    assert.match(missing.stderr, /command not found/);
    const outsideCmd = run(['--', PROBE, 'exit', '0']); // not beneath any read-only path
    assert.equal(outsideCmd.status, 126);
    assert.match(outsideCmd.stderr, /--ro/);
  });

  for (const [signal, number] of [
    ['SIGTERM', 15],
    ['SIGINT', 2],
    ['SIGHUP', 1],
  ] as const) {
    it(`forwards ${signal} to the program`, { timeout: 30_000 }, async () => {
      const child = spawn(process.execPath, [CLI, 'run', '--ro', FIXTURES, '--', PROBE, 'wait-signal'], { env: cleanEnv() });
      let out = '';
      await new Promise<void>((resolve) => child.stdout.on('data', (d) => ((out += d), out.includes('ready') && resolve())));
      child.kill(signal);
      const status = await new Promise((res) => child.on('close', (code) => res(code)));
      assert.match(out, new RegExp(`got=${number}`));
      assert.equal(status, 100 + number);
    });
  }
});

describe('run: the program does not outlive its broker', () => {
  /** The pids of a process's children, from every one of its threads. */
  function childrenOf(pid: number): number[] {
    const pids: number[] = [];
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      const text = readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8').trim();
      if (text) pids.push(...text.split(' ').map(Number));
    }
    return pids;
  }

  it('kills the program when run itself dies (kill -9), since nothing could serve it again', { timeout: 30_000 }, async () => {
    const child = spawn(process.execPath, [CLI, 'run', '--ro', FIXTURES, '--', PROBE, 'wait-signal'], { env: cleanEnv() });
    let out = '';
    await new Promise<void>((resolve) => child.stdout.on('data', (d) => ((out += d), out.includes('ready') && resolve())));
    const [program] = childrenOf(child.pid!);
    assert.ok(program, 'run has a child');
    assert.match(readFileSync(`/proc/${program}/cmdline`, 'latin1'), /confined-probe/);
    // 'exit', not 'close': a surviving program would hold run's stdout open forever.
    const exited = new Promise((res) => child.on('exit', res));
    child.kill('SIGKILL');
    await exited;
    child.stdout.destroy();
    let alive = true;
    for (let i = 0; i < 200 && alive; i++) {
      // A zombie (reaped by init soon) counts as dead: it runs nothing.
      try {
        alive = !/^State:\s+Z/m.test(readFileSync(`/proc/${program}/status`, 'utf8'));
      } catch {
        alive = false;
      }
      if (alive) await new Promise((res) => setTimeout(res, 25));
    }
    if (alive) process.kill(program!, 'SIGKILL'); // do not leave it behind when the check fails
    assert.equal(alive, false, 'the confined program outlived run');
  });

  it('the helper refuses to start the program if its parent is not the launching process', () => {
    const [hook, peer] = native.socketpair(C.SOCK_SEQPACKET, false);
    try {
      const r = spawnSync(HELPER_PATH, ['--hook-from', '3', '--parent', '1', '--path', 'rx', '/usr', '--', '/usr/bin/true'], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe', hook],
      });
      assert.equal(r.status, 125, r.stderr);
      assert.match(r.stderr, /fatal\tparent\tESRCH/);
      const ok = spawnSync(
        HELPER_PATH,
        ['--hook-from', '3', '--parent', String(process.pid), '--path', 'rx', '/usr', '--', '/usr/bin/true'],
        { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe', hook] },
      );
      assert.equal(ok.status, 0, ok.stderr);
      assert.match(ok.stderr, new RegExp(`parent\twatched\t${process.pid}\tSIGKILL`));
    } finally {
      native.close(hook);
      native.close(peer);
    }
  });
});

describe('run --report', () => {
  it('prints the Landlock ABI, the handled rights, the rules and the seccomp rules', () => {
    const r = run(['--report', '--ro', '/openhook-no-such-dir', '--', 'true']);
    assert.equal(r.status, 0, r.stderr);
    const text = r.stderr;
    const abi = Number(/landlock: ABI (\d+)/.exec(text)?.[1]);
    assert.ok(abi >= 1, text);
    const handled = /handled access rights: (.*)/.exec(text)![1]!.split(' ');
    for (const right of ['execute', 'write_file', 'read_file', 'read_dir', 'remove_file', 'make_reg', 'make_sym'])
      assert.ok(handled.includes(right), right);
    if (abi >= 2) assert.ok(handled.includes('refer'));
    if (abi >= 3) assert.ok(handled.includes('truncate'));
    if (abi >= 5) assert.ok(handled.includes('ioctl_dev'));
    if (abi >= 6) assert.match(text, /scoped: abstract_unix_socket signal/);
    assert.match(text, /allow execute,read_file,read_dir beneath \/usr$/m);
    assert.match(text, /allow write_file,read_file(,truncate)? on file \/dev\/null$/m);
    assert.match(text, /skipped \/openhook-no-such-dir \(ENOENT\)/);
    assert.match(text, /fd 3 \(OPENHOOK_FD\); every other fd above stdio closed/);
    assert.match(text, /no_new_privs: set/);
    assert.match(text, /if the broker's process dies: the program gets SIGKILL/);
    assert.match(text, /seccomp: filter for \w+/);
    assert.match(text, /io_uring_setup: errno ENOSYS/);
    assert.match(text, /open_by_handle_at: errno EPERM/);
    assert.match(text, /name_to_handle_at: errno EPERM/);
    assert.match(text, /ptrace: errno EPERM/);
    assert.match(text, /socket with domain==AF_UNIX,type!=STREAM,SEQPACKET: errno EACCES/);
    assert.match(text, /any syscall with arch!=\w+: kill-process/);
  });

  it('prints the report before the program writes anything', () => {
    const r = spawnSync(process.execPath, [CLI, 'run', '--report', '--', 'sh', '-c', 'echo program-output >&2'], {
      encoding: 'utf8',
      env: cleanEnv(),
    });
    assert.ok(r.stderr.indexOf('seccomp:') < r.stderr.indexOf('program-output'), r.stderr);
  });
});

describe('run: fails closed', () => {
  it('refuses to start when Landlock is unavailable', () => {
    const r = run(['--ro', FIXTURES, '--', PROBE, 'opens', secret], [WITHOUT, 'landlock']);
    assert.equal(r.status, 125);
    assert.match(r.stderr, /Landlock is not available \(ENOSYS/);
    assert.match(r.stderr, /--allow-unconfined/);
    assert.equal(r.stdout, '', 'the program never ran');
  });

  it('runs with --allow-unconfined, and says what is missing', () => {
    const r = run(['--allow-unconfined', '--report', '--ro', FIXTURES, '--', PROBE, 'io_uring'], [WITHOUT, 'landlock']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /landlock: NOT enforced \(ENOSYS\)/);
    assert.match(r.stderr, /WARNING: running without Landlock/);
    assert.match(r.stdout, /io_uring_setup=ENOSYS/, 'seccomp still applies');
  });

  it('refuses to start when seccomp filters are unavailable', () => {
    const r = run(['--ro', FIXTURES, '--', PROBE, 'exit', '0'], [WITHOUT, 'seccomp']);
    assert.equal(r.status, 125);
    assert.match(r.stderr, /seccomp is not available/);
  });

  it('refuses a bad option or policy with status 125, before starting anything', () => {
    assert.equal(run(['--no-such-option', '--', 'true']).status, 125);
    const bad = run(['--allow', 'relative:r', '--', 'true']);
    assert.equal(bad.status, 125);
    assert.match(bad.stderr, /must be absolute/);
    const both = run(['--learn', join(tmp.path, 'x.toml'), '--allow', `${outside}/:r`, '--', 'true']);
    assert.equal(both.status, 125);
  });
});

describe('run --learn', () => {
  it('learns a minimal policy, and the program runs again under it', () => {
    const data = join(tmp.path, 'learn');
    const d1 = join(data, 'dir1');
    const d2 = join(data, 'dir2');
    const out = join(data, 'out');
    for (const d of [d1, d2, out]) mkdirSync(d, { recursive: true });
    writeFileSync(join(d1, 'a'), 'a\n');
    writeFileSync(join(d1, 'b'), 'b\n');
    writeFileSync(join(d2, 'c'), 'c\n');
    writeFileSync(join(d2, 'd'), 'd\n');
    const steps = ['hook', join(d1, 'a'), 'hook', join(d1, 'b'), 'hook', join(d2, 'c'), 'hookcreate', join(out, 'new.txt')];
    const policyFile = join(tmp.path, 'learned.toml');

    const learn = probe(steps, ['--learn', policyFile]);
    assert.equal(learn.status, 0, learn.stderr);
    assert.doesNotMatch(learn.stdout, /=E[A-Z]+/, learn.stdout);
    assert.match(learn.stderr, /learned 4 requests on 4 paths; wrote 3 rules/);

    const text = readFileSync(policyFile, 'utf8');
    const rules = [...text.matchAll(/\[\[rule\]\]\nallow = "([^"]*)"\naccess = "([a-z]+)"/g)].map((m) => `${m[1]}:${m[2]}`);
    assert.deepEqual(rules, [`${d1}/:r`, `${d2}/c:r`, `${out}/:wc`]);

    // Enforce what was learned: the same run succeeds, and nothing more is allowed.
    rmSync(join(out, 'new.txt'));
    const enforce = probe(
      [...steps, 'hook', join(d2, 'd')],
      rules.flatMap((r) => ['--allow', r]),
    );
    assert.equal(enforce.status, 0, enforce.stderr);
    const results = enforce.stdout.trim().split('\n');
    assert.deepEqual(results, ['hook=ok content=a', 'hook=ok content=b', 'hook=ok content=c', 'hookcreate=ok', 'hook=EACCES']);

    // And with the file itself, as a user would.
    rmSync(join(out, 'new.txt'));
    const fromFile = probe([...steps, 'hook', join(d2, 'd')], ['--policy', policyFile]);
    assert.equal(fromFile.status, 0, fromFile.stderr);
    assert.deepEqual(fromFile.stdout.trim().split('\n'), results);
  });

  it('writes names with * and \\ as exact paths, never as globs', () => {
    const dir = join(tmp.path, 'learn-odd');
    mkdirSync(join(dir, 'sub'), { recursive: true });
    const odd = join(dir, 'sub', 'a*b\\c');
    writeFileSync(odd, 'odd\n');
    writeFileSync(join(dir, 'sub', 'aXb\\c'), 'not asked for\n');
    const policyFile = join(tmp.path, 'odd.toml');
    const learn = probe(['hook', odd], ['--learn', policyFile]);
    assert.equal(learn.status, 0, learn.stderr);
    assert.match(readFileSync(policyFile, 'utf8'), /allow = ".*\/sub\/a\\\\\*b\\\\\\\\c"/);
    const enforce = probe(['hook', odd, 'hook', join(dir, 'sub', 'aXb\\c')], ['--policy', policyFile]);
    assert.deepEqual(enforce.stdout.trim().split('\n'), ['hook=ok content=odd', 'hook=EACCES']);
  });
});
