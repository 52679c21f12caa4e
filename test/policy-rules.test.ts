/**
 * Matching and precedence: every kind of rule (tree, exact file, `*`, partial glob, `**`), deny
 * carve-outs, which rule wins, denial errnos, client sections, and the root directories they name.
 */
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import { fromText } from '../src/bytestring.js';
import { Access } from '../src/policy/access.js';
import { compilePolicy, parsePolicyText } from '../src/policy/file.js';
import { Policy, type Peer } from '../src/policy/policy.js';
import { parseAllowFlag, parseDenyFlag, parseRulePath } from '../src/policy/rule.js';
import { tempDir } from './helpers.js';
import { E } from '../src/errno.js';

const R = Access.READ,
  W = Access.WRITE,
  C = Access.CREATE;
const root: Peer = { pid: 1, uid: 0, gid: 0, groups: [] };

const tmp = tempDir();
after(tmp.cleanup);
const T = tmp.path;
for (const d of ['srv/vm/private', 'srv/vm/g1/secrets', 'srv/vm/g2', 'srv/other', 'home/u']) mkdirSync(`${T}/${d}`, { recursive: true });

/** A policy from TOML text in which `@` stands for the temp dir. */
function policy(text: string): Policy {
  return compilePolicy(parsePolicyText(text.replaceAll('@', T), 'test.toml'));
}

/** "allow" or "deny", and the line of the rule that decided ("-" for none). */
function verdict(p: Policy, path: string, access: number = R, peer = root): string {
  const d = p.decide(peer, fromText(path.replaceAll('@', T)), access);
  return `${d.allowed ? 'allow' : 'deny'}:${d.rule ? d.rule.origin.split(':').pop() : '-'}`;
}

describe('matching', () => {
  it('a tree covers its directory and everything beneath it, and nothing beside it', () => {
    const p = policy('[[rule]]\nallow = "@/srv/vm/"\naccess = "r"\n');
    assert.equal(verdict(p, '@/srv/vm'), 'allow:1');
    assert.equal(verdict(p, '@/srv/vm/a'), 'allow:1');
    assert.equal(verdict(p, '@/srv/vm/x/y/z'), 'allow:1');
    assert.equal(verdict(p, '@/srv/vmX/a'), 'deny:-');
    assert.equal(verdict(p, '@/srv/v'), 'deny:-');
    assert.equal(verdict(p, '@/srv'), 'deny:-');
    p.close();
  });

  it('an exact file covers that file only', () => {
    const p = policy('[[rule]]\nallow = "@/srv/vm/disk.img"\naccess = "r"\n');
    assert.equal(verdict(p, '@/srv/vm/disk.img'), 'allow:1');
    assert.equal(verdict(p, '@/srv/vm/disk.img/x'), 'deny:-');
    assert.equal(verdict(p, '@/srv/vm/disk.im'), 'deny:-');
    assert.equal(verdict(p, '@/srv/vm'), 'deny:-');
    p.close();
  });

  it('`*` matches one whole component, a partial glob a part of one', () => {
    const p = policy(
      '[[rule]]\nallow = "@/srv/*/disk.img"\naccess = "r"\n[[rule]]\nallow = "@/srv/other/*.qcow2"\naccess = "r"\n[[rule]]\nallow = "@/srv/other/a*b*c"\naccess = "r"\n',
    );
    assert.equal(verdict(p, '@/srv/vm/disk.img'), 'allow:1');
    assert.equal(verdict(p, '@/srv/x/y/disk.img'), 'deny:-');
    assert.equal(verdict(p, '@/srv/other/base.qcow2'), 'allow:4');
    assert.equal(verdict(p, '@/srv/other/.qcow2'), 'allow:4', '* may match nothing');
    assert.equal(verdict(p, '@/srv/other/base.qcow2.bak'), 'deny:-');
    assert.equal(verdict(p, '@/srv/other/sub/base.qcow2'), 'deny:-', '* never crosses a /');
    assert.equal(verdict(p, '@/srv/other/abc'), 'allow:7');
    assert.equal(verdict(p, '@/srv/other/aXbYc'), 'allow:7');
    assert.equal(verdict(p, '@/srv/other/abXc'), 'allow:7');
    assert.equal(verdict(p, '@/srv/other/acb'), 'deny:-');
    assert.equal(verdict(p, '@/srv/other/ab'), 'deny:-', 'pieces never overlap');
    p.close();
  });

  it('`**` matches zero or more components; a trailing `**` is a tree', () => {
    const p = policy('[[rule]]\nallow = "@/srv/**/disk.img"\naccess = "r"\n[[rule]]\nallow = "@/home/**"\naccess = "r"\n');
    assert.equal(verdict(p, '@/srv/disk.img'), 'allow:1');
    assert.equal(verdict(p, '@/srv/vm/disk.img'), 'allow:1');
    assert.equal(verdict(p, '@/srv/a/b/c/disk.img'), 'allow:1');
    assert.equal(verdict(p, '@/srv/a/b/c/disk.img2'), 'deny:-');
    assert.equal(verdict(p, '@/home'), 'allow:4');
    assert.equal(verdict(p, '@/home/u/x'), 'allow:4');
    assert.deepEqual(parseRulePath('/a/**'), { path: '/a', tree: true, glob: false });
    assert.deepEqual(parseRulePath('/a/**/**/b'), { path: '/a/**/b', tree: false, glob: true });
    p.close();
  });

  it('escapes a literal star with \\*', () => {
    const p = policy('[[rule]]\nallow = \'@/srv/other/a\\*b\'\naccess = "r"\n');
    assert.equal(verdict(p, '@/srv/other/a*b'), 'allow:1');
    assert.equal(verdict(p, '@/srv/other/aXb'), 'deny:-');
    p.close();
  });

  it('compares bytes after lexical normalisation, and never resolves ..', () => {
    const p = policy('[[rule]]\nallow = "@//srv/./vm/"\naccess = "r"\n');
    assert.equal(verdict(p, '@/srv/vm/a'), 'allow:1');
    p.close();
    assert.throws(() => parseRulePath('/srv/../etc/'), /'\.\.' is not allowed/);
    // Non-UTF-8 names: the rule's UTF-8 text is bytes, compared exactly.
    const q = new Policy([parseAllowFlag(`${T}/srv/vm/é.img:r`)]);
    assert.equal(q.decide(root, fromText(`${T}/srv/vm/é.img`), R).allowed, true);
    assert.equal(q.decide(root, `${fromText(T)}/srv/vm/\xe9.img`, R).allowed, false, 'latin1 é is another name');
    q.close();
  });
});

