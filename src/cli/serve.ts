/** `openhook serve`: the broker as a daemon on a UNIX socket. */
import { Command, InvalidArgumentError, Option } from './commander.js';
import { AuditLog, type AuditFailure, type AuditFormat } from '../broker/audit-log.js';
import { Broker, DEFAULT_BROKER_LIMITS, UnsupportedSystemError } from '../broker/broker.js';
import type { Policy } from '../policy/policy.js';
import { PolicyReloader } from '../policy/reload.js';
import { PolicyError } from '../policy/rule.js';
import { addPolicyOptions, policyFromOptions, type PolicyFlags } from './policy-options.js';
import { native } from '../native.js';
import { parseCount, parseMode } from './util.js';

function parseBusyPoll(text: string): number {
  const us = text === '0' ? 0 : parseCount(text);
  if (us > 1_000_000) throw new InvalidArgumentError('at most 1000000 µs (1 s)');
  return us;
}

interface ServeOptions extends PolicyFlags {
  socket: string;
  stream?: boolean;
  mode: number;
  watch?: boolean;
  audit?: string;
  auditFormat: AuditFormat;
  auditFailure: AuditFailure;
  maxConnections?: number;
  maxConnectionsPerUid?: number;
  busyPoll?: number;
}

export function serveCommand(): Command {
  const cmd = new Command('serve')
    .description('run the broker on a UNIX socket')
    .requiredOption('--socket <PATH>', 'socket path to listen on')
    .option('--stream', 'listen with SOCK_STREAM instead of SOCK_SEQPACKET')
    .option('--mode <OCTAL>', 'file mode of the socket', parseMode, 0o600)
    .option('--max-connections <N>', `connections served at once (default ${DEFAULT_BROKER_LIMITS.connections})`, parseCount)
    .option('--max-connections-per-uid <N>', `connections per client uid (default ${DEFAULT_BROKER_LIMITS.connectionsPerUid})`, parseCount)
    .option('--busy-poll <US>', 'after serving requests, keep polling up to US microseconds before sleeping: lower latency for synchronous clients, for up to US µs of CPU per wake-up (docs/performance.md)', parseBusyPoll);
  addPolicyOptions(cmd);
  return cmd
    .option('--watch', 'reload the --policy file whenever it changes (SIGHUP always reloads it)')
    .option('--audit <FILE|->', 'write one audit line per decision to FILE (appended), or - for stderr')
    .addOption(new Option('--audit-format <FORMAT>', 'audit lines as JSON, or pretty for a terminal').choices(['json', 'pretty']).default('json'))
    .addOption(
      new Option('--audit-failure <MODE>', 'when the audit log cannot be written: closed refuses requests with EIO, open serves on').choices(['closed', 'open']).default('closed'),
    )
    .action((opts: ServeOptions) => serve(opts));
}

async function serve(opts: ServeOptions): Promise<void> {
  const log = (m: string): void => void process.stderr.write(`openhook: ${m}\n`);
  if (opts.watch && opts.policy === undefined) {
    process.stderr.write('openhook serve: --watch needs --policy FILE\n');
    process.exit(2);
  }
  let policy: Policy;
  try {
    policy = await policyFromOptions(opts);
  } catch (err) {
    if (err instanceof PolicyError) {
      process.stderr.write(`openhook serve: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  let audit: AuditLog | null = null;
  if (opts.audit !== undefined) {
    try {
      audit = new AuditLog({ target: opts.audit, format: opts.auditFormat, failure: opts.auditFailure, warn: log });
    } catch (err) {
      process.stderr.write(`openhook serve: cannot open the audit log ${opts.audit}: ${(err as Error).message}\n`);
      policy.close();
      process.exit(1);
    }
  }
  let broker: Broker;
  try {
    broker = new Broker({
      policy,
      audit,
      log,
      limits: {
        ...(opts.maxConnections !== undefined && { connections: opts.maxConnections }),
        ...(opts.maxConnectionsPerUid !== undefined && { connectionsPerUid: opts.maxConnectionsPerUid }),
      },
    });
  } catch (err) {
    if (!(err instanceof UnsupportedSystemError)) throw err;
    process.stderr.write(`openhook serve: ${err.message}\n`);
    process.exit(1);
  }
  try {
    broker.listen(opts.socket, { stream: opts.stream, mode: opts.mode });
  } catch (err) {
    process.stderr.write(`openhook serve: cannot listen on ${opts.socket}: ${(err as Error).message}\n`);
    broker.close();
    process.exit(1);
  }

  let reloader: PolicyReloader | null = null;
  if (opts.policy !== undefined) {
    reloader = new PolicyReloader({ file: opts.policy, apply: (p) => broker.setPolicy(p), log });
    if (opts.watch) reloader.watch();
  }
  process.on('SIGHUP', () => {
    if (reloader) void reloader.reload('SIGHUP');
    else log('SIGHUP: nothing to reload (the policy came from the command line)');
  });

  if (opts.busyPoll) native.setBusyPoll(opts.busyPoll);
  process.stderr.write(`openhook: serving on ${opts.socket} (${opts.stream ? 'SOCK_STREAM' : 'SOCK_SEQPACKET'})\n`);
  const stop = (signal: NodeJS.Signals): void => {
    reloader?.close();
    broker.close();
    const done = (): never => {
      process.stderr.write(`openhook: ${signal}, stopped\n`);
      process.exit(0);
    };
    // Give the audit log a moment to write what it holds; never hang on a dead disk.
    if (audit) {
      setTimeout(done, 2000).unref();
      void audit.close().then(done);
    } else done();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
