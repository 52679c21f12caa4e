/**
 * `openhook serve`: the broker as a daemon, started by hand or by systemd.
 *
 * Under systemd it takes its listening sockets from socket activation, tells systemd when it is
 * ready, reloading and stopping (Type=notify), and keeps `systemctl status` current. Signals:
 *   SIGHUP           reload the --policy file (ExecReload); a policy that fails to load leaves the old one
 *   SIGTERM, SIGINT  graceful stop: stop accepting, finish in-flight requests within --stop-timeout
 */
import { accessSync, constants as fsConstants } from 'node:fs';
import { Command, InvalidArgumentError, Option } from './commander.js';
import type { AuditLog } from '../broker/audit-log.js';
import { Broker, DEFAULT_BROKER_LIMITS, UnsupportedSystemError } from '../broker/broker.js';
import { MetricsServer, parseMetricsAddress, type MetricsAddress } from '../broker/metrics-server.js';
import { display, toBytes, type ByteString } from '../bytestring.js';
import { Access } from '../policy/access.js';
import type { Policy } from '../policy/policy.js';
import { PolicyReloader } from '../policy/reload.js';
import { PolicyError, rootOf, type Rule } from '../policy/rule.js';
import { ActivationError, listenFds } from '../systemd/activation.js';
import { Notifier } from '../systemd/notify.js';
import { daemonLog, underJournald, type Log } from './log.js';
import { addAuditOptions, auditFromOptions, type AuditFlags } from './audit-options.js';
import { addPolicyOptions, policyFromOptions, type PolicyFlags } from './policy-options.js';
import { native } from '../native.js';
import { DaemonSessions } from '../hook/sessions.js';
import { parseCount, parseMode, parseMs } from './util.js';

interface ServeOptions extends PolicyFlags, AuditFlags {
  socket?: string;
  stream?: boolean;
  mode: number;
  watch?: boolean;
  maxConnections?: number;
  maxConnectionsPerUid?: number;
  metrics?: MetricsAddress;
  stopTimeout: number;
  busyPoll?: number;
}

/** How often STATUS= is refreshed for `systemctl status`. */
const STATUS_INTERVAL_MS = 30_000;
/** The socket activation fd name (FileDescriptorName=) that carries Prometheus metrics. */
const METRICS_FD_NAME = 'metrics';
/** How long a stopping broker waits for the audit log to write what it holds. */
const AUDIT_FLUSH_MS = 2000;

export function serveCommand(): Command {
  const cmd = new Command('serve')
    .description('run the broker on a UNIX socket (or on the sockets systemd passes)')
    .option('--socket <PATH>', 'socket path to listen on; not needed under systemd socket activation')
    .option('--stream', 'listen with SOCK_STREAM instead of SOCK_SEQPACKET')
    .addOption(new Option('--mode <OCTAL>', 'file mode of the socket').argParser(parseMode).default(0o600, '0600'))
    .option('--max-connections <N>', `connections served at once (default ${DEFAULT_BROKER_LIMITS.connections})`, parseCount)
    .option('--max-connections-per-uid <N>', `connections per client uid (default ${DEFAULT_BROKER_LIMITS.connectionsPerUid})`, parseCount)
    .option(
      '--busy-poll <US>',
      'after serving requests, keep polling up to US microseconds before sleeping: lower latency for synchronous clients, for up to US µs of CPU per wake-up (docs/performance.md)',
      parseBusyPoll,
    );
  addPolicyOptions(cmd);
  addAuditOptions(cmd);
  return cmd
    .option('--watch', 'reload the --policy file whenever it changes (SIGHUP always reloads it)')
    .option('--metrics <ADDRESS>', 'serve Prometheus metrics on unix:PATH, 127.0.0.1:PORT or [::1]:PORT', parseMetrics)
    .option('--stop-timeout <MS>', 'on SIGTERM, how long in-flight requests may take before connections are cut', parseMs, 5000)
    .action((opts: ServeOptions) => serve(opts));
}

