/**
 * Real programs under `openhook run` (hook mode): each behaves exactly as it does unconfined. Two
 * identical trees; the program runs confined in A (granted `all`) and unconfined in B; the exit
 * status, the output and the trees afterwards (names, types, modes, contents: tree-snapshot.ts)
 * must be the same. With a read-only grant, destructive commands fail with a clear error and leave
 * the tree as it was, times included.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, realpathSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { CLI, programStderr, tempDir, type Ran } from './helpers.js';
import { snapshot, type SnapshotOptions } from './tree-snapshot.js';

const tmp = tempDir('openhook-programs-');
after(tmp.cleanup);
const base = realpathSync(tmp.path);
let counter = 0;

const FIXED = new Date('2020-05-06T07:08:09Z');
const FILES: Record<string, string> = {
  'src/a.txt': 'alpha\n',
  'src/b.txt': 'beta\nline two\n',
  'src/sub/c.txt': 'gamma\n',
  'src/sub/deep/d.txt': 'delta\n',
  'data.txt': 'pear\napple\nfig\n',
  'hello.c': '#include <stdio.h>\nint main(void) { puts("hello from the tree"); return 0; }\n',
  Makefile: 'all: out.txt\nout.txt: data.txt\n\tsort data.txt > out.txt\n',
  'fix.patch': '--- src/a.txt\n+++ src/a.txt\n@@ -1 +1,2 @@\n alpha\n+patched\n',
};

/** The same tree every time, with fixed times (so that archives and listings compare). */
function makeTree(root: string): void {
  mkdirSync(root, { recursive: true });
  for (const [name, content] of Object.entries(FILES)) {
    mkdirSync(join(root, name, '..'), { recursive: true });
    writeFileSync(join(root, name), content, { mode: 0o644 });
  }
  for (const p of [...Object.keys(FILES), 'src/sub/deep', 'src/sub', 'src', '.', '..']) utimesSync(join(root, p), FIXED, FIXED);
}

const ENV: NodeJS.ProcessEnv = {
  PATH: '/usr/bin:/bin',
  LANG: 'C',
  LC_ALL: 'C',
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_AUTHOR_NAME: 't',
  GIT_AUTHOR_EMAIL: 't@example.org',
  GIT_COMMITTER_NAME: 't',
  GIT_COMMITTER_EMAIL: 't@example.org',
  GIT_AUTHOR_DATE: '2020-05-06T07:08:09Z',
  GIT_COMMITTER_DATE: '2020-05-06T07:08:09Z',
  TZ: 'UTC',
};