describe('precedence', () => {
  it('a deny carve-out inside an allowed tree wins, and an allowed file inside it wins again', () => {
    const p = policy(`
[[rule]]
allow = "@/srv/vm/"
access = "rw"
[[rule]]
deny = "@/srv/vm/private/"
[[rule]]
allow = "@/srv/vm/private/ok.img"
access = "r"
`);
    assert.equal(verdict(p, '@/srv/vm/a'), 'allow:2');
    assert.equal(verdict(p, '@/srv/vm/private'), 'deny:5');
    assert.equal(verdict(p, '@/srv/vm/private/key'), 'deny:5');
    assert.equal(verdict(p, '@/srv/vm/private/ok.img'), 'allow:7');
    p.close();
  });

  it('deny beats allow at equal specificity, whatever the order', () => {
    for (const text of [
      '[[rule]]\nallow = "@/srv/vm/"\naccess = "r"\n[[rule]]\ndeny = "@/srv/vm/"\n',
      '[[rule]]\ndeny = "@/srv/vm/"\n[[rule]]\nallow = "@/srv/vm/"\naccess = "r"\n',
    ]) {
      const p = policy(text);
      assert.match(verdict(p, '@/srv/vm/a'), /^deny:/);
      p.close();
    }
    const p = policy('[[rule]]\nallow = "@/srv/vm/*.img"\naccess = "r"\n[[rule]]\ndeny = "@/srv/vm/a*"\n');
    assert.equal(verdict(p, '@/srv/vm/a.img'), 'deny:4', 'two partial globs: deny wins');
    assert.equal(verdict(p, '@/srv/vm/b.img'), 'allow:1');
    p.close();
  });

  it('between two allows at equal specificity, the one written first wins', () => {
    const p = policy('[[rule]]\nallow = "@/srv/vm/*.img"\naccess = "r"\n[[rule]]\nallow = "@/srv/vm/a*"\naccess = "rw"\n');
    assert.equal(verdict(p, '@/srv/vm/a.img', R | W), 'deny:1');
    p.close();
  });

  it('an exact file beats a tree on the same path', () => {
    const p = policy('[[rule]]\ndeny = "@/srv/vm/"\n[[rule]]\nallow = "@/srv/vm"\naccess = "r"\n');
    assert.equal(verdict(p, '@/srv/vm'), 'allow:3');
    assert.equal(verdict(p, '@/srv/vm/a'), 'deny:1');
    p.close();
  });

  it('compares component by component: literal > partial glob > * > ** or tree', () => {
    const p = policy(`
[[rule]]
allow = "@/srv/"
access = "r"
[[rule]]
deny = "@/srv/**/*.key"
[[rule]]
allow = "@/srv/vm/"
access = "rw"
[[rule]]
deny = "@/srv/*/secrets/"
[[rule]]
allow = "@/srv/g*/secrets/"
access = "r"
[[rule]]
allow = "@/srv/**/public/*.key"
access = "r"
`);
    // '**' then a partial glob beats a plain tree at the same depth: keys are denied under /srv/x/
    assert.equal(verdict(p, '@/srv/x/a.key'), 'deny:5');
    assert.equal(verdict(p, '@/srv/a.key'), 'deny:5', '** may match no component');
    // ... but /srv/vm/ names 'vm' literally, which is compared first
    assert.equal(verdict(p, '@/srv/vm/a.key'), 'allow:7');
    // '*' at 'vm' loses to the literal 'vm' of the tree? No: both match 'vm' ... the tree is literal there
    assert.equal(verdict(p, '@/srv/vm/secrets/x'), 'allow:7');
    assert.equal(verdict(p, '@/srv/x/secrets/x'), 'deny:10');
    assert.equal(verdict(p, '@/srv/gA/secrets/x'), 'allow:12', 'partial glob beats *');
    assert.equal(verdict(p, '@/srv/x/public/a.key'), 'allow:15', 'a literal deeper component decides');
    assert.equal(verdict(p, '@/srv/x/y'), 'allow:2');
    p.close();
  });

  it('an allow that grants less than the request needs denies, without falling back to a broader rule', () => {
    const p = policy('[[rule]]\nallow = "@/srv/"\naccess = "rwc"\n[[rule]]\nallow = "@/srv/vm/"\naccess = "r"\n');
    const d = p.decide(root, fromText(`${T}/srv/vm/a`), R | W);
    assert.equal(d.allowed, false);
    assert.equal(d.errno, E.EACCES);
    assert.match(d.reason, /grants 'r', the request needs 'rw'/);
    assert.equal(verdict(p, '@/srv/vm/a', R | W | C), 'deny:4');
    assert.equal(verdict(p, '@/srv/other/a', R | W | C), 'allow:1');
    p.close();
  });
});

