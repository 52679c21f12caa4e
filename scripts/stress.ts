/**
 * `npm run stress`: the symlink-swap race at length. Every variant of test/race.ts runs with
 * --attempts opens (default 100,000) while the swapper exchanges a directory (or the file) and a
 * symlink out of the tree; any fd for a file other than the one the name means is an escape. A
 * control runs realpath-then-open against the same swapper to show that the race is real here.
 *
 *   npm run stress -- [--attempts N] [--clients N] [--control N] [--only SUBSTRING]
 *
 * Exits 1 if there was any escape.
 */
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { describeCase, naiveRace, race, RACE_CASES, type RaceResult } from '../test/race.js';

const { values } = parseArgs({
  options: {
    attempts: { type: 'string', default: '100000' },
    clients: { type: 'string', default: '2' },
    control: { type: 'string', default: '20000' },
    only: { type: 'string' },
  },
});
const attempts = Number(values.attempts),
  clients = Number(values.clients),
  control = Number(values.control);
const errnoNames: Record<number, string> = { 2: 'ENOENT', 11: 'EAGAIN', 13: 'EACCES', 18: 'EXDEV', 20: 'ENOTDIR', 40: 'ELOOP' };

console.log(
  `openhook stress: ${attempts.toLocaleString('en')} opens per case, ${clients} clients, against a RENAME_EXCHANGE swapper; ${cpus().length} CPUs, node ${process.version}\n`,
);
const results: RaceResult[] = [];
for (const c of RACE_CASES.filter((c) => !values.only || describeCase(c).includes(values.only))) {
  const r = await race(c, attempts, clients);
  results.push(r);
  const errs = Object.entries(r.errors)
    .map(([e, n]) => `${errnoNames[Number(e)] ?? e} ${n}`)
    .join(', ');
  console.log(
    `${r.escapes === 0 ? 'ok  ' : 'FAIL'} ${describeCase(c)}: ${r.attempts} opens in ${r.seconds.toFixed(1)} s (${Math.round(r.attempts / r.seconds)}/s), ${r.swaps} swaps; inside ${r.inside}, escapes ${r.escapes}; refused: ${errs}`,
  );
}
const total = results.reduce((n, r) => n + r.attempts, 0);
const escapes = results.reduce((n, r) => n + r.escapes, 0);
if (control > 0) {
  const n = await naiveRace(control);
  console.log(
    `\ncontrol, realpath-then-open (not openhook): ${n.escapes} escapes in ${n.attempts} attempts (${n.inside} inside, ${n.refused} refused)`,
  );
}
console.log(`\n${total.toLocaleString('en')} brokered opens, ${escapes} escapes`);
process.exit(escapes === 0 ? 0 : 1);
