/**
 * Worker threads: the policy reader runs in one (reloads), the native addon never does. A worker
 * that loaded the addon would take the process-wide receive arena from the broker's pollers.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import { ROOT } from './helpers.js';

function inWorker(code: string): Promise<{ ok: boolean; message: string }> {
  return new Promise((resolve) => {
    const w = new Worker(code, { eval: true });
    w.once('message', (m: string) => resolve({ ok: true, message: m }));
    w.once('error', (err) => resolve({ ok: false, message: err.message }));
  });
}

describe('worker threads', () => {
  it('refuse to load the native addon', async () => {
    const r = await inWorker(
      `import(${JSON.stringify(join(ROOT, 'dist', 'native.js'))}).then(() => require('node:worker_threads').parentPort.postMessage('loaded'))`,
    );
    assert.equal(r.ok, false);
    assert.match(r.message, /must not be loaded in a worker thread/);
  });

  it('can read and check a policy (the reload thread), which never loads the addon', async () => {
    const r = await inWorker(
      `import(${JSON.stringify(join(ROOT, 'dist', 'policy', 'spec.js'))}).then((m) => require('node:worker_threads').parentPort.postMessage(String(m.parsePolicyText('[[rule]]\\nallow = "/a/"\\naccess = "r"\\n', 'w.toml').rules.length)))`,
    );
    assert.deepEqual(r, { ok: true, message: '1' });
  });
});
