/**
 * The safe open against a plain openat2, without a broker: bench/open-cost.c opens one file many
 * times each way. The ratio reads "as cheap as the plain open" at 1.0×; what is missing to 1.0× is
 * the price of invariant 4 (type check before any I/O) in any language.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { compile, median, ROOT, workspace, type Row } from './lib.js';

export function benchOpenCost(opts: { runs: number }): Row[] {
  const bin = compile(join(ROOT, 'bench', 'open-cost.c'), 'open-cost');
  const ws = workspace();
  const relative = ws.file.slice(ws.dir.length + 1);
  const got: Record<string, number[]> = { direct: [], lookup: [], reopen: [], safe: [] };
  try {
    for (let i = 0; i < Math.max(3, opts.runs); i++) {
      const out = execFileSync(bin, [ws.dir, relative, '100000'], { encoding: 'utf8' });
      for (const line of out.trim().split('\n')) {
        const [k, v] = line.split(' ');
        got[k!]!.push(Number(v) / 1000);
      }
    }
  } finally {
    ws.cleanup();
  }
  const direct = median(got.direct!);
  const row = (name: string, key: string): Row => {
    const us = median(got[key]!);
    return {
      case: name,
      metric: 'µs/open',
      openhook: us,
      reference: direct,
      ratio: direct / us,
      target: '(cost of the safety)',
      unit: 'µs',
    };
  };
  return [
    row('safe open: O_PATH lookup + fstat + reopen + 2 closes, vs openat2 + close', 'safe'),
    row('  of which O_PATH lookup + fstat + close', 'lookup'),
    row('  of which reopen through /proc/self/fd + close', 'reopen'),
  ];
}
