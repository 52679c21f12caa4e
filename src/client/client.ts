/**
 * The client library: ask a broker to open files, and get fds back.
 *
 *   await using hook = await connect('/run/openhook.sock');
 *   const fd = await hook.open('/srv/vm/disk.img', 'r+');
 *
 * Many requests may be in flight on one connection. With a broker that offers tagged opens (found by
 * a HELLO exchange at connect), replies are matched by id and may arrive in any order; with a plain
 * RFC broker they are matched in order.
 */
import { EventEmitter } from 'node:events';
import { C, native, PollMode, recvArena, recvMeta, systemError, type NativePoller } from '../native.js';
import { Command, Feature, Size } from '../protocol/constants.js';
import { decodeReply, encodeHello, encodeOpen, encodeTaggedOpen, type Reply } from '../protocol/frames.js';
import { FrameAssembler } from '../protocol/stream.js';
import { AbortError, ClientClosedError, ProtocolError, TimeoutError } from './errors.js';
import { toFlags, type OpenFlags } from './flags.js';

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
  /** gives up connecting when it fires */
  signal?: AbortSignal;
}

export interface RequestOptions {
  signal?: AbortSignal;
  /** ms; overrides the connection's default */
  timeout?: number;
}

interface Pending {
  id: number;
  path: string;
  resolve: (fd: number) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | null;
  signal: AbortSignal | null;
  onAbort: (() => void) | null;
  /** gave up (timeout, abort): its reply is still awaited, and its fd closed on arrival */
  abandoned: boolean;
}

const EAGAIN = 11, ECONNRESET = 104;
const CONNECT_RETRY_MS = 5;

/** Connects to a broker by socket path, by inherited fd, or through $OPENHOOK_FD. */
export async function connect(target?: string | number | ConnectOptions): Promise<OpenHookClient> {
  const options: ConnectOptions = typeof target === 'string' ? { path: target } : typeof target === 'number' ? { fd: target } : (target ?? {});
  let fd: number;
  let owned = true;
  if (options.path !== undefined) {
    fd = await connectPath(options.path, options.stream ? C.SOCK_STREAM : C.SOCK_SEQPACKET, options.signal);
  } else {
    fd = options.fd ?? fdFromEnvironment();
    owned = options.fd !== undefined;
  }
  const type = native.socketType(fd);
  if (type < 0) throw systemError(type, 'getsockopt', `fd ${fd}`);
  if (type !== C.SOCK_SEQPACKET && type !== C.SOCK_STREAM) throw new TypeError(`fd ${fd} is not a SOCK_SEQPACKET or SOCK_STREAM socket`);
  const client = new OpenHookClient(fd, type === C.SOCK_STREAM ? 'stream' : 'seqpacket', options.timeout ?? 0, owned);
  if ((options.protocol ?? 'auto') === 'auto') {
    try {
      await client.negotiate(options.timeout || 5000);
    } catch (err) {
      client.close();
      throw err;
    }
  }
  return client;
}

function fdFromEnvironment(): number {
  const text = process.env.OPENHOOK_FD;
  if (text === undefined) throw new TypeError('no socket path or fd given, and OPENHOOK_FD is not set');
  const fd = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(fd)) throw new TypeError(`OPENHOOK_FD is not an fd number: '${text}'`);
  return fd;
}

async function connectPath(path: string, type: number, signal?: AbortSignal): Promise<number> {
  for (;;) {
    signal?.throwIfAborted();
    try {
      return native.connectUnix(Buffer.from(path), type);
    } catch (err) {
      // A full backlog: the broker is busy, not gone. Retry without blocking the event loop.
      if ((err as { errno?: number }).errno !== -EAGAIN) throw Object.assign(err as Error, { path });
      await new Promise((r) => setTimeout(r, CONNECT_RETRY_MS));
    }
  }
}

export class OpenHookClient extends EventEmitter {
  readonly fd: number;
  readonly kind: 'seqpacket' | 'stream';
  #timeout: number;
  #ownsFd: boolean;
  #tagged = false;
  #nextId = 1;
  #poller: NativePoller;
  #assembler: FrameAssembler | null;
  /** RFC mode: requests in send order */
  #queue: Pending[] = [];
  /** tagged mode: requests by id */
  #byId = new Map<number, Pending>();
  /** stream mode: fds received and not yet matched to a reply, in arrival order */
  #fds: number[] = [];
  #outbox: Buffer[] = [];
  #hello: { resolve: (r: Reply) => void; reject: (e: Error) => void } | null = null;
  #closed = false;
  #onFrame = (buf: Buffer, offset: number, length: number): void => this.#onReply(buf, offset, length, -1, 0);

