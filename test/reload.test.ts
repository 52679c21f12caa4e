/**
 * Live reload of `openhook serve --policy`: SIGHUP and --watch; a bad, empty, missing or cut-short
 * file keeps the old policy; serve refuses to start with a bad policy; and a client hammering the
 * broker through 100 reloads sees only the old or the new decision, never an error.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { C } from '../src/native.js';
import { CLI, fdCount, probe, rfcOpenFrame, ROOT, sleep, startServe, tempDir, waitForStderr, type ServeProcess } from './helpers.js';

const tmp = tempDir();
after(tmp.cleanup);
const T = tmp.path;
mkdirSync(join(T, 'a'));
mkdirSync(join(T, 'b'));
writeFileSync(join(T, 'a', 'f'), 'a');
writeFileSync(join(T, 'b', 'f'), 'b');

const allowA = `[[rule]]\nallow = "${T}/a/"\naccess = "r"\n`;
const allowB = `[[rule]]\nallow = "${T}/b/"\naccess = "r"\n`;

/** Replaces the file atomically, as an editor or a deploy tool does. */
function install(file: string, text: string): void {
  writeFileSync(file + '.new', text);
  renameSync(file + '.new', file);
}

/** "a,b": which of the two files the broker lets us open now. */
function reach(socket: string): string {
  const lines = probe(socket, 'seqpacket', [rfcOpenFrame(join(T, 'a', 'f'), C.O_RDONLY), rfcOpenFrame(join(T, 'b', 'f'), C.O_RDONLY)]);
  return ['a', 'b'].filter((_, i) => / fds=1/.test(lines[i]!)).join(',');
}

describe('reload on SIGHUP', () => {
  const file = join(T, 'hup.toml');
  const socket = join(T, 'hup.sock');
  let serve: ServeProcess;
  let reloads = 0,
    failures = 0;
  before(async () => {
    install(file, allowA);
    serve = await startServe(socket, ['--policy', file]);
  });
  after(async () => {
    await serve.stop();
  });
  const hup = async (ok: boolean): Promise<void> => {
    serve.child.kill('SIGHUP');
    if (ok) await waitForStderr(serve, /policy reloaded \(SIGHUP\)/, ++reloads);
    else await waitForStderr(serve, /policy reload \(SIGHUP\) failed/, ++failures);
  };

  it('swaps in a good policy: the next request sees it', async () => {
    assert.equal(reach(socket), 'a');
    install(file, allowB);
    await hup(true);
    assert.equal(reach(socket), 'b');
  });

  it('keeps the old policy when the new one is malformed, naming line and column', async () => {
    install(file, allowA + '[[rule]]\nallow = "/x/"\naccess = "rz"\n');
    await hup(false);
    assert.match(serve.stderr(), new RegExp(`failed, the old policy stays in force: ${file}:6:1: unknown access letter 'z'`));
    assert.equal(reach(socket), 'b');
  });

  it('keeps the old policy when the file is empty, cut short, or missing', async () => {
    install(file, '');
    await hup(false);
    assert.match(serve.stderr(), /the policy has no rules/);
    install(file, allowA.slice(0, allowA.length - 5));
    await hup(false);
    assert.match(serve.stderr(), new RegExp(`${file}:3:\\d+: `));
    rmSync(file);
    await hup(false);
    assert.match(serve.stderr(), /cannot read the policy: ENOENT/);
    assert.equal(reach(socket), 'b');
    install(file, allowA);
    await hup(true);
    assert.equal(reach(socket), 'a');
  });
});

describe('reload with --watch', () => {
  it('reloads when the file is replaced or written in place', async () => {
    const file = join(T, 'watch.toml');
    const socket = join(T, 'watch.sock');
    install(file, allowA);
    const serve = await startServe(socket, ['--policy', file, '--watch']);
    try {
      assert.equal(reach(socket), 'a');
      install(file, allowB);
      await waitForStderr(serve, /policy reloaded \(file changed\)/, 1);
      assert.equal(reach(socket), 'b');
      writeFileSync(file, allowA + allowB);
      await waitForStderr(serve, /policy reloaded \(file changed\)/, 2);
      assert.equal(reach(socket), 'a,b');
      writeFileSync(file, '[[rule]]\nallow = oops\n');
      await waitForStderr(serve, /policy reload \(file changed\) failed/, 1);
      assert.match(serve.stderr(), new RegExp(`${file}:2:9: `));
      assert.equal(reach(socket), 'a,b');
    } finally {
      await serve.stop();
    }
  });
});

