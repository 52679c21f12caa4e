/**
 * The broker: listening sockets, connections, and the policy they are served under.
 *
 * The policy can be swapped while clients are connected: each request reads the current policy, so
 * the next request of every client sees the new one, and a request in progress finishes under the
 * policy it started with.
 *
 * What clients can cost the broker is bounded (DESIGN.md, invariant 6): a total and a per-uid
 * connection cap, per-connection limits (see connection.ts), and accept that survives running out
 * of fds without spinning.
 *
 * As a service (see the end of the class): listening sockets inherited from systemd, the STATUS
 * report, policy generations, and a graceful stop.
 */
import { display } from '../bytestring.js';
import { C, native, type NativePoller, PollMode, check } from '../native.js';
import type { Peer, Policy } from '../policy/policy.js';
import type { AuditSink } from './audit.js';
import {
  BATCH,
  Connection,
  DEFAULT_CONNECTION_LIMITS,
  type ConnectionFamily,
  type ConnectionHost,
  type ConnectionLimits,
  type SessionAnswer,
  type SocketKind,
} from './connection.js';
import { Metrics, snapshot, type BrokerState, type StatusReport } from './metrics.js';
import { encodeSessionReply, encodeStatusReply } from '../protocol/frames.js';
import { Feature } from '../protocol/constants.js';
import { missingSupport, Resolver } from '../resolver/resolver.js';
import { ReplyBatch } from './reply-batch.js';
import type { ServiceContext } from './service.js';
import { E } from '../errno.js';

export interface BrokerLimits extends ConnectionLimits {
  /** connections served at once; beyond, new ones are closed at accept (default 4096) */
  connections: number;
  /** connections per peer uid at once (default 1024) */
  connectionsPerUid: number;
}

export const DEFAULT_BROKER_LIMITS: Readonly<BrokerLimits> = Object.freeze({
  ...DEFAULT_CONNECTION_LIMITS,
  connections: 4096,
  connectionsPerUid: 1024,
});

export interface BrokerOptions {
  policy: Policy;
  resolver?: Resolver;
  audit?: AuditSink | null;
  limits?: Partial<BrokerLimits>;
  /** where warnings go (accept failures, faults); default: stderr */
  log?: (message: string) => void;
  /**
   * How many connections one client may hold open through CONNECT, beyond the one it was accepted
   * or adopted on (default 1024). Past it, or past the broker's connection caps, CONNECT answers
   * -EMFILE. They all close with that one.
   */
  maxDerivedConnections?: number;
}

/**
 * Hosts daemon-backed sessions (src/hook/sessions.ts): what the broker hands SESSION requests to,
 * once it has checked that the connection may ask at all.
 */
export interface SessionHost {
  start(conn: Connection, name: Buffer, claims: Buffer): SessionAnswer;
  /** whether some session could be granted to this peer: the broker then accepts its connection */
  couldAdmit(peer: Peer): boolean;
  /** the sessions, for STATUS */
  list(): NonNullable<StatusReport['sessions']>;
  close(): void;
}

export interface ListenOptions {
  /** SOCK_STREAM instead of the default SOCK_SEQPACKET */
  stream?: boolean;
  /** file mode of the socket, 0o600 unless given */
  mode?: number;
  backlog?: number;
}

/** The kernel or process lacks what the resolver needs (openat2, procfs). */
export class UnsupportedSystemError extends Error {
  override name = 'UnsupportedSystemError';
  readonly code = 'ERR_OPENHOOK_UNSUPPORTED';
}

const { EACCES, EAGAIN, EMFILE, EPIPE, ENFILE, ENOBUFS, ENOMEM } = E;
/** Connections accepted per wake-up, so that a connection storm cannot monopolise the loop. */
const ACCEPT_BATCH = 64;
/** How long accepting pauses when the process is out of fds and no reserve fd is left. */
const ACCEPT_PAUSE_MS = 100;
/** A warning of one kind at most this often; the rest are counted. */
const WARN_INTERVAL_MS = 5_000;

