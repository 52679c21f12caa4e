/**
 * Daemon-backed sessions: `openhook serve` serving programs that openhook-exec (native/exec.c)
 * started, with no `openhook run` process per program.
 *
 *   openhook-exec ──connect──▶ daemon socket ──SESSION name, grants──▶ authorise (below)
 *        ◀── reply: the hook socket (OPENHOOK_FD, served as the session) and the base grants
 *        ── Landlock, seccomp; the listener fd over the same connection (SCM_RIGHTS) ──▶ HookServer
 *        ── exec CMD
 *
 * A session ends when its program (and all it started) has exited: the listener hangs up, the
 * server closes it, and the session's hook connection is closed. If the launcher fails before it
 * sends the listener, its connection closes, and the session ends with it.
 *
 * Who may have which session (authorise()): the section of the policy that decides for the
 * launcher's credentials (SO_PEERCRED uid, gid, groups) with that session name must name the session
 * itself. A section that names the session but no uid or gid is open to anyone who can reach the
 * socket, so it is granted only to the daemon's own uid and root. docs/operations.md says the same.
 */
import { readlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Broker, SessionHost } from '../broker/broker.js';
import type { Connection, SessionAnswer } from '../broker/connection.js';
import type { SessionReport } from '../broker/metrics.js';
import { E } from '../errno.js';
import { DEVICE_ACCESS, confinementFor, type Grant } from '../launch/confinement.js';
import { C, native, PollMode, type NativePoller } from '../native.js';
import type { Peer, Policy, Section } from '../policy/policy.js';
import { encodeSessionReply } from '../protocol/frames.js';
import { Size } from '../protocol/constants.js';
import { Continuation } from './continuation.js';
import { notify } from './native.js';
import { HookServer } from './server.js';

/** The native launcher, built by node-gyp next to the addon (src/hook and dist/hook alike). */
export const LAUNCHER_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'Release', 'openhook-exec');

/** Sessions STATUS lists at most (its reply must stay within 64 KiB); `more` counts the rest. */
export const SESSIONS_LISTED = 200;

/**
 * The section that session `name` gets for peer, or why not, in words (the launcher prints them).
 * daemonUid: the daemon's own uid, which with root may claim sections that name no uid or gid.
 */
export function authorise(policy: Policy, peer: Peer, name: string, daemonUid: number): Section | string {
  const named = policy.sections.filter((s) => s.sessions?.includes(name));
  if (named.length === 0) return `no section of the policy (${policy.source}) is for session "${name}"`;
  const section = policy.sectionFor({ ...peer, session: name });
  if (section === null || !section.sessions?.includes(name)) {
    const first = named[0]!;
    if (!named.some((s) => s.matches({ ...peer, session: name })))
      return `section ${first.name} is for session "${name}", but not for uid ${peer.uid}, gid ${peer.gid}`;
    return `for uid ${peer.uid} and session "${name}", ${section ? `section ${section.name}` : 'no section'} comes first, and it does not name the session`;
  }
  if (section.uids === null && section.gids === null && peer.uid !== 0 && peer.uid !== daemonUid) {
    return `section ${section.name} names no uid or gid, so only the daemon's own uid (${daemonUid}) and root may have session "${name}"`;
  }
  return section;
}

/** Session names: printable, at most 255 bytes (they appear in logs, the audit log and STATUS). */
function checkName(bytes: Buffer): string | null {
  if (bytes.length === 0 || bytes.length > Size.SESSION_NAME_MAX) return null;
  for (const b of bytes) if (b < 0x20 || b === 0x7f) return null;
  const name = bytes.toString('utf8');
  return Buffer.byteLength(name) === bytes.length && !name.includes('\ufffd') ? name : null;
}

/** The launcher's own grants: `ro PATH` and `device PATH`, each NUL-terminated; null if malformed. */
function parseClaims(claims: Buffer): Grant[] | null {
  if (claims.length === 0) return [];
  if (claims[claims.length - 1] !== 0) return null;
  const grants: Grant[] = [];
  for (const entry of claims
    .subarray(0, claims.length - 1)
    .toString('utf8')
    .split('\0')) {
    const space = entry.indexOf(' ');
    const kind = entry.slice(0, space);
    const path = entry.slice(space + 1);
    if (space < 0 || !path.startsWith('/')) return null;
    if (kind === 'ro') grants.push({ access: 'rx', path });
    else if (kind === 'device') grants.push({ access: DEVICE_ACCESS, path, device: true });
    else return null;
  }
  return grants;
}

class Session {
  readonly name: string;
  readonly peer: Peer;
  readonly section: string;
  readonly startedAt = Date.now();
  readonly hook: Connection;
  server: HookServer | null = null;
  #control = -1;
  #watcher: NativePoller | null = null;
  #ended = false;
  readonly #continuation: Continuation;
  readonly #broker: Broker;
  readonly #onEnd: (s: Session) => void;

  constructor(
    name: string,
    peer: Peer,
    section: string,
    hook: Connection,
    continuation: Continuation,
    broker: Broker,
    onEnd: (s: Session) => void,
  ) {
    this.name = name;
    this.peer = peer;
    this.section = section;
    this.hook = hook;
    this.#continuation = continuation;
    this.#broker = broker;
    this.#onEnd = onEnd;
  }

  /** The launcher's connection, once the SESSION reply is out: its next message is the listener. */
  control(fd: number): void {
    if (this.#ended) {
      native.close(fd);
      return;
    }
    this.#control = fd;
    this.#watcher = new native.Poller(fd, PollMode.Notify, 1, () => this.#receive());
    this.#watcher.start(C.UV_READABLE | C.UV_DISCONNECT);
  }

