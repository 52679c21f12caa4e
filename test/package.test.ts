/**
 * The package as a user gets it: `npm pack`, then the tarball installed somewhere else, with no
 * .npmrc and no clone around. The command runs from any directory, the native build is quiet unless
 * it fails, and the documented ways to find the interposer (docs/interposer.md) work as written.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ROOT, tempDir } from './helpers.js';

const tmp = tempDir('openhook-package-');
after(tmp.cleanup);
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

/**
 * npm's environment without what `npm test` put there: no npm_config_* (above all no nodedir from the
 * clone's .npmrc, which an install elsewhere does not see) and no lifecycle variables.
 */
function npmEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const key of Object.keys(env)) if (/^npm_/i.test(key)) delete env[key];
  return env;
}

function npm(args: string[], cwd: string): { status: number | null; out: string } {
  const r = spawnSync('npm', [...args, '--no-audit', '--no-fund', '--prefer-offline'], {
    cwd,
    env: npmEnv(),
    encoding: 'utf8',
    timeout: 300_000,
  });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

let tarball = '';
const outside = join(tmp.path, 'elsewhere'); // a working directory that is not in any clone

before(() => {
  // dist is built by npm test's pretest; packing again would rebuild it under the running tests.
  const packed = execFileSync('npm', ['pack', '--ignore-scripts', '--pack-destination', tmp.path], {
    cwd: ROOT,
    env: npmEnv(),
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const name = packed.trim().split('\n').pop()!;
  tarball = join(tmp.path, name);
  mkdirSync(outside);
});

describe('npm pack, then npm install -g from the tarball', () => {
  const prefix = join(tmp.path, 'prefix');
  let install = { status: null as number | null, out: '' };
  before(() => {
    // --foreground-scripts shows what the install script prints, as npm does for a clone's own install.
    // --nodedir= undoes a nodedir in the user's npmrc: a user's machine need not have one.
    install = npm(['install', '-g', '--prefix', prefix, '--foreground-scripts', '--nodedir=', tarball], outside);
  });

  it('installs, building the native code offline with no .npmrc, and says nothing about the build', () => {
    assert.equal(install.status, 0, install.out);
    assert.doesNotMatch(install.out, /gyp info|CC\(target\)|make: Entering/, 'the build is quiet when it succeeds');
    for (const f of ['openhook.node', 'openhook-launch', 'libopenhook-preload.so']) {
      assert.ok(existsSync(join(prefix, 'lib', 'node_modules', 'openhook', 'build', 'Release', f)), `${f} was built`);
    }
  });

  it('runs as TMP/bin/openhook from a directory outside the clone', () => {
    const bin = join(prefix, 'bin', 'openhook');
    assert.equal(execFileSync(bin, ['--version'], { cwd: outside, encoding: 'utf8' }).trim(), VERSION);
    const vm = join(tmp.path, 'vm');
    mkdirSync(vm, { recursive: true });
    writeFileSync(join(vm, 'disk.img'), 'disk');
    const r = spawnSync(bin, ['check', '--allow', `${vm}/:r`, join(vm, 'disk.img'), 'r'], { cwd: outside, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^allow /);
    // ... and with `openhook` found on PATH, as the README has it.
    const onPath = spawnSync('openhook', ['--version'], {
      cwd: outside,
      encoding: 'utf8',
      env: { ...npmEnv(), PATH: `${join(prefix, 'bin')}:${process.env.PATH}` },
    });
    assert.equal(onPath.stdout.trim(), VERSION, onPath.stderr);
  });
});

describe('a project that depends on openhook (the tarball)', () => {
  const project = join(tmp.path, 'project');
  before(() => {
    mkdirSync(project);
    writeFileSync(
      join(project, 'package.json'),
      JSON.stringify({ name: 'uses-openhook', version: '1.0.0', private: true, type: 'module' }),
    );
    const r = npm(['install', tarball], project);
    assert.equal(r.status, 0, r.out);
  });

  it('finds the interposer by `openhook preload-path` and by `openhook/preload`, the same existing file', () => {
    const env = { ...npmEnv(), PATH: `${join(project, 'node_modules', '.bin')}:${process.env.PATH}` };
    const byCommand = execFileSync('openhook', ['preload-path'], { cwd: project, env, encoding: 'utf8' }).trim();
    const byImport = execFileSync(process.execPath, ['-e', 'import("openhook/preload").then(m => console.log(m.PRELOAD_LIBRARY))'], {
      cwd: project,
      env,
      encoding: 'utf8',
    }).trim();
    assert.equal(byCommand, join(project, 'node_modules', 'openhook', 'build', 'Release', 'libopenhook-preload.so'));
    assert.equal(byImport, byCommand);
    assert.ok(existsSync(byCommand));
  });

  it(
    "runs docs/interposer.md's by-hand example as written (the docs' paths swapped for temporary ones)",
    { skip: !existsSync('/usr/bin/qemu-img') && 'needs qemu-img' },
    () => {
      const doc = readFileSync(join(ROOT, 'docs', 'interposer.md'), 'utf8');
      const at = doc.indexOf('    openhook serve --socket /run/oh.sock');
      assert.ok(at >= 0, 'the example is in docs/interposer.md');
      const block = doc
        .slice(at)
        .split('\n\n')[0]!
        .split('\n')
        .map((l) => l.replace(/^ {4}/, ''));
      assert.equal(block.length, 2, block.join('\n'));
      const [serve, preload] = block.map((l) =>
        l.replaceAll('/run/oh.sock', join(project, 'oh.sock')).replaceAll('/srv/vm/', `${project}/vm/`),
      );
      mkdirSync(join(project, 'vm'));
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(project, 'vm', 'disk.qcow2'), '1M']);
      // The reader's shell waits for the broker by eye; this one waits for its socket.
      // Then it asks the broker how many opens it allowed: the interposer sent qemu-img's there.
      const sock = join(project, 'oh.sock');
      const script = `${serve}\ntrap 'kill $!' EXIT\nfor i in $(seq 200); do [ -S ${sock} ] && break; sleep 0.05; done\n${preload}\nopenhook status --socket ${sock} --json >status.json\n`;
      const env = { ...npmEnv(), PATH: `${join(project, 'node_modules', '.bin')}:${process.env.PATH}` };
      const r = spawnSync('sh', ['-c', script], { cwd: project, env, encoding: 'utf8', timeout: 60_000 });
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /file format: qcow2/);
      const report = JSON.parse(readFileSync(join(project, 'status.json'), 'utf8')) as { requests: { allowed: number } };
      assert.ok(report.requests.allowed >= 1, 'qemu-img opened the image through the broker');
    },
  );
});

describe('the install script', () => {
  it('shows the build output, and exits non-zero, when the build fails', () => {
    const pkg = join(tmp.path, 'broken');
    mkdirSync(join(pkg, 'scripts'), { recursive: true });
    cpSync(join(ROOT, 'native'), join(pkg, 'native'), { recursive: true });
    copyFileSync(join(ROOT, 'binding.gyp'), join(pkg, 'binding.gyp'));
    copyFileSync(join(ROOT, 'scripts', 'install.mjs'), join(pkg, 'scripts', 'install.mjs'));
    writeFileSync(
      join(pkg, 'package.json'),
      JSON.stringify({ name: 'broken', version: '1.0.0', scripts: { install: 'node scripts/install.mjs' } }),
    );
    writeFileSync(join(pkg, 'native', 'preload.c'), 'this is not C;\n');
    const r = spawnSync('npm', ['run', 'install'], { cwd: pkg, env: npmEnv(), encoding: 'utf8' });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /preload\.c.*error/, 'the compiler says what is wrong');
    assert.match(r.stderr, /openhook: building the native code failed/);
  });
});
