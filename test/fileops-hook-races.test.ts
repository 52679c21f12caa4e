/**
 * The races of every new operation, through the syscall hook: a confined program (Python, under
 * `openhook run`) makes, removes, renames, links and symlinks names beneath `tree/d` while an
 * unconfined swapper (test/fixtures/swapper.c) exchanges `tree/d` with a symlink `tree/l` pointing
 * out of the tree. Each name has a twin in the outside directory: anything made, removed or moved
 * there is an escape. The control runs the same program unconfined and must escape, or the race is
 * not real here. Also: a rename across two rules with different rights, and a hard link to a file
 * outside every rule.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { CLI, fixture } from './helpers.js';

const TRIES = 400;

interface Arena {
  dir: string;
  tree: string;
  out: string;
}

function arena(): Arena {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), 'openhook-hookrace-')));
  const tree = join(dir, 'tree');
  const out = join(dir, 'outside');
  mkdirSync(join(tree, 'd'), { recursive: true });
  mkdirSync(out);
  symlinkSync(out, join(tree, 'l'));
  writeFileSync(join(tree, 'src'), 'linked\n');
  for (let i = 0; i < TRIES; i++) {
    for (const prefix of ['u', 'r']) {
      writeFileSync(join(tree, 'd', `${prefix}${i}`), 'in\n');
      writeFileSync(join(out, `${prefix}${i}`), 'out\n');
    }
  }
  return { dir, tree, out };
}

/** Each try does every operation once, on names of its own; failures are expected and ignored. */
const PROGRAM = `
import os, sys
n = int(sys.argv[1])
for i in range(n):
    for op in (lambda: os.mkdir(f'd/m{i}'), lambda: os.unlink(f'd/u{i}'), lambda: os.rename(f'd/r{i}', f'd/rr{i}'),
               lambda: os.link('src', f'd/k{i}'), lambda: os.symlink('x', f'd/s{i}')):
        try:
            op()
        except OSError:
            pass
`;

/** What reached the outside directory: names made or moved there, twins removed or moved away. */
function escapes(a: Arena): string[] {
  const found: string[] = [];
  const names = new Set(readdirSync(a.out));
  for (const name of names) if (!/^[ur]\d+$/.test(name)) found.push(`made ${name}`);
  for (let i = 0; i < TRIES; i++) {
    for (const prefix of ['u', 'r']) {
      if (!names.has(`${prefix}${i}`)) found.push(`removed ${prefix}${i}`);
      else if (readFileSync(join(a.out, `${prefix}${i}`), 'utf8') !== 'out\n') found.push(`changed ${prefix}${i}`);
    }
  }
  return found;
}

