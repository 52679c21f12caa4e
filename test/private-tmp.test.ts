/**
 * `openhook run`'s private temporary directory: made 0700 under the real temp directory, named by
 * TMPDIR (TMP, TEMP), granted through the policy, gone when the session ends; the real temp
 * directory itself never granted. And its removal, which never follows a symlink out.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fromText } from '../src/bytestring.js';
import { Access } from '../src/policy/access.js';
import { parsePolicyText, compilePolicy } from '../src/policy/index.js';
import { makePrivateTmp, privateTmpRule, removePrivateTmp, withRule } from '../src/launch/private-tmp.js';
import { CLI, tempDir } from './helpers.js';

const tmp = tempDir('openhook-ptmp-');
const parent = realpathSync(tmp.path);
after(tmp.cleanup);

function run(args: string[], script: string): { status: number | null; stdout: string; stderr: string } {
  const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: parent };
  for (const key of Object.keys(env)) if (key.startsWith('OPENHOOK_')) delete env[key];
  const r = spawnSync(process.execPath, [CLI, 'run', '--preload', ...args, '--', 'sh', '-c', script], {
    encoding: 'utf8',
    env,
    timeout: 60_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('run: a private temporary directory per session', () => {
  it('is made 0700 under the real temp dir, named by TMPDIR, TMP and TEMP, usable, and gone at the end', () => {
    const r = run(
      [],
      'echo "$TMPDIR|$TMP|$TEMP"; echo hello > "$TMPDIR/f" && cat "$TMPDIR/f"; f=$(mktemp) && echo made $f; stat -c %a "$TMPDIR"',
    );
    assert.equal(r.status, 0, r.stderr);
    const [names, hello, made, mode] = r.stdout.trim().split('\n');
    const [dir, tmpVar, tempVar] = names!.split('|');
    assert.match(dir!, new RegExp(`^${parent}/openhook-session-`));
    assert.equal(tmpVar, dir);
    assert.equal(tempVar, dir);
    assert.equal(hello, 'hello');
    assert.ok(made!.startsWith(`made ${dir}/`), made);
    assert.equal(mode, '700');
    assert.ok(!existsSync(dir!), 'removed when the session ended');
    assert.deepEqual(
      readdirSync(parent).filter((n) => n.startsWith('openhook-session-')),
      [],
    );
  });

  it('does not grant the real temp directory', () => {
    const r = run([], `echo secret > "${parent}/outside" && echo WROTE; cat "${parent}/planted" && echo READ; true`);
    writeFileSync(join(parent, 'planted'), 'x');
    const again = run([], `cat "${parent}/planted" && echo READ; true`);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(!r.stdout.includes('WROTE'), r.stdout);
    assert.ok(!existsSync(join(parent, 'outside')));
    assert.ok(!again.stdout.includes('READ'), again.stdout);
  });

  it('--no-private-tmp: none is made, and TMPDIR is left as it was', () => {
    const r = run(['--no-private-tmp'], 'echo "$TMPDIR"; echo x > "$TMPDIR/f" && echo WROTE; true');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim().split('\n')[0], parent);
    assert.ok(!r.stdout.includes('WROTE'));
    assert.ok(!existsSync(join(parent, 'f')));
  });

  it('is granted in every client section of a policy, and only there', () => {
    const dir = makePrivateTmp(parent);
    try {
      const base = compilePolicy(
        parsePolicyText(
          '[[rule]]\nallow = "/srv/x/"\naccess = "r"\n\n[[client]]\nsession = "s"\n[[client.rule]]\nallow = "/srv/y/"\naccess = "r"\n',
          'p.toml',
        ),
      );
      const policy = withRule(base, privateTmpRule(dir));
      try {
        for (const session of ['s', 'other']) {
          const peer = { pid: 1, uid: 1, gid: 1, groups: [], session };
          const inside = policy.decide(peer, fromText(`${dir}/a/b`), Access.MKDIR | Access.REMOVE | Access.EXECUTE);
          assert.ok(inside.allowed, `${session}: ${inside.reason}`);
          const beside = policy.decide(peer, fromText(`${parent}/beside`), Access.READ);
          assert.ok(!beside.allowed);
        }
      } finally {
        policy.close();
      }
    } finally {
      removePrivateTmp(dir);
    }
  });
});

describe('removing the private temporary directory', () => {
  it('removes a deep tree without following symlinks out of it', () => {
    const outside = join(parent, 'keep');
    mkdirSync(join(outside, 'inner'), { recursive: true });
    writeFileSync(join(outside, 'inner', 'precious'), 'keep me');
    const dir = makePrivateTmp(parent);
    mkdirSync(join(dir, 'a', 'b', 'c'), { recursive: true });
    writeFileSync(join(dir, 'a', 'b', 'c', 'f'), 'x');
    symlinkSync(outside, join(dir, 'a', 'to-outside'));
    symlinkSync(join(outside, 'inner', 'precious'), join(dir, 'file-link'));
    assert.equal(removePrivateTmp(dir), true);
    assert.ok(!existsSync(dir));
    assert.equal(readFileSync(join(outside, 'inner', 'precious'), 'utf8'), 'keep me');
  });

  it('a symlink standing where the directory was is neither followed nor removed', () => {
    const outside = join(parent, 'keep2');
    mkdirSync(outside);
    writeFileSync(join(outside, 'precious'), 'keep me');
    const name = join(parent, 'openhook-session-swapped');
    symlinkSync(outside, name);
    assert.equal(removePrivateTmp(name), false);
    assert.equal(readFileSync(join(outside, 'precious'), 'utf8'), 'keep me');
  });
});

describe('run: x is fixed at launch', () => {
  it('a program in a tree whose rule grants x runs; without x it cannot be executed', () => {
    const bin = join(parent, 'bin');
    mkdirSync(bin);
    copyFileSync('/bin/true', join(bin, 'prog'));
    chmodSync(join(bin, 'prog'), 0o755);
    const env: NodeJS.ProcessEnv = { ...process.env };
    for (const key of Object.keys(env)) if (key.startsWith('OPENHOOK_')) delete env[key];
    const withX = spawnSync(process.execPath, [CLI, 'run', '--allow', `${bin}/:rx`, '--', join(bin, 'prog')], {
      encoding: 'utf8',
      env,
      timeout: 60_000,
    });
    assert.equal(withX.status, 0, withX.stderr);
    const withoutX = spawnSync(process.execPath, [CLI, 'run', '--allow', `${bin}/:r`, '--', join(bin, 'prog')], {
      encoding: 'utf8',
      env,
      timeout: 60_000,
    });
    assert.equal(withoutX.status, 126, withoutX.stderr);
  });
});