describe('denial errnos', () => {
  it('denies unmatched paths with EACCES by default, or the configured errno; deny rules may set their own', () => {
    const p = policy(
      'deny_errno = "ENOENT"\n[[rule]]\nallow = "@/srv/"\naccess = "r"\n[[rule]]\ndeny = "@/srv/vm/"\ndeny_errno = "EPERM"\n[[rule]]\ndeny = "@/srv/other/"\n',
    );
    assert.equal(p.decide(root, '/etc/passwd', R).errno, E.ENOENT);
    assert.equal(p.decide(root, fromText(`${T}/srv/vm/a`), R).errno, E.EPERM);
    assert.equal(p.decide(root, fromText(`${T}/srv/other/a`), R).errno, E.ENOENT);
    assert.equal(p.decide(root, fromText(`${T}/srv/a`), W).errno, E.ENOENT, 'too little access: the policy errno');
    p.close();
    const q = policy('[[rule]]\nallow = "@/srv/"\naccess = "r"\n[[rule]]\ndeny = "@/srv/vm/"\ndeny_errno = 2\n');
    assert.equal(q.decide(root, '/etc/passwd', R).errno, E.EACCES);
    assert.equal(q.decide(root, fromText(`${T}/srv/vm/x`), R).errno, E.ENOENT);
    q.close();
  });

  it('flags rules work the same (the --allow/--deny form)', () => {
    const p = new Policy([parseAllowFlag(`${T}/srv/:rw`), parseDenyFlag(`${T}/srv/vm/private/`), parseAllowFlag(`${T}/srv/*/disk.img:r`)]);
    assert.equal(p.decide(root, fromText(`${T}/srv/a`), R | W).allowed, true);
    assert.equal(p.decide(root, fromText(`${T}/srv/vm/private/a`), R).allowed, false);
    assert.equal(p.decide(root, fromText(`${T}/srv/vm/disk.img`), R | W).allowed, false);
    p.close();
  });
});

