/**
 * The broker's counters: what `openhook status` reports and what Prometheus scrapes.
 *
 * They sit on the request path, so they cost almost nothing: plain number increments and a
 * histogram with fixed power-of-two buckets, indexed by one clz32. Nothing allocates; nothing is
 * formatted until someone asks (snapshot()).
 */
import { errnoName } from '../errno.js';

/** Why a request was denied: a small fixed set, so that counting is an array increment. */
export const Denial = {
  /** no rule covers the path (default deny) */
  NO_RULE: 0,
  /** a deny rule covers it */
  DENY_RULE: 1,
  /** an allow rule covers it, but grants less access than the request needs */
  ACCESS: 2,
  /** flags that no rule can allow (O_PATH, O_TMPFILE, access mode 3, unknown bits) */
  FLAGS: 3,
  /** a path refused before any rule is consulted: relative, empty, '..', too long */
  PATH: 4,
  /** refused with EIO because the audit log cannot be written and it is fail-closed */
  AUDIT: 5,
} as const;
export type Denial = (typeof Denial)[keyof typeof Denial];
export const DENIAL_NAMES = ['no-rule', 'deny-rule', 'access', 'flags', 'path', 'audit'] as const;

/**
 * Latency buckets: bucket b counts requests that took less than 2^b µs (bucket 0: under 1 µs), up to
 * 2^(LATENCY_BUCKETS-1) µs (about 8 s); the last slot counts the rest.
 */
export const LATENCY_BUCKETS = 24;
const ERRNO_SLOTS = 134;

export class Metrics {
  /** ms since the epoch, and the monotonic clock at the same moment */
  readonly startedAt = Date.now();
  readonly #startedMono = performance.now();

  /** open requests (QEMU_OPEN and OPEN_TAGGED) decided */
  requests = 0;
  /** of those, allowed by the policy (whether or not the open then succeeded) */
  allowed = 0;
  /** denials, indexed by Denial */
  readonly denied = new Float64Array(DENIAL_NAMES.length);
  /** allowed requests whose open failed, indexed by errno (ENOENT, EEXIST, ...) */
  readonly openErrors = new Float64Array(ERRNO_SLOTS);
  /** frames answered -EPROTO: malformed, truncated, unknown commands */
  protocolErrors = 0;
  /** connections dropped for an unexpected fault (a bug), and accept failures (EMFILE, ...) */
  faults = 0;
  acceptErrors = 0;
  /** connections accepted on listeners or adopted, ever */
  connectionsTotal = 0;
  /** connections closed at accept because the policy admits no section for the client */
  connectionsRefused = 0;
  /** allowed opens run on the thread pool (they may block: FUSE, NFS, FIFOs), and those finished */
  slowOpens = 0;
  slowDone = 0;
  /** STATUS requests answered, and refused (-EACCES) */
  statusQueries = 0;
  statusRefused = 0;
  /** latency histogram of open requests, from decode to the decision and open being done */
  readonly latency = new Float64Array(LATENCY_BUCKETS + 1);
  /** sum of latencies in ms, for the mean and Prometheus' _sum */
  latencySumMs = 0;
  /** file operations (mkdir, unlink, rename, ...) by name: [allowed and done, denied, allowed but failed] */
  readonly operations = new Map<string, [number, number, number]>();

  /** Counts one file operation: allowed by the policy or not, and the errno it ended with (0: done). */
  recordOperation(name: string, allowed: boolean, errno: number): void {
    let counts = this.operations.get(name);
    if (!counts) this.operations.set(name, (counts = [0, 0, 0]));
    counts[!allowed ? 1 : errno === 0 ? 0 : 2]++;
  }

  /** Counts one open request. errno: 0 for an fd sent; denial: a Denial, or -1 when allowed; ms: its latency. */
  recordOpen(denial: number, errno: number, ms: number): void {
    this.requests++;
    if (denial < 0) {
      this.allowed++;
      if (errno !== 0) this.openErrors[errno < ERRNO_SLOTS ? errno : 0]!++;
    } else {
      this.denied[denial]!++;
    }
    this.latencySumMs += ms;
    const us = (ms * 1000) | 0;
    const b = 32 - Math.clz32(us);
    this.latency[b < LATENCY_BUCKETS ? b : LATENCY_BUCKETS]!++;
  }

  uptimeMs(): number {
    return performance.now() - this.#startedMono;
  }
}

