/**
 * `npm run bench`: openhook against the C reference broker, in one run on one machine, as a table of
 * ratios. Options: --runs N (repetitions per case, medians reported; default 5), --count N (opens
 * per synchronous run; default 20000), --only NAME (case groups, comma-separated: open, broker, client,
 * rss, policy, interposer, hook, fileops, qemu, daemon).
 */
import { parseArgs } from 'node:util';
import { benchBroker } from './broker.js';
import { benchClient } from './client.js';
import { benchOpenCost } from './open-cost.js';
import { benchRss } from './rss.js';
import { benchInterposer } from './interposer.js';
import { benchHook } from './hook.js';
import { benchFileops } from './fileops.js';
import { benchPolicy } from './policy.js';
import { benchQemu } from './qemu.js';
import { benchDaemon } from './daemon.js';
import { printTable, type Row } from './lib.js';
import { cpus } from 'node:os';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    count: { type: 'string', default: '20000' },
    only: { type: 'string' },
  },
});
const runs = Number(values.runs),
  count = Number(values.count);
const wanted = (name: string): boolean => !values.only || values.only.split(',').includes(name);

console.log(`openhook bench: ${runs} runs per case, medians; ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}; node ${process.version}`);
console.log('ratio ≥ 1.0× means openhook is as fast as the C reference broker (rates: openhook/ref; latencies: ref/openhook)\n');
const rows: Row[] = [];
if (wanted('open')) rows.push(...benchOpenCost({ runs }));
if (wanted('broker')) rows.push(...(await benchBroker({ runs, count })));
if (wanted('client')) rows.push(...(await benchClient({ runs, count })));
if (wanted('rss')) rows.push(...(await benchRss()));
if (wanted('policy')) rows.push(...(await benchPolicy({ runs, count })));
if (wanted('interposer')) rows.push(...(await benchInterposer({ runs, count })));
if (wanted('hook')) rows.push(...(await benchHook({ runs, count })));
if (wanted('fileops')) rows.push(...(await benchFileops({ runs })));
if (wanted('qemu')) rows.push(...(await benchQemu({ runs })));
if (wanted('daemon')) rows.push(...(await benchDaemon({ runs })));
printTable(rows);
