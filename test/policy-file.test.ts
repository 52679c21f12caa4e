/**
 * The policy file: the minimal subset every helper relies on, rule origins, and errors that name
 * the line and column of what is wrong.
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fromText } from '../src/bytestring.js';
import { Access } from '../src/policy/access.js';
import { loadPolicyFile, parsePolicyText, readPolicyFile } from '../src/policy/file.js';
import { PolicyError } from '../src/policy/rule.js';
import { tempDir } from './helpers.js';

const tmp = tempDir();
after(tmp.cleanup);
mkdirSync(join(tmp.path, 'vm', 'private'), { recursive: true });
const peer = { pid: 1, uid: 0, gid: 0, groups: [] };

/** The error's "line:column: message" for a policy text. */
function error(text: string): string {
  try {
    parsePolicyText(text, 'p.toml');
  } catch (err) {
    assert.ok(err instanceof PolicyError, String(err));
    return `${err.line ?? '-'}:${err.column ?? '-'}: ${err.message.replace(/^p\.toml(:\d+)*: /, '').split('\n')[0]}`;
  }
  return 'no error';
}

describe('policy file', () => {
  it('loads the minimal subset of team.md, and every rule knows its file:line', () => {
    const file = join(tmp.path, 'min.toml');
    writeFileSync(file, `# minimal\n[[rule]]\nallow = "${tmp.path}/vm/"\naccess = "rw"\n\n[[rule]]\ndeny = "${tmp.path}/vm/private/"\n`);
    const p = loadPolicyFile(file);
    assert.deepEqual(
      p.rules.map((r) => r.origin),
      [`${file}:2`, `${file}:6`],
    );
    const ok = p.decide(peer, fromText(`${tmp.path}/vm/disk.img`), Access.READ | Access.WRITE);
    assert.equal(ok.allowed, true);
    assert.equal(ok.reason, `allowed by ${file}:2`);
    assert.equal(p.decide(peer, fromText(`${tmp.path}/vm/private/k`), Access.READ).reason, `denied by ${file}:6`);
    p.close();
  });

  it('gives rules written as inline tables their own line', () => {
    const spec = parsePolicyText('rule = [\n  { allow = "/a/", access = "r" },\n\n  { deny = "/a/b/" },\n]\n', 'i.toml');
    assert.deepEqual(
      spec.rules.map((r) => r.origin),
      ['i.toml:2', 'i.toml:4'],
    );
  });

  it('counts lines right past multi-line strings, comments and arrays', () => {
    const text = [
      '# [[rule]] in a comment is no rule',
      '[[client]]',
      'name = """',
      '[[rule]] inside a string',
      '"""',
      'gid = [ 1, # a comment ]',
      '  2 ]',
      '[[client.rule]]',
      'allow = \'/a/"""[[rule]]\'',
      'access = "r"',
      '[[rule]]',
      'deny = "/b/"',
    ].join('\n');
    const spec = parsePolicyText(text, 'm.toml');
    assert.equal(spec.sections[0]!.rules[0]!.origin, 'm.toml:8');
    assert.deepEqual(spec.sections[0]!.gids, [1, 2]);
    assert.equal(spec.rules[0]!.origin, 'm.toml:11');
  });

  it('parses client sections with their own rules and lines', () => {
    const spec = parsePolicyText(
      '[[client]]\nuid = 5\n[[client.rule]]\nallow = "/a/"\naccess = "r"\n\n[[client]]\nsession = ["s1", "s2"]\n\n[[client.rule]]\ndeny = "/b/"\n',
      'c.toml',
    );
    assert.equal(spec.sections.length, 2);
    assert.deepEqual(spec.sections[0]!.uids, [5]);
    assert.equal(spec.sections[0]!.rules[0]!.origin, 'c.toml:3');
    assert.deepEqual(spec.sections[1]!.sessions, ['s1', 's2']);
    assert.equal(spec.sections[1]!.rules[0]!.origin, 'c.toml:10');
    assert.equal(spec.sections[1]!.origin, 'c.toml:7');
  });
});

