/**
 * Learn mode's parts, without a confined program: the minimal form of a learned policy, the TOML it
 * is written in, the allow-everything policy, and the report parser. (test/run.test.ts runs learn
 * mode end to end.)
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fromText } from '../src/bytestring.js';
import { allowEverythingPolicy, LearnRecorder, mountPoints } from '../src/launch/learn.js';
import { formatPolicy, literalPattern, minimalRules, tomlString, type ListDirectory } from '../src/launch/learned-policy.js';
import { emptyReport, parseReportLine } from '../src/launch/report.js';
import { Access } from '../src/policy/access.js';
import { tempDir } from './helpers.js';

const R = Access.READ,
  W = Access.WRITE,
  C = Access.CREATE,
  D = Access.DIRECTORY;

/** A directory tree in memory: path → entries (a trailing '/' marks a directory). */
function fakeTree(tree: Record<string, string[]>): ListDirectory {
  return (dir) => tree[dir]?.map((e) => ({ name: e.replace(/\/$/, ''), isDirectory: e.endsWith('/') })) ?? null;
}

const show = (rules: ReturnType<typeof minimalRules>): string[] => rules.map((r) => `${r.path}${r.tree ? '/' : ''}:${r.access}`);

describe('learned policy: minimal form', () => {
  it('collapses a directory whose every entry was used, and keeps exact rules elsewhere', () => {
    const list = fakeTree({ '/d': ['a', 'b/', 'c'], '/d/b': ['x', 'y'], '/e': ['p', 'q'] });
    const used = new Map([
      ['/d/b/x', R],
      ['/d/b/y', R],
      ['/e/p', R | W],
    ]);
    assert.deepEqual(show(minimalRules(used, list)), ['/d/b/:1', '/e/p:3']);
  });

  it('climbs as high as every entry on the way was used', () => {
    const list = fakeTree({ '/srv': ['vm/'], '/srv/vm': ['a', 'sub/'], '/srv/vm/sub': ['b'] });
    const used = new Map([
      ['/srv/vm/a', R],
      ['/srv/vm/sub/b', R | W],
    ]);
    assert.deepEqual(show(minimalRules(used, list)), ['/srv/:3']);
  });

  it('never collapses to /', () => {
    const list = fakeTree({ '/': ['only'] });
    assert.deepEqual(show(minimalRules(new Map([['/only', R]]), list)), ['/only:1']);
  });

  it('an unused symlink, file or empty directory keeps its directory from collapsing', () => {
    for (const extra of ['link', 'unused', 'empty/']) {
      const list = fakeTree({ '/d': ['a', extra], '/d/empty': [] });
      assert.deepEqual(show(minimalRules(new Map([['/d/a', R]]), list)), ['/d/a:1'], extra);
    }
  });

  it('gives the narrowest letters covering every request, c bringing w', () => {
    const list = fakeTree({ '/d': ['a', 'b'] });
    assert.deepEqual(
      show(
        minimalRules(
          new Map([
            ['/d/a', R],
            ['/d/b', C],
          ]),
          list,
        ),
      ),
      [`/d/:${R | W | C}`],
    );
    assert.deepEqual(show(minimalRules(new Map([['/x/new', C]]), fakeTree({}))), [`/x/new:${W | C}`]);
  });

  it("a collapsed tree grants what its own directory was asked for: tar opens many/ itself ('d')", () => {
    const list = fakeTree({ '/w': ['many/', 'other'], '/w/many': ['a', 'b'] });
    const used = new Map([
      ['/w/many', R],
      ['/w/many/a', R],
      ['/w/many/b', R],
      ['/w/out.tar', W | C],
    ]);
    assert.deepEqual(show(minimalRules(used, list, (p) => p === '/w/many')), [`/w/many/:${R | D}`, `/w/out.tar:${W | C}`]);
  });

  it("adds 'd' where a path that was read is a directory", () => {
    const list = fakeTree({ '/d': ['sub/', 'other'] });
    const rules = minimalRules(
      new Map([
        ['/d/sub', R],
        ['/d/other-file', W],
      ]),
      list,
      (p) => p === '/d/sub',
    );
    assert.deepEqual(show(rules), [`/d/other-file:${W}`, `/d/sub:${R | D}`]);
  });

  it('reads only directories that hold something used', () => {
    const read: string[] = [];
    const list: ListDirectory = (dir) => {
      read.push(dir);
      return dir === '/home/u'
        ? [
            { name: 'big/', isDirectory: true },
            { name: 'f', isDirectory: false },
          ]
        : null;
    };
    minimalRules(new Map([['/home/u/f', R]]), list);
    assert.deepEqual(read, ['/home/u'], 'the unused subdirectory big/ is never listed');
  });

  it('works on the real filesystem', () => {
    const t = tempDir();
    after(t.cleanup);
    mkdirSync(join(t.path, 'in'));
    writeFileSync(join(t.path, 'in', 'one'), '1');
    writeFileSync(join(t.path, 'in', 'two'), '2');
    writeFileSync(join(t.path, 'left'), '');
    const used = new Map([
      [fromText(join(t.path, 'in', 'one')), R],
      [fromText(join(t.path, 'in', 'two')), R],
    ]);
    assert.deepEqual(show(minimalRules(used)), [`${t.path}/in/:1`]);
  });
});