/** Live state that is not a counter: the broker fills it in when asked. */
export interface BrokerState {
  state: 'serving' | 'reloading' | 'stopping';
  connections: number;
  listeners: Array<{ path: string; kind: string; activated: boolean }>;
  policy: { generation: number; loadedAt: number; rules: number; reloadFailures: number; lastReloadError: string | null };
}

/**
 * What STATUS answers, as JSON (docs/protocol.md, "STATUS"). Field names are part of the protocol:
 * add fields freely, never change the meaning of one.
 */
export interface StatusReport {
  version: string;
  pid: number;
  uid: number;
  state: BrokerState['state'];
  startedAt: string;
  uptimeSeconds: number;
  policy: { generation: number; loadedAt: string; rules: number; reloadFailures: number; lastReloadError: string | null };
  listeners: BrokerState['listeners'];
  connections: { open: number; total: number; refused: number };
  /** slow: allowed opens run on the thread pool; pending: those still under way (not yet in total) */
  requests: { total: number; allowed: number; denied: number; slow: number; pending: number };
  denials: Record<(typeof DENIAL_NAMES)[number], number>;
  errors: { open: Record<string, number>; protocol: number; faults: number; accept: number };
  status: { answered: number; refused: number };
  /** buckets: [upper bound in seconds (null: +Inf), count in this bucket] for every non-empty bucket */
  latency: { count: number; sumSeconds: number; buckets: Array<[number | null, number]> };
  /** file operations by name (only those seen): done, denied by the policy, allowed but failed */
  operations: Record<string, { done: number; denied: number; failed: number }>;
  /** a daemon's hosted sessions (openhook-exec), when it hosts them; at most SESSIONS_LISTED, `more` counts the rest */
  sessions?: { list: SessionReport[]; more: number };
}

/** One hosted session in STATUS. */
export interface SessionReport {
  name: string;
  /** the launcher's pid, which is the program's */
  pid: number;
  uid: number;
  /** the policy section that admitted it */
  section: string;
  /** 'starting' until the launcher's listener has arrived */
  state: 'starting' | 'running';
  startedAt: string;
  uptimeSeconds: number;
  /** the syscall hook's counts (src/hook/open.ts HookStats) */
  hook: { notifications: number; installed: number; continued: number; performed: number; refused: number; gone: number };
}

export { VERSION } from '../version.js';
import { VERSION } from '../version.js';

export function snapshot(m: Metrics, s: BrokerState): StatusReport {
  const denials = {} as StatusReport['denials'];
  let denied = 0;
  DENIAL_NAMES.forEach((name, i) => {
    denials[name] = m.denied[i]!;
    denied += m.denied[i]!;
  });
  const open: Record<string, number> = {};
  m.openErrors.forEach((n, errno) => {
    if (n > 0) open[errno === 0 ? 'other' : errnoName(errno)] = n;
  });
  const buckets: Array<[number | null, number]> = [];
  let count = 0;
  m.latency.forEach((n, b) => {
    count += n;
    if (n > 0) buckets.push([b < LATENCY_BUCKETS ? 2 ** b / 1e6 : null, n]);
  });
  return {
    version: VERSION,
    pid: process.pid,
    uid: process.geteuid?.() ?? -1,
    state: s.state,
    startedAt: new Date(m.startedAt).toISOString(),
    uptimeSeconds: Math.round(m.uptimeMs()) / 1000,
    policy: { ...s.policy, loadedAt: new Date(s.policy.loadedAt).toISOString() },
    listeners: s.listeners,
    connections: { open: s.connections, total: m.connectionsTotal, refused: m.connectionsRefused },
    requests: { total: m.requests, allowed: m.allowed, denied, slow: m.slowOpens, pending: m.slowOpens - m.slowDone },
    denials,
    errors: { open, protocol: m.protocolErrors, faults: m.faults, accept: m.acceptErrors },
    status: { answered: m.statusQueries, refused: m.statusRefused },
    latency: { count, sumSeconds: m.latencySumMs / 1000, buckets },
    operations: Object.fromEntries([...m.operations].map(([name, [done, denied, failed]]) => [name, { done, denied, failed }])),
  };
}

/** An upper bound for a quantile from the histogram: "q of requests took less than this" (seconds). */
export function quantileBound(report: StatusReport, q: number): number | null {
  const { count, buckets } = report.latency;
  if (count === 0) return null;
  let seen = 0;
  for (const [le, n] of buckets) {
    seen += n;
    if (seen >= q * count) return le;
  }
  return null;
}
