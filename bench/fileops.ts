/**
 * Whole programs that list, make, remove and rename, confined by the syscall hook (every file
 * operation trapped and performed by the broker) against the same program unconfined, same run,
 * one broker in this process, the launch's own start-up (the same launch of /bin/true) subtracted:
 *
 *   - `tar xf` of 10,000 files in 100 directories (modes and times restored): goal ≤ 2×;
 *   - `git status` in a repository of 5,000 committed files: goal ≤ 2×;
 *   - `cp -r` of a 10,000-file tree: goal ≤ 2×.
 * In the table's convention, ≥ 1.0 is as good as unconfined; a cost goal of 2× reads ≥ 0.5×.
 *
 *   npm run bench -- --only fileops
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Broker } from '../src/broker/broker.js';
import { launch } from '../src/launch/launch.js';
import { Policy } from '../src/policy/policy.js';
import { parseAllowFlag } from '../src/policy/rule.js';
import { latencyRow, type Row } from './lib.js';

export interface FileopsBenchOptions {
  runs: number;
}

const GIT_ENV = {
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_AUTHOR_NAME: 'b',
  GIT_AUTHOR_EMAIL: 'b@example.org',
  GIT_COMMITTER_NAME: 'b',
  GIT_COMMITTER_EMAIL: 'b@example.org',
};

/** A tree of files files in directories of 100. */
function tree(root: string, files: number): void {
  for (let i = 0; i < files; i++) {
    const d = join(root, `d${Math.floor(i / 100)}`);
    if (i % 100 === 0) mkdirSync(d, { recursive: true });
    writeFileSync(join(d, `f${i}`), `file ${i}\n`);
  }
}

export async function benchFileops(opts: FileopsBenchOptions): Promise<Row[]> {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), 'openhook-bench-fileops-')));
  const broker = new Broker({ policy: new Policy([parseAllowFlag(`${dir}/:all`)]), log: () => {} });
  const env = { PATH: '/usr/bin:/bin', HOME: dir, ...GIT_ENV };

  const confined = async (command: string, args: string[]): Promise<number> => {
    const t = performance.now();
    const { status } = await launch({ command, args, broker, env, stdio: ['ignore', 'ignore', 'inherit'], syscallHook: {} });
    if (status !== 0) throw new Error(`${command} ${args.join(' ')} exited with ${status} confined`);
    return performance.now() - t;
  };
  const free = (command: string, args: string[]): Promise<number> =>
    new Promise((resolve, reject) => {
      const t = performance.now();
      const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'inherit'], cwd: dir, env });
      child.on('error', reject);
      child.on('close', (code) => (code === 0 ? resolve(performance.now() - t) : reject(new Error(`${command} exited with ${code}`))));
    });
  /** confined and unconfined, alternating, start-up subtracted: µs each */
  const pair = async (prepare: (i: number, side: 'in' | 'out') => { command: string; args: string[] }): Promise<[number[], number[]]> => {
    const inside: number[] = [],
      outside: number[] = [];
    for (let i = 0; i < opts.runs; i++) {
      const a = prepare(i, 'in');
      const b = prepare(i, 'out');
      const base = await confined('/bin/true', []);
      inside.push(((await confined(a.command, a.args)) - base) * 1000);
      outside.push(((await free(b.command, b.args)) - (await free('/bin/true', []))) * 1000);
    }
    return [inside, outside];
  };

  const rows: Row[] = [];
  try {
    const src = join(dir, 'src');
    tree(src, 10_000);
    const archive = join(dir, 'files.tar');
    execFileSync('tar', ['cf', archive, '-C', src, '.']);

    // 1. tar xf of 10,000 files
    const [tarIn, tarOut] = await pair((i, side) => {
      const to = join(dir, `tar-${side}-${i}`);
      mkdirSync(to);
      return { command: 'tar', args: ['xf', archive, '-C', to] };
    });
    rows.push(
      latencyRow('tar xf of 10,000 files (100 directories) confined vs unconfined', 'µs wall', tarIn, tarOut, '≥ 0.5× (cost ≤ 2×)'),
    );
    for (const side of ['in', 'out'])
      for (let i = 0; i < opts.runs; i++) rmSync(join(dir, `tar-${side}-${i}`), { recursive: true, force: true });

    // 2. git status in a 5,000-file repository
    const repo = join(dir, 'repo');
    tree(repo, 5_000);
    execFileSync('git', ['init', '-q', repo], { env });
    execFileSync('git', ['add', '.'], { cwd: repo, env });
    execFileSync('git', ['commit', '-q', '-m', 'files'], { cwd: repo, env });
    writeFileSync(join(repo, 'd0', 'f0'), 'changed\n');
    await free('git', ['-C', repo, 'status', '--short']); // the index refreshed once, as a user's first status would
    const [gitIn, gitOut] = await pair(() => ({ command: 'git', args: ['-C', repo, 'status', '--short'] }));
    rows.push(latencyRow('git status in a 5,000-file repository confined vs unconfined', 'µs wall', gitIn, gitOut, '≥ 0.5× (cost ≤ 2×)'));

    // 3. cp -r of a 10,000-file tree
    const [cpIn, cpOut] = await pair((i, side) => ({ command: 'cp', args: ['-r', src, join(dir, `cp-${side}-${i}`)] }));
    rows.push(latencyRow('cp -r of a 10,000-file tree confined vs unconfined', 'µs wall', cpIn, cpOut, '≥ 0.5× (cost ≤ 2×)'));
  } finally {
    broker.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}
