/** `openhook serve`: the broker as a daemon on a UNIX socket. */
import { Command } from 'commander';
import { Broker } from '../broker/broker.js';
import { PolicyError } from '../policy/rule.js';
import { addPolicyOptions, policyFromFlags, type PolicyFlags } from './policy-options.js';
import { parseMode } from './util.js';

interface ServeOptions extends PolicyFlags {
  socket: string;
  stream?: boolean;
  mode: number;
}

export function serveCommand(): Command {
  const cmd = new Command('serve')
    .description('run the broker on a UNIX socket')
    .requiredOption('--socket <PATH>', 'socket path to listen on')
    .option('--stream', 'listen with SOCK_STREAM instead of SOCK_SEQPACKET')
    .option('--mode <OCTAL>', 'file mode of the socket', parseMode, 0o600);
  addPolicyOptions(cmd);
  return cmd.action((opts: ServeOptions) => serve(opts));
}

function serve(opts: ServeOptions): void {
  let broker: Broker;
  try {
    broker = new Broker({ policy: policyFromFlags(opts) });
  } catch (err) {
    if (err instanceof PolicyError) {
      process.stderr.write(`openhook serve: ${err.message}\n`);
      process.exit(2);
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
