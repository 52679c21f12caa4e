/**
 * Symlinks beneath a granted tree (issue 15, item 4): a rule that grants `s` follows symlinks that
 * stay beneath its root, so that real programs work under `openhook run --allow "$TREE/:all"` as
 * they do unconfined (a Python venv, node_modules/.bin, `ln -s a b && cat b`), while resolution
 * never leaves the root and deny rules hold on the real path. Also: which following rules check
 * real paths (src/policy/carve-outs.ts), and that `check` says so.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { noCarveOuts } from '../src/policy/carve-outs.js';
import { Policy } from '../src/policy/policy.js';
import { describeRule, makeRule, parseAllowFlag, parseDenyFlag, type Rule } from '../src/policy/rule.js';
import { Access } from '../src/policy/access.js';
import { CLI, programStderr, tempDir, type Ran } from './helpers.js';
import { snapshot } from './tree-snapshot.js';

const tmp = tempDir('openhook-symlinks-');
after(tmp.cleanup);
const base = realpathSync(tmp.path);
let counter = 0;

const ENV: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C', LC_ALL: 'C', TZ: 'UTC' };

/** The script under `run --allow TREE/:all` (and any more flags), no policy file: what a user types. */
function confined(tree: string, script: string, flags: string[] = []): Ran {
  const r = spawnSync(process.execPath, [CLI, 'run', '--allow', `${tree}/:all`, ...flags, '--', 'sh', '-c', script], {
    cwd: tree,
    env: { ...ENV, HOME: tree },
    encoding: 'utf8',
    timeout: 120_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: programStderr(r.stderr) };
}

function unconfined(tree: string, script: string): Ran {
  const r = spawnSync('sh', ['-c', script], {
    cwd: tree,
    env: { ...ENV, HOME: tree, TMPDIR: join(tree, '..', 'tmp') },
    encoding: 'utf8',
    timeout: 120_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Runs script unconfined, then confined, in the same fresh tree at the same path (a venv records
 * its own path): the same status, output and files afterwards.
 */
function same(setup: (tree: string) => void, script: string): Ran {
  const tree = join(base, `${++counter}`, 'work');
  mkdirSync(join(tree, '..', 'tmp'), { recursive: true });
  const fresh = (): void => {
    rmSync(tree, { recursive: true, force: true });
    mkdirSync(tree);
    setup(tree);
  };
  fresh();
  const free = unconfined(tree, script);
  const freeFiles = snapshot(tree);
  fresh();
  const conf = confined(tree, script);
  assert.equal(conf.stderr, free.stderr, 'stderr');
  assert.equal(conf.stdout, free.stdout, 'stdout');
  assert.equal(conf.status, free.status, `status (stderr: ${conf.stderr})`);
  assert.deepEqual(snapshot(tree), freeFiles, 'the tree afterwards');
  return conf;
}

const python = '/usr/bin/python3';
const noVenv =
  (!existsSync(python) || spawnSync(python, ['-c', 'import venv']).status !== 0) && 'needs /usr/bin/python3 with the venv module';

/** A package: node_modules/x with a cli that requires a sibling package file, linked from .bin as npm does. */
function nodeModules(tree: string): void {
  mkdirSync(join(tree, 'node_modules', 'x'), { recursive: true });
  mkdirSync(join(tree, 'node_modules', '.bin'));
  writeFileSync(
    join(tree, 'node_modules', 'x', 'cli.js'),
    '#!/usr/bin/env node\nconst m = require("x/lib.js");\nconsole.log("cli", m.v, process.argv.slice(2).join(","));\n',
    { mode: 0o755 },
  );
  writeFileSync(join(tree, 'node_modules', 'x', 'lib.js'), 'module.exports = { v: 7 };\n');
  symlinkSync('../x/cli.js', join(tree, 'node_modules', '.bin', 'x'));
}

describe('symlinks beneath a tree granted all: real programs behave as unconfined', { timeout: 600_000 }, () => {
  it('ln -s a b && cat b && rm b', () => {
    const r = same((t) => writeFileSync(join(t, 'a'), 'alpha\n'), 'ln -s a b && cat b && rm b && ls');
    assert.equal(r.stdout, 'alpha\na\n');
  });

  it('lstat semantics on a followed symlink: chmod and writes follow, mv, rm and ln act on the link', () => {
    same((t) => {
      writeFileSync(join(t, 'a'), 'alpha\n', { mode: 0o644 });
      mkdirSync(join(t, 'sub'));
    }, ['ln -s a b', 'chmod 600 b', 'stat -c "%a %F" a b', 'echo more >> b', 'cat a', 'ln -s sub d', 'echo new > d/new', 'cat sub/new', 'ls d/', 'rm d/new', 'mv b c', 'readlink c', 'ln c hard', 'stat -c "%F %h" hard', 'rm c', 'ls', 'rm d', 'ls sub'].join(' && '));
  });

  // tar --mtime: sub is made by the script itself, so its mtime differs between the two runs by the clock.
  it('touch -h, chown -h, cp -a/-P/-L, tar, find -L, ls -L and test on symlinks', () => {
    same(
      (t) => writeFileSync(join(t, 'a'), 'hi\n', { mode: 0o644 }),
      [
        'mkdir sub',
        'ln -s a b',
        'ln -s sub d',
        'touch -h -d "2020-01-01 00:00" b',
        'stat -c "%n %Y" b',
        'touch -d "2021-01-01 00:00" b',
        'stat -c "%n %Y" a',
        'chown -h $(id -u) b',
        'chown $(id -u) b',
        'cp -a d e',
        'cp -P b f',
        'cp -L b g',
        'tar cf t.tar --mtime=@0 b d sub',
        'mkdir x',
        'tar xf t.tar -C x',
        'stat -c "%n %F %s" x/* x/sub/*',
        'find -L . -name a | sort',
        'ls -L d',
        'test -w b',
        'test -e b',
        'echo done',
      ].join(' && '),
    );
  });

  it("python3 -m venv, then the venv's python runs a script that imports from the venv", { skip: noVenv }, () => {
    const r = same(
      () => {},
      [
        'export PYTHONDONTWRITEBYTECODE=1',
        `${python} -m venv --without-pip v`,
        'sp=$(v/bin/python -c "import sysconfig; print(sysconfig.get_paths()[\'purelib\'])")',
        'mkdir -p "$sp/mymod"',
        'echo "X = 42" > "$sp/mymod/__init__.py"',
        'echo "import mymod, sys; print(mymod.X, sys.prefix != sys.base_prefix)" > s.py',
        'v/bin/python s.py',
        'v/bin/python3.* s.py',
      ].join(' && '),
    );
    assert.equal(r.stdout, '42 True\n42 True\n');
  });

  it('a node_modules/.bin symlink run by node, and run by its #! line', () => {
    // --preserve-symlinks-main makes node read the main module through the link itself.
    const r = same(
      nodeModules,
      `node node_modules/.bin/x a b && node --preserve-symlinks --preserve-symlinks-main node_modules/.bin/x c && node_modules/.bin/x d`,
    );
    assert.equal(r.stdout, 'cli 7 a,b\ncli 7 c\ncli 7 d\n');
  });
});

describe('following never leaves the root, and deny rules hold on the real path', { timeout: 120_000 }, () => {
  function arena(): { tree: string; outside: string } {
    const dir = join(base, `${++counter}`);
    const tree = join(dir, 'tree'),
      outside = join(dir, 'outside');
    mkdirSync(join(tree, 'private'), { recursive: true });
    mkdirSync(outside);
    writeFileSync(join(outside, 'secret'), 'OUTSIDE\n');
    writeFileSync(join(tree, 'secret'), 'DENIED\n');
    writeFileSync(join(tree, 'private', 'key'), 'PRIVATE\n');
    writeFileSync(join(tree, 'ok'), 'ok\n');
    return { tree, outside };
  }

  it('a symlink that points out of the root is refused (whatever the kernel answers), never the outside file', () => {
    const { tree, outside } = arena();
    symlinkSync(join(outside, 'secret'), join(tree, 'abs'));
    symlinkSync('../outside/secret', join(tree, 'rel'));
    symlinkSync('../outside', join(tree, 'dir'));
    for (const name of ['abs', 'rel', 'dir/secret']) {
      const r = confined(tree, `cat ${name}`);
      assert.notEqual(r.status, 0, name);
      assert.doesNotMatch(r.stdout, /OUTSIDE/, name);
      assert.match(r.stderr, /Too many levels of symbolic links|Invalid cross-device link|Permission denied/, name);
      // and nothing is written or removed out there through it
      const w = confined(tree, `echo x > ${name}; rm ${name === 'dir/secret' ? name : 'nothing'}`);
      assert.notEqual(w.status, 0);
    }
    assert.equal(readFileSync(join(outside, 'secret'), 'utf8'), 'OUTSIDE\n');
    // while a link that stays beneath the root works
    symlinkSync('ok', join(tree, 'in'));
    assert.equal(confined(tree, 'cat in').stdout, 'ok\n');
  });

  it('a deny carve-out reached through a symlink is refused: read, remove, rename and write', () => {
    const { tree } = arena();
    const deny = ['--deny', `${tree}/secret`, '--deny', `${tree}/private/`];
    symlinkSync('.', join(tree, 'here'));
    symlinkSync('private', join(tree, 'p'));
    symlinkSync('secret', join(tree, 's'));
    for (const script of [
      'cat s',
      'cat here/secret',
      'cat p/key',
      'rm here/secret',
      'rm p/key',
      'mv here/secret moved',
      'echo x > s',
      'echo x > p/new',
      'mkdir p/new',
      'ln -s x p/new',
      'chmod 600 s',
    ]) {
      const r = confined(tree, script, deny);
      assert.notEqual(r.status, 0, script);
      assert.doesNotMatch(r.stdout, /DENIED|PRIVATE/, script);
    }
    assert.equal(readFileSync(join(tree, 'secret'), 'utf8'), 'DENIED\n');
    assert.equal(readFileSync(join(tree, 'private', 'key'), 'utf8'), 'PRIVATE\n');
    assert.ok(!existsSync(join(tree, 'moved')) && !existsSync(join(tree, 'private', 'new')));
    // the rest of the tree still follows its links
    symlinkSync('ok', join(tree, 'in'));
    const r = confined(tree, 'cat in && cat here/ok && rm here/ok && ls', deny);
    assert.equal(r.stdout, 'ok\nok\nhere\nin\np\nprivate\ns\nsecret\n', r.stderr);
  });
});

describe('--follow-symlinks and --no-follow-symlinks', { timeout: 120_000 }, () => {
  it('turn following on and off for every --allow rule; with --policy they are refused', () => {
    const tree = join(base, `${++counter}`, 'tree');
    mkdirSync(tree, { recursive: true });
    writeFileSync(join(tree, 'a'), 'alpha\n');
    symlinkSync('a', join(tree, 'b'));
    const run = (access: string, flags: string[]) =>
      spawnSync(process.execPath, [CLI, 'run', '--allow', `${tree}/:${access}`, ...flags, '--', 'cat', 'b'], {
        cwd: tree,
        env: ENV,
        encoding: 'utf8',
        timeout: 60_000,
      });
    assert.equal(run('all', []).stdout, 'alpha\n');
    const off = run('all', ['--no-follow-symlinks']);
    assert.notEqual(off.status, 0);
    assert.match(off.stderr, /Too many levels of symbolic links/);
    assert.notEqual(run('r', []).status, 0);
    assert.equal(run('r', ['--follow-symlinks']).stdout, 'alpha\n');
    const policy = join(tree, '..', 'p.toml');
    writeFileSync(policy, `[[rule]]\nallow = "${tree}/"\naccess = "r"\n`);
    const both = spawnSync(process.execPath, [CLI, 'check', '--policy', policy, '--follow-symlinks', join(tree, 'a'), 'r'], {
      encoding: 'utf8',
    });
    assert.equal(both.status, 2);
    assert.match(both.stderr, /--follow-symlinks applies to --allow rules; in a policy file write follow_symlinks = true on each rule/);
  });
});

describe('which rules follow symlinks, and which check real paths', () => {
  const T = '/srv/t';
  const allow = (access: string, extra: Partial<Parameters<typeof makeRule>[0]> = {}): Rule =>
    makeRule({ allow: `${T}/`, access, ...extra }, 'test');
  const verifies = (rules: Rule[], path = `${T}/a/b`): boolean => {
    const d = new Policy(rules).decide({ pid: 1, uid: 0, gid: 0, groups: null }, path, Access.READ);
    assert.ok(d.allowed, d.reason);
    return d.open.verify !== undefined;
  };

  it('a rule follows symlinks when it grants s, unless follow_symlinks = false; follow_symlinks = true without s', () => {
    assert.equal(allow('all').followSymlinks, true);
    assert.equal(allow('rwcs').followSymlinks, true);
    assert.equal(allow('rwcdmua').followSymlinks, false);
    assert.equal(allow('all', { follow_symlinks: false }).followSymlinks, false);
    assert.equal(allow('r', { follow_symlinks: true }).followSymlinks, true);
    assert.equal(parseAllowFlag(`${T}/:all`).followSymlinks, true);
    assert.equal(parseAllowFlag(`${T}/:rw`).followSymlinks, false);
    assert.equal(parseDenyFlag(`${T}/x`).followSymlinks, false);
    // the rule's description names follow_symlinks only where it is not what the letters imply
    assert.equal(describeRule(allow('all')), `allow ${T}/ all`);
    assert.equal(describeRule(allow('all', { follow_symlinks: false })), `allow ${T}/ all (follow_symlinks = false)`);
    assert.equal(describeRule(allow('r', { follow_symlinks: true })), `allow ${T}/ r (follow_symlinks)`);
  });

  it('real paths are checked only where another rule could decide a path beneath the root', () => {
    // nothing else: RESOLVE_BENEATH alone keeps the answer
    assert.equal(verifies([allow('all')]), false);
    // rules that never win beneath the root: a tree above, a file elsewhere, a glob elsewhere
    assert.equal(
      verifies([
        allow('all'),
        makeRule({ deny: '/srv/' }, 'x'),
        makeRule({ allow: '/', access: 'r' }, 'x'),
        makeRule({ deny: '/srv/t2/x' }, 'x'),
        makeRule({ deny: '/home/*/.ssh/' }, 'x'),
      ]),
      false,
    );
    // a rule on the root's own name: a link to '.' resolves to the root, which that rule decides
    assert.equal(verifies([allow('all'), makeRule({ deny: T }, 'x')]), true);
    // a carve-out beneath, another allow beneath, a rule on the same path, a glob above or beneath
    assert.equal(verifies([allow('all'), makeRule({ deny: `${T}/private/` }, 'x')]), true);
    assert.equal(verifies([allow('all'), makeRule({ allow: `${T}/ro/`, access: 'r' }, 'x')]), true);
    assert.equal(verifies([allow('all'), makeRule({ deny: `${T}/**/*.key` }, 'x')]), true);
    assert.equal(verifies([allow('all'), makeRule({ deny: '/**/*.key' }, 'x')]), true);
    assert.equal(verifies([allow('all'), makeRule({ deny: '/srv/*/x' }, 'x')]), true);
    assert.equal(verifies([allow('all'), makeRule({ allow: `${T}/`, access: 'r' }, 'x')]), true);
    // a rule on one file, or a glob, always checks (its root holds names it does not cover)
    assert.equal(verifies([makeRule({ allow: `${T}/a/b`, access: 'rs' }, 'x')]), true);
    assert.equal(verifies([makeRule({ allow: '/srv/*/', access: 'rs' }, 'x')]), true);
    // a client section sees the default section's rules too with include_default
    const sectioned = (includeDefault: boolean): boolean => {
      const policy = new Policy([makeRule({ deny: `${T}/private/` }, 'x')], {
        sections: [{ uids: [7], includeDefault, rules: [allow('all')], origin: 's' }],
      });
      const d = policy.decide({ pid: 1, uid: 7, gid: 7, groups: null }, `${T}/a`, Access.READ);
      assert.ok(d.allowed);
      return d.open.verify !== undefined;
    };
    assert.equal(sectioned(true), true);
    assert.equal(sectioned(false), false);
    // a rule that does not follow has nothing to check
    assert.equal(verifies([allow('r'), makeRule({ deny: `${T}/private/` }, 'x')]), false);
  });

  it('every rule a skipped check ignores really never decides a path beneath the root', () => {
    // noCarveOuts' claim, checked against the trie itself: for each policy it accepts, every path
    // beneath the root (a sample of depths, names and globs' favourites) is decided by the tree.
    const d = allow('all');
    const others = [
      makeRule({ deny: '/srv/' }, 'x'),
      makeRule({ allow: '/', access: 'r' }, 'x'),
      makeRule({ deny: '/srv/t2/' }, 'x'),
      makeRule({ deny: '/srv/t' }, 'x'),
      makeRule({ deny: '/home/**/*.key' }, 'x'),
      makeRule({ deny: '/s*/' }, 'x'),
    ];
    const accepted = others.filter((r) => noCarveOuts(d, [d, r]));
    assert.ok(accepted.length >= 4);
    for (const r of accepted) {
      const policy = new Policy([d, r]);
      for (const rest of ['', '/a', '/a.key', '/t/x.key', '/srv/t/x', '/.ssh/id', '/a/b/c/d.key']) {
        assert.equal(
          policy.decide({ pid: 1, uid: 0, gid: 0, groups: null }, `${T}${rest}`, Access.READ).rule,
          d,
          `${describeRule(r)} at ${T}${rest}`,
        );
      }
    }
  });

  it('check says whether links are followed, and whether real paths are checked', () => {
    const plain = spawnSync(process.execPath, [CLI, 'check', '--allow', `${T}/:all`, `${T}/a`, 'r'], { encoding: 'utf8' });
    assert.equal(plain.status, 0, plain.stderr);
    assert.match(
      plain.stdout,
      /opens: a beneath \/srv\/t, following symlinks beneath it \(the rule grants s\); no rule beneath it to check real paths against/,
    );
    const carved = spawnSync(process.execPath, [CLI, 'check', '--allow', `${T}/:all`, '--deny', `${T}/p/`, `${T}/a`, 'r'], {
      encoding: 'utf8',
    });
    assert.match(carved.stdout, /following symlinks beneath it \(the rule grants s\); deny rules decided again on the real path/);
    const off = spawnSync(process.execPath, [CLI, 'check', '--allow', `${T}/:rw`, `${T}/a`, 'r'], { encoding: 'utf8' });
    assert.match(off.stdout, /opens: a beneath \/srv\/t\n/);
    const explicit = spawnSync(process.execPath, [CLI, 'check', '--allow', `${T}/:all`, '--deny', `${T}/p/`, `${T}/a`, 'r'], {
      encoding: 'utf8',
    });
    assert.match(explicit.stdout, /rule: --allow \/srv\/t\/:all: allow \/srv\/t\/ all\n/);
  });
});