describe('learned policy: TOML', () => {
  it('writes the subset every loader reads', () => {
    const text = formatPolicy(
      [
        { path: '/srv/vm', tree: true, access: R | W },
        { path: '/etc/app.conf', tree: false, access: R },
      ],
      ['learned'],
    );
    assert.equal(text, '# learned\n\n[[rule]]\nallow = "/srv/vm/"\naccess = "rw"\n\n[[rule]]\nallow = "/etc/app.conf"\naccess = "r"\n');
  });

  it('writes * and \\ in names escaped, so that a learned name is never a glob', () => {
    assert.equal(literalPattern('/a*b\\c'), '/a\\*b\\\\c');
    const text = formatPolicy([{ path: '/srv/*', tree: true, access: R }]);
    assert.match(text, /^allow = "\/srv\/\\\\\*\/"$/m);
  });

  it('escapes quotes, backslashes and control characters, so a name cannot add a rule', () => {
    assert.equal(tomlString('/a"b\\c'), '"/a\\"b\\\\c"');
    const evil = fromText('/tmp/x"\n[[rule]]\nallow = "/"\naccess = "rwc');
    const text = formatPolicy([{ path: evil, tree: false, access: R }]);
    assert.equal(text.match(/^\[\[rule\]\]$/gm)?.length, 1, text);
    assert.match(text, /allow = "\/tmp\/x\\"\\u000a\[\[rule\]\]\\u000aallow = \\"\/\\"/);
  });

  it('writes UTF-8 names as text, and leaves out names that are not UTF-8 (TOML cannot hold them)', () => {
    assert.equal(tomlString(fromText('/srv/é')), '"/srv/é"');
    const bad = '/tmp/\xff\n[[rule]]';
    assert.equal(tomlString(bad), null);
    const text = formatPolicy([{ path: bad, tree: false, access: R }]);
    assert.doesNotMatch(text, /^\[\[rule\]\]/m);
    assert.match(text, /^# not written: the name is not UTF-8: \/tmp\/\\xff\\x0a\[\[rule\]\]/m);
  });

  it('escapes newlines in header comments', () => {
    assert.doesNotMatch(formatPolicy([], ['a\n[[rule]]']), /^\[\[rule\]\]/m);
  });
});

describe('learn mode: recording and the allow-everything policy', () => {
  it('records normalised paths and the union of their access; skips refused flags', () => {
    const rec = new LearnRecorder();
    const base = {
      time: 0,
      peer: { pid: 1, uid: 0, gid: 0, groups: null },
      command: 1,
      flags: 0,
      mode: 0,
      allowed: true,
      rule: null,
      errno: 0,
      reason: '',
      latencyUs: 0,
    };
    rec.record({ ...base, path: '/a//b/./c', access: R });
    rec.record({ ...base, path: '/a/b/c', access: W });
    rec.record({ ...base, path: '/x', access: 0 });
    rec.record({ ...base, path: 'relative', access: R });
    assert.deepEqual([...rec.used], [['/a/b/c', R | W]]);
  });

  it('parses mount points, octal escapes included, and skips autofs', () => {
    const info = [
      '22 1 0:21 / / rw,relatime - ext4 /dev/sda1 rw',
      '23 22 0:22 / /mnt/with\\040space rw - tmpfs tmpfs rw',
      '24 22 0:23 / /proc/sys/fs/binfmt_misc rw - autofs systemd-1 rw',
    ].join('\n');
    assert.deepEqual(mountPoints(info), ['/', '/mnt/with space']);
  });

  it('allows r, w and c everywhere, each path beneath its own mount', () => {
    const policy = allowEverythingPolicy(['/', '/proc', '/openhook-no-such-mount']);
    try {
      const d = policy.decide({ pid: 1, uid: 0, gid: 0, groups: null }, '/proc/self/status', R);
      assert.equal(d.allowed, true);
      assert.equal(d.rule?.path, '/proc');
      assert.equal(policy.decide({ pid: 1, uid: 0, gid: 0, groups: null }, '/etc/x', R | W | C).allowed, true);
      assert.equal(policy.rules.length, 2, 'a mount point that cannot be opened is left out');
    } finally {
      policy.close();
    }
  });
});

describe('launch report', () => {
  it('parses the helper lines, escapes undone', () => {
    const r = emptyReport();
    for (const line of [
      'fds\thook\t3',
      'landlock\tabi\t9\t7',
      'landlock\thandled\texecute,read_file',
      'landlock\trule\texecute,read_file\tbeneath\t/with\\x09tab',
      'landlock\tskip\tENOENT\t/lib64',
      'landlock\tenforced\t7',
      'seccomp\trule\tsocket\tdomain==AF_UNIX\terrno EACCES',
      'seccomp\tenforced\t97',
      'something\tnew',
    ])
      parseReportLine(r, line);
    assert.equal(r.hookFd, 3);
    assert.equal(r.landlock.abi, 9);
    assert.equal(r.landlock.usedAbi, 7);
    assert.deepEqual(r.landlock.rules, [{ rights: ['execute', 'read_file'], kind: 'beneath', path: '/with\ttab' }]);
    assert.deepEqual(r.landlock.skipped, [{ path: '/lib64', reason: 'ENOENT' }]);
    assert.deepEqual(r.seccomp.rules, [{ syscall: 'socket', condition: 'domain==AF_UNIX', action: 'errno EACCES' }]);
    assert.equal(r.seccomp.instructions, 97);
    assert.deepEqual(r.unknown, ['something\tnew']);
  });
});
