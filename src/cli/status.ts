/** `openhook status`: ask a running broker how it is doing (the STATUS extension). */
import { Command } from './commander.js';
import { parsePositiveMs } from './util.js';
import { errnoValue } from '../errno.js';
import { quantileBound, type StatusReport } from '../broker/metrics.js';
import { connect, type OpenHookClient } from '../client/client.js';

const DEFAULT_SOCKET = '/run/openhook/openhook.sock';
const EPROTOTYPE = errnoValue('EPROTOTYPE')!;

interface StatusOptions {
  socket: string;
  json?: boolean;
  timeout: number;
}

export function statusCommand(): Command {
  return new Command('status')
    .description("show a running broker's health and counters (for its own user and root)")
    .option('--socket <PATH>', "the broker's socket ($OPENHOOK_SOCKET if set)", process.env.OPENHOOK_SOCKET ?? DEFAULT_SOCKET)
    .option('--json', 'print the STATUS report as JSON')
    .option('--timeout <MS>', 'how long to wait for the answer', parsePositiveMs, 5000)
    .action(async (opts: StatusOptions) => {
      process.exitCode = await status(opts);
    });
}

async function status(opts: StatusOptions): Promise<number> {
  const fail = (message: string): number => {
    process.stderr.write(`openhook status: ${message}\n`);
    return 1;
  };
  let client: OpenHookClient;
  try {
    client = await connectEitherKind(opts.socket, opts.timeout);
  } catch (err) {
    return fail(`cannot connect to ${opts.socket}: ${(err as Error).message}`);
  }
  try {
    const report = await client.status({ timeout: opts.timeout });
    process.stdout.write(opts.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report, opts.socket));
    return 0;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'EACCES') return fail(`${opts.socket}: permission denied: the broker answers STATUS only to its own user and to root`);
    if (e.code === 'EPROTO') return fail(`${opts.socket}: the broker does not know STATUS (an older openhook, or another RFC broker)`);
    return fail(`${opts.socket}: ${e.message}`);
  } finally {
    client.close();
  }
}

/** The broker may listen with SOCK_SEQPACKET (the default) or SOCK_STREAM: try one, then the other. */
async function connectEitherKind(path: string, timeout: number): Promise<OpenHookClient> {
  try {
    return await connect({ path, reconnect: false, timeout });
  } catch (err) {
    if ((err as { errno?: number }).errno !== -EPROTOTYPE) throw err;
    return await connect({ path, stream: true, reconnect: false, timeout });
  }
}

const n = (v: number): string => v.toLocaleString('en');

export function formatReport(r: StatusReport, socket: string): string {
  const lines: string[] = [];
  const row = (label: string, text: string): void => void lines.push(`  ${label.padEnd(13)} ${text}`);
  lines.push(`openhook broker at ${socket}: ${r.state} (pid ${r.pid}, uid ${r.uid}, version ${r.version})`);
  row('up', `${duration(r.uptimeSeconds)} (since ${r.startedAt})`);
  for (const l of r.listeners) row('listening', `${l.path} (${l.kind}${l.activated ? ', from systemd' : ''})`);
  const failures = r.policy.reloadFailures
    ? `; ${r.policy.reloadFailures} failed reload(s)${r.policy.lastReloadError ? `, last: ${r.policy.lastReloadError}` : ''}`
    : '';
  row('policy', `generation ${r.policy.generation}, ${r.policy.rules} rule(s), loaded ${r.policy.loadedAt}${failures}`);
  row('connections', `${n(r.connections.open)} open, ${n(r.connections.total)} in all`);
  row(
    'requests',
    `${n(r.requests.total)}: ${n(r.requests.allowed)} allowed, ${n(r.requests.denied)} denied; ${n(r.requests.slow)} on the thread pool, ${n(r.requests.pending)} under way`,
  );
  row(
    'denied',
    Object.entries(r.denials)
      .map(([k, v]) => `${k} ${n(v)}`)
      .join(' · '),
  );
  const openErrors = Object.entries(r.errors.open);
  row('open errors', openErrors.length ? openErrors.map(([k, v]) => `${k} ${n(v)}`).join(' · ') : 'none');
  // Brokers before file operations have no such field.
  const ops = Object.entries(r.operations ?? {});
  if (ops.length)
    row(
      'operations',
      ops
        .map(([k, v]) => `${k} ${n(v.done)}${v.denied ? ` (${n(v.denied)} denied)` : ''}${v.failed ? ` (${n(v.failed)} failed)` : ''}`)
        .join(' · '),
    );
  row(
    'faults',
    `${n(r.errors.protocol)} malformed frame(s), ${n(r.errors.faults)} dropped connection(s), ${n(r.errors.accept)} accept error(s)`,
  );
  if (r.latency.count === 0) {
    row('latency', 'no requests yet');
  } else {
    const q = (p: number): string => `p${p * 100} < ${micro(quantileBound(r, p))}`;
    row('latency', `${q(0.5)}, ${q(0.9)}, ${q(0.99)} (mean ${((r.latency.sumSeconds / r.latency.count) * 1e6).toFixed(1)} µs)`);
    const widest = Math.max(...r.latency.buckets.map(([, c]) => c));
    for (const [le, c] of r.latency.buckets) {
      const bar = '█'.repeat(Math.max(1, Math.round((c / widest) * 30)));
      lines.push(`    ${`< ${micro(le)}`.padEnd(12)} ${bar.padEnd(30)} ${n(c)}`);
    }
  }
  if (r.sessions) {
    row('sessions', r.sessions.list.length ? `${n(r.sessions.list.length + r.sessions.more)}` : 'none');
    for (const x of r.sessions.list) {
      const h = x.hook;
      lines.push(
        `    ${x.name}  pid ${x.pid}, uid ${x.uid}, ${x.state}, up ${duration(x.uptimeSeconds)}, section ${x.section}: ` +
          `${n(h.notifications)} trapped (${n(h.installed)} opened, ${n(h.continued)} continued, ${n(h.performed)} performed, ${n(h.refused)} refused)`,
      );
    }
    if (r.sessions.more) lines.push(`    and ${n(r.sessions.more)} more (openhook status --json lists ${r.sessions.list.length})`);
  }
  return lines.join('\n') + '\n';
}

function micro(seconds: number | null): string {
  if (seconds === null) return '∞';
  const us = seconds * 1e6;
  return us >= 1e6 ? `${us / 1e6} s` : us >= 1000 ? `${us / 1000} ms` : `${us} µs`;
}

function duration(seconds: number): string {
  const s = Math.floor(seconds);
  const parts = [
    [Math.floor(s / 86400), 'd'],
    [Math.floor(s / 3600) % 24, 'h'],
    [Math.floor(s / 60) % 60, 'm'],
    [s % 60, 's'],
  ] as const;
  const first = parts.findIndex(([v]) => v > 0);
  return first < 0
    ? '0s'
    : parts
        .slice(first)
        .map(([v, u]) => `${v}${u}`)
        .join(' ');
}
