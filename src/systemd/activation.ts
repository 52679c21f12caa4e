/**
 * Socket activation, as sd_listen_fds(3) defines it: systemd passes listening sockets as fds 3, 4,
 * ... and says so in LISTEN_FDS (how many), LISTEN_PID (for which process) and LISTEN_FDNAMES (their
 * FileDescriptorName=s, colon-separated).
 *
 * The variables are removed from the environment whatever they say, so that no child process takes
 * them for its own. Checking what each fd really is belongs to whoever serves it
 * (Broker.listenInherited, the metrics server): an environment variable is a claim, not a proof.
 */

/** The first fd systemd passes (SD_LISTEN_FDS_START). */
const LISTEN_FDS_START = 3;

export interface InheritedSocket {
  fd: number;
  /** its FileDescriptorName= ('unknown' when systemd gave no names) */
  name: string;
}

export interface Activation {
  sockets: InheritedSocket[];
  /** why variables that were present were not used, for a warning; null when all is well */
  ignored: string | null;
}

export class ActivationError extends Error {
  override name = 'ActivationError';
  readonly code = 'ERR_OPENHOOK_ACTIVATION';
}

/**
 * The sockets systemd passed to this process. None when LISTEN_FDS is absent, or when LISTEN_PID
 * names another process (variables inherited from a parent that was activated, not meant for us).
 * Throws ActivationError when the variables are malformed: a service manager that says something
 * we cannot parse is a configuration error worth stopping for.
 */
export function listenFds(env: NodeJS.ProcessEnv = process.env, pid: number = process.pid): Activation {
  const count = env.LISTEN_FDS;
  const forPid = env.LISTEN_PID;
  const names = env.LISTEN_FDNAMES;
  delete env.LISTEN_FDS;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDNAMES;
  if (count === undefined) return { sockets: [], ignored: forPid !== undefined ? 'LISTEN_PID is set without LISTEN_FDS' : null };
  if (forPid === undefined || !/^\d+$/.test(forPid))
    throw new ActivationError(`LISTEN_FDS is set, but LISTEN_PID is ${forPid === undefined ? 'missing' : `not a pid: '${forPid}'`}`);
  if (Number(forPid) !== pid) return { sockets: [], ignored: `LISTEN_PID is ${forPid}, not this process (${pid})` };
  if (!/^\d+$/.test(count) || Number(count) < 1 || Number(count) > 1024)
    throw new ActivationError(`LISTEN_FDS is not a count of fds: '${count}'`);
  const n = Number(count);
  const labels = names?.split(':') ?? [];
  if (names !== undefined && labels.length !== n)
    throw new ActivationError(`LISTEN_FDNAMES names ${labels.length} fds, LISTEN_FDS says ${n}`);
  return {
    sockets: Array.from({ length: n }, (_, i) => ({ fd: LISTEN_FDS_START + i, name: labels[i] || 'unknown' })),
    ignored: null,
  };
}