describe('large policies (parsed in pieces)', () => {
  // 6000 tables, client sections among them: more than one piece (see spec.ts).
  const parts: string[] = ['deny_errno = "ENOENT"\n'];
  let line = 2;
  const lines = { rules: [] as number[], clients: [] as number[], clientRules: [] as number[] };
  for (let i = 0; i < 6000; i++) {
    if (i % 1000 === 999) {
      lines.clients.push(line);
      parts.push(`[[client]]\nuid = ${i}\n`);
      lines.clientRules.push(line + 2);
      parts.push(`[[client.rule]]\nallow = "/c/${i}/"\naccess = "r"\n`);
      line += 5;
    } else {
      lines.rules.push(line);
      parts.push(`[[rule]]\nallow = "/r/${i}/"\naccess = "rw"\n`);
      line += 3;
    }
  }
  const text = parts.join('');

  it('reads them as one document: every rule, section, origin and top-level key', () => {
    const spec = parsePolicyText(text, 'big.toml');
    assert.equal(spec.denyErrno, 2);
    assert.equal(spec.rules.length, 5994);
    assert.deepEqual(
      spec.rules.map((r) => r.origin),
      lines.rules.map((l) => `big.toml:${l}`),
    );
    assert.deepEqual(
      spec.sections.map((s) => s.origin),
      lines.clients.map((l) => `big.toml:${l}`),
    );
    assert.deepEqual(
      spec.sections.map((s) => s.rules[0]!.origin),
      lines.clientRules.map((l) => `big.toml:${l}`),
    );
    assert.deepEqual(
      spec.sections.map((s) => s.uids),
      [[999], [1999], [2999], [3999], [4999], [5999]],
    );
  });

  it('names the line and column of an error in any piece', () => {
    const bad = text.replace('allow = "/r/5000/"', 'allow = "/r/5000/');
    const at = bad.slice(0, bad.indexOf('allow = "/r/5000/')).split('\n').length;
    assert.match(error(bad), new RegExp(`^${at}:\\d+: `));
    const unknown = text.replace('allow = "/r/4500/"', 'alow = "/r/4500/"');
    const at2 = unknown.slice(0, unknown.indexOf('alow')).split('\n').length;
    assert.equal(
      error(unknown),
      `${at2}:1: unknown key 'alow' in [[rule]] (expected one of: allow, deny, access, follow_symlinks, fifos, hardlinks, deny_errno)`,
    );
    const dup = text.replace('[[rule]]\nallow = "/r/3000/"', '[[rule]]\nallow = "/r/3000/"\nallow = "/x/"');
    const at3 = dup.slice(0, dup.indexOf('allow = "/x/"')).split('\n').length;
    assert.match(error(dup), new RegExp(`^${at3}:\\d+: `));
  });
});