describe('serve with a bad policy', () => {
  it('refuses to start: exit 2, and the same message as a reload', () => {
    const file = join(T, 'bad.toml');
    writeFileSync(file, '[[rule]]\nallow = "/x/"\nacces = "r"\n');
    const r = spawnSync(process.execPath, [CLI, 'serve', '--socket', join(T, 'bad.sock'), '--policy', file], { encoding: 'utf8' });
    assert.equal(r.status, 2);
    assert.equal(
      r.stderr,
      `openhook serve: ${file}:3:1: unknown key 'acces' in [[rule]] (expected one of: allow, deny, access, follow_symlinks, fifos, hardlinks, deny_errno)\n`,
    );
    const missing = spawnSync(process.execPath, [CLI, 'serve', '--socket', join(T, 'bad.sock'), '--policy', join(T, 'none.toml')], {
      encoding: 'utf8',
    });
    assert.equal(missing.status, 2);
    const watchless = spawnSync(process.execPath, [CLI, 'serve', '--socket', join(T, 'bad.sock'), '--allow', `${T}/a/:r`, '--watch'], {
      encoding: 'utf8',
    });
    assert.equal(watchless.status, 2);
  });
});

describe('reload under load', () => {
  it('a client hammering through 100 reloads sees only the old or the new decision, never an error', async () => {
    const file = join(T, 'load.toml');
    const socket = join(T, 'load.sock');
    // Both policies allow a/f (through different rules and roots); only the first allows b/f.
    const first = `[[rule]]\nallow = "${T}/"\naccess = "r"\n`;
    const second = `[[rule]]\nallow = "${T}/a/f"\naccess = "r"\n[[rule]]\ndeny = "${T}/b/"\n`;
    install(file, first);
    const serve = await startServe(socket, ['--policy', file]);
    const script = `
      import { connect } from ${JSON.stringify(join(ROOT, 'dist', 'index.js'))};
      import { closeSync } from 'node:fs';
      const hook = await connect(${JSON.stringify(socket)});
      const seen = {};
      let stop = false;
      process.stdin.on('data', () => (stop = true));
      let n = 0;
      while (!stop) {
        for (const name of ['a', 'b']) {
          let key;
          try { closeSync(await hook.open(${JSON.stringify(T)} + '/' + name + '/f', 'r')); key = name + ':ok'; }
          catch (err) { key = name + ':' + (err.code ?? err.message); }
          seen[key] = (seen[key] ?? 0) + 1;
        }
        n++;
      }
      hook.close();
      console.log(JSON.stringify({ n, seen }));
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    try {
      await sleep(200);
      let fdsBefore = 0;
      for (let i = 1; i <= 100; i++) {
        install(file, i % 2 ? second : first);
        serve.child.kill('SIGHUP');
        await waitForStderr(serve, /policy reloaded \(SIGHUP\)/, i);
        // counted once the reload thread (and its fds) exists
        if (i === 1) fdsBefore = fdCount(serve.child.pid!);
      }
      child.stdin!.end('stop\n');
      await new Promise((r) => child.on('close', r));
      // Every retired policy's root fds were closed once no open used them any more.
      assert.ok(fdCount(serve.child.pid!) <= fdsBefore + 1, `fds ${fdsBefore} -> ${fdCount(serve.child.pid!)}`);
    } finally {
      await serve.stop();
    }
    const { n, seen } = JSON.parse(out) as { n: number; seen: Record<string, number> };
    assert.ok(n > 100, `the client made ${n} rounds`);
    assert.deepEqual(
      Object.keys(seen).sort(),
      ['a:ok', 'b:EACCES', 'b:ok'].filter((k) => seen[k]),
      JSON.stringify(seen),
    );
    for (const key of Object.keys(seen))
      assert.ok(['a:ok', 'b:ok', 'b:EACCES'].includes(key), `unexpected outcome ${key}: ${JSON.stringify(seen)}`);
    assert.ok(seen['b:ok']! > 0 && seen['b:EACCES']! > 0, `both policies were seen: ${JSON.stringify(seen)}`);
    assert.doesNotMatch(serve.stderr(), /failed/);
  });
});
