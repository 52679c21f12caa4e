/** `openhook run` writes the same audit log as `serve`, and words an allowed-but-failed open as FAIL. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, it } from 'node:test';
import { CLI, tempDir } from './helpers.js';

const tmp = tempDir();
after(tmp.cleanup);
const data = join(tmp.path, 'data');
mkdirSync(data);
writeFileSync(join(data, 'hello.txt'), 'hello\n');

it('writes one JSON audit line per decision with --audit, and --log says FAIL for an allowed open that failed', () => {
  const auditFile = join(tmp.path, 'audit.jsonl');
  const r = spawnSync(
    process.execPath,
    [
      CLI,
      'run',
      '--preload',
      '--log',
      '--audit',
      auditFile,
      '--allow',
      `${data}/:r`,
      '--',
      'cat',
      join(data, 'hello.txt'),
      join(data, 'missing'),
      join(tmp.path, 'outside'),
    ],
    { encoding: 'utf8', timeout: 30_000 },
  );
  assert.equal(r.stdout, 'hello\n');
  assert.notEqual(r.status, 0, 'cat reports the files it could not open');
  assert.match(r.stderr, new RegExp(`openhook: ALLOW ${join(data, 'hello.txt')} O_RDONLY`));
  assert.match(r.stderr, new RegExp(`openhook: FAIL ENOENT ${join(data, 'missing')} O_RDONLY \\(allowed by`));
  assert.match(r.stderr, new RegExp(`openhook: DENY EACCES ${join(tmp.path, 'outside')} O_RDONLY`));

  const lines = readFileSync(auditFile, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  const byPath = new Map(lines.map((l) => [l.path, l]));
  assert.deepEqual([byPath.get(join(data, 'hello.txt'))?.decision, byPath.get(join(data, 'hello.txt'))?.errno], ['allow', null]);
  assert.deepEqual([byPath.get(join(data, 'missing'))?.decision, byPath.get(join(data, 'missing'))?.errno], ['allow', 'ENOENT']);
  assert.deepEqual([byPath.get(join(tmp.path, 'outside'))?.decision, byPath.get(join(tmp.path, 'outside'))?.errno], ['deny', 'EACCES']);
  assert.equal(byPath.get(join(data, 'hello.txt'))?.client.session, 'cat');
});

it('refuses to start when the audit log cannot be opened', () => {
  const r = spawnSync(process.execPath, [CLI, 'run', '--audit', join(tmp.path, 'no', 'such', 'dir', 'a.log'), '--', 'true'], {
    encoding: 'utf8',
  });
  assert.equal(r.status, 125);
  assert.match(r.stderr, /cannot open the audit log/);
});
