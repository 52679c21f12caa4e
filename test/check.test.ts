/** `openhook check`: what it prints, and its exit status (0 allow, 1 deny, 2 bad policy). */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { CLI, tempDir } from './helpers.js';

const tmp = tempDir();
after(tmp.cleanup);
const vm = join(tmp.path, 'vm');
mkdirSync(join(vm, 'private'), { recursive: true });
const policy = join(tmp.path, 'vm.toml');
writeFileSync(
  policy,
  `[[rule]]
allow = "${vm}/"
access = "rwd"

[[rule]]
deny = "${vm}/private/"

[[client]]
uid = 107
[[client.rule]]
allow = "${vm}/*.img"
access = "r"

[[client]]
session = "ci"
[[client.rule]]
deny = "${vm}/"
deny_errno = "ENOENT"
`,
);

function check(...args: string[]): { status: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [CLI, 'check', ...args], { encoding: 'utf8' });
  return { status: r.status, out: r.stdout, err: r.stderr };
}

describe('openhook check', () => {
  it('allows, naming the rule with file:line, the section, and where the open happens (exit 0)', () => {
    const r = check('--policy', policy, `${vm}/disk.img`, 'rw');
    assert.equal(r.status, 0, r.err);
    assert.equal(
      r.out,
      `allow ${vm}/disk.img rw\n  why: allowed by ${policy}:1\n  needs: r read, w write (includes truncate)\n  rule: ${policy}:1: allow ${vm}/ rwd\n` +
        `  client: uid 0, gid 0, groups ${process.getgroups!().join(',')} -> default section\n  opens: disk.img beneath ${vm}\n`,
    );
  });

  it('denies, naming the deny rule (exit 1)', () => {
    const r = check('--policy', policy, `${vm}/private/key`, 'r');
    assert.equal(r.status, 1);
    assert.match(
      r.out,
      new RegExp(
        `^deny \\(EACCES\\) ${vm}/private/key r\n  why: denied by ${policy}:5\n  needs: r read\n  rule: ${policy}:5: deny ${vm}/private/\n`,
      ),
    );
  });

  it('denies what no rule covers, and what needs more than the rule grants', () => {
    let r = check('--policy', policy, '/etc/passwd', 'r');
    assert.equal(r.status, 1);
    assert.match(r.out, /^deny \(EACCES\) \/etc\/passwd r\n {2}why: no rule covers this path \(default deny\)\n/);
    r = check('--policy', policy, '--uid', '107', '--gid', '107', `${vm}/a.img`, 'rw');
    assert.equal(r.status, 1);
    assert.match(r.out, /grants 'r', the request needs 'rw'/);
    assert.match(r.out, /client: uid 107, gid 107 -> section \[\[client\]\] at .*:8/);
  });

  it('explains as another client: uid, gid, groups, session', () => {
    assert.equal(check('--policy', policy, '--uid', '107', '--gid', '1', `${vm}/a.img`, 'r').status, 0);
    assert.equal(check('--policy', policy, '--uid', '107', `${vm}/a.txt`, 'r').status, 1);
    const r = check('--policy', policy, '--uid', '5', '--session', 'ci', `${vm}/a.img`, 'r');
    assert.equal(r.status, 1);
    assert.match(r.out, /^deny \(ENOENT\)/);
    assert.match(r.out, /session ci -> section/);
  });

  it('knows the d letter: directories only where the rule allows them', () => {
    assert.equal(check('--policy', policy, `${vm}/sub`, 'rd').status, 0);
    const r = check('--allow', `${vm}/:r`, `${vm}/sub`, 'rd');
    assert.equal(r.status, 1);
    assert.match(r.out, /does not allow directories/);
    assert.doesNotMatch(r.out, /opens:/, 'a denied request opens nothing');
  });

  it('refuses names with .. before any rule', () => {
    const r = check('--policy', policy, `${vm}/../etc/passwd`, 'r');
    assert.equal(r.status, 1);
    assert.match(r.out, /refused before any rule is consulted: '\.\.' in name/);
  });

  it('exits 2 for a bad policy, with file:line:column, and for bad arguments', () => {
    const bad = join(tmp.path, 'bad.toml');
    writeFileSync(bad, '[[rule]]\nallow = "/a/"\naccess = "rz"\n');
    let r = check('--policy', bad, '/a/b', 'r');
    assert.equal(r.status, 2);
    assert.equal(r.err, `openhook check: ${bad}:3:1: unknown access letter 'z' in 'rz' (use letters of rwcdmusaxnb, or 'all')\n`);
    assert.equal(r.out, '');
    r = check('--policy', join(tmp.path, 'none.toml'), '/a/b', 'r');
    assert.equal(r.status, 2);
    assert.match(r.err, /cannot read the policy: ENOENT/);
    assert.equal(check('--policy', policy, '/a/b', 'rq').status, 2);
    assert.equal(check('--policy', policy, '/a/b').status, 2);
    assert.equal(check('--policy', policy, '--allow', '/a/:r', '/a/b', 'r').status, 2);
    assert.equal(check('/a/b', 'r').status, 2, 'no policy at all');
  });
});
