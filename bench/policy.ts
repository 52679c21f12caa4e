/**
 * Policy scale: the cost of a request under a 100,000-rule policy against a 10-rule one, side by
 * side in one run. Three figures:
 * - load: parsing, checking and compiling the 100,000-rule file in a fresh process, as `serve`
 *   starts (the bound: under 1 s);
 * - decide(): the pure decision cost, in process, same path, both policies (CPU time);
 * - through the real broker: `openhook serve --policy` with each file, driven by ref-client, runs
 *   alternating so that drift on a shared machine hits both alike.
 * The ratio column reads "as good as the 10-rule policy" at 1.0×; the target is ≥ 0.95× (a request
 * costs at most 1.05× what it costs under 10 rules).
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';
import { loadPolicyFile } from '../src/policy/file.js';
import { Access } from '../src/policy/access.js';
import type { Peer } from '../src/policy/policy.js';
import { latencyRow, median, rateRow, ROOT, runRefClient, startOpenhook, type Row } from './lib.js';

export interface PolicyBenchOptions {
  runs: number;
  /** opens per broker run */
  count: number;
  /** rules in the big policy (default 100,000) */
  rules?: number;
}

/** The 10 rules both policies have: the one the requests hit, and nine around it. */
function smallRules(dir: string): string {
  let s = `# the rules every request meets\n`;
  s += `[[rule]]\nallow = "${dir}/data/"\naccess = "r"\n\n`;
  s += `[[rule]]\ndeny = "${dir}/data/private/"\n\n`;
  s += `[[rule]]\ndeny = "${dir}/data/**/*.key"\n\n`;
  for (let i = 0; i < 7; i++) s += `[[rule]]\nallow = "${dir}/vm${i}/"\naccess = "rwc"\n\n`;
  return s;
}

/**
 * Rules a VM host might have: one tree per guest, a carve-out in some, a few globs. They sit beside
 * the directory the requests go to, so each request's lookup passes through a directory of 100,000
 * entries. Their directories need not exist: roots are opened only when used.
 */
function bulkRules(dir: string, n: number): string {
  const parts: string[] = [];
  for (let i = 0; i < n; i++) {
    if (i % 10 === 9) parts.push(`[[rule]]\ndeny = "${dir}/g${i - 1}/secrets/"\n`);
    else if (i % 100 === 50) parts.push(`[[rule]]\nallow = "${dir}/g${i}/*.qcow2"\naccess = "rw"\n`);
    else parts.push(`[[rule]]\nallow = "${dir}/g${i}/"\naccess = "rw"\n`);
  }
  return parts.join('\n');
}