  #receive(): void {
    const listener = notify.receiveListener(this.#control);
    if (listener === -E.EAGAIN) return;
    this.#closeControl();
    if (listener < 0) {
      // The launcher failed (or was refused by the kernel) before it confined anything: it said why on its stderr.
      this.end();
      return;
    }
    if (!isListener(listener)) {
      native.close(listener);
      this.#broker.warn(
        `session ${this.name} (pid ${this.peer.pid}): the launcher sent an fd that is not a seccomp listener; session ended`,
      );
      this.end();
      return;
    }
    this.server = new HookServer({
      listener,
      broker: this.#broker,
      peer: this.peer,
      continuation: this.#continuation,
      onClose: () => this.end(),
      log: (m) => this.#broker.warn(`session ${this.name}: ${m}`),
    });
  }

  #closeControl(): void {
    if (this.#control < 0) return;
    this.#watcher?.close();
    this.#watcher = null;
    native.close(this.#control);
    this.#control = -1;
  }

  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#closeControl();
    this.server?.close();
    this.hook.close();
    this.#onEnd(this);
  }

  report(now: number): SessionReport {
    const s = this.server?.stats;
    return {
      name: this.name,
      pid: this.peer.pid,
      uid: this.peer.uid,
      section: this.section,
      state: this.server ? 'running' : 'starting',
      startedAt: new Date(this.startedAt).toISOString(),
      uptimeSeconds: Math.round((now - this.startedAt) / 100) / 10,
      hook: {
        notifications: s?.notifications ?? 0,
        installed: s?.installed ?? 0,
        continued: s?.continued ?? 0,
        performed: s?.performed ?? 0,
        refused: s?.refused ?? 0,
        gone: s?.gone ?? 0,
      },
    };
  }
}

/** Whether fd is a seccomp user-notification listener (and not some other fd a launcher sent). */
function isListener(fd: number): boolean {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:seccomp notify';
  } catch {
    return false;
  }
}

export class DaemonSessions implements SessionHost {
  readonly #broker: Broker;
  readonly #sessions = new Set<Session>();
  readonly #log: (message: string) => void;
  readonly #base: Grant[];
  readonly #daemonUid = process.geteuid?.() ?? 0;
  #closed = false;

  constructor(broker: Broker, log: (message: string) => void = () => {}) {
    this.#broker = broker;
    this.#log = log;
    // What `run` grants every program (the system directories and the usual devices).
    this.#base = confinementFor().grants;
  }

  get size(): number {
    return this.#sessions.size;
  }

  /** Whether some session would be granted to peer: only then does `unmatched = "refuse"` let it in to ask. */
  couldAdmit(peer: Peer): boolean {
    const policy = this.#broker.policy;
    return policy.sections.some((s) => s.sessions?.some((name) => typeof authorise(policy, peer, name, this.#daemonUid) !== 'string'));
  }

  start(conn: Connection, nameBytes: Buffer, claimBytes: Buffer): SessionAnswer {
    const refuse = (errno: number, reason: string): SessionAnswer => {
      this.#log(`session refused to pid ${conn.peer.pid} (uid ${conn.peer.uid}): ${reason}`);
      return { result: -errno, reply: encodeSessionReply(-errno, reason), fd: -1 };
    };
    if (this.#closed) return refuse(E.EACCES, 'the daemon is stopping');
    const name = checkName(nameBytes);
    if (name === null) return refuse(E.EINVAL, 'a session name is 1 to 255 bytes of printable UTF-8');
    const claims = parseClaims(claimBytes);
    if (claims === null) return refuse(E.EINVAL, 'malformed grants (each is "ro PATH" or "device PATH", NUL-terminated)');
    const verdict = authorise(this.#broker.policy, conn.peer, name, this.#daemonUid);
    if (typeof verdict === 'string') return refuse(E.EACCES, verdict);
    if (!this.#broker.admits(conn.peer.uid)) return refuse(E.EMFILE, 'the daemon is at its connection cap');
    const [mine, theirs] = native.socketpair(conn.kind === 'stream' ? C.SOCK_STREAM : C.SOCK_SEQPACKET, false);
    const peer: Peer = { ...conn.peer, session: name };
    const hook = this.#broker.adopt(mine, conn.kind, peer);
    const session = new Session(name, peer, verdict.name, hook, new Continuation([...this.#base, ...claims]), this.#broker, (s) => {
      this.#sessions.delete(s);
      this.#log(`session ${s.name} (pid ${s.peer.pid}) ended after ${((Date.now() - s.startedAt) / 1000).toFixed(1)} s`);
    });
    this.#sessions.add(session);
    this.#log(`session ${name} started for pid ${peer.pid} (uid ${peer.uid}), section ${verdict.name}`);
    const grants = this.#base.map((g) => `${g.access} ${g.path}\0`).join('');
    return { result: 0, reply: encodeSessionReply(0, grants), fd: theirs, handover: (fd) => session.control(fd) };
  }

  list(): { list: SessionReport[]; more: number } {
    const now = Date.now();
    const all = [...this.#sessions];
    return { list: all.slice(0, SESSIONS_LISTED).map((s) => s.report(now)), more: Math.max(0, all.length - SESSIONS_LISTED) };
  }

  /** Ends every session: their programs' trapped calls get ENOSYS from the kernel from now on. */
  close(): void {
    this.#closed = true;
    for (const s of [...this.#sessions]) s.end();
  }
}