async function serve(opts: ServeOptions): Promise<void> {
  const log = daemonLog();
  const fail: (code: number, message: string) => never = (code, message) => {
    process.stderr.write(`${underJournald(2) ? '<3>' : ''}openhook serve: ${message}\n`);
    process.exit(code);
  };
  if (opts.watch && opts.policy === undefined) fail(2, '--watch needs --policy FILE');
  const notifier = Notifier.fromEnvironment(process.env, log.warn);
  // Until the broker is up, a reload waits; never die of SIGHUP's default action.
  let onHup = (): void => void (hupWaiting = true);
  let hupWaiting = false;
  process.on('SIGHUP', () => onHup());

  let activation;
  try {
    activation = listenFds();
  } catch (err) {
    if (err instanceof ActivationError) fail(2, `socket activation: ${err.message}`);
    throw err;
  }
  if (activation.ignored) log.warn(`socket activation: ${activation.ignored}; ignoring it`);

  let policy: Policy;
  try {
    policy = await policyFromOptions(opts, log.warn);
  } catch (err) {
    if (err instanceof PolicyError) fail(2, err.message);
    throw err;
  }
  let audit: AuditLog | null = null;
  if (opts.audit !== undefined) {
    try {
      audit = await auditFromOptions(opts, log.warn);
    } catch (err) {
      policy.close();
      fail(1, `cannot open the audit log ${opts.audit}: ${(err as Error).message}`);
    }
  }
  let broker: Broker;
  try {
    broker = new Broker({
      policy,
      audit,
      log: log.warn,
      limits: {
        ...(opts.maxConnections !== undefined && { connections: opts.maxConnections }),
        ...(opts.maxConnectionsPerUid !== undefined && { connectionsPerUid: opts.maxConnectionsPerUid }),
      },
    });
  } catch (err) {
    if (!(err instanceof UnsupportedSystemError)) throw err;
    fail(1, err.message);
  }

  // Sessions for openhook-exec (docs/operations.md, "Daemon-backed sessions").
  broker.hostSessions(new DaemonSessions(broker, log.info));

  const inherited = activation.sockets.filter((s) => s.name !== METRICS_FD_NAME);
  const inheritedMetrics = activation.sockets.filter((s) => s.name === METRICS_FD_NAME);
  try {
    if (inherited.length > 0) {
      for (const s of inherited) broker.listenInherited(s.fd);
      if (opts.socket && !broker.listeners.some((l) => l.path === opts.socket))
        log.warn(`--socket ${opts.socket} ignored: serving the sockets systemd passed`);
    } else if (opts.socket) {
      broker.listen(opts.socket, { stream: opts.stream, mode: opts.mode });
    } else {
      broker.close();
      fail(2, 'give --socket PATH, or start under systemd socket activation (LISTEN_FDS)');
    }
  } catch (err) {
    broker.close();
    fail(1, `cannot listen on ${opts.socket ?? 'the sockets systemd passed'}: ${(err as Error).message}`);
  }

  const metrics: MetricsServer[] = [];
  try {
    for (const s of inheritedMetrics) metrics.push(await MetricsServer.listen({ kind: 'fd', fd: s.fd }, () => broker.report()));
    if (opts.metrics) metrics.push(await MetricsServer.listen(opts.metrics, () => broker.report()));
  } catch (err) {
    broker.close();
    for (const m of metrics) await m.close();
    fail(1, `cannot serve metrics: ${(err as Error).message}`);
  }

  // Reload: RELOADING=1 before, READY=1 after, whatever the outcome (the old policy stays on failure),
  // for SIGHUP and --watch alike. Without a policy file there is nothing to reload, but systemd still
  // hears the pair, so that `systemctl reload` (Type=notify-reload) never waits in vain.
  let reloader: PolicyReloader | null = null;
  if (opts.policy !== undefined) {
    reloader = new PolicyReloader({
      file: opts.policy,
      apply: (p) => broker.setPolicy(p),
      log: log.info,
      warn: log.error,
      started: () => {
        broker.reloading();
        notifier?.reloading('reloading the policy');
      },
      finished: (error) => {
        broker.reloaded(error);
        if (!error) warnUnwritableRoots(broker.policy, log);
        if (broker.state !== 'stopping') notifier?.ready(summary(broker) + (error ? '; last reload FAILED, see the log' : ''));
      },
    });
    if (opts.watch) reloader.watch();
  }
  onHup = () => {
    if (reloader) {
      void reloader.reload('SIGHUP');
      return;
    }
    notifier?.reloading('nothing to reload');
    log.info('SIGHUP: nothing to reload (the policy came from the command line)');
    notifier?.ready(summary(broker));
  };

  if (opts.busyPoll) native.setBusyPoll(opts.busyPoll);
  warnUnwritableRoots(broker.policy, log);
  const where = broker.listeners
    .map((l) => `${l.path} (${l.kind === 'stream' ? 'SOCK_STREAM' : 'SOCK_SEQPACKET'}${l.inherited ? ', from systemd' : ''})`)
    .join(', ');
  log.info(`serving on ${where}${metrics.length ? `; metrics on ${metrics.map((m) => m.description).join(', ')}` : ''}`);
  notifier?.ready(summary(broker));
  notifier?.startWatchdog();
  const statusTimer = notifier ? setInterval(() => notifier.status(summary(broker)), STATUS_INTERVAL_MS).unref() : null;
  if (hupWaiting) onHup();

  let stopping = false;
  const stop = async (signal: NodeJS.Signals): Promise<void> => {
    if (stopping) {
      log.warn(`${signal} again: closing every connection now`);
      broker.close();
      process.exit(0);
    }
    stopping = true;
    if (statusTimer) clearInterval(statusTimer);
    reloader?.close();
    notifier?.stopping(`stopping on ${signal}: finishing in-flight requests`);
    notifier?.stopWatchdog();
    const cut = await broker.stop(opts.stopTimeout);
    for (const m of metrics) await m.close();
    // Give the audit log a moment to write what it holds; never hang on a dead disk.
    if (audit) await Promise.race([audit.close(), new Promise((resolve) => setTimeout(resolve, AUDIT_FLUSH_MS).unref())]);
    log.info(`${signal}, stopped${cut ? `; ${cut} busy connection(s) cut at the ${opts.stopTimeout} ms deadline` : ''}`);
    process.exit(0);
  };
  process.on('SIGINT', (s) => void stop(s));
  process.on('SIGTERM', (s) => void stop(s));
}

