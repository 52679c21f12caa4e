/** `openhook serve`: the broker as a daemon on a UNIX socket. */
import { Command } from 'commander';
import { Broker, DEFAULT_BROKER_LIMITS, UnsupportedSystemError } from '../broker/broker.js';
import { PolicyError } from '../policy/rule.js';
import { addPolicyOptions, policyFromFlags, type PolicyFlags } from './policy-options.js';
import { parseCount, parseMode } from './util.js';

interface ServeOptions extends PolicyFlags {
  socket: string;
  stream?: boolean;
  mode: number;
  maxConnections?: number;
  maxConnectionsPerUid?: number;
}

export function serveCommand(): Command {
  const cmd = new Command('serve')
    .description('run the broker on a UNIX socket')
    .requiredOption('--socket <PATH>', 'socket path to listen on')
    .option('--stream', 'listen with SOCK_STREAM instead of SOCK_SEQPACKET')
    .option('--mode <OCTAL>', 'file mode of the socket', parseMode, 0o600)
    .option('--max-connections <N>', `connections served at once (default ${DEFAULT_BROKER_LIMITS.connections})`, parseCount)
    .option('--max-connections-per-uid <N>', `connections per client uid (default ${DEFAULT_BROKER_LIMITS.connectionsPerUid})`, parseCount);
  addPolicyOptions(cmd);
  return cmd.action((opts: ServeOptions) => serve(opts));
}

function serve(opts: ServeOptions): void {
  let broker: Broker;
  try {
    broker = new Broker({
      policy: policyFromFlags(opts),
      limits: {
        ...(opts.maxConnections !== undefined && { connections: opts.maxConnections }),
        ...(opts.maxConnectionsPerUid !== undefined && { connectionsPerUid: opts.maxConnectionsPerUid }),
      },
    });
  } catch (err) {
    if (err instanceof PolicyError) {
      process.stderr.write(`openhook serve: ${err.message}\n`);
      process.exit(2);
    }
    if (err instanceof UnsupportedSystemError) {
      process.stderr.write(`openhook serve: ${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
  try {
    broker.listen(opts.socket, { stream: opts.stream, mode: opts.mode });
  } catch (err) {
    process.stderr.write(`openhook serve: cannot listen on ${opts.socket}: ${(err as Error).message}\n`);
    broker.close();
    process.exit(1);
  }
  process.stderr.write(`openhook: serving on ${opts.socket} (${opts.stream ? 'SOCK_STREAM' : 'SOCK_SEQPACKET'})\n`);
  const stop = (signal: NodeJS.Signals): void => {
    broker.close();
    process.stderr.write(`openhook: ${signal}, stopped\n`);
    process.exit(0);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
