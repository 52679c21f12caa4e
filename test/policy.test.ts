import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import { fromText } from '../src/bytestring.js';
import { Access, parseAccess } from '../src/policy/access.js';
import { normalise } from '../src/policy/path.js';
import { Policy, type Peer } from '../src/policy/policy.js';
import { parseAllowFlag, parseDenyFlag, PolicyError } from '../src/policy/rule.js';
import { tempDir } from './helpers.js';
import { E } from '../src/errno.js';

const peer: Peer = { pid: 1, uid: 0, gid: 0, groups: [] };

describe('policy from flags', () => {
  const tmp = tempDir();
  after(tmp.cleanup);
  mkdirSync(`${tmp.path}/vm/private`, { recursive: true });
  const vm = `${tmp.path}/vm`;

  it('denies by default with EACCES', () => {
    const p = new Policy([parseAllowFlag(`${vm}/:r`)]);
    const d = p.decide(peer, fromText('/etc/passwd'), Access.READ);
    assert.equal(d.allowed, false);
    assert.equal(d.errno, E.EACCES);
    assert.equal(d.rule, null);
    p.close();
  });

  it('allows inside a tree, with the root and the rest below it', () => {
    const p = new Policy([parseAllowFlag(`${vm}/:rw`)]);
    const d = p.decide(peer, fromText(`${vm}/disk.img`), Access.READ | Access.WRITE);
    assert.equal(d.allowed, true);
    assert.equal(d.rest, 'disk.img');
    assert.equal(d.root, vm);
    assert.match(d.reason, /--allow/);
    p.close();
  });

  it('refuses access the rule does not grant', () => {
    const p = new Policy([parseAllowFlag(`${vm}/:r`)]);
    assert.equal(p.decide(peer, fromText(`${vm}/a`), Access.WRITE).allowed, false);
    assert.equal(p.decide(peer, fromText(`${vm}/a`), Access.READ | Access.WRITE | Access.CREATE).allowed, false);
    p.close();
  });

  it('is not fooled by a shared prefix: /vmX/f is not under /vm/', () => {
    const p = new Policy([parseAllowFlag(`${vm}/:r`)]);
    assert.equal(p.decide(peer, fromText(`${vm}X/f`), Access.READ).allowed, false);
    p.close();
  });

  it('lets a deny carve-out inside an allowed tree win, and the most specific rule decide', () => {
    const p = new Policy([parseAllowFlag(`${vm}/:rw`), parseDenyFlag(`${vm}/private/`), parseAllowFlag(`${vm}/private/ok.img:r`)]);
    assert.equal(p.decide(peer, fromText(`${vm}/a.img`), Access.READ).allowed, true);
    assert.equal(p.decide(peer, fromText(`${vm}/private/key`), Access.READ).allowed, false);
    assert.equal(p.decide(peer, fromText(`${vm}/private/ok.img`), Access.READ).allowed, true);
    p.close();
  });

  it('lets deny win over allow at equal specificity', () => {
    const p = new Policy([parseAllowFlag(`${vm}/a.img:r`), parseDenyFlag(`${vm}/a.img`)]);
    assert.equal(p.decide(peer, fromText(`${vm}/a.img`), Access.READ).allowed, false);
    p.close();
  });

  it('rejects bad flags with clear messages', () => {
    assert.throws(() => parseAllowFlag('relative/:r'), PolicyError);
    assert.throws(() => parseAllowFlag(`${vm}/`), /PATH:ACCESS/);
    assert.throws(() => parseAllowFlag(`${vm}/:rq`), /unknown access letter 'q'/);
    assert.throws(() => parseAllowFlag(`${vm}/:c`), /'c' \(create\) needs 'w'/);
    assert.throws(() => parseAllowFlag(`${vm}/../etc/:r`), /'\.\.'/);
    // A root that does not exist is not a load error (it may be created later; the resolver
    // answers ENOENT meanwhile: test/roots.test.ts), and the policy opens nothing to decide.
    const missing = new Policy([parseAllowFlag(`${tmp.path}/missing/:r`)]);
    const d = missing.decide(peer, fromText(`${tmp.path}/missing/f`), Access.READ);
    assert.equal(d.allowed, true);
    assert.equal(d.root, `${tmp.path}/missing`);
    assert.equal(parseAccess('rwc'), 7);
  });
});

describe('lexical normalisation', () => {
  it('collapses //, /./ and a trailing slash', () => {
    assert.deepEqual(normalise('//srv/./vm//a.img'), { ok: true, path: '/srv/vm/a.img' });
    assert.deepEqual(normalise('/srv/vm/'), { ok: true, path: '/srv/vm' });
    assert.deepEqual(normalise('/'), { ok: true, path: '/' });
  });

  it('refuses .., relative and empty names, and NUL bytes', () => {
    for (const bad of ['/srv/../etc/passwd', '/srv/vm/..', '/..', 'srv/vm', '', '/a\0b']) {
      assert.equal(normalise(bad).ok, false, JSON.stringify(bad));
    }
  });

  it('refuses names beyond PATH_MAX and components beyond NAME_MAX', () => {
    assert.equal(normalise('/' + 'a'.repeat(256)).ok, false);
    assert.equal(normalise('/' + 'a'.repeat(255)).ok, true);
    assert.equal(normalise(('/' + 'a'.repeat(200)).repeat(21)).ok, false);
  });
});