  constructor(fd: number, kind: 'seqpacket' | 'stream', timeout: number, ownsFd: boolean) {
    super();
    this.fd = fd;
    this.kind = kind;
    this.#timeout = timeout;
    this.#ownsFd = ownsFd;
    this.#assembler = kind === 'stream' ? new FrameAssembler() : null;
    this.#poller = new native.Poller(fd, PollMode.Receive, 64, (events, count, status) => this.#onPoll(events, count, status));
    this.#poller.start(C.UV_READABLE);
    this.#poller.ref(false); // an idle connection does not keep the process alive
  }

  /** True when the broker answers tagged opens, whose replies may arrive out of order. */
  get tagged(): boolean {
    return this.#tagged;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Requests sent and not yet answered. */
  get pending(): number {
    return this.#queue.length + this.#byId.size;
  }

  /** @internal HELLO exchange; called once by connect(). */
  async negotiate(timeoutMs: number): Promise<void> {
    const reply = await new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => reject(new TimeoutError(`no HELLO reply within ${timeoutMs} ms`)), timeoutMs);
      this.#hello = {
        resolve: (r) => (clearTimeout(timer), resolve(r)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      };
      this.#poller.ref(true);
      this.#send(encodeHello(Feature.TAGGED_OPEN));
    });
    this.#hello = null;
    this.#updateRef();
    // A broker that predates HELLO answers -EPROTO: it speaks the RFC frames only.
    this.#tagged = reply.result === 0 && (reply.features & Feature.TAGGED_OPEN) !== 0;
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
    if (name.length > Size.NAME_MAX_WIRE) return Promise.reject(systemError(36, 'open', shown)); // ENAMETOOLONG
    const signal = options.signal ?? null;
    if (signal?.aborted) return Promise.reject(new AbortError(undefined, { cause: signal.reason }));

    return new Promise<number>((resolve, reject) => {
      const req: Pending = { id: 0, path: shown, resolve, reject, timer: null, signal, onAbort: null, abandoned: false };
      const timeout = options.timeout ?? this.#timeout;
      if (timeout > 0) req.timer = setTimeout(() => this.#abandon(req, new TimeoutError(`no reply for '${shown}' within ${timeout} ms`)), timeout);
      if (signal) {
        req.onAbort = () => this.#abandon(req, new AbortError(undefined, { cause: signal.reason }));
        signal.addEventListener('abort', req.onAbort, { once: true });
      }
      if (this.#tagged) {
        req.id = this.#nextId;
        this.#nextId = (this.#nextId % 0xffffffff) + 1;
        this.#byId.set(req.id, req);
        this.#send(encodeTaggedOpen(req.id, name, wire, mode));
      } else {
        this.#queue.push(req);
        this.#send(encodeOpen(name, wire, mode));
      }
      this.#updateRef();
    });
  }

  /** Closes the connection (and the fd, if this client opened it). Pending requests reject. */
  close(): void {
    this.#shutdown(new ClientClosedError('the connection was closed'));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  #abandon(req: Pending, err: Error): void {
    if (req.abandoned) return;
    req.abandoned = true;
    this.#settle(req);
    req.reject(err);
  }

  /** Clears a request's timer and abort listener. */
  #settle(req: Pending): void {
    if (req.timer) clearTimeout(req.timer);
    if (req.signal && req.onAbort) req.signal.removeEventListener('abort', req.onAbort);
    req.timer = null;
    req.onAbort = null;
  }

  #send(frame: Buffer): void {
    if (this.#outbox.length > 0) {
      this.#outbox.push(frame);
      return;
    }
    const n = native.send(this.fd, frame, 0, frame.length, -1);
    if (n === frame.length) return;
    if (n === -EAGAIN || (n >= 0 && n < frame.length)) {
      this.#outbox.push(n > 0 ? frame.subarray(n) : frame);
      this.#poller.start(C.UV_READABLE | C.UV_WRITABLE);
      return;
    }
    this.#shutdown(systemError(n, 'sendmsg'));
  }

  #flush(): void {
    while (this.#outbox.length > 0) {
      const head = this.#outbox[0]!;
      const n = native.send(this.fd, head, 0, head.length, -1);
      if (n === -EAGAIN) return;
      if (n < 0) {
        this.#shutdown(systemError(n, 'sendmsg'));
        return;
      }
      if (n < head.length) this.#outbox[0] = head.subarray(n);
      else this.#outbox.shift();
    }
    this.#poller.start(C.UV_READABLE);
  }

  #onPoll(events: number, count: number, status: number): void {
    if (this.#closed) return;
    if (events & C.UV_WRITABLE) this.#flush();
    for (let i = 0, m = 0; i < count && !this.#closed; i++) {
      const offset = recvMeta[m]!, length = recvMeta[m + 1]!, flags = recvMeta[m + 2]!, nfds = recvMeta[m + 3]!;
      const fdStart = m + 4;
      m = fdStart + nfds;
      if (flags & (C.MSG_TRUNC | C.MSG_CTRUNC)) {
        for (let k = 0; k < nfds; k++) native.close(recvMeta[fdStart + k]!);
        this.#shutdown(new ProtocolError(flags & C.MSG_CTRUNC ? 'fds from the broker were truncated' : 'a reply was truncated'));
        return;
      }
      if (this.#assembler) {
        for (let k = 0; k < nfds; k++) this.#fds.push(recvMeta[fdStart + k]!);
        if (!this.#assembler.push(recvArena, offset, length, this.#onFrame)) {
          this.#shutdown(new ProtocolError('the broker sent a frame of impossible size'));
          return;
        }
      } else {
        this.#onReply(recvArena, offset, length, fdStart, nfds);
      }
    }
    if (status !== 0 && !this.#closed) {
      const gone = status === C.STATUS_EOF || status === -ECONNRESET;
      this.#shutdown(gone ? new ClientClosedError('the broker closed the connection') : systemError(status, 'recvmsg'));
    }
  }

  /**
   * One reply frame. For SOCK_SEQPACKET its fds are recvMeta[fdStart, fdStart+nfds); on a stream
   * (fdStart < 0) fds arrive with the first byte of their reply, so they are taken in order.
   */
  #onReply(buf: Buffer, offset: number, length: number, fdStart: number, nfds: number): void {
    const reply = decodeReply(buf, offset, length);
    const wantsFd = reply !== null && reply.result === 0 && reply.command !== Command.HELLO;
    let fd = -1;
    if (fdStart >= 0) {
      for (let k = 0; k < nfds; k++) {
        const got = recvMeta[fdStart + k]!;
        if (k === 0 && wantsFd) fd = got;
        else native.close(got);
      }
      if (reply && nfds !== (wantsFd ? 1 : 0)) return this.#fail(fd, `a reply (result ${reply.result}) carried ${nfds} fds`);
    } else if (wantsFd) {
      fd = this.#fds.shift() ?? -1;
      if (fd < 0) return this.#fail(fd, 'a successful reply arrived without its fd');
    }
    if (!reply) return this.#fail(fd, 'malformed reply');

    if (reply.command === Command.HELLO || (this.#hello && reply.result !== 0 && this.pending === 0)) {
      if (!this.#hello) return this.#fail(fd, 'unexpected HELLO reply');
      this.#hello.resolve(reply);
      return;
    }
    let req: Pending | undefined;
    if (reply.command === Command.OPEN_TAGGED) {
      req = this.#byId.get(reply.id);
      this.#byId.delete(reply.id);
    } else if (reply.command === Command.QEMU_OPEN && !this.#tagged) {
      req = this.#queue.shift();
    } else if (reply.result < 0 && !this.#tagged && this.#queue.length > 0) {
      // A broker that could not parse a frame answers -EPROTO with command 0: it is the head's reply.
      req = this.#queue.shift();
    }
    if (!req) return this.#fail(fd, `reply for no request (command ${reply.command}, id ${reply.id})`);
    this.#updateRef();
    if (req.abandoned) {
      if (fd >= 0) native.close(fd);
      return;
    }
    this.#settle(req);
    if (reply.result === 0) req.resolve(fd);
    else req.reject(systemError(reply.result, 'open', req.path));
  }

  #fail(fd: number, message: string): void {
    if (fd >= 0) native.close(fd);
    this.#shutdown(new ProtocolError(message));
  }

  #updateRef(): void {
    if (!this.#closed) this.#poller.ref(this.pending > 0 || this.#hello !== null);
  }

  #shutdown(err: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#poller.close();
    if (this.#ownsFd) native.close(this.fd);
    for (const fd of this.#fds) native.close(fd);
    this.#fds.length = 0;
    const waiting = [...this.#queue, ...this.#byId.values()];
    this.#queue.length = 0;
    this.#byId.clear();
    for (const req of waiting) {
      if (req.abandoned) continue;
      this.#settle(req);
      req.reject(err);
    }
    this.#hello?.reject(err);
    this.emit('close', err instanceof ClientClosedError ? undefined : err);
  }
}
