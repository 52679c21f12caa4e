/**
 * The client library: ask a broker to open files, and get fds back.
 *
 *   await using hook = await connect('/run/openhook.sock');
 *   const fd = await hook.open('/srv/vm/disk.img', 'r+');
 *
 * Many requests may be in flight on one connection. With a broker that offers tagged opens (found by
 * a HELLO exchange at connect), replies are matched by id and may arrive in any order; with a plain
 * RFC broker they are matched in order.
 *
 * A client connected by path survives the broker restarting: when its connection is lost it connects
 * again, with backoff, and sends again the requests that are safe to repeat (every open but one with
 * O_CREAT|O_EXCL, and STATUS), once each. The socket itself is a Link (link.ts); this file is about
 * requests.
 */
import { EventEmitter } from 'node:events';
import { E } from '../errno.js';
import { C, native, systemError } from '../native.js';
import { Command, COMMAND_NAMES, Feature, FILE_OP_COMMANDS, Size } from '../protocol/constants.js';
import {
  encodeFileOp,
  encodeHello,
  encodeOpen,
  encodeStatusRequest,
  encodeTaggedOpen,
  type FileOpArgs,
  type Reply,
} from '../protocol/frames.js';
import type { StatusReport } from '../broker/metrics.js';
import { connectPath } from './channel.js';
import { ClientClosedError, ConnectionLostError, ProtocolError, TimeoutError } from './errors.js';
import { toFlags, type OpenFlags } from './flags.js';
import { Link, type LinkKind } from './link.js';
import { Wait } from './pending.js';

export interface ConnectOptions {
  /** the broker's socket path */
  path?: string;
  /** an inherited, connected socket; the default when neither is given is $OPENHOOK_FD */
  fd?: number;
  /** connect by path with SOCK_STREAM instead of SOCK_SEQPACKET */
  stream?: boolean;
  /** 'auto' (default) asks the broker for tagged opens; 'rfc' sends only the RFC's frames */
  protocol?: 'auto' | 'rfc';
  /** default per-request timeout in ms; 0 or absent means none */
  timeout?: number;
  /** gives up connecting when it fires, also while the HELLO exchange waits (rejects with AbortError) */
  signal?: AbortSignal;
  /**
   * Connections by path: connect again when the broker goes away (default: on). An fd cannot be
   * reconnected, so clients made from one never do.
   */
  reconnect?: boolean | ReconnectOptions;
}

export interface ReconnectOptions {
  /** the first wait between attempts, in ms (default 10); it doubles after each failure */
  initialDelay?: number;
  /** the longest wait between attempts, in ms (default 1000) */
  maxDelay?: number;
  /** how long requests wait for a broker to come back before they fail, in ms (default 10000) */
  timeout?: number;
}

export interface RequestOptions {
  signal?: AbortSignal;
  /** ms; overrides the connection's default */
  timeout?: number;
}

type Outcome = number | StatusReport;

interface Pending {
  /** QEMU_OPEN, STATUS, or a file operation (MKDIR ... TMPFILE) */
  command: number;
  /** a file operation's whole frame, kept to send it again after a reconnect */
  frame: Buffer | null;
  /** open: the name as sent, its flags and mode; kept to send it again after a reconnect */
  name: Buffer;
  flags: number;
  mode: number;
  /** for error messages */
  path: string;
  /** tagged id on the current link, 0 otherwise */
  id: number;
  /**
   * Settled early when it gives up (timeout, abort): a sent request's reply is then still awaited,
   * and its fd closed on arrival.
   */
  wait: Wait<Outcome>;
  /** already sent again once after a lost connection */
  retried: boolean;
}

const HELLO_TIMEOUT_MS = 5000;
const RECONNECT_DEFAULTS: Required<ReconnectOptions> = { initialDelay: 10, maxDelay: 1000, timeout: 10_000 };

