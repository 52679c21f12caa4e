import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { it } from 'node:test';
import { CLI } from './helpers.js';

const runHelp = spawnSync(process.execPath, [CLI, 'run', '--help'], { encoding: 'utf8' });
const missing = runHelp.status !== 0 || !runHelp.stdout.includes('--preload') ? 'openhook run --preload is not on this branch yet' : false;

it('openhook demo qemu narrates the hook-mode scenario, and every check in it passes', { skip: missing }, () => {
  const r = spawnSync(process.execPath, [CLI, 'demo', 'qemu'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /broker: ALLOW +\S+\/vm\/base\.qcow2 O_RDWR/);
  assert.match(r.stdout, /broker: DENY EACCES +\S+\/outside\/secret\.qcow2/);
  assert.match(r.stdout, /QEMU answers: Could not open .*secret\.qcow2': Permission denied/);
  assert.match(r.stdout, /broker: ALLOW +\S+\/vm\/overlay\.qcow2 O_RDWR\|O_CREAT/);
  assert.match(r.stdout, /overlay\.qcow2 backing file: \/\S+\/vm\/base\.qcow2/);
  assert.doesNotMatch(r.stdout, /FAILED/);
  assert.equal((r.stdout.match(/^ +ok: /gm) ?? []).length, 5);
  assert.match(r.stdout, /Demo finished: QEMU never opened an image itself/);
});
