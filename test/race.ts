/**
 * The symlink-swap race, shared by test/races.test.ts (short) and `npm run stress` (long).
 *
 * A tree holds a directory `d` (with `d/f`, the file a client may open) and a symlink pointing out
 * of the tree; the swapper exchanges the two with renameat2(RENAME_EXCHANGE) in a tight loop while a
 * client opens `d/f` through the broker again and again. Every fd received is identified by inode:
 * the inside file is fine, the outside file is an escape. Variants: the swapped symlink points at
 * the outside directory (a parent component) or at the outside file (the last component, swapped
 * with `d/f` itself), absolutely or relatively; the broker follows no symlinks (the default) or
 * follows them beneath the root.
 */
import { spawn } from 'node:child_process';
import {
  mkdirSync,
  mkdtempSync,
  openSync,
  closeSync,
  fstatSync,
  realpathSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Broker } from '../src/broker/broker.js';
import { Resolver } from '../src/resolver/resolver.js';
import { Policy } from '../src/policy/policy.js';
import { makeRule } from '../src/policy/rule.js';
import { fixture } from './helpers.js';

export interface RaceCase {
  /** which component the swap replaces */
  component: 'parent' | 'last';
  target: 'absolute' | 'relative';
  followSymlinks: boolean;
  kind: 'seqpacket' | 'stream';
  /** 'always': every open on the resolver's thread pool (the slow path) */
  offload?: 'auto' | 'always';
  /** a deny rule beneath the tree, so that followed opens check real paths too (src/policy/carve-outs.ts) */
  carveOut?: boolean;
}

export interface RaceResult {
  case: RaceCase;
  attempts: number;
  inside: number;
  escapes: number;
  /** errno -> count */
  errors: Record<number, number>;
  swaps: number;
  seconds: number;
}

export function describeCase(c: RaceCase): string {
  return `${c.component} component, ${c.target} symlink, ${c.followSymlinks ? 'following symlinks' : 'no symlinks'}, ${c.kind}${c.offload === 'always' ? ', thread pool' : ''}${c.carveOut ? ', real paths checked' : ''}`;
}

/** Every combination the race is run with, and the slow path for two of them. */
export const RACE_CASES: RaceCase[] = [
  ...(['parent', 'last'] as const).flatMap((component) =>
    (['absolute', 'relative'] as const).flatMap((target) =>
      [false, true].map((followSymlinks) => ({
        component,
        target,
        followSymlinks,
        kind: followSymlinks && target === 'relative' ? ('stream' as const) : ('seqpacket' as const),
      })),
    ),
  ),
  { component: 'parent', target: 'absolute', followSymlinks: true, kind: 'seqpacket', offload: 'always' },
  { component: 'last', target: 'relative', followSymlinks: false, kind: 'seqpacket', offload: 'always' },
  { component: 'parent', target: 'absolute', followSymlinks: true, kind: 'seqpacket', carveOut: true },
  { component: 'last', target: 'relative', followSymlinks: true, kind: 'seqpacket', carveOut: true },
];

interface Arena {
  dir: string;
  tree: string;
  /** the name the client opens */
  name: string;
  /** the two names the swapper exchanges */
  a: string;
  b: string;
  insideIno: number;
  outsideIno: number;
  cleanup(): void;
}

