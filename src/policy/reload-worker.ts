/**
 * The reloader's helper thread: reads and checks a policy file off the broker's event loop, and
 * sends back the checked spec (plain data) or the error. Compiling (the trie, the roots) stays on the
 * main thread, which owns the fds. Only spec.ts is loaded here, never the native addon (see spec.ts).
 *
 * Rules travel in chunks: copying 100,000 rules into the main thread in one message would stall its
 * event loop for as long as that copy takes; in chunks, requests are served between them.
 */
import { parentPort } from 'node:worker_threads';
import { readPolicyFile } from './spec.js';
import { PolicyError } from './rule.js';

const CHUNK = 5000;

parentPort!.on('message', (file: string) => {
  try {
    const spec = readPolicyFile(file);
    const lists = [spec.rules, ...spec.sections.map((s) => s.rules)];
    for (let list = 0; list < lists.length; list++) {
      const rules = lists[list]!;
      for (let i = 0; i < rules.length; i += CHUNK) parentPort!.postMessage({ kind: 'rules', list, rules: rules.slice(i, i + CHUNK) });
    }
    parentPort!.postMessage({
      kind: 'done',
      ok: true,
      spec: { ...spec, rules: [], sections: spec.sections.map((s) => ({ ...s, rules: [] })) },
    });
  } catch (err) {
    parentPort!.postMessage({ kind: 'done', ok: false, policyError: err instanceof PolicyError, message: (err as Error).message });
  }
});
