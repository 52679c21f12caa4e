/**
 * The broker: listening sockets, connections, and the policy they are served under.
 *
 * The policy can be swapped while clients are connected: each request reads the current policy, so
 * the next request of every client sees the new one, and a request in progress finishes under the
 * policy it started with.
 */
import { C, native, type NativePoller, PollMode, check } from '../native.js';
import type { Peer, Policy } from '../policy/policy.js';
import type { AuditSink } from './audit.js';
import { Connection, type ConnectionHost, type SocketKind } from './connection.js';
import { Resolver } from './resolver.js';
import type { ServiceContext } from './service.js';

export interface BrokerOptions {
  policy: Policy;
  resolver?: Resolver;
  audit?: AuditSink | null;
  /** where warnings go (accept failures, faults); default: stderr */
  log?: (message: string) => void;
  /**
   * How many connections one client may hold open through CONNECT, beyond the one it was accepted
   * or adopted on (default 1024). Past it, CONNECT answers -EMFILE. They all close with that one.
   */
  maxDerivedConnections?: number;
}

export interface ListenOptions {
  /** SOCK_STREAM instead of the default SOCK_SEQPACKET */
  stream?: boolean;
  /** file mode of the socket, 0o600 unless given */
  mode?: number;
  backlog?: number;
}

const EAGAIN = 11, EMFILE = 24, EPIPE = 32, ENFILE = 23, ENOBUFS = 105, ENOMEM = 12;
/** Connections accepted per wake-up, so that a connection storm cannot monopolise the loop. */
const ACCEPT_BATCH = 64;
/** How long accepting pauses when the process is out of fds, instead of spinning on EMFILE. */
const ACCEPT_PAUSE_MS = 100;

export class Broker implements ConnectionHost {
  #ctx: ServiceContext;
  #listeners = new Set<Listener>();
  #connections = new Set<Connection>();
  #log: (message: string) => void;
  #maxDerived: number;
  #closed = false;

  constructor(options: BrokerOptions) {
    this.#ctx = { policy: options.policy, resolver: options.resolver ?? new Resolver(), audit: options.audit ?? null };
    this.#log = options.log ?? ((m) => process.stderr.write(`openhook: ${m}\n`));
    this.#maxDerived = options.maxDerivedConnections ?? 1024;
  }

  get policy(): Policy {
    return this.#ctx.policy;
  }

  /** Swaps in a new policy for every later request, and closes the old one. */
  setPolicy(policy: Policy): void {
    const old = this.#ctx.policy;
    this.#ctx = { ...this.#ctx, policy };
    if (old !== policy) old.close();
  }

  get connectionCount(): number {
    return this.#connections.size;
  }

  /** Listens on a UNIX socket path. */
  listen(path: string, options: ListenOptions = {}): Listener {
    if (this.#closed) throw new Error('broker is closed');
    const kind: SocketKind = options.stream ? 'stream' : 'seqpacket';
    const bound = native.listenUnix(Buffer.from(path), kind === 'stream' ? C.SOCK_STREAM : C.SOCK_SEQPACKET, options.mode ?? 0o600, options.backlog ?? 512);
    const listener = new Listener(this, path, bound.fd, kind, bound.identity);
    this.#listeners.add(listener);
    return listener;
  }

  /** Serves an already-connected socket, such as one end of a socketpair given to a launched program. */
  adopt(fd: number, kind: SocketKind, peer?: Partial<Peer>): Connection {
    const conn = new Connection(this, fd, { ...peerOf(fd), ...peer }, kind);
    this.#connections.add(conn);
    return conn;
  }

  /** Called by a listener for each accepted socket. */
  accepted(fd: number, kind: SocketKind): void {
    let peer: Peer;
    try {
      peer = peerOf(fd);
    } catch (err) {
      this.#log(`cannot read peer credentials: ${(err as Error).message}`);
      native.close(fd);
      return;
    }
    if (!this.#ctx.policy.admits(peer)) {
      // The policy refuses clients that match none of its sections: close before reading anything.
      native.close(fd);
      return;
    }
    this.#connections.add(new Connection(this, fd, peer, kind));
  }

  context(): ServiceContext {
    return this.#ctx;
  }

  /**
   * CONNECT: makes a socketpair, serves one end exactly like `from` (same peer, same session, same
   * family budget) and returns the other end for the reply, which closes it once sent. The pair is
   * blocking: the broker's own I/O never blocks (it always passes MSG_DONTWAIT), and the client's end
   * should behave like the hook fd it was given.
   */
  derive(from: Connection): number {
    if (this.#closed || from.closed) return -EPIPE;
    if (from.family.derived.size >= this.#maxDerived) return -EMFILE;
    let pair: [number, number];
    try {
      pair = native.socketpair(from.kind === 'stream' ? C.SOCK_STREAM : C.SOCK_SEQPACKET, false);
    } catch (err) {
      return (err as { errno?: number }).errno ?? -EMFILE;
    }
    let conn: Connection;
    try {
      conn = new Connection(this, pair[0], from.peer, from.kind, from.family);
    } catch (err) {
      native.close(pair[0]);
      native.close(pair[1]);
      throw err;
    }
    from.family.derived.add(conn);
    this.#connections.add(conn);
    return pair[1];
  }

  released(conn: Connection): void {
    this.#connections.delete(conn);
    if (conn.derived) conn.family.derived.delete(conn);
    else for (const d of [...conn.family.derived]) d.close();
  }

  fault(conn: Connection, err: unknown): void {
    this.#log(`dropped connection from pid ${conn.peer.pid}: ${(err as Error)?.stack ?? String(err)}`);
  }

  warn(message: string): void {
    this.#log(message);
  }

  /** Stops listening (removing the socket files), closes every connection, and the policy. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const l of this.#listeners) l.close();
    this.#listeners.clear();
    for (const c of [...this.#connections]) c.close();
    this.#ctx.policy.close();
  }
}

export class Listener {
  readonly path: string;
  readonly fd: number;
  readonly kind: SocketKind;
  #broker: Broker;
  #poller: NativePoller;
  #identity: bigint;
  #pause: NodeJS.Timeout | null = null;
  #closed = false;

  constructor(broker: Broker, path: string, fd: number, kind: SocketKind, identity: bigint) {
    this.#broker = broker;
    this.path = path;
    this.fd = fd;
    this.kind = kind;
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
      if (fd === -EMFILE || fd === -ENFILE || fd === -ENOBUFS || fd === -ENOMEM) {
        // The pending connection stays queued; polling again at once would spin. Pause instead.
        this.#broker.warn(`accept: ${fd === -EMFILE ? 'EMFILE' : fd === -ENFILE ? 'ENFILE' : 'out of memory'}; pausing ${ACCEPT_PAUSE_MS} ms`);
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

  /** Stops accepting and removes the socket file, if it is still the one this listener bound. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#pause) clearTimeout(this.#pause);
    this.#poller.close();
    native.unlinkSocket(Buffer.from(this.path), this.#identity);
    check(native.close(this.fd), 'close');
  }
}

function peerOf(fd: number): Peer {
  const cred = native.peerCred(fd);
  return { pid: cred.pid, uid: cred.uid, gid: cred.gid, groups: native.peerGroups(fd) };
}