/** Connects to a broker by socket path, by inherited fd, or through $OPENHOOK_FD. */
export async function connect(target?: string | number | ConnectOptions): Promise<OpenHookClient> {
  const options: ConnectOptions =
    typeof target === 'string' ? { path: target } : typeof target === 'number' ? { fd: target } : (target ?? {});
  let fd: number;
  let owned = true;
  if (options.path !== undefined) {
    fd = await connectPath(options.path, { type: options.stream ? C.SOCK_STREAM : C.SOCK_SEQPACKET, signal: options.signal });
  } else {
    fd = options.fd ?? fdFromEnvironment();
    owned = options.fd !== undefined;
  }
  const type = native.socketType(fd);
  if (type < 0) throw systemError(type, 'getsockopt', `fd ${fd}`);
  if (type !== C.SOCK_SEQPACKET && type !== C.SOCK_STREAM) throw new TypeError(`fd ${fd} is not a SOCK_SEQPACKET or SOCK_STREAM socket`);
  const reconnect =
    options.path === undefined || options.reconnect === false
      ? null
      : { ...RECONNECT_DEFAULTS, ...(options.reconnect === true ? {} : options.reconnect) };
  const client = new OpenHookClient({
    kind: type === C.SOCK_STREAM ? 'stream' : 'seqpacket',
    timeout: options.timeout ?? 0,
    negotiate: (options.protocol ?? 'auto') === 'auto',
    path: options.path ?? null,
    reconnect,
  });
  await client.attach(fd, owned, options.signal);
  return client;
}

function fdFromEnvironment(): number {
  const text = process.env.OPENHOOK_FD;
  if (text === undefined) throw new TypeError('no socket path or fd given, and OPENHOOK_FD is not set');
  const fd = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(fd)) throw new TypeError(`OPENHOOK_FD is not an fd number: '${text}'`);
  return fd;
}

/** File operations that do the same whether they are done once or twice. */
const IDEMPOTENT_OPS: ReadonlySet<number> = new Set([Command.CHMOD, Command.CHOWN, Command.UTIMES, Command.TRUNCATE, Command.ACCESS]);

/** An open without O_CREAT|O_EXCL does the same whether it is done once or twice; STATUS too. */
function isIdempotent(req: Pending): boolean {
  const both = C.O_CREAT | C.O_EXCL;
  if (FILE_OP_COMMANDS.has(req.command)) return IDEMPOTENT_OPS.has(req.command);
  return req.command === Command.STATUS || (req.flags & both) !== both;
}

/** A path argument of the file-operation methods. */
export type PathLike = string | Buffer;

/** Times for utimes(): seconds since the epoch (fractions kept to the nanosecond), a Date, 'now', or 'omit' (unchanged). */
export type TimeLike = number | Date | 'now' | 'omit';

interface ClientSettings {
  kind: LinkKind;
  timeout: number;
  negotiate: boolean;
  /** the socket path to reconnect to, or null */
  path: string | null;
  reconnect: Required<ReconnectOptions> | null;
}

export class OpenHookClient extends EventEmitter {
  readonly kind: LinkKind;
  #settings: ClientSettings;
  /** the connected, negotiated link, or null while disconnected */
  #link: Link | null = null;
  #tagged = false;
  #nextId = 1;
  /** RFC mode: open requests in send order */
  #inOrder: Pending[] = [];
  /** tagged mode: open requests by id */
  #byId = new Map<number, Pending>();
  /** STATUS requests in send order (the broker answers them in order) */
  #statusQueue: Pending[] = [];
  /** file operations in send order (the broker answers them in order) */
  #fileOps: Pending[] = [];
  /** requests waiting for a link: made while disconnected, or to be sent again */
  #waiting: Pending[] = [];
  #reconnecting = false;
  /** cancels a link's HELLO exchange, or a wait between reconnect attempts, when the client closes */
  #cancel: ((err: Error) => void) | null = null;
  #closed = false;

  /** @internal use connect() */
  constructor(settings: ClientSettings) {
    super();
    this.#settings = settings;
    this.kind = settings.kind;
  }

  /** The socket fd of the current connection, or -1 while reconnecting. */
  get fd(): number {
    return this.#link?.fd ?? -1;
  }

