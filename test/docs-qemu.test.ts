/**
 * The walk-throughs of docs/qemu.md, run as a user would paste them: the shell blocks, in order, in a
 * directory where `import 'openhook'` resolves (inside this package), so the docs cannot rot.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'node:test';
import { CLI, ROOT } from './helpers.js';

const help = spawnSync(process.execPath, [CLI, 'run', '--help'], { encoding: 'utf8' });
const missing =
  help.status !== 0 || !help.stdout.includes('--preload')
    ? 'openhook run --preload is not on this branch yet'
    : !help.stdout.includes('--policy')
      ? 'openhook run --policy (the policy file) is not on this branch yet'
      : false;

/** The first ```sh block after the heading. */
function shellBlock(doc: string, heading: string): string {
  const at = doc.indexOf(`\n## ${heading}\n`);
  assert.ok(at >= 0, `no section '${heading}' in docs/qemu.md`);
  const block = /```sh[^\n]*\n([\s\S]*?)```/.exec(doc.slice(at));
  assert.ok(block, `no shell block in '${heading}'`);
  return block[1]!;
}

it('the hook-mode and fd-set walk-throughs of docs/qemu.md run as written', { skip: missing }, () => {
  const doc = readFileSync(join(ROOT, 'docs', 'qemu.md'), 'utf8');
  const script = shellBlock(doc, 'Walk-through: hook mode') + shellBlock(doc, 'Walk-through: fd-set mode');
  mkdirSync(join(ROOT, 'build'), { recursive: true });
  const cwd = mkdtempSync(join(ROOT, 'build', 'docs-walk-'));
  try {
    const r = spawnSync('bash', ['-euo', 'pipefail', '-c', script], { cwd, encoding: 'utf8', timeout: 90_000 });
    const out = r.stdout + r.stderr;
    assert.equal(r.status, 0, out);
    assert.doesNotMatch(out, /verification failed|Error/i, out);
    assert.match(out, /openhook: ALLOW \S+\/vm\/base\.qcow2 O_RDWR/);
    assert.match(out, /refused: Could not open '\S+\/outside\/secret\.qcow2': Permission denied/);
    assert.match(out, /refused: EACCES: permission denied, open '\S+\/outside\/secret\.qcow2'/);
    assert.equal((out.match(/^backing file: \/\S+\/vm\/base\.qcow2$/gm) ?? []).length, 2, out);
    assert.equal((out.match(/QEMU exited: \{ code: 0, signal: null \}/g) ?? []).length, 2, out);
  } finally {
    rmSync(cwd, { recursive: true, force: true });
  }
});