/** The tree granted `access`, symlinks beneath it followed (as a venv or node_modules/.bin need). */
function confined(tree: string, access: string, script: string): Ran {
  const policy = join(tree, '..', 'policy.toml');
  writeFileSync(policy, `[[rule]]\nallow = "${tree}/"\naccess = "${access}"\nfollow_symlinks = true\n`);
  const r = spawnSync(process.execPath, [CLI, 'run', '--policy', policy, '--', 'sh', '-c', script], {
    cwd: tree,
    env: { ...ENV, HOME: tree },
    encoding: 'utf8',
    timeout: 120_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: programStderr(r.stderr) };
}

function unconfined(tree: string, script: string, tmpdir: string): Ran {
  const r = spawnSync('sh', ['-c', script], { cwd: tree, env: { ...ENV, HOME: tree, TMPDIR: tmpdir }, encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Runs script confined in tree A and unconfined in tree B; both must end the same. */
function same(script: string, options: SnapshotOptions = {}): void {
  const n = ++counter;
  const a = join(base, `${n}-A`, 'work');
  const b = join(base, `${n}-B`, 'work');
  const tmpB = join(base, `${n}-tmp`);
  mkdirSync(tmpB, { recursive: true });
  makeTree(a);
  makeTree(b);
  const free = unconfined(b, script, tmpB);
  const conf = confined(a, 'all', script);
  assert.equal(conf.stderr, free.stderr, 'stderr');
  assert.equal(conf.stdout, free.stdout, 'stdout');
  assert.equal(conf.status, free.status, `status (stderr: ${conf.stderr})`);
  assert.deepEqual(snapshot(a, options), snapshot(b, options), 'the trees afterwards');
}

const has = (cmd: string): boolean => spawnSync('sh', ['-c', `command -v ${cmd}`], { env: ENV }).status === 0;
const need = (...cmds: string[]): string | false => {
  const missing = cmds.filter((c) => !has(c));
  return missing.length ? `not installed: ${missing.join(', ')}` : false;
};
const LS = 'ls -la --time-style=+T';

describe('programs confined by the syscall hook behave as unconfined', { timeout: 600_000 }, () => {
  it('ls -la, cp -r, cp -a', () => same(`${LS} . src && cp -r src copy && cp -a src copy2 && ${LS} copy copy2/sub`));
  it('mv a file and a directory', () => same(`mv src/a.txt moved.txt && mv src/sub moveddir && ${LS} . src moveddir`));
  it('rm -rf, mkdir -p, rmdir, find -delete', () =>
    same(
      'mkdir -p x/y/z && mkdir -p x/y && mkdir e && rmdir e && find src -name "*.txt" -delete && find src | sort && rm -rf x src && ls',
    ));
  it('tar create and extract, gzip, sed -i, sort -o', () =>
    same(
      'tar cf t.tar src && mkdir x && tar xf t.tar -C x && tar tvf t.tar | sort && gzip data.txt && sed -i s/alpha/ALPHA/ x/src/a.txt && sort -o Makefile Makefile && cat x/src/a.txt Makefile',
    ));
  it('chmod, touch -d, ln -s, ln', () =>
    same(
      `chmod 700 src/a.txt && chmod -R go-rx src/sub && touch -d "2001-02-03 04:05:06" src/b.txt && stat -c "%n %a %y" src/b.txt && ln -s a.txt src/l && ln src/b.txt src/hard && ${LS} src && cat src/l`,
    ));
  it('mktemp and mktemp -d, in the tree and in TMPDIR', () =>
    same(
      'f=$(mktemp -p .) && mv "$f" made-file && d=$(mktemp -d -p .) && mv "$d" made-dir && t=$(mktemp) && echo x > "$t" && cat "$t" && u=$(mktemp -d) && touch "$u/in" && ls "$u" && ls -l made-file made-dir --time-style=+T',
    ));

  it('python: listdir, tempfile, shutil.copytree/rmtree, os.replace as an atomic save', { skip: need('python3') }, () =>
    same(`/usr/bin/python3 - <<'EOF'
import os, shutil, tempfile
print(sorted(os.listdir('src')))
with tempfile.TemporaryDirectory() as d:
    open(os.path.join(d, 'x'), 'w').write('x')
    print(os.listdir(d))
with tempfile.TemporaryFile() as f:
    f.write(b'unnamed'); f.seek(0); print(f.read())
with tempfile.NamedTemporaryFile(dir='.', delete=False) as f:
    f.write(b'named')
os.replace(f.name, 'saved.txt')
shutil.copytree('src', 'ct')
shutil.rmtree('src/sub')
with open('a.tmp', 'w') as f:
    f.write('new contents\\n')
os.replace('a.tmp', 'src/a.txt')
print(sorted(os.listdir('ct')), open('src/a.txt').read())
EOF`),
  );

  it('sqlite3 with the default journal and with WAL', { skip: need('sqlite3') }, () =>
    same(
      'sqlite3 d.db "create table t(x); insert into t values (1),(2); select count(*) from t;" && sqlite3 w.db "pragma journal_mode=wal; create table t(x); insert into t values (3); select * from t;" && ls',
    ),
  );
  it('git init, add, commit and status', { skip: need('git') }, () =>
    same(
      'git init -q -b main r && cp -r src r/ && cd r && git add . && git commit -q -m first && echo more >> src/a.txt && git status --short && git log --format=%H%n%s',
      { skip: ['r/.git/index'] },
    ),
  );
  it('gcc compiling a program and running it from the tree, and make', { skip: need('gcc', 'make') }, () =>
    same('gcc -o hello hello.c && ./hello && make && cat out.txt'),
  );
  it('zip and unzip, and patch', { skip: need('zip', 'unzip', 'patch') }, () =>
    same(
      'zip -q -X -r z.zip src && mkdir u && cd u && unzip -q ../z.zip && cd .. && patch -p0 < fix.patch && cat src/a.txt && find u | sort',
    ),
  );
  it('perl -i, ln -sf, install -m, cp -al, cp -u', { skip: need('perl') }, () =>
    same(
      `perl -i -pe s/beta/BETA/ src/b.txt && ln -s a.txt src/l && ln -sf b.txt src/l && install -m 750 hello.c inst.c && cp -al src linked && cp -u -r src mirror && ${LS} src linked && cat src/b.txt`,
    ),
  );
  it('node fs: mkdir, rename, rm recursive', () =>
    same(
      `${process.execPath} -e "const fs=require('fs');fs.mkdirSync('n/a/b',{recursive:true});fs.mkdirSync('n/a',{recursive:true});fs.renameSync('src/a.txt','n/a/x.txt');fs.rmSync('src',{recursive:true});console.log(fs.readdirSync('n/a').sort())"`,
    ));
  it('a statically linked busybox: cp, mv, rm, mkdir, tar, ln', { skip: need('busybox') }, () =>
    same(
      'busybox tar cf bb.tar src && busybox cp -r src bb && busybox mv bb/a.txt bb/z.txt && busybox mkdir -p bb/q/r && busybox ln -s z.txt bb/l && busybox ln bb/b.txt bb/h && busybox mkdir bx && busybox tar xf bb.tar -C bx && busybox rm -rf bb/sub && busybox find bb bx | busybox sort',
    ),
  );
});

describe('with a read-only grant, destructive programs fail clearly and change nothing', { timeout: 300_000 }, () => {
  const cases: [string, string][] = [
    ['rm -rf', 'rm -rf src'],
    ['mv', 'mv src/a.txt moved'],
    ['mkdir', 'mkdir newdir'],
    ['rmdir', 'rmdir src/sub/deep'],
    ['chmod', 'chmod 600 src/a.txt'],
    ['touch -d', 'touch -d 2001-01-01 src/a.txt'],
    ['ln -s', 'ln -s a.txt src/l'],
    ['ln', 'ln src/a.txt src/h'],
    ['sed -i', 'sed -i s/a/b/ src/a.txt'],
    ['gzip', 'gzip data.txt'],
    ['truncate', 'truncate -s 0 src/a.txt'],
    ['mkfifo', 'mkfifo p'],
  ];
  for (const access of ['r', 'rd']) {
    for (const [name, script] of cases) {
      it(`${access}: ${name}`, () => {
        const tree = join(base, `${++counter}-ro`, 'work');
        makeTree(tree);
        const before = snapshot(tree, { times: true });
        const r = confined(tree, access, script);
        assert.notEqual(r.status, 0, `${script} must fail`);
        assert.match(r.stderr, /Permission denied|Operation not permitted|Read-only|cannot/i, r.stderr);
        assert.deepEqual(snapshot(tree, { times: true }), before);
        assert.ok(!existsSync(join(tree, 'newdir')));
      });
    }
  }
});