  /** True when the broker answers tagged opens, whose replies may arrive out of order. */
  get tagged(): boolean {
    return this.#tagged;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Requests sent (or waiting to be sent) and not yet answered. */
  get pending(): number {
    return this.#inOrder.length + this.#byId.size + this.#statusQueue.length + this.#fileOps.length + this.#waiting.length;
  }

  /** @internal the first link, made by connect(); failures close the fd and throw. */
  async attach(fd: number, ownsFd: boolean, signal?: AbortSignal): Promise<void> {
    try {
      this.#link = await this.#establish(fd, ownsFd, signal);
    } catch (err) {
      this.#closed = true;
      throw err;
    }
  }

  /**
   * Asks the broker to open path. Resolves to an fd that the caller owns (close it with fs.close),
   * or rejects with a SystemError carrying the broker's errno (code 'EACCES', ...).
   */
  open(path: string | Buffer, flags: OpenFlags = 'r', mode = 0o666, options: RequestOptions = {}): Promise<number> {
    if (this.#closed) return Promise.reject(new ClientClosedError('the connection is closed'));
    const name = typeof path === 'string' ? Buffer.from(path) : path;
    const shown = typeof path === 'string' ? path : path.toString();
    let wire: number;
    try {
      wire = toFlags(flags);
    } catch (err) {
      return Promise.reject(err);
    }
    if (name.length > Size.NAME_MAX_WIRE) return Promise.reject(systemError(E.ENAMETOOLONG, 'open', shown));
    return this.#request(Command.QEMU_OPEN, name, wire, mode, shown, options) as Promise<number>;
  }

  /**
   * The broker's STATUS report: uptime, policy generation, connections, counters and latencies.
   * Brokers answer it only to their own uid and root (others: a SystemError with code 'EACCES').
   */
  status(options: RequestOptions = {}): Promise<StatusReport> {
    if (this.#closed) return Promise.reject(new ClientClosedError('the connection is closed'));
    return this.#request(Command.STATUS, Buffer.alloc(0), 0, 0, 'status', options) as Promise<StatusReport>;
  }

  // ---- file operations (Feature.FILE_OPS; docs/client.md) ---------------------------------------
  // Each resolves when the broker has done it, or rejects with a SystemError (code 'EACCES', ...),
  // as open does. A broker without file operations answers EPROTO.

  /** mkdir(path, mode): needs m. */
  mkdir(path: PathLike, mode = 0o777, options: RequestOptions = {}): Promise<void> {
    return this.#fileOp(Command.MKDIR, path, null, { mode }, options) as Promise<void>;
  }

  /** unlink(path): a file, symlink, FIFO..., never a directory; needs u. */
  unlink(path: PathLike, options: RequestOptions = {}): Promise<void> {
    return this.#fileOp(Command.UNLINK, path, null, {}, options) as Promise<void>;
  }

  /** rmdir(path): an empty directory; needs u. */
  rmdir(path: PathLike, options: RequestOptions = {}): Promise<void> {
    return this.#fileOp(Command.RMDIR, path, null, {}, options) as Promise<void>;
  }

  /** rename(from, to): u at from, c (a directory: m) at to. flags: 'noreplace' or 'exchange'. */
  rename(from: PathLike, to: PathLike, flags?: 'noreplace' | 'exchange', options: RequestOptions = {}): Promise<void> {
    const bits = flags === 'noreplace' ? 1 : flags === 'exchange' ? 2 : 0;
    return this.#fileOp(Command.RENAME, from, to, { flags: bits }, options) as Promise<void>;
  }

  /** link(existing, newPath): a hard link; r at existing, c at newPath. */
  link(existing: PathLike, newPath: PathLike, options: RequestOptions = {}): Promise<void> {
    return this.#fileOp(Command.LINK, existing, newPath, {}, options) as Promise<void>;
  }

  /** symlink(target, path): target stored as given; needs s at path. */
  symlink(target: PathLike, path: PathLike, options: RequestOptions = {}): Promise<void> {
    return this.#fileOp(Command.SYMLINK, target, path, {}, options) as Promise<void>;
  }

  /** chmod(path, mode): needs a; set-id bits are never set. noFollow: lchmod. */
  chmod(path: PathLike, mode: number, options: RequestOptions & { noFollow?: boolean } = {}): Promise<void> {
    return this.#fileOp(Command.CHMOD, path, null, { mode, flags: options.noFollow ? C.AT_SYMLINK_NOFOLLOW : 0 }, options) as Promise<void>;
  }

  /** chown(path, uid, gid): succeeds only when nothing would change (-1 keeps an id); needs a. */
  chown(path: PathLike, uid: number, gid: number, options: RequestOptions & { noFollow?: boolean } = {}): Promise<void> {
    return this.#fileOp(
      Command.CHOWN,
      path,
      null,
      { uid: uid >>> 0, gid: gid >>> 0, flags: options.noFollow ? C.AT_SYMLINK_NOFOLLOW : 0 },
      options,
    ) as Promise<void>;
  }

  /** utimes(path, atime, mtime): needs a ('now' for both: a or w, as touch). */
  utimes(path: PathLike, atime: TimeLike, mtime: TimeLike, options: RequestOptions & { noFollow?: boolean } = {}): Promise<void> {
    const [a, b] = timespec(atime);
    const [c, d] = timespec(mtime);
    return this.#fileOp(
      Command.UTIMES,
      path,
      null,
      { a, b, c, d, flags: options.noFollow ? C.AT_SYMLINK_NOFOLLOW : 0 },
      options,
    ) as Promise<void>;
  }

  /** truncate(path, length): needs w. */
  truncate(path: PathLike, length = 0, options: RequestOptions = {}): Promise<void> {
    return this.#fileOp(Command.TRUNCATE, path, null, { a: length }, options) as Promise<void>;
  }

  /** access(path, mode): resolves if something exists there and the policy allows mode (fs.constants F_OK, R_OK, W_OK, X_OK). */
  access(path: PathLike, mode = 0, options: RequestOptions = {}): Promise<void> {
    return this.#fileOp(Command.ACCESS, path, null, { mode }, options) as Promise<void>;
  }

  /** mkfifo(path, mode): needs c, and the rule's fifos = true. */
  mkfifo(path: PathLike, mode = 0o666, options: RequestOptions = {}): Promise<void> {
    return this.#fileOp(Command.MKFIFO, path, null, { mode }, options) as Promise<void>;
  }

  /**
   * An unnamed file (O_TMPFILE) in the directory dir: resolves to its fd (the caller owns it). Needs c
   * on the directory. flags: 'w+' (O_RDWR, default) or 'w' (O_WRONLY).
   */
  tmpfile(dir: PathLike, mode = 0o600, flags: 'w' | 'w+' = 'w+', options: RequestOptions = {}): Promise<number> {
    return this.#fileOp(Command.TMPFILE, dir, null, { mode, flags: flags === 'w' ? C.O_WRONLY : C.O_RDWR }, options) as Promise<number>;
  }

  /** A file operation: one frame, answered in order like STATUS, through the same request path as open. */
  #fileOp(command: number, one: PathLike, two: PathLike | null, args: FileOpArgs, options: RequestOptions): Promise<Outcome | void> {
    if (this.#closed) return Promise.reject(new ClientClosedError('the connection is closed'));
    const shown = typeof one === 'string' ? one : one.toString();
    let frame: Buffer;
    try {
      frame = encodeFileOp(command, one, two, args);
    } catch {
      return Promise.reject(systemError(E.ENAMETOOLONG, COMMAND_NAMES[command] ?? 'file operation', shown));
    }
    return this.#request(command, Buffer.alloc(0), 0, 0, shown, options, frame);
  }

  /** Closes the connection (and the fd, if this client opened it). Pending requests reject. */
  close(): void {
    this.#shutdown(new ClientClosedError('the connection was closed'));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  // ---- requests ----------------------------------------------------------------------------------

  #request(
    command: Pending['command'],
    name: Buffer,
    flags: number,
    mode: number,
    shown: string,
    options: RequestOptions,
    frame: Buffer | null = null,
  ): Promise<Outcome> {
    const timeout = options.timeout ?? this.#settings.timeout;
    const signal = options.signal;
    // Most requests have neither timeout nor signal: they get a plain wait, without the closures.
    const wait =
      timeout > 0 || signal
        ? new Wait<Outcome>({
            timeout,
            signal,
            timeoutError: () => new TimeoutError(`no reply for '${shown}' within ${timeout} ms`),
            onGiveUp: () => this.#forget(req),
          })
        : new Wait<Outcome>();
    const req: Pending = { command, frame, name, flags, mode, path: shown, id: 0, retried: false, wait };
    if (!wait.settled) this.#dispatch(req);
    return wait.promise;
  }

  /** Sends a request on the current link, or keeps it for the next one. */
  #dispatch(req: Pending): void {
    const link = this.#link;
    if (!link) {
      this.#waiting.push(req);
      this.#startReconnect();
      return;
    }
    if (req.frame) {
      this.#fileOps.push(req);
      link.send(req.frame);
    } else if (req.command === Command.STATUS) {
      this.#statusQueue.push(req);
      link.send(encodeStatusRequest());
    } else if (this.#tagged) {
      req.id = this.#nextId;
      this.#nextId = (this.#nextId % 0xffffffff) + 1;
      this.#byId.set(req.id, req);
      link.send(encodeTaggedOpen(req.id, req.name, req.flags, req.mode));
    } else {
      req.id = 0;
      this.#inOrder.push(req);
      link.send(encodeOpen(req.name, req.flags, req.mode));
    }
    this.#updateRef();
  }