export async function benchPolicy(opts: PolicyBenchOptions): Promise<Row[]> {
  const n = opts.rules ?? 100_000;
  // A short directory name, as a VM host's /srv/vm is: the file's size is what parsing costs.
  const dir = mkdtempSync(join(tmpdir(), 'ohp-'));
  mkdirSync(join(dir, 'data'));
  const ws = { dir, file: join(dir, 'data', 'disk.img'), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
  writeFileSync(ws.file, 'x'.repeat(4096));
  const small = join(ws.dir, 'small.toml');
  const big = join(ws.dir, 'big.toml');
  writeFileSync(small, smallRules(ws.dir));
  writeFileSync(big, smallRules(ws.dir) + bulkRules(ws.dir, n - 10));
  const bigSize = statSync(big).size;
  const rows: Row[] = [];
  try {
    // Load time, as `serve` starts: a fresh process reads, checks and compiles the file (dist/).
    // Wall time is the bound. On a shared machine it includes waiting for a core, so CPU time is shown
    // too: the main thread's (which an idle machine's wall time comes close to), and all threads'
    // (the garbage collector's helpers included).
    const wall: number[] = [],
      main: number[] = [],
      all: number[] = [];
    const script = `import { readFileSync } from 'node:fs';
      import { loadPolicyFile } from ${JSON.stringify(pathToFileURL(join(ROOT, 'dist', 'policy', 'file.js')).href)};
      const ticks = () => { const f = readFileSync('/proc/self/task/' + process.pid + '/stat', 'utf8').split(') ')[1].split(' '); return Number(f[11]) + Number(f[12]); };
      const c = process.cpuUsage(), k = ticks(), t = performance.now();
      const p = loadPolicyFile(process.argv[1]);
      const ms = performance.now() - t, mainMs = (ticks() - k) * 10, used = process.cpuUsage(c);
      if (p.ruleCount !== ${n}) throw new Error('rule count ' + p.ruleCount);
      console.log(ms, mainMs, (used.user + used.system) / 1000);`;
    for (let i = 0; i < Math.max(3, opts.runs); i++) {
      const [w, m, a] = execFileSync(process.execPath, ['--input-type=module', '-e', script, big], { encoding: 'utf8' })
        .trim()
        .split(' ')
        .map(Number);
      wall.push(w!);
      main.push(m!);
      all.push(a!);
    }
    const name = `load ${n.toLocaleString('en')} rules (${(bigSize / 1e6).toFixed(1)} MB)`;
    const loadRow = (metric: string, values: number[], target: string): Row => ({
      case: name,
      metric,
      openhook: median(values),
      reference: 1000,
      ratio: 1000 / median(values),
      target,
      unit: 'ms',
    });
    rows.push(
      loadRow('wall ms', wall, '< 1000 ms'),
      loadRow('CPU ms, main thread', main, '< 1000 ms'),
      loadRow('CPU ms, all threads', all, '(info)'),
    );

    // decide(): same path, same peer, alternating policies.
    const peer: Peer = { pid: 1, uid: 0, gid: 0, groups: [] };
    const pSmall = loadPolicyFile(small),
      pBig = loadPolicyFile(big);
    const path = ws.file;
    // CPU time, not wall time: on a shared machine, waiting for a core is not the decision's cost.
    const rate = (p: typeof pSmall, iterations: number): number => {
      const t = process.cpuUsage();
      for (let i = 0; i < iterations; i++) p.decide(peer, path, Access.READ);
      const used = process.cpuUsage(t);
      return iterations / ((used.user + used.system) / 1e6);
    };
    for (const p of [pSmall, pBig]) if (!p.decide(peer, path, Access.READ).allowed) throw new Error('the bench path is not allowed');
    rate(pSmall, 200_000);
    rate(pBig, 200_000);
    const dSmall: number[] = [],
      dBig: number[] = [];
    // Short runs, many times, alternating which goes first: drift hits both alike.
    for (let i = 0; i < Math.max(11, 2 * opts.runs + 1); i++) {
      const order = i % 2 ? [pBig, pSmall] : [pSmall, pBig];
      for (const p of order) (p === pBig ? dBig : dSmall).push(rate(p, 200_000));
    }
    pSmall.close();
    pBig.close();
    rows.push({ ...rateRow(`decide(), ${n.toLocaleString('en')} vs 10 rules`, dBig, dSmall, '≥ 0.95×'), metric: 'decisions/s' });

    // The real broker, driven by ref-client.
    const ohSmall = await startOpenhook(join(ws.dir, 'small.sock'), ['--policy', small]);
    const ohBig = await startOpenhook(join(ws.dir, 'big.sock'), ['--policy', big]);
    try {
      runRefClient(ohSmall.socket, ws.file, 2000);
      runRefClient(ohBig.socket, ws.file, 2000);
      // Besides the client's view (rate, p50), the broker's own CPU time per request, from
      // /proc/PID/stat: it does not count the time a busy machine makes the broker wait for a core.
      const cpuMs = (pid: number): number => {
        const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
        return (Number(f[11]) + Number(f[12])) * 10;
      };
      const s = { rate: [] as number[], p50: [] as number[], cpu: [] as number[] },
        b = { rate: [] as number[], p50: [] as number[], cpu: [] as number[] };
      for (let i = 0; i < opts.runs; i++) {
        for (const [target, acc] of (i % 2
          ? [
              [ohSmall, s],
              [ohBig, b],
            ]
          : [
              [ohBig, b],
              [ohSmall, s],
            ]) as [typeof ohBig, typeof b][]) {
          const before = cpuMs(target.child.pid!);
          const res = runRefClient(target.socket, ws.file, opts.count);
          if (res.errors) throw new Error(`${res.errors} errors against ${target === ohBig ? 'the big' : 'the small'} policy`);
          acc.cpu.push(((cpuMs(target.child.pid!) - before) * 1000) / opts.count);
          acc.rate.push(res.opensPerS);
          acc.p50.push(res.p50Us!);
        }
      }
      const name = `broker, ${n.toLocaleString('en')} vs 10 rules`;
      rows.push(rateRow(name, b.rate, s.rate, '≥ 0.95×'));
      rows.push(latencyRow(name, 'p50', b.p50, s.p50, '≥ 0.95×'));
      rows.push(latencyRow(name, 'broker CPU per open', b.cpu, s.cpu, '≥ 0.95×'));
    } finally {
      await ohSmall.stop();
      await ohBig.stop();
    }
  } finally {
    ws.cleanup();
  }
  return rows;
}