async function race(a: Arena, command: string[]): Promise<{ swaps: number; status: number | null; stderr: string }> {
  const swapper = spawn(fixture('swapper'), [join(a.tree, 'd'), join(a.tree, 'l')], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  swapper.stdout.on('data', (d) => (out += d));
  const done = new Promise<void>((r) => swapper.on('close', () => r()));
  let status: number | null = null;
  let stderr = '';
  try {
    while (!out.includes('ready')) await new Promise((r) => setTimeout(r, 2));
    const child = spawn(command[0]!, [...command.slice(1), '/usr/bin/python3', '-c', PROGRAM, String(TRIES)], {
      cwd: a.tree,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    child.stderr.on('data', (d) => (stderr += d));
    status = await new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  } finally {
    swapper.kill('SIGTERM');
    await done;
  }
  return { swaps: Number(/swaps=(\d+)/.exec(out)?.[1] ?? 0), status, stderr };
}

const noPython = !existsSync('/usr/bin/python3') && 'needs /usr/bin/python3';

describe('races through the syscall hook', { timeout: 300_000, skip: noPython }, () => {
  // `all` follows symlinks beneath the root by default; a carve-out beneath the root makes the
  // broker check real paths too (src/policy/carve-outs.ts): the kernel alone and the kernel plus the check.
  const variants = [
    { name: '', rule: 'follow_symlinks = false\n', deny: '' },
    { name: ' (following symlinks beneath the root, as `all` does)', rule: '', deny: '' },
    { name: ' (following symlinks, real paths checked for a carve-out)', rule: '', deny: 'nothing-here/' },
  ];
  for (const v of variants) {
    it(`the parent swapped for a symlink during mkdir, unlink, rename, link and symlink: 0 escapes${v.name}`, async () => {
      const a = arena();
      try {
        const policy = join(a.dir, 'policy.toml');
        const deny = v.deny ? `\n[[rule]]\ndeny = "${a.tree}/${v.deny}"\n` : '';
        writeFileSync(policy, `[[rule]]\nallow = "${a.tree}/"\naccess = "all"\n${v.rule}${deny}`);
        const r = await race(a, [process.execPath, CLI, 'run', '--policy', policy, '--']);
        assert.equal(r.status, 0, r.stderr);
        assert.ok(r.swaps > 0, 'the swapper ran');
        assert.deepEqual(escapes(a), []);
        // and it did work where the tree was the tree
        assert.ok(readdirSync(join(a.tree, 'd')).length + readdirSync(join(a.tree, 'l')).length > 0);
      } finally {
        rmSync(a.dir, { recursive: true, force: true });
      }
    });
  }

  it('the control: the same program unconfined escapes', async (t) => {
    const a = arena();
    try {
      const r = await race(a, ['env']);
      assert.equal(r.status, 0, r.stderr);
      if (escapes(a).length === 0) t.diagnostic('no escape unconfined this time: the race window was not hit');
      else assert.ok(escapes(a).length > 0);
    } finally {
      rmSync(a.dir, { recursive: true, force: true });
    }
  });
});

describe('rules with different rights, and files outside every rule', { timeout: 120_000 }, () => {
  function setUp(): { dir: string; all: string; ro: string; outside: string; policy: string } {
    const dir = realpathSync(mkdtempSync(join(tmpdir(), 'openhook-tworules-')));
    const all = join(dir, 'all'),
      ro = join(dir, 'ro'),
      outside = join(dir, 'outside');
    for (const d of [all, ro, outside]) mkdirSync(d);
    writeFileSync(join(all, 'mine'), 'mine\n');
    writeFileSync(join(ro, 'theirs'), 'theirs\n');
    writeFileSync(join(outside, 'secret'), 'secret\n');
    const policy = join(dir, 'policy.toml');
    writeFileSync(policy, `[[rule]]\nallow = "${all}/"\naccess = "all"\n\n[[rule]]\nallow = "${ro}/"\naccess = "r"\n`);
    return { dir, all, ro, outside, policy };
  }
  const run = (policy: string, cwd: string, script: string) =>
    spawnSync(process.execPath, [CLI, 'run', '--policy', policy, '--', 'sh', '-c', script], { cwd, encoding: 'utf8', timeout: 60_000 });

  it('a rename across two rules: into the read-only one and out of it, both refused', () => {
    const s = setUp();
    try {
      const into = run(s.policy, s.all, `mv ${s.all}/mine ${s.ro}/mine`);
      assert.notEqual(into.status, 0);
      assert.match(into.stderr, /Permission denied/);
      const outOf = run(s.policy, s.all, `mv ${s.ro}/theirs ${s.all}/theirs`);
      assert.notEqual(outOf.status, 0);
      assert.match(outOf.stderr, /Permission denied/);
      assert.deepEqual(readdirSync(s.all), ['mine']);
      assert.deepEqual(readdirSync(s.ro), ['theirs']);
      // within the writable rule, it works
      const within = run(s.policy, s.all, 'mv mine moved && ls');
      assert.equal(within.status, 0, within.stderr);
      assert.equal(within.stdout, 'moved\n');
    } finally {
      rmSync(s.dir, { recursive: true, force: true });
    }
  });

  it('a hard link to a file outside every rule is refused, and nothing is made', () => {
    const s = setUp();
    try {
      const r = run(s.policy, s.all, `ln ${s.outside}/secret ${s.all}/h`);
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, /Permission denied/);
      assert.ok(!existsSync(join(s.all, 'h')));
      const py = run(s.policy, s.all, `/usr/bin/python3 -c "import os; os.link('${s.outside}/secret', 'h2')"`);
      assert.notEqual(py.status, 0);
      assert.ok(!existsSync(join(s.all, 'h2')));
    } finally {
      rmSync(s.dir, { recursive: true, force: true });
    }
  });
});