describe('client sections', () => {
  const text = `
unmatched = "default"
[[rule]]
allow = "@/srv/other/"
access = "r"

[[client]]
name = "qemu"
uid = [107, 108]
[[client.rule]]
allow = "@/srv/vm/"
access = "rw"

[[client]]
gid = 500
include_default = true
[[client.rule]]
allow = "@/home/u/"
access = "r"

[[client]]
session = "vm1"
uid = 0
[[client.rule]]
allow = "@/srv/vm/g1/"
access = "r"
`;

  it('matches sections in order by uid, by gid (primary or supplementary), by session; others get the default', () => {
    const p = policy(text);
    const qemu: Peer = { pid: 2, uid: 108, gid: 108, groups: [] };
    assert.equal(verdict(p, '@/srv/vm/a', R | W, qemu), 'allow:10');
    assert.equal(verdict(p, '@/srv/other/a', R, qemu), 'deny:-', 'a section does not include the default unless asked');
    const staff: Peer = { pid: 3, uid: 1000, gid: 1000, groups: [27, 500] };
    assert.equal(verdict(p, '@/home/u/x', R, staff), 'allow:17');
    assert.equal(verdict(p, '@/srv/other/a', R, staff), 'allow:3', 'include_default');
    assert.equal(verdict(p, '@/home/u/x', R, { pid: 4, uid: 1001, gid: 500, groups: null }), 'allow:17', 'primary gid');
    // uid 0 with session vm1 matches the third section; uid 0 without a session gets the default
    assert.equal(verdict(p, '@/srv/vm/g1/a', R, { ...root, session: 'vm1' }), 'allow:24');
    assert.equal(verdict(p, '@/srv/vm/g1/a', R, root), 'deny:-');
    assert.equal(verdict(p, '@/srv/other/a', R, root), 'allow:3');
    // the first matching section wins: uid 107 in group 500 is qemu
    assert.equal(verdict(p, '@/home/u/x', R, { pid: 5, uid: 107, gid: 500, groups: [500] }), 'deny:-');
    assert.equal(p.admits(root), true);
    p.close();
  });

  it('refuses unmatched clients when the policy says so, at connect and per request', () => {
    const p = policy(text.replace('unmatched = "default"', 'unmatched = "refuse"'));
    assert.equal(p.admits(root), false);
    assert.equal(p.admits({ pid: 2, uid: 107, gid: 1, groups: [] }), true);
    const d = p.decide(root, fromText(`${T}/srv/other/a`), R);
    assert.equal(d.allowed, false);
    assert.match(d.reason, /matches no section/);
    p.close();
  });
});

describe('roots', () => {
  // The fds of roots are the resolver's: test/roots.test.ts.
  it('names / as the root of a rule on / itself or on a file directly in it', () => {
    const p = new Policy([parseAllowFlag('/:r'), parseAllowFlag('/etc-not-there:rw'), parseDenyFlag('/proc/')]);
    const a = p.decide(root, fromText(`${T}/srv/vm`), R);
    assert.equal(a.allowed, true);
    assert.equal(a.rest, `${T.slice(1)}/srv/vm`);
    const b = p.decide(root, '/etc-not-there', R | W);
    assert.equal(b.rest, 'etc-not-there');
    assert.equal(b.root, '/');
    assert.equal(a.root, '/', 'one root for both rules');
    const c = p.decide(root, '/', R);
    assert.equal(c.rest, '.');
    assert.equal(p.decide(root, '/proc/self', R).allowed, false);
    p.close();
  });
});