describe('malformed policies name line and column', () => {
  it('TOML syntax errors', () => {
    assert.match(error('[[rule]]\nallow = "/a/\naccess = "r"\n'), /^2:\d+: /);
    assert.match(error('[[rule]]\nallow = /a/\n'), /^2:9: /);
    assert.match(error('[[rule]\n'), /^1:\d+: /);
    assert.match(error('[[rule]]\nallow = "/a/"\nallow = "/b/"\n'), /^3:\d+: /);
    // Nesting deep enough to exhaust the stack of a recursive scanner is a policy error, not a crash.
    const deep = 20_000;
    assert.match(error(`x = ${'['.repeat(deep)}${']'.repeat(deep)}\n`), /^1:\d+: .*nested/);
    assert.match(error(`x = ${'{ a = '.repeat(deep)}1${' }'.repeat(deep)}\n`), /^1:\d+: .*nested/);
  });

  it('unknown keys, wherever they are', () => {
    assert.equal(
      error('[[rule]]\nallow = "/a/"\n  acess = "r"\n'),
      "3:3: unknown key 'acess' in [[rule]] (expected one of: allow, deny, access, follow_symlinks, fifos, hardlinks, deny_errno)",
    );
    assert.match(error('verbose = true\n[[rule]]\nallow = "/a/"\naccess = "r"\n'), /^1:1: unknown key 'verbose' in the policy/);
    assert.match(
      error('[[rule]]\nallow = "/a/"\naccess = "r"\n[[client]]\nuid = 1\nuser = "x"\n'),
      /^6:1: unknown key 'user' in \[\[client\]\]/,
    );
    assert.match(error('rule = [\n {allow = "/a/", access = "r"},\n {deny = "/b/", why = "x"}]\n'), /^3:17: unknown key 'why'/);
  });

  it('wrong types', () => {
    assert.equal(error('[[rule]]\nallow = 5\naccess = "r"\n'), "2:1: 'allow' must be a string");
    assert.equal(error('[[rule]]\nallow = "/a/"\naccess = "r"\nfollow_symlinks = "yes"\n'), "4:1: 'follow_symlinks' must be true or false");
    assert.equal(error('unmatched = "drop"\n[[rule]]\nallow = "/a/"\naccess = "r"\n'), `1:1: 'unmatched' must be "default" or "refuse"`);
    assert.equal(
      error('[[client]]\nuid = [1, "x"]\n[[client.rule]]\nallow = "/a/"\naccess = "r"\n'),
      "2:1: 'uid' must be a number or a list of numbers",
    );
    assert.match(error('rule = 3\n'), /^1:1: 'rule' must be a list of tables/);
  });

  it('bad paths, letters and errnos point at their key', () => {
    assert.equal(error('\n[[rule]]\nallow = "a/"\naccess = "r"\n'), "3:1: path 'a/' must be absolute");
    assert.equal(error('[[rule]]\ndeny = "/a/../b/"\n'), "2:1: path '/a/../b/': '..' is not allowed in rules");
    assert.match(error('[[rule]]\nallow = "/a/**x/"\naccess = "r"\n'), /^2:1: .*'\*\*' must be a whole component/);
    assert.equal(
      error('[[rule]]\nallow = "/a/"\naccess = "rq"\n'),
      "3:1: unknown access letter 'q' in 'rq' (use letters of rwcdmusaxnb, or 'all')",
    );
    assert.equal(error('[[rule]]\nallow = "/a/"\naccess = "c"\n'), "3:1: 'c' (create) needs 'w' in 'c'");
    assert.equal(error('[[rule]]\nallow = "/a/"\naccess = "d"\n'), "3:1: 'd' (directories) needs 'r' in 'd'");
    assert.match(error('[[rule]]\ndeny = "/a/"\ndeny_errno = "ENOPE"\n'), /^3:1: unknown errno "ENOPE"/);
    assert.match(error('deny_errno = "EWHAT"\n[[rule]]\ndeny = "/a/"\n'), /^1:1: unknown errno/);
  });

  it('rules that make no sense', () => {
    assert.match(error('[[rule]]\naccess = "r"\n'), /^1:1: a rule needs exactly one of allow/);
    assert.match(error('[[rule]]\nallow = "/a/"\ndeny = "/a/"\naccess = "r"\n'), /^1:1: a rule needs exactly one/);
    assert.match(error('[[rule]]\nallow = "/a/"\n'), /^1:1: an allow rule needs access/);
    assert.match(error('[[rule]]\ndeny = "/a/"\naccess = "r"\n'), /^3:1: a deny rule takes no access letters/);
    assert.match(error('[[rule]]\ndeny = "/a/"\nfollow_symlinks = true\n'), /^3:1: follow_symlinks belongs on allow rules/);
    assert.match(
      error('[[client]]\nname = "x"\n[[client.rule]]\nallow = "/a/"\naccess = "r"\n'),
      /^1:1: \[\[client\]\] needs at least one of uid, gid, session/,
    );
  });

  it('empty, comment-only, unreadable and non-UTF-8 files', () => {
    assert.match(error(''), /^-:-: the policy has no rules/);
    assert.match(error('# nothing here\n\n'), /the policy has no rules/);
    assert.throws(
      () => readPolicyFile(join(tmp.path, 'missing.toml')),
      (err: PolicyError) => /cannot read the policy: ENOENT/.test(err.message) && err.file !== undefined,
    );
    const bad = join(tmp.path, 'latin1.toml');
    writeFileSync(bad, Buffer.concat([Buffer.from('[[rule]]\nallow = "/a/'), Buffer.from([0xe9]), Buffer.from('/"\naccess = "r"\n')]));
    assert.throws(
      () => readPolicyFile(bad),
      (err: PolicyError) => err.line === 2 && err.column === 13 && /not valid UTF-8/.test(err.message),
    );
  });

  it('a file cut short is an error, never a smaller policy', () => {
    const full = '[[rule]]\nallow = "/a/"\naccess = "rw"\n\n[[rule]]\ndeny = "/a/private/"\n';
    for (const cut of [full.length - 3, full.indexOf('access') + 10, 12]) {
      assert.notEqual(error(full.slice(0, cut)), 'no error', `cut at ${cut}`);
    }
  });
});