export class Broker implements ConnectionHost {
  readonly limits: Readonly<BrokerLimits>;
  /** the replies of the connection whose wake-up is being served (see reply-batch.ts) */
  readonly replies = new ReplyBatch(BATCH);
  #ctx: ServiceContext;
  #listeners = new Set<Listener>();
  #connections = new Set<Connection>();
  #perUid = new Map<number, number>();
  #watched = new Set<Connection>();
  #sweep: NodeJS.Timeout | null = null;
  /** A spare fd, given up for a moment to accept and close a connection when the process has no fd left. */
  #reserve = -1;
  #warned = new Map<string, { at: number; suppressed: number }>();
  #log: (message: string) => void;
  #maxDerived: number;
  #closed = false;
  // service state: see "As a service" below
  #state: BrokerState['state'] = 'serving';
  #generation = 1;
  #loadedAt = Date.now();
  #reloadFailures = 0;
  #lastReloadError: string | null = null;
  /** connections accepted from a listener: the only ones that may ask for STATUS */
  #accepted = new WeakSet<Connection>();
  #onIdle: (() => void) | null = null;
  #sessions: SessionHost | null = null;

  constructor(options: BrokerOptions) {
    const missing = missingSupport();
    if (missing) throw new UnsupportedSystemError(`openhook cannot broker opens safely here: ${missing}`);
    this.limits = Object.freeze({ ...DEFAULT_BROKER_LIMITS, ...options.limits });
    this.#ctx = {
      policy: options.policy,
      resolver: options.resolver ?? new Resolver(),
      audit: options.audit ?? null,
      metrics: new Metrics(),
    };
    this.#log = options.log ?? ((m) => process.stderr.write(`openhook: ${m}\n`));
    this.#maxDerived = options.maxDerivedConnections ?? 1024;
    this.#reserve = native.open('/dev/null', C.O_RDONLY, 0);
  }

  get policy(): Policy {
    return this.#ctx.policy;
  }

  get resolver(): Resolver {
    return this.#ctx.resolver;
  }

  /** Swaps in a new policy for every later request, and closes the old one. */
  setPolicy(policy: Policy): void {
    const old = this.#ctx.policy;
    this.#ctx = { ...this.#ctx, policy };
    if (old !== policy) {
      old.close();
      // Roots are reopened as the new policy uses them; opens in flight keep theirs (roots.ts).
      this.#ctx.resolver.roots.retireAll();
      this.#generation++;
      this.#loadedAt = Date.now();
    }
  }

  get connectionCount(): number {
    return this.#connections.size;
  }

  /** Connections of one peer uid. */
  connectionsOf(uid: number): number {
    return this.#perUid.get(uid) ?? 0;
  }

  /**
   * Whether one more connection for this uid is within the caps. Accept checks it; so must anything
   * that makes connections on a client's request (an extension that hands out new sockets).
   */
  admits(uid: number): boolean {
    return this.#connections.size < this.limits.connections && this.connectionsOf(uid) < this.limits.connectionsPerUid;
  }

  /** Listens on a UNIX socket path. */
  listen(path: string, options: ListenOptions = {}): Listener {
    if (this.#closed) throw new Error('broker is closed');
    const kind: SocketKind = options.stream ? 'stream' : 'seqpacket';
    const bound = native.listenUnix(
      Buffer.from(path),
      kind === 'stream' ? C.SOCK_STREAM : C.SOCK_SEQPACKET,
      options.mode ?? 0o600,
      options.backlog ?? 512,
    );
    const listener = new Listener(this, path, bound.fd, kind, bound.identity);
    this.#listeners.add(listener);
    return listener;
  }

  /**
   * Serves an already-connected socket, such as one end of a socketpair given to a launched program.
   * Counted against the caps, but never refused: the caller decided to serve it.
   */
  adopt(fd: number, kind: SocketKind, peer?: Partial<Peer>): Connection {
    return this.#serve(fd, kind, { ...peerOf(fd), ...peer });
  }

  /** Called by a listener for each accepted socket. */
  accepted(fd: number, kind: SocketKind): void {
    let peer: Peer;
    try {
      peer = peerOf(fd);
    } catch (err) {
      this.warn(`cannot read peer credentials: ${(err as Error).message}`, 'peercred');
      native.close(fd);
      return;
    }
    if (!this.#ctx.policy.admits(peer) && !this.#sessions?.couldAdmit(peer)) {
      // The policy refuses clients that match none of its sections: close before reading anything.
      this.#ctx.metrics.connectionsRefused++;
      native.close(fd);
      return;
    }
    if (!this.admits(peer.uid)) {
      // Over a cap: the client sees its connection closed at once, and learns nothing else.
      this.warn(
        `connection from uid ${peer.uid} (pid ${peer.pid}) refused: ${this.#connections.size >= this.limits.connections ? `${this.limits.connections} connections` : `${this.limits.connectionsPerUid} connections for this uid`}`,
        `cap:${peer.uid}`,
      );
      this.#ctx.metrics.connectionsRefused++;
      native.close(fd);
      return;
    }
    this.#accepted.add(this.#serve(fd, kind, peer));
  }

  #serve(fd: number, kind: SocketKind, peer: Peer, family: ConnectionFamily | null = null): Connection {
    const conn = new Connection(this, fd, peer, kind, family);
    this.#connections.add(conn);
    this.#perUid.set(peer.uid, this.connectionsOf(peer.uid) + 1);
    this.#ctx.metrics.connectionsTotal++;
    return conn;
  }

  /**
   * CONNECT: makes a socketpair, serves one end exactly like `from` (same peer, same session, same
   * family budget) and returns the other end for the reply, which closes it once sent. The pair is
   * blocking: the broker's own I/O never blocks (it always passes MSG_DONTWAIT), and the client's end
   * should behave like the hook fd it was given. Counted against the family's budget and the caps.
   */
  derive(from: Connection): number {
    if (this.#closed || from.closed) return -EPIPE;
    if (from.family.derived.size >= this.#maxDerived || !this.admits(from.peer.uid)) return -EMFILE;
    let pair: [number, number];
    try {
      pair = native.socketpair(from.kind === 'stream' ? C.SOCK_STREAM : C.SOCK_SEQPACKET, false);
    } catch (err) {
      return (err as { errno?: number }).errno ?? -EMFILE;
    }
    let conn: Connection;
    try {
      conn = this.#serve(pair[0], from.kind, from.peer, from.family);
    } catch (err) {
      native.close(pair[0]);
      native.close(pair[1]);
      throw err;
    }
    from.family.derived.add(conn);
    return pair[1];
  }

  context(): ServiceContext {
    return this.#ctx;
  }

  /** From now on, SESSION requests go to host (`openhook serve`), and HELLO offers them. */
  hostSessions(host: SessionHost): void {
    this.#sessions = host;
  }

  get extraFeatures(): number {
    return this.#sessions ? Feature.SESSION : 0;
  }

  /**
   * SESSION: only on a connection accepted from a listener (a launched program's adopted or derived
   * socket carries the broker's own credentials, and a session's hook socket its session: neither may
   * ask for another), and only where sessions are hosted.
   */
  session(conn: Connection, name: Buffer, claims: Buffer): SessionAnswer {
    const refuse = (errno: number, reason: string): SessionAnswer => ({
      result: -errno,
      reply: encodeSessionReply(-errno, reason),
      fd: -1,
    });
    if (!this.#sessions) {
      // As for any command this broker does not serve.
      this.protocolError();
      return { result: -E.EPROTO, reply: encodeSessionReply(-E.EPROTO, ''), fd: -1 };
    }
    if (!this.#accepted.has(conn) || conn.peer.session !== undefined || this.#state === 'stopping') {
      return refuse(
        EACCES,
        this.#state === 'stopping' ? 'the daemon is stopping' : "SESSION is answered only on a connection to the daemon's socket",
      );
    }
    return this.#sessions.start(conn, name, claims);
  }

  released(conn: Connection): void {
    if (conn.derived) conn.family.derived.delete(conn);
    else for (const d of [...conn.family.derived]) d.close();
    if (!this.#connections.delete(conn)) return;
    const n = this.connectionsOf(conn.peer.uid) - 1;
    if (n > 0) this.#perUid.set(conn.peer.uid, n);
    else this.#perUid.delete(conn.peer.uid);
    this.#watched.delete(conn);
    if (this.#state === 'stopping' && conn.derived && conn.family.derived.size === 0) {
      // The last connection made by CONNECT has finished: the one it came from may close now.
      for (const c of this.#connections) if (c.family === conn.family && !c.derived) c.drain();
    }
    if (this.#connections.size === 0) this.#onIdle?.();
  }

  /** Deadlines (a half-sent frame, an unread reply) are checked by one timer, running only while some are pending. */
  watch(conn: Connection): void {
    this.#watched.add(conn);
    if (this.#sweep || this.#closed) return;
    const tick = Math.max(10, Math.min(this.limits.stallMs, this.limits.frameMs) / 4);
    this.#sweep = setInterval(() => this.#expire(), tick);
    this.#sweep.unref();
  }

  #expire(): void {
    const now = Date.now();
    for (const conn of this.#watched) {
      const deadline = conn.deadline();
      if (deadline === 0 || conn.closed) this.#watched.delete(conn);
      else if (now >= deadline) conn.expire();
    }
    if (this.#watched.size === 0 && this.#sweep) {
      clearInterval(this.#sweep);
      this.#sweep = null;
    }
  }

  /**
   * Out of fds at accept: give up the reserve fd for a moment, accept the oldest pending connection
   * and close it at once, so that the client gets a prompt end instead of waiting in the backlog, and
   * the listener is drained instead of spinning. Returns false if there is no reserve to give.
   */
  shed(listenFd: number): boolean {
    if (this.#reserve < 0) return false;
    native.close(this.#reserve);
    const fd = native.accept(listenFd);
    if (fd >= 0) native.close(fd);
    this.#reserve = native.open('/dev/null', C.O_RDONLY, 0);
    return fd >= 0;
  }

  fault(conn: Connection, err: unknown): void {
    this.#ctx.metrics.faults++;
    this.#log(`dropped connection from pid ${conn.peer.pid}: ${(err as Error)?.stack ?? String(err)}`);
  }

  /**
   * A warning for people, at most one per kind every few seconds: a flood of the same event (EMFILE
   * at accept, a cap) must not turn into a flood of synchronous writes to stderr.
   */
  warn(message: string, kind = message): void {
    const now = Date.now();
    const seen = this.#warned.get(kind);
    if (seen && now - seen.at < WARN_INTERVAL_MS) {
      seen.suppressed++;
      return;
    }
    const more = seen?.suppressed ? ` (and ${seen.suppressed} more like it)` : '';
    this.#warned.set(kind, { at: now, suppressed: 0 });
    if (this.#warned.size > 1000) this.#warned.clear();
    this.#log(message + more);
  }

  /**
   * Stops listening (removing the socket files), closes every connection, the policy, and the thread
   * pool. Everything is closed even if closing one thing fails; then the first failure is thrown.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const failures: unknown[] = [];
    this.#closeListeners(failures);
    for (const c of [...this.#connections]) attempt(() => c.close(), failures);
    if (this.#sweep) clearInterval(this.#sweep);
    this.#sweep = null;
    if (this.#sessions) attempt(() => this.#sessions!.close(), failures);
    attempt(() => this.#ctx.policy.close(), failures);
    attempt(() => this.#ctx.resolver.close(), failures);
    if (this.#reserve >= 0) native.close(this.#reserve);
    this.#reserve = -1;
    if (failures.length > 0) throw failures[0];
  }

  /** Closes every listener, collecting failures rather than stopping at the first. */
  #closeListeners(failures: unknown[]): void {
    for (const l of this.#listeners) attempt(() => l.close(), failures);
    this.#listeners.clear();
  }

  // ---- As a service ------------------------------------------------------------------------------

  /**
   * Serves a listening socket that another process made and still owns: systemd's, under socket
   * activation. It must be a listening UNIX socket of a kind the broker speaks. Its file is never
   * unlinked, and closing the listener closes only this process's copy: systemd keeps the socket, and
   * connections that arrive meanwhile wait in its backlog for the next broker.
   */
  listenInherited(fd: number): Listener {
    if (this.#closed) throw new Error('broker is closed');
    const info = native.socketInfo(fd);
    if (info.domain !== C.AF_UNIX) throw new Error(`fd ${fd} is not a UNIX domain socket`);
    if (info.type !== C.SOCK_SEQPACKET && info.type !== C.SOCK_STREAM)
      throw new Error(`fd ${fd} is neither SOCK_SEQPACKET nor SOCK_STREAM`);
    if (!info.listening) throw new Error(`fd ${fd} is not a listening socket`);
    native.setNonblockCloexec(fd);
    const listener = new Listener(
      this,
      info.path ? display(info.path) : `fd ${fd}`,
      fd,
      info.type === C.SOCK_STREAM ? 'stream' : 'seqpacket',
      0n,
      true,
    );
    this.#listeners.add(listener);
    return listener;
  }

  get listeners(): readonly Listener[] {
    return [...this.#listeners];
  }

  get metrics(): Metrics {
    return this.#ctx.metrics;
  }

  get state(): BrokerState['state'] {
    return this.#state;
  }

  /** Policies loaded since start: 1 for the first, one more for each that replaced it. */
  get generation(): number {
    return this.#generation;
  }

  /**
   * Reloads the policy: load() builds the new one, which replaces the old one only if it loads. A
   * policy that fails to load leaves the old one in force, and is counted and reported by STATUS.
   */
  async reload(load: () => Policy | Promise<Policy>): Promise<{ ok: true } | { ok: false; error: Error }> {
    if (this.#closed || this.#state === 'stopping') return { ok: false, error: new Error('the broker is stopping') };
    this.reloading();
    try {
      this.setPolicy(await load());
      this.reloaded(null);
      return { ok: true };
    } catch (err) {
      this.reloaded(err as Error);
      return { ok: false, error: err as Error };
    }
  }

  /** A reload (by whatever loads policies: see PolicyReloader) has begun: STATUS says 'reloading'. */
  reloading(): void {
    if (this.#state === 'serving') this.#state = 'reloading';
  }

  /** A reload has ended: error is null when the new policy is in force (setPolicy), else why not. */
  reloaded(error: Error | null): void {
    if (error) {
      this.#reloadFailures++;
      this.#lastReloadError = error.message;
    } else {
      this.#lastReloadError = null;
    }
    if (this.#state === 'reloading') this.#state = 'serving';
  }

  /** The STATUS report: counters and state. */
  report(): StatusReport {
    const report = snapshot(this.#ctx.metrics, {
      state: this.#state,
      connections: this.#connections.size,
      listeners: [...this.#listeners].map((l) => ({ path: l.path, kind: l.kind, activated: l.inherited })),
      policy: {
        generation: this.#generation,
        loadedAt: this.#loadedAt,
        rules: this.#ctx.policy.ruleCount,
        reloadFailures: this.#reloadFailures,
        lastReloadError: this.#lastReloadError,
      },
    });
    if (this.#sessions) report.sessions = this.#sessions.list();
    return report;
  }

  /**
   * STATUS: the report as a reply frame, or -EACCES. Only a peer with the broker's own uid or root,
   * on a connection it accepted from a listener, may see it: a launched program's adopted socket
   * carries the broker's own credentials (it made the socketpair), so uid alone would let it in.
   */
  status(conn: Connection): Buffer | number {
    const uid = conn.peer.uid;
    if (!this.#accepted.has(conn) || (uid !== 0 && uid !== process.geteuid?.())) {
      this.#ctx.metrics.statusRefused++;
      return -EACCES;
    }
    this.#ctx.metrics.statusQueries++;
    return encodeStatusReply(JSON.stringify(this.report()));
  }

  protocolError(): void {
    this.#ctx.metrics.protocolErrors++;
  }

  /**
   * Graceful stop. Stops accepting at once (removing the socket files this broker made; inherited
   * sockets stay with their owner), then lets every connection finish: requests it has been sent are
   * answered, and it is closed once its replies are out. Connections still busy at the deadline are
   * closed, which their clients see as the broker going away. Resolves to how many were cut so.
   */
  async stop(deadlineMs: number): Promise<number> {
    if (this.#closed) return 0;
    this.#state = 'stopping';
    const failures: unknown[] = [];
    this.#closeListeners(failures);
    for (const err of failures) this.warn(`closing a listener: ${err instanceof Error ? err.message : String(err)}`, 'listener-close');
    if (this.#connections.size > 0) {
      const idle = new Promise<void>((resolve) => (this.#onIdle = resolve));
      for (const c of [...this.#connections]) c.drain();
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([idle, new Promise<void>((resolve) => (timer = setTimeout(resolve, deadlineMs)))]);
      clearTimeout(timer);
    }
    const cut = this.#connections.size;
    this.close();
    return cut;
  }
}

export class Listener {
  readonly path: string;
  readonly fd: number;
  readonly kind: SocketKind;
  /** made by another process (systemd), which owns the socket file */
  readonly inherited: boolean;
  #broker: Broker;
  #poller: NativePoller;
  #identity: bigint;
  #pause: NodeJS.Timeout | null = null;
  #closed = false;

  constructor(broker: Broker, path: string, fd: number, kind: SocketKind, identity: bigint, inherited = false) {
    this.#broker = broker;
    this.path = path;
    this.fd = fd;
    this.kind = kind;
    this.inherited = inherited;
    this.#identity = identity;
    this.#poller = new native.Poller(fd, PollMode.Notify, 0, () => this.#acceptReady());
    this.#poller.start(C.UV_READABLE);
  }

  #acceptReady(): void {
    for (let i = 0; i < ACCEPT_BATCH; i++) {
      const fd = native.accept(this.fd);
      if (fd >= 0) {
        this.#broker.accepted(fd, this.kind);
        continue;
      }
      if (fd === -EAGAIN) return;
      if (fd === -EMFILE || fd === -ENFILE) {
        const what = fd === -EMFILE ? 'EMFILE' : 'ENFILE';
        if (this.#broker.shed(this.fd)) {
          this.#broker.warn(`accept: ${what}: out of fds, closing new connections at once`, 'accept-shed');
          continue;
        }
      }
      if (fd === -EMFILE || fd === -ENFILE || fd === -ENOBUFS || fd === -ENOMEM) {
        // The pending connection stays queued; polling again at once would spin. Pause instead.
        this.#broker.metrics.acceptErrors++;
        this.#broker.warn(
          `accept: ${fd === -EMFILE ? 'EMFILE' : fd === -ENFILE ? 'ENFILE' : 'out of memory'}; pausing ${ACCEPT_PAUSE_MS} ms`,
          'accept-pause',
        );
        this.#poller.start(0);
        this.#pause = setTimeout(() => {
          this.#pause = null;
          if (!this.#closed) this.#poller.start(C.UV_READABLE);
        }, ACCEPT_PAUSE_MS);
        return;
      }
      // ECONNABORTED and friends concern one connection only.
    }
  }

  /**
   * Stops accepting and removes the socket file, if it is still the one this listener bound. An
   * inherited socket's file is never removed (its identity is 0, which unlinkSocket never matches).
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#pause) clearTimeout(this.#pause);
    this.#poller.close();
    if (!this.inherited) native.unlinkSocket(Buffer.from(this.path), this.#identity);
    check(native.close(this.fd), 'close');
  }
}

function attempt(fn: () => void, failures: unknown[]): void {
  try {
    fn();
  } catch (err) {
    failures.push(err);
  }
}

function peerOf(fd: number): Peer {
  const cred = native.peerCred(fd);
  return { pid: cred.pid, uid: cred.uid, gid: cred.gid, groups: native.peerGroups(fd) };
}
