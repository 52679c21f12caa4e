/**
 * sd_notify(3): telling systemd (Type=notify) how the service is doing, by datagrams of KEY=VALUE
 * lines to the socket named in NOTIFY_SOCKET (a path, or '@name' for an abstract address).
 *
 *   READY=1                          serving: `systemctl start` returns
 *   RELOADING=1 + MONOTONIC_USEC=... reloading the policy; READY=1 again when done
 *   STOPPING=1                       stopping gracefully
 *   STATUS=...                       one line for `systemctl status`
 *   WATCHDOG=1                       alive (when WatchdogSec= is set)
 *
 * Sending never throws and never blocks: a service manager that is not listening must not take the
 * broker down. Failures are reported once, through the log function.
 */
import { native, systemError } from '../native.js';

export class Notifier {
  readonly address: string;
  #log: (message: string) => void;
  #failed = false;
  #watchdog: NodeJS.Timeout | null = null;

  constructor(address: string, log: (message: string) => void = () => {}) {
    this.address = address;
    this.#log = log;
  }

  /**
   * The notifier systemd asked for, or null when NOTIFY_SOCKET is unset (not under systemd, or not
   * Type=notify). NOTIFY_SOCKET is removed from the environment so that no child answers for us.
   */
  static fromEnvironment(env: NodeJS.ProcessEnv = process.env, log?: (message: string) => void): Notifier | null {
    const address = env.NOTIFY_SOCKET;
    delete env.NOTIFY_SOCKET;
    if (!address) return null;
    if (!address.startsWith('/') && !address.startsWith('@')) {
      log?.(`NOTIFY_SOCKET '${address}' is neither a path nor an abstract address; not notifying systemd`);
      return null;
    }
    return new Notifier(address, log);
  }

  /** Sends KEY=VALUE lines as one datagram. Returns whether it was sent. */
  send(fields: Record<string, string | number | bigint>): boolean {
    const text = Object.entries(fields)
      .map(([k, v]) => `${k}=${String(v).replace(/\n/g, ' ')}`)
      .join('\n');
    const r = native.sendDatagram(Buffer.from(this.address), Buffer.from(text + '\n'));
    if (r < 0 && !this.#failed) {
      this.#failed = true;
      this.#log(`cannot notify systemd at ${this.address}: ${systemError(r, 'sendto').message}`);
    }
    return r >= 0;
  }

  ready(status?: string): boolean {
    return this.send(status === undefined ? { READY: 1 } : { READY: 1, STATUS: status });
  }

  /** RELOADING=1 with the CLOCK_MONOTONIC time, which systemd (253+) needs to order it against READY=1. */
  reloading(status?: string): boolean {
    const fields: Record<string, string | number | bigint> = { RELOADING: 1, MONOTONIC_USEC: monotonicUsec() };
    if (status !== undefined) fields.STATUS = status;
    return this.send(fields);
  }

  stopping(status?: string): boolean {
    return this.send(status === undefined ? { STOPPING: 1 } : { STOPPING: 1, STATUS: status });
  }

  status(text: string): boolean {
    return this.send({ STATUS: text });
  }

  /**
   * Pings WATCHDOG=1 at half the interval systemd asked for (WATCHDOG_USEC, for WATCHDOG_PID if set).
   * The ping runs on the event loop, so a broker whose loop is stuck stops pinging and is restarted.
   */
  startWatchdog(env: NodeJS.ProcessEnv = process.env, pid: number = process.pid): boolean {
    const usec = Number(env.WATCHDOG_USEC);
    const forPid = env.WATCHDOG_PID;
    delete env.WATCHDOG_USEC;
    delete env.WATCHDOG_PID;
    if (!Number.isFinite(usec) || usec <= 0 || (forPid !== undefined && Number(forPid) !== pid)) return false;
    this.#watchdog = setInterval(() => this.send({ WATCHDOG: 1 }), Math.max(1, Math.floor(usec / 2000)));
    this.#watchdog.unref();
    return true;
  }

  stopWatchdog(): void {
    if (this.#watchdog) clearInterval(this.#watchdog);
    this.#watchdog = null;
  }
}

/** CLOCK_MONOTONIC in µs: libuv's hrtime reads that clock on Linux. */
function monotonicUsec(): bigint {
  return process.hrtime.bigint() / 1000n;
}
