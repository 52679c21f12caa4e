/**
 * What following symlinks costs an open: the same program (bench/hook-opens.c) opens one file in a
 * tree again and again, trapped by the syscall hook and over the hook socket (the interposer), under
 * four rules for the tree, in the same run:
 *
 *   rwcd                 no symlinks followed (the C fast path: openat2 and the reopen in one call)
 *   all                  follows (it grants s), no rule beneath the root: no real-path check, fast path
 *   all + a carve-out    follows, a deny rule beneath the root: every open reads two real paths
 *                        (/proc/self/fd) and decides again, without the fast path
 *   r, follow_symlinks   follows by the key, no rule beneath: fast path
 *
 *   node --import tsx bench/follow.ts [RUNS] [COUNT]
 */
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Broker } from '../src/broker/broker.js';
import { launch } from '../src/launch/launch.js';
import { PRELOAD_LIBRARY } from '../src/launch/preload.js';
import { Policy } from '../src/policy/policy.js';
import { makeRule, type Rule } from '../src/policy/rule.js';
import { compile, ROOT } from './lib.js';

const runs = Number(process.argv[2] ?? 5);
const count = Number(process.argv[3] ?? 20000);
const opener = compile(join(ROOT, 'bench', 'hook-opens.c'), 'hook-opens');
const dir = mkdtempSync(join(tmpdir(), 'openhook-bench-follow-'));
const tree = join(dir, 'tree');
mkdirSync(join(tree, 'sub'), { recursive: true });
const file = join(tree, 'sub', 'disk.img');
writeFileSync(file, 'x'.repeat(4096));

const policies: [string, Rule[]][] = [
  ['rwcd (no symlinks followed)', [makeRule({ allow: `${tree}/`, access: 'rwcd' }, 'bench')]],
  ['all (follows, nothing to check)', [makeRule({ allow: `${tree}/`, access: 'all' }, 'bench')]],
  [
    'all + a carve-out (real paths checked)',
    [makeRule({ allow: `${tree}/`, access: 'all' }, 'bench'), makeRule({ deny: `${tree}/private/` }, 'bench')],
  ],
  ['r, follow_symlinks = true', [makeRule({ allow: `${tree}/`, access: 'r', follow_symlinks: true }, 'bench')]],
];

async function meanUs(broker: Broker, hook: boolean, n: number): Promise<number> {
  const out = join(dir, 'out');
  const fd = openSync(out, 'w');
  try {
    const { status } = await launch({
      command: opener,
      args: [file, String(n)],
      broker,
      readOnly: [join(ROOT, 'build', 'bench'), ...(hook ? [] : [PRELOAD_LIBRARY])],
      stdio: ['ignore', fd, 'inherit'],
      ...(hook ? { syscallHook: {} } : { env: { LD_PRELOAD: PRELOAD_LIBRARY } }),
    });
    if (status !== 0) throw new Error(`hook-opens exited with ${status}`);
  } finally {
    closeSync(fd);
  }
  return Number(/^mean_us ([0-9.]+)$/m.exec(readFileSync(out, 'utf8'))![1]);
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

try {
  const brokers = policies.map(([, rules]) => new Broker({ policy: new Policy(rules), log: () => {} }));
  for (const b of brokers) await meanUs(b, true, 2000); // warm up
  const results = policies.map(() => ({ trapped: [] as number[], socket: [] as number[] }));
  for (let i = 0; i < runs; i++) {
    for (let p = 0; p < policies.length; p++) {
      results[p]!.trapped.push(await meanUs(brokers[p]!, true, count));
      results[p]!.socket.push(await meanUs(brokers[p]!, false, count));
    }
  }
  console.log(`| rule | trapped open, µs (median of ${runs}) | hook-socket open, µs |`);
  console.log('|---|---|---|');
  for (let p = 0; p < policies.length; p++) {
    console.log(`| ${policies[p]![0]} | ${median(results[p]!.trapped).toFixed(1)} | ${median(results[p]!.socket).toFixed(1)} |`);
  }
  for (const b of brokers) b.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
