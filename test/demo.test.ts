import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { it } from 'node:test';
import { CLI } from './helpers.js';

it('openhook demo shows an allowed open, a denial and a run-time create', () => {
  const r = spawnSync(process.execPath, [CLI, 'demo'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /broker: ALLOW .*base\.img O_RDONLY/);
  assert.match(r.stdout, /client: got fd \d+; it reads "the base image of the VM"/);
  assert.match(r.stdout, /broker: DENY EACCES .*host-key/);
  assert.match(r.stdout, /client: refused: EACCES/);
  assert.match(r.stdout, /broker: ALLOW .*snap1\.qcow2 O_RDWR\|O_CREAT\|O_EXCL/);
  // an unmodified program (cat) under the syscall hook: its own opens decided by the broker
  assert.match(
    r.stdout,
    /broker: ALLOW .*base\.img O_RDONLY[^\n]*\n(?:.*\n)*?the base image of the VM\n(?:.*\n)*?.*broker: DENY EACCES .*host-key O_RDONLY/,
  );
  assert.match(r.stdout, /cat exited with status 1/);
  assert.match(r.stdout, /Demo finished/);
});