  #onReply(reply: Reply, fd: number): void {
    let req: Pending | undefined;
    if (reply.command === Command.STATUS) {
      req = this.#statusQueue.shift();
    } else if (FILE_OP_COMMANDS.has(reply.command)) {
      req = this.#fileOps.shift();
    } else if (reply.command === Command.OPEN_TAGGED) {
      req = this.#byId.get(reply.id);
      this.#byId.delete(reply.id);
    } else if (reply.command === Command.QEMU_OPEN && !this.#tagged) {
      req = this.#inOrder.shift();
    } else if (reply.result < 0 && !this.#tagged && this.#inOrder.length > 0) {
      // A broker that could not parse a frame answers -EPROTO with command 0: it is the head's reply.
      req = this.#inOrder.shift();
    }
    if (!req) {
      if (fd >= 0) native.close(fd);
      this.#protocolFailure(`reply for no request (command ${reply.command}, id ${reply.id})`);
      return;
    }
    this.#updateRef();
    if (req.wait.settled) {
      if (fd >= 0) native.close(fd);
      return;
    }
    if (reply.result !== 0)
      req.wait.reject(
        systemError(reply.result, req.command === Command.QEMU_OPEN ? 'open' : (COMMAND_NAMES[req.command] ?? 'request'), req.path),
      );
    else if (req.command === Command.STATUS) this.#resolveStatus(req, reply);
    else if (req.frame && req.command !== Command.TMPFILE) req.wait.resolve(undefined as unknown as number);
    else req.wait.resolve(fd);
  }

  #resolveStatus(req: Pending, reply: Reply): void {
    try {
      req.wait.resolve(JSON.parse(reply.payload!.toString('utf8')) as StatusReport);
    } catch {
      req.wait.reject(new ProtocolError('the STATUS reply is not a JSON document'));
    }
  }

  /** A request given up: not yet sent, it is forgotten now; sent, its reply is still awaited. */
  #forget(req: Pending): void {
    const i = this.#waiting.indexOf(req);
    if (i >= 0) this.#waiting.splice(i, 1);
  }

  #updateRef(): void {
    this.#link?.ref(this.#inOrder.length + this.#byId.size + this.#statusQueue.length + this.#fileOps.length > 0);
  }

  // ---- links: connecting, losing, reconnecting ---------------------------------------------------

  /** Makes a link on a connected fd, and negotiates tagged opens on it unless told not to. */
  async #establish(fd: number, ownsFd: boolean, signal?: AbortSignal): Promise<Link> {
    let hello: ((reply: Reply, fd: number) => void) | null = null;
    let helloLost: ((err: Error) => void) | null = null;
    const link: Link = new Link(fd, this.#settings.kind, ownsFd, {
      reply: (reply, got) => (hello ? hello(reply, got) : this.#onReply(reply, got)),
      lost: (err) => (helloLost ? helloLost(err) : this.#onLost(link, err)),
    });
    if (!this.#settings.negotiate) {
      this.#tagged = false;
      return link;
    }
    const answer = new Wait<Reply>({
      timeout: HELLO_TIMEOUT_MS,
      signal,
      timeoutError: () => new TimeoutError(`no HELLO reply within ${HELLO_TIMEOUT_MS} ms`),
    });
    hello = (r, got) => {
      if (got >= 0) native.close(got);
      // A broker that predates HELLO answers it as an unknown command: -EPROTO.
      if (r.command === Command.HELLO || r.result < 0) answer.resolve(r);
      else answer.reject(new ProtocolError(`unexpected reply to HELLO (command ${r.command})`));
    };
    helloLost = this.#cancel = (err) => answer.reject(err);
    try {
      link.ref(true);
      link.send(encodeHello(Feature.TAGGED_OPEN));
      const reply = await answer.promise;
      hello = helloLost = this.#cancel = null;
      link.ref(false);
      this.#tagged = reply.command === Command.HELLO && reply.result === 0 && (reply.features & Feature.TAGGED_OPEN) !== 0;
      return link;
    } catch (err) {
      hello = helloLost = this.#cancel = null;
      link.close();
      throw err;
    }
  }

  /**
   * The broker closed the link or it failed. Without reconnecting, the client is done. Otherwise the
   * requests that are safe to repeat wait for the next link; the others fail now, because the
   * broker may or may not have done them.
   */
  #onLost(link: Link, err: Error): void {
    if (link !== this.#link || this.#closed) return;
    this.#link = null;
    if (!this.#settings.reconnect || err instanceof ProtocolError) {
      this.#shutdown(err);
      return;
    }
    const unanswered = [...this.#inOrder, ...this.#byId.values(), ...this.#statusQueue, ...this.#fileOps];
    this.#inOrder.length = 0;
    this.#byId.clear();
    this.#statusQueue.length = 0;
    this.#fileOps.length = 0;
    const again: Pending[] = [];
    for (const req of unanswered) {
      if (req.wait.settled) continue;
      if (isIdempotent(req) && !req.retried) {
        req.retried = true;
        again.push(req);
      } else {
        req.wait.reject(
          new ConnectionLostError(
            req.retried
              ? `the broker went away twice before answering '${req.path}'`
              : `the broker went away before answering '${req.path}'; ${req.frame ? `a ${COMMAND_NAMES[req.command]}` : 'an open with O_CREAT|O_EXCL'} may or may not have been done, so it is not sent again`,
          ),
        );
      }
    }
    this.#waiting.unshift(...again);
    this.emit('disconnect', err);
    if (this.#waiting.length > 0) this.#startReconnect();
  }

  /** Connects again with backoff while requests wait; gives them up after the reconnect timeout. */
  #startReconnect(): void {
    const { path, reconnect } = this.#settings;
    if (this.#reconnecting || this.#closed) return;
    if (!path || !reconnect) {
      // Cannot happen while a link may be lost only with reconnect on; kept as a clear failure.
      this.#shutdown(new ClientClosedError('the broker closed the connection'));
      return;
    }
    this.#reconnecting = true;
    void this.#reconnectLoop(path, reconnect).finally(() => {
      this.#reconnecting = false;
      // The new link may have been lost while the waiting requests were sent on it: go again.
      if (!this.#link && !this.#closed && this.#waiting.length > 0) this.#startReconnect();
    });
  }

  async #reconnectLoop(path: string, opts: Required<ReconnectOptions>): Promise<void> {
    const giveUpAt = Date.now() + opts.timeout;
    let delay = opts.initialDelay;
    let lastError: Error | null = null;
    while (!this.#closed && this.#waiting.length > 0) {
      try {
        const fd = await connectPath(path, { type: this.kind === 'stream' ? C.SOCK_STREAM : C.SOCK_SEQPACKET });
        if (this.#closed) {
          native.close(fd);
          return;
        }
        const link = await this.#establish(fd, true);
        if (this.#closed) {
          link.close();
          return;
        }
        this.#link = link;
        this.emit('reconnect');
        const waiting = this.#waiting;
        this.#waiting = [];
        for (const req of waiting) this.#dispatch(req);
        return;
      } catch (err) {
        lastError = err as Error;
      }
      if (this.#closed) return;
      if (Date.now() + delay > giveUpAt) {
        const waiting = this.#waiting;
        this.#waiting = [];
        for (const req of waiting) {
          req.wait.reject(
            new ConnectionLostError(`no broker at ${path} for ${opts.timeout} ms (${lastError?.message ?? 'no answer'})`, {
              cause: lastError,
            }),
          );
        }
        return;
      }
      // Jitter spreads the clients of one restarted broker over the interval.
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay * (0.5 + Math.random() / 2));
        this.#cancel = () => (clearTimeout(timer), resolve());
      });
      this.#cancel = null;
      delay = Math.min(delay * 2, opts.maxDelay);
    }
  }

  #protocolFailure(message: string): void {
    this.#link?.close();
    this.#link = null;
    this.#shutdown(new ProtocolError(message));
  }

  #shutdown(err: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#link?.close();
    this.#link = null;
    this.#cancel?.(err);
    this.#cancel = null;
    const waiting = [...this.#inOrder, ...this.#byId.values(), ...this.#statusQueue, ...this.#fileOps, ...this.#waiting];
    this.#inOrder.length = 0;
    this.#byId.clear();
    this.#statusQueue.length = 0;
    this.#fileOps.length = 0;
    this.#waiting = [];
    for (const req of waiting) req.wait.reject(err);
    this.emit('close', err instanceof ClientClosedError ? undefined : err);
  }
}

/** [seconds, nanoseconds] of a TimeLike, as utimensat(2) takes them. */
function timespec(t: TimeLike): [number, number] {
  if (t === 'now') return [0, C.UTIME_NOW];
  if (t === 'omit') return [0, C.UTIME_OMIT];
  const ms = t instanceof Date ? t.getTime() : t * 1000;
  const sec = Math.floor(ms / 1000);
  return [sec, Math.round((ms - sec * 1000) * 1e6)];
}