function arena(c: RaceCase): Arena {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), 'openhook-race-')));
  const tree = join(dir, 'tree');
  const out = join(dir, 'outside');
  mkdirSync(join(tree, 'd'), { recursive: true });
  mkdirSync(out);
  writeFileSync(join(tree, 'd', 'f'), 'inside');
  writeFileSync(join(out, 'f'), 'SECRET');
  let a: string, b: string;
  if (c.component === 'parent') {
    symlinkSync(c.target === 'absolute' ? out : '../outside', join(tree, 'l'));
    a = join(tree, 'd');
    b = join(tree, 'l');
  } else {
    symlinkSync(c.target === 'absolute' ? join(out, 'f') : '../../outside/f', join(tree, 'd', 'l'));
    a = join(tree, 'd', 'f');
    b = join(tree, 'd', 'l');
  }
  return {
    dir,
    tree,
    a,
    b,
    name: join(tree, 'd', 'f'),
    insideIno: statSync(join(tree, 'd', 'f')).ino,
    outsideIno: statSync(join(out, 'f')).ino,
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} exited with ${code}`))));
  });
}

/**
 * Runs one race: a broker in this process (so that followSymlinks can be set), the swapper, and
 * `clients` race-client processes sharing the attempts.
 */
export async function race(c: RaceCase, attempts: number, clients = 2): Promise<RaceResult> {
  const ar = arena(c);
  const broker = new Broker({
    policy: new Policy([
      makeRule({ allow: `${ar.tree}/`, access: 'r', follow_symlinks: c.followSymlinks }, 'race'),
      ...(c.carveOut ? [makeRule({ deny: `${ar.tree}/nothing-here/` }, 'race')] : []),
    ]),
    resolver: new Resolver({ offload: c.offload ?? 'auto' }),
    log: () => {},
  });
  const socket = join(ar.dir, 'race.sock');
  broker.listen(socket, { stream: c.kind === 'stream' });
  const swapper = spawn(fixture('swapper'), [ar.a, ar.b], { stdio: ['ignore', 'pipe', 'inherit'] });
  let swapOut = '';
  swapper.stdout.on('data', (d) => (swapOut += d));
  const swapDone = new Promise<void>((r) => swapper.on('close', () => r()));
  try {
    while (!swapOut.includes('ready')) await new Promise((r) => setTimeout(r, 2));
    const t0 = performance.now();
    const per = Math.ceil(attempts / clients);
    const outs = await Promise.all(
      Array.from({ length: clients }, () => run(fixture('race-client'), [socket, c.kind, ar.name, String(per)])),
    );
    const seconds = (performance.now() - t0) / 1000;
    swapper.kill('SIGTERM');
    await swapDone;
    const result: RaceResult = {
      case: c,
      attempts: 0,
      inside: 0,
      escapes: 0,
      errors: {},
      swaps: Number(/swaps=(\d+)/.exec(swapOut)?.[1] ?? 0),
      seconds,
    };
    for (const out of outs) {
      result.attempts += Number(/sent=(\d+)/.exec(out)![1]);
      if (/closed=1/.test(out)) throw new Error(`the broker closed a race client: ${out}`);
      for (const [, ino, n] of out.matchAll(/ino:(\d+)=(\d+)/g)) {
        if (Number(ino) === ar.insideIno) result.inside += Number(n);
        else result.escapes += Number(n); // the outside file, or anything else: not the file the name means
      }
      for (const [, e, n] of out.matchAll(/err:(\d+)=(\d+)/g)) result.errors[Number(e)] = (result.errors[Number(e)] ?? 0) + Number(n);
    }
    return result;
  } finally {
    if (swapper.exitCode === null) swapper.kill('SIGKILL');
    broker.close();
    ar.cleanup();
  }
}

/**
 * The control: realpath, check the prefix, then open — the pattern DESIGN.md warns about — against
 * the same swapper, to show that the race is real on this machine. Makes up to `attempts` opens, or
 * stops at the first escape (`untilEscape`) or when `budgetMs` has passed, whichever comes first.
 */
export async function naiveRace(
  attempts: number,
  options: { untilEscape?: boolean; budgetMs?: number } = {},
): Promise<{ attempts: number; escapes: number; inside: number; refused: number }> {
  const ar = arena({ component: 'parent', target: 'absolute', followSymlinks: true, kind: 'seqpacket' });
  const swapper = spawn(fixture('swapper'), [ar.a, ar.b], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((r) => swapper.stdout.once('data', r));
  const deadline = Date.now() + (options.budgetMs ?? Infinity);
  let made = 0,
    escapes = 0,
    inside = 0,
    refused = 0;
  try {
    while (made < attempts && !(options.untilEscape && escapes > 0)) {
      if (made % 1000 === 0 && made > 0) {
        if (Date.now() > deadline) break;
        await new Promise((r) => setImmediate(r)); // let the test runner's timers run
      }
      made++;
      try {
        if (!realpathSync(ar.name).startsWith(ar.tree + '/')) {
          refused++;
          continue;
        }
        const fd = openSync(ar.name, 'r');
        if (fstatSync(fd).ino === ar.outsideIno) escapes++;
        else inside++;
        closeSync(fd);
      } catch {
        refused++;
      }
    }
  } finally {
    swapper.kill('SIGKILL');
    ar.cleanup();
  }
  return { attempts: made, escapes, inside, refused };
}
