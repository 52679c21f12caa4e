/**
 * What the commands tell a user who got something slightly wrong: a directory given without its
 * trailing '/', a program that failed without asking the broker, a file that is not executable, and
 * check's --gid (someone else's gid is not yours, so neither are your supplementary groups).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { CLI, startServe, tempDir } from './helpers.js';

const tmp = tempDir('openhook-hints-');
after(() => tmp.cleanup());
const dir = join(tmp.path, 'dir');
mkdirSync(dir);
writeFileSync(join(dir, 'f'), 'f\n');

function openhook(args: string[], timeout = 30_000): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('--allow DIR:ACCESS without the trailing /, DIR a directory', () => {
  const fix = new RegExp(`for the tree beneath it write --allow ${dir}/:rw\\b`);

  it('check, run and serve refuse it without d, naming the fix', () => {
    const check = openhook(['check', '--allow', `${dir}:rw`, join(dir, 'f'), 'r']);
    assert.equal(check.status, 2, check.stderr);
    assert.match(check.stderr, fix);
    const run = openhook(['run', '--allow', `${dir}:rw`, '--', 'true']);
    assert.equal(run.status, 125, run.stderr);
    assert.match(run.stderr, fix);
    const serve = openhook(['serve', '--socket', join(tmp.path, 'refused.sock'), '--allow', `${dir}:rw`]);
    assert.equal(serve.status, 2, serve.stderr);
    assert.match(serve.stderr, fix);
  });

  it('with d (list the directory itself) it stands, with a warning and the fix', async () => {
    const warning = new RegExp(
      `${dir} is a directory; without a trailing '/' the rule lets clients open \\(list\\) the directory itself, nothing in it: for the tree beneath it write --allow ${dir}/:rd`,
    );
    const check = openhook(['check', '--allow', `${dir}:rd`, dir, 'rd']);
    assert.equal(check.status, 0, check.stderr);
    assert.match(check.stderr, warning);
    const run = openhook(['run', '--allow', `${dir}:rd`, '--', 'true']);
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stderr, warning);
    const serve = await startServe(join(tmp.path, 'warned.sock'), ['--allow', `${dir}:rd`]);
    try {
      assert.match(serve.stderr(), warning);
    } finally {
      await serve.stop();
    }
  });

  it('a trailing / (the tree) and an exact file say nothing', () => {
    for (const rule of [`${dir}/:rw`, `${join(dir, 'f')}:rw`, `${join(dir, 'not-yet')}:rw`]) {
      const check = openhook(['check', '--allow', rule, join(dir, 'f'), 'r']);
      assert.equal(check.stderr, '', rule);
    }
  });
});

describe('run: CMD failed without asking the broker', () => {
  it('says that the kernel refused it, and which calls the syscall hook brokers', () => {
    const r = openhook(['run', '--log', '--allow', `${dir}/:r`, '--', 'sh', '-c', 'exit 3']);
    assert.equal(r.status, 3, r.stderr);
    assert.match(
      r.stderr,
      /sh exited with status 3 and asked the broker for nothing: if a call failed, the kernel refused it \(Landlock or the seccomp filter\), not the policy\. The syscall hook brokers only the calls --report lists as trapped/,
    );
  });

  it('says nothing when the syscall hook brokered an open', () => {
    const r = openhook(['run', '--allow', `${dir}/:r`, '--', 'cat', join(dir, 'missing')]);
    assert.equal(r.status, 1, r.stderr);
    assert.doesNotMatch(r.stderr, /asked the broker for nothing/);
  });

  it('with --preload, points at OPENHOOK_TRACE and --ro instead', () => {
    const r = openhook(['run', '--preload', '--allow', `${dir}/:r`, '--', 'sh', '-c', 'exit 3']);
    assert.equal(r.status, 3, r.stderr);
    assert.match(r.stderr, /sh exited with status 3 and asked the broker for nothing.*OPENHOOK_TRACE=1.*--ro PATH/);
  });

  it('says nothing when the broker was asked, or when CMD succeeded', () => {
    const asked = openhook(['run', '--preload', '--allow', `${dir}/:r`, '--', 'cat', join(dir, 'missing')]);
    assert.equal(asked.status, 1, asked.stderr);
    assert.doesNotMatch(asked.stderr, /asked the broker for nothing/);
    const ok = openhook(['run', '--', 'true']);
    assert.equal(ok.status, 0);
    assert.equal(ok.stderr, '');
  });
});

describe('run: exit 126', () => {
  const bin = join(tmp.path, 'bin');
  mkdirSync(bin);
  const script = join(bin, 'script');
  writeFileSync(script, '#!/bin/sh\necho ran\n');

  it('a file without execute permission in a --ro directory: blames the file, not the directory', () => {
    chmodSync(script, 0o644);
    const r = openhook(['run', '--ro', bin, '--', script]);
    assert.equal(r.status, 126, r.stderr);
    assert.match(r.stderr, new RegExp(`${script} is not executable \\(chmod \\+x it`));
    assert.doesNotMatch(r.stderr, /--ro/);
  });

  it('an executable file outside the confinement: blames the confinement', () => {
    chmodSync(script, 0o755);
    const r = openhook(['run', '--', script]);
    assert.equal(r.status, 126, r.stderr);
    assert.match(r.stderr, /inside the confinement a program can run only from \/usr, \/bin, \.\.\. or a directory given with --ro/);
    const ok = openhook(['run', '--ro', bin, '--', script]);
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(ok.stdout, 'ran\n');
  });

  it('a directory: says so', () => {
    const r = openhook(['run', '--ro', bin, '--', bin]);
    assert.equal(r.status, 126, r.stderr);
    assert.match(r.stderr, /is a directory, not a program/);
  });
});

describe('check --gid', () => {
  // A group this process is in (supplementary, which may be its primary gid too).
  const theirs = 4242;
  const mine = process.getgroups!().find((g) => g !== theirs);
  const policy = join(tmp.path, 'groups.toml');
  writeFileSync(policy, `unmatched = "default"\n\n[[client]]\ngid = ${mine ?? 0}\n[[client.rule]]\nallow = "${dir}/"\naccess = "r"\n`);

  it(
    'another gid drops your supplementary groups, as --uid does',
    { skip: mine === undefined && 'this process is in no supplementary group' },
    () => {
      const own = openhook(['check', '--policy', policy, join(dir, 'f'), 'r']);
      assert.equal(own.status, 0, own.stdout + own.stderr);
      const other = openhook(['check', '--policy', policy, '--gid', String(theirs), join(dir, 'f'), 'r']);
      assert.equal(other.status, 1, other.stdout);
      assert.match(other.stdout, new RegExp(`client: uid \\d+, gid ${theirs} -> default section`));
      const given = openhook(['check', '--policy', policy, '--gid', String(theirs), '--groups', String(mine), join(dir, 'f'), 'r']);
      assert.equal(given.status, 0, given.stdout);
    },
  );

  it('--help says so', () => {
    assert.match(openhook(['check', '--help']).stdout, /none with --uid or\s+--gid/);
  });
});