describe('the trie against a plain reading of the precedence rules', () => {
  // A second, naive implementation of trie.ts's documented order: for each rule, its best way of
  // matching (ranks per component), then the best rule. Random policies and paths must agree.
  const LIT = 4,
    PART = 3,
    STAR = 2,
    WIDE = 1;
  // atRoot: a tree matched on its own directory (the path names it, nothing beneath)
  type Scored = { ranks: number[]; end: number; atRoot: boolean };
  const cmp = (a: Scored, b: Scored): number => {
    for (let i = 0; i < a.ranks.length; i++) if (a.ranks[i] !== b.ranks[i]) return a.ranks[i]! - b.ranks[i]!;
    return a.end - b.end;
  };
  function matchSeg(seg: string, c: string): number {
    if (seg === '*') return STAR;
    if (!seg.includes('*')) return seg === c ? LIT : 0;
    const re = new RegExp(
      '^' +
        seg
          .split('*')
          .map((x) => x.replace(/[.]/g, '\\.'))
          .join('.*') +
        '$',
    );
    return re.test(c) ? PART : 0;
  }
  function best(segs: string[], si: number, comps: string[], ci: number, tree: boolean): Scored | null {
    if (si === segs.length) {
      if (ci === comps.length) return { ranks: [], end: tree ? 1 : 2, atRoot: tree };
      return tree ? { ranks: comps.slice(ci).map(() => WIDE), end: 1, atRoot: false } : null;
    }
    const seg = segs[si]!;
    if (seg === '**') {
      let top: Scored | null = null;
      for (let k = 0; ci + k <= comps.length; k++) {
        const rest = best(segs, si + 1, comps, ci + k, tree);
        if (!rest) continue;
        const s = { ranks: [...Array(k).fill(WIDE), ...rest.ranks], end: rest.end, atRoot: rest.atRoot };
        if (!top || cmp(s, top) > 0) top = s;
      }
      return top;
    }
    if (ci === comps.length) return null;
    const r = matchSeg(seg, comps[ci]!);
    if (!r) return null;
    const rest = best(segs, si + 1, comps, ci + 1, tree);
    return rest && { ranks: [r, ...rest.ranks], end: rest.end, atRoot: rest.atRoot };
  }

  it('agrees on 3000 random paths over 300 random policies', () => {
    let seed = 42;
    const rnd = (n: number): number => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff), seed % n);
    const names = ['a', 'b', 'ab', 'x.key', 'c'];
    const globs = ['*', 'a*', '*.key', '**', '*b'];
    for (let round = 0; round < 300; round++) {
      const specs: { segs: string[]; tree: boolean; deny: boolean }[] = [];
      for (let i = 0, n = 1 + rnd(8); i < n; i++) {
        const segs: string[] = [];
        for (let d = 0, depth = 1 + rnd(4); d < depth; d++) segs.push(rnd(3) === 0 ? globs[rnd(globs.length)]! : names[rnd(names.length)]!);
        if (segs[segs.length - 1] === '**') segs.push('c');
        for (let k = segs.length - 1; k > 0; k--) if (segs[k] === '**' && segs[k - 1] === '**') segs.splice(k, 1);
        specs.push({ segs, tree: rnd(2) === 0, deny: rnd(3) === 0 });
      }
      let text = '';
      for (const sp of specs)
        text += `[[rule]]\n${sp.deny ? 'deny' : 'allow'} = "/${sp.segs.join('/')}${sp.tree ? '/' : ''}"\n${sp.deny ? '' : 'access = "r"\n'}`;
      const p = compilePolicy(parsePolicyText(text, 'r.toml'));
      for (let q = 0; q < 10; q++) {
        const comps: string[] = [];
        for (let d = 0, depth = rnd(6); d < depth; d++) comps.push(names[rnd(names.length)]!);
        let want = -1,
          top: Scored | null = null;
        specs.forEach((sp, i) => {
          const s = best(sp.segs, 0, comps, 0, sp.tree);
          if (!s) return;
          const c = top ? cmp(s, top) : 1;
          if (c > 0 || (c === 0 && sp.deny && !specs[want]!.deny)) {
            top = s;
            want = i;
          }
        });
        const d = p.decide(root, '/' + comps.join('/'), R);
        const got = d.rule ? p.rules.findIndex((r) => r.origin === d.rule!.origin) : -1;
        assert.equal(got, want, `policy:\n${text}\npath: /${comps.join('/')}`);
        // An allowing glob tree on its own root covers a directory only, and these rules grant no 'd'.
        const w = specs[want];
        const rootOnly = w !== undefined && !w.deny && w.tree && w.segs.some((g) => g.includes('*')) && top!.atRoot;
        assert.equal(/only as a directory/.test(d.reason), rootOnly, `policy:\n${text}\npath: /${comps.join('/')}\n${d.reason}`);
      }
      p.close();
    }
  });
});