/** One line for `systemctl status`. */
function summary(broker: Broker): string {
  const m = broker.metrics;
  const denied = m.requests - m.allowed;
  return `serving: ${broker.connectionCount} connection(s), ${m.requests} request(s) (${m.allowed} allowed, ${denied} denied), policy generation ${broker.generation}`;
}

/**
 * A rule that grants write or create beneath a directory the broker cannot write to would fail every
 * such open with EROFS or EACCES, which looks like a policy bug. Typical causes: ProtectSystem=strict
 * without ReadWritePaths= for the tree, or a dedicated User= without write permission. Say so at once.
 */
function warnUnwritableRoots(policy: Policy, log: Log): void {
  // One check per root directory (a policy may have 100,000 rules beneath a few of them).
  const writers = new Map<ByteString, Rule>();
  for (const rule of [policy.defaultSection, ...policy.sections].flatMap((s) => s.rules)) {
    if (rule.effect !== 'allow' || !(rule.access & (Access.WRITE | Access.CREATE))) continue;
    const root = rootOf(rule);
    const first = writers.get(root);
    // Keep a creating rule where there is one: only creates fail for lack of write permission.
    if (!first || (!(first.access & Access.CREATE) && rule.access & Access.CREATE)) writers.set(root, rule);
  }
  for (const [dir, rule] of writers) {
    try {
      accessSync(toBytes(dir), fsConstants.W_OK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EROFS')
        log.warn(
          `${rule.origin}: ${display(dir)} is read-only for the broker (ProtectSystem=strict? add it to ReadWritePaths=): writes and creates there will fail with EROFS`,
        );
      else if (code === 'EACCES' && rule.access & Access.CREATE)
        log.warn(`${rule.origin}: the broker's user cannot write to ${display(dir)}: creates there will fail with EACCES`);
    }
  }
}

function parseBusyPoll(text: string): number {
  const us = text === '0' ? 0 : parseCount(text);
  if (us > 1_000_000) throw new InvalidArgumentError('at most 1000000 µs (1 s)');
  return us;
}

function parseMetrics(text: string): MetricsAddress {
  try {
    return parseMetricsAddress(text);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}
