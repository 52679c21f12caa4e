/**
 * A QMP client: QEMU's JSON monitor protocol over a UNIX stream socket, with the one thing Node's
 * sockets cannot do, sending file descriptors with a command (SCM_RIGHTS), as add-fd and getfd need.
 *
 *   await using qmp = await connectQmp('/run/vm/qmp.sock');
 *   const status = await qmp.execute('query-status');
 *   await qmp.execute('add-fd', { 'fdset-id': 1 }, { fds: [fd] });
 *
 * Three ways to reach QEMU: connect to a socket QEMU listens on (`-qmp unix:PATH,server=on,wait=off`),
 * hand over one end of a socketpair whose other end QEMU inherited (`-chardev socket,id=qmp,fd=N`),
 * or listen and let QEMU connect to us (`-chardev socket,id=qmp,path=PATH,server=off`): the last one
 * needs nothing from a confined QEMU but connect(2) (docs/qemu.md).
 *
 * Every command carries an id, and replies are matched by id. QEMU keeps the fds of the last message
 * in one slot per connection and closes them, unused, when a later message brings fds. QEMU 7.2
 * without OOB reads nothing more while a command waits to run, so this does not happen today; but
 * nothing in QMP promises it (with OOB it can happen), so commands with fds go out one at a time,
 * each only after the previous one has been answered. They are rare; the wait costs nothing.
 */
import { EventEmitter } from 'node:events';
import { StringDecoder } from 'node:string_decoder';
import { AbortError } from '../client/errors.js';
import { C, native, PollMode, recvArena, recvMeta, systemError, type NativePoller } from '../native.js';
import { QmpClosedError, QmpError, QmpProtocolError, QmpTimeoutError } from './errors.js';
import { E } from '../errno.js';

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

export interface QmpEvent {
  event: string;
  // QMP event data is free-form JSON; callers narrow it per event.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  data: Record<string, any>;
  timestamp: { seconds: number; microseconds: number };
}

export interface ExecuteOptions {
  /** fds sent with the command in one sendmsg (add-fd, getfd). The caller keeps ownership. */
  fds?: readonly number[];
  /** ms; overrides the client's default command timeout */
  timeout?: number;
  signal?: AbortSignal;
}

export interface WaitEventOptions {
  /** only events for which this returns true */
  filter?: (event: QmpEvent) => boolean;
  /** ms; 0 or absent: no timeout */
  timeout?: number;
  signal?: AbortSignal;
}

export interface QmpConnectOptions {
  /** path of a socket QEMU listens on */
  path?: string;
  /** a connected stream socket (one end of a socketpair given to QEMU); the client takes ownership */
  fd?: number;
  /** ms to wait for the socket to appear, the greeting and qmp_capabilities; default 10 000 */
  timeout?: number;
  /** default timeout of each command in ms; 0 or absent: none */
  commandTimeout?: number;
  signal?: AbortSignal;
}

interface Pending {
  id: string;
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | null;
  signal: AbortSignal | null;
  onAbort: (() => void) | null;
  /** gave up (timeout, abort): the reply is still awaited and then dropped */
  abandoned: boolean;
  /** carried fds: the next command with fds waits for this reply */
  withFds: boolean;
}

interface Waiter {
  name: string;
  filter: ((e: QmpEvent) => boolean) | null;
  resolve: (e: QmpEvent) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | null;
  signal: AbortSignal | null;
  onAbort: (() => void) | null;
}

interface Outgoing {
  buf: Buffer;
  /** sent with the first byte of buf; null once sent or when there are none */
  fds: readonly number[] | null;
}

const { EAGAIN, ECONNRESET } = E;
/** A line longer than this is not QMP; refuse it rather than buffer without bound. */
const MAX_LINE = 64 * 1024 * 1024;
const CONNECT_RETRY_MS = 10;

/** Connects to QEMU's QMP socket (retrying until it appears), reads the greeting, and leaves capabilities negotiation mode. */
export async function connectQmp(target: string | number | QmpConnectOptions): Promise<QmpClient> {
  const options: QmpConnectOptions = typeof target === 'string' ? { path: target } : typeof target === 'number' ? { fd: target } : target;
  const timeout = options.timeout ?? 10_000;
  const deadline = Date.now() + timeout;
  let fd: number;
  if (options.fd !== undefined) fd = options.fd;
  else if (options.path !== undefined) fd = await connectPath(options.path, deadline, options.signal);
  else throw new TypeError('connectQmp: give a socket path or a connected fd');
  return QmpClient.start(fd, options.commandTimeout ?? 0, Math.max(1, deadline - Date.now()), options.signal);
}

async function connectPath(path: string, deadline: number, signal?: AbortSignal): Promise<number> {
  for (;;) {
    if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
    try {
      return native.connectUnix(Buffer.from(path), C.SOCK_STREAM);
    } catch (err) {
      // QEMU creates its socket while it starts: not there yet, or not listening yet.
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ECONNREFUSED' && code !== 'EAGAIN') throw Object.assign(err as Error, { path });
      if (Date.now() >= deadline) throw new QmpTimeoutError(`QMP socket ${path} did not accept a connection in time (${code})`);
      await new Promise((r) => setTimeout(r, CONNECT_RETRY_MS));
    }
  }
}

export class QmpClient extends EventEmitter {
  readonly fd: number;
  #greeting: QmpGreeting | null = null;
  #onGreeting: ((g: QmpGreeting) => void) | null = null;
  #timeout: number;
  #poller: NativePoller;
  #decoder = new StringDecoder('utf8');
  #partial = '';
  #nextId = 1;
  #pending = new Map<string, Pending>();
  #waiters = new Set<Waiter>();
  /** commands with fds that wait for the one in flight to be answered */
  #fdQueue: Array<() => void> = [];
  #fdInFlight = false;
  #outbox: Outgoing[] = [];
  #closed = false;
  #closeError: Error | null = null;
  #whenClosed: Promise<void>;
  #markClosed!: () => void;

  /** @internal use connectQmp() or QmpListener.accept() */
  static async start(fd: number, commandTimeout: number, handshakeTimeout: number, signal?: AbortSignal): Promise<QmpClient> {
    const client = new QmpClient(fd, commandTimeout);
    try {
      await client.#handshake(handshakeTimeout, signal);
    } catch (err) {
      client.close();
      throw err;
    }
    return client;
  }

  private constructor(fd: number, timeout: number) {
    super();
    this.fd = fd;
    this.#timeout = timeout;
    this.#whenClosed = new Promise((resolve) => (this.#markClosed = resolve));
    // QEMU sends no fds on QMP: any that arrive are dropped by the kernel, never installed here.
    this.#poller = new native.Poller(fd, PollMode.ReceiveDiscardFds, 16, (events, count, status) => this.#onPoll(events, count, status));
    this.#poller.start(C.UV_READABLE);
  }

  /** QEMU's greeting: its version, and the capabilities it offered. */
  get greeting(): QmpGreeting {
    if (!this.#greeting) throw new QmpProtocolError('no greeting yet');
    return this.#greeting;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Resolves when the connection ends, by close() or because QEMU closed it (it exited). */
  get whenClosed(): Promise<void> {
    return this.#whenClosed;
  }

  /**
   * Runs a command. Resolves to its "return" value; rejects with QmpError when QEMU answers with
   * an error, QmpTimeoutError, AbortError, or QmpClosedError.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: ExecuteOptions = {}): Promise<T> {
    if (this.#closed) return Promise.reject(this.#closeError ?? new QmpClosedError('the QMP connection is closed'));
    const signal = options.signal ?? null;
    if (signal?.aborted) return Promise.reject(new AbortError(undefined, { cause: signal.reason }));
    const fds = options.fds && options.fds.length > 0 ? options.fds : null;
    return new Promise<T>((resolve, reject) => {
      const req: Pending = {
        id: `openhook-${this.#nextId++}`, command, resolve: resolve as (v: unknown) => void, reject,
        timer: null, signal, onAbort: null, abandoned: false, withFds: fds !== null,
      };
      const timeout = options.timeout ?? this.#timeout;
      if (timeout > 0) req.timer = setTimeout(() => this.#abandon(req, new QmpTimeoutError(`${command}: no reply within ${timeout} ms`)), timeout);
      if (signal) {
        req.onAbort = () => this.#abandon(req, new AbortError(undefined, { cause: signal.reason }));
        signal.addEventListener('abort', req.onAbort, { once: true });
      }
      const message = Buffer.from(JSON.stringify(args === undefined ? { execute: command, id: req.id } : { execute: command, arguments: args, id: req.id }) + '\n');
      const send = (): void => {
        if (this.#closed) return; // #shutdown has rejected it
        if (req.abandoned) {
          // Given up before it was sent: never send it, and let the next command with fds go.
          this.#pending.delete(req.id);
          if (req.withFds) this.#nextFdCommand();
          return;
        }
        if (req.withFds) this.#fdInFlight = true;
        this.#write({ buf: message, fds });
      };
      this.#pending.set(req.id, req);
      this.#updateRef();
      if (fds && (this.#fdInFlight || this.#fdQueue.length > 0)) this.#fdQueue.push(send);
      else send();
    });
  }

  /**
   * Waits for the next event named `name` (that passes the filter). Register the wait before the
   * command that causes the event, or the event may come first.
   */
  waitEvent(name: string, options: WaitEventOptions = {}): Promise<QmpEvent> {
    if (this.#closed) return Promise.reject(this.#closeError ?? new QmpClosedError('the QMP connection is closed'));
    const signal = options.signal ?? null;
    if (signal?.aborted) return Promise.reject(new AbortError(undefined, { cause: signal.reason }));
    return new Promise<QmpEvent>((resolve, reject) => {
      const w: Waiter = { name, filter: options.filter ?? null, resolve, reject, timer: null, signal, onAbort: null };
      const done = (): void => {
        if (w.timer) clearTimeout(w.timer);
        if (w.signal && w.onAbort) w.signal.removeEventListener('abort', w.onAbort);
        this.#waiters.delete(w);
        this.#updateRef();
      };
      w.resolve = (e) => (done(), resolve(e));
      w.reject = (err) => (done(), reject(err));
      if (options.timeout && options.timeout > 0) {
        w.timer = setTimeout(() => w.reject(new QmpTimeoutError(`no ${name} event within ${options.timeout} ms`)), options.timeout);
      }
      if (signal) {
        w.onAbort = () => w.reject(new AbortError(undefined, { cause: signal.reason }));
        signal.addEventListener('abort', w.onAbort, { once: true });
      }
      this.#waiters.add(w);
      this.#updateRef();
    });
  }

  /** Closes the connection. Pending commands and event waits reject with QmpClosedError. */
  close(): void {
    this.#shutdown(new QmpClosedError('the QMP connection was closed'));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  #handshake(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    const greeted = new Promise<QmpGreeting>((resolve, reject) => {
      // However it ends, nothing of the wait stays behind (a long-lived signal would keep the listener).
      const end = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.off('close', onClose);
      };
      const timer = setTimeout(() => (end(), reject(new QmpTimeoutError(`no QMP greeting within ${timeoutMs} ms`))), timeoutMs);
      const onAbort = (): void => (end(), reject(new AbortError(undefined, { cause: signal?.reason })));
      const onClose = (): void => (end(), reject(this.#closeError ?? new QmpClosedError('QEMU closed the connection before its greeting')));
      this.#onGreeting = (g) => (end(), resolve(g));
      signal?.addEventListener('abort', onAbort, { once: true });
      this.once('close', onClose);
      this.#poller.ref(true);
    });
    return greeted.then(async () => {
      this.#onGreeting = null;
      await this.execute('qmp_capabilities', undefined, { timeout: timeoutMs, signal });
    });
  }

  #abandon(req: Pending, err: Error): void {
    if (req.abandoned) return;
    req.abandoned = true;
    this.#settle(req);
    req.reject(err);
    this.#updateRef();
  }

  #settle(req: Pending): void {
    if (req.timer) clearTimeout(req.timer);
    if (req.signal && req.onAbort) req.signal.removeEventListener('abort', req.onAbort);
    req.timer = null;
    req.onAbort = null;
  }

  #nextFdCommand(): void {
    this.#fdInFlight = false;
    const next = this.#fdQueue.shift();
    if (next) next();
  }

  #updateRef(): void {
    if (this.#closed) return;
    let busy = this.#waiters.size > 0 || this.#onGreeting !== null || this.#greeting === null;
    if (!busy) for (const p of this.#pending.values()) if (!p.abandoned) busy = true;
    this.#poller.ref(busy);
  }

  #write(out: Outgoing): void {
    if (this.#outbox.length > 0) {
      this.#outbox.push(out);
      return;
    }
    if (!this.#sendSome(out)) {
      this.#outbox.push(out);
      this.#poller.start(C.UV_READABLE | C.UV_WRITABLE);
    }
  }

  /** Sends what the socket takes; true when all of out is gone. */
  #sendSome(out: Outgoing): boolean {
    const n = out.fds ? native.sendFds(this.fd, out.buf, out.fds as number[]) : native.send(this.fd, out.buf, 0, out.buf.length, -1);
    if (n === -EAGAIN) return false;
    if (n < 0) {
      this.#shutdown(systemError(n, 'sendmsg'));
      return true;
    }
    out.fds = null; // the fds went with the first byte
    if (n === out.buf.length) return true;
    out.buf = out.buf.subarray(n);
    return false;
  }

  #flush(): void {
    while (this.#outbox.length > 0 && !this.#closed) {
      if (!this.#sendSome(this.#outbox[0]!)) return;
      this.#outbox.shift();
    }
    if (!this.#closed) this.#poller.start(C.UV_READABLE);
  }

  #onPoll(events: number, count: number, status: number): void {
    if (this.#closed) return;
    if (events & C.UV_WRITABLE) this.#flush();
    let text = '';
    for (let i = 0, m = 0; i < count; i++) {
      const offset = recvMeta[m]!, length = recvMeta[m + 1]!;
      m += 4; // no fds follow a record: they are discarded
      text += this.#decoder.write(recvArena.subarray(offset, offset + length));
    }
    if (text) this.#onText(text);
    if (status !== 0 && !this.#closed) {
      const gone = status === C.STATUS_EOF || status === -ECONNRESET;
      this.#shutdown(gone ? new QmpClosedError('QEMU closed the QMP connection') : systemError(status, 'recvmsg'));
    }
  }

  #onText(text: string): void {
    let data = this.#partial + text;
    let nl: number;
    while (!this.#closed && (nl = data.indexOf('\n')) >= 0) {
      const line = data.slice(0, nl);
      data = data.slice(nl + 1);
      if (line.trim()) this.#onMessage(line);
    }
    this.#partial = data;
    if (this.#partial.length > MAX_LINE) this.#shutdown(new QmpProtocolError(`a QMP message longer than ${MAX_LINE} bytes`));
  }

  #onMessage(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line);
    } catch {
      this.#shutdown(new QmpProtocolError(`not JSON from QEMU: ${line.slice(0, 200)}`));
      return;
    }
    if (msg === null || typeof msg !== 'object') {
      this.#shutdown(new QmpProtocolError(`not a QMP message: ${line.slice(0, 200)}`));
      return;
    }
    if ('QMP' in msg) {
      if (this.#greeting) return; // one greeting per connection; a second one is noise
      const g = msg.QMP as QmpGreeting;
      this.#greeting = { version: g.version, capabilities: Array.isArray(g.capabilities) ? g.capabilities : [] };
      this.#onGreeting?.(this.#greeting);
      return;
    }
    if (typeof msg.event === 'string') {
      const event = msg as unknown as QmpEvent;
      event.data ??= {};
      for (const w of [...this.#waiters]) {
        if (w.name === event.event && (!w.filter || w.filter(event))) w.resolve(event);
      }
      this.emit('event', event);
      return;
    }
    if ('return' in msg || 'error' in msg) {
      this.#onReply(msg);
      return;
    }
    this.#shutdown(new QmpProtocolError(`not a QMP message: ${line.slice(0, 200)}`));
  }

  #onReply(msg: Record<string, unknown>): void {
    // QEMU answers a request it could not parse without an id; without OOB, replies keep request
    // order, so such a reply belongs to the oldest request.
    const id = typeof msg.id === 'string' ? msg.id : this.#pending.keys().next().value;
    const req = id === undefined ? undefined : this.#pending.get(id);
    if (!req) return;
    this.#pending.delete(req.id);
    if (req.withFds) this.#nextFdCommand();
    if (!req.abandoned) {
      this.#settle(req);
      if ('error' in msg) {
        const e = (msg.error ?? {}) as { class?: string; desc?: string };
        req.reject(new QmpError(req.command, String(e.class ?? 'GenericError'), String(e.desc ?? 'unknown error')));
      } else {
        req.resolve(msg.return);
      }
    }
    this.#updateRef();
  }

  #shutdown(err: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeError = err;
    this.#poller.close();
    native.close(this.fd);
    for (const req of this.#pending.values()) {
      if (req.abandoned) continue;
      this.#settle(req);
      req.reject(err);
    }
    this.#pending.clear();
    this.#fdQueue = [];
    for (const w of [...this.#waiters]) w.reject(err);
    this.#outbox = [];
    this.emit('close', err);
    this.#markClosed();
  }
}

/**
 * Listens for QEMU to connect to us (`-chardev socket,id=qmp,path=PATH,server=off -mon
 * chardev=qmp,mode=control`). A confined QEMU needs only connect(2) for this: it creates no socket
 * file and needs no writable directory. Listen before starting QEMU: it connects while it starts.
 */
export class QmpListener {
  readonly path: string;
  #fd: number;
  #identity: bigint;
  #poller: NativePoller | null = null;
  #cancel: (() => void) | null = null;
  #closed = false;

  constructor(path: string, mode = 0o600) {
    this.path = path;
    const bound = native.listenUnix(Buffer.from(path), C.SOCK_STREAM, mode, 1);
    this.#fd = bound.fd;
    this.#identity = bound.identity;
  }

  /** Waits for QEMU's connection, then stops listening and removes the socket file. */
  async accept(options: { timeout?: number; commandTimeout?: number; signal?: AbortSignal } = {}): Promise<QmpClient> {
    if (this.#closed) throw new QmpClosedError('the QMP listener is closed');
    const timeout = options.timeout ?? 10_000;
    const deadline = Date.now() + timeout;
    const fd = await new Promise<number>((resolve, reject) => {
      const onAbort = (): void => finish(new AbortError(undefined, { cause: options.signal?.reason }));
      const timer = setTimeout(() => finish(new QmpTimeoutError(`QEMU did not connect to ${this.path} within ${timeout} ms`)), timeout);
      const finish = (result: number | Error): void => {
        this.#cancel = null;
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        this.#poller?.close();
        this.#poller = null;
        if (typeof result === 'number') resolve(result);
        else reject(result);
      };
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      this.#cancel = () => finish(new QmpClosedError('the QMP listener was closed'));
      this.#poller = new native.Poller(this.#fd, PollMode.Notify, 0, () => {
        const got = native.accept(this.#fd);
        if (got >= 0) finish(got);
        else if (got !== -EAGAIN) finish(systemError(got, 'accept', this.path));
      });
      this.#poller.start(C.UV_READABLE);
    });
    this.close();
    return QmpClient.start(fd, options.commandTimeout ?? 0, Math.max(1, deadline - Date.now()), options.signal);
  }

  /** Stops listening and removes the socket file (if it is still ours). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#cancel?.();
    this.#poller?.close();
    native.unlinkSocket(Buffer.from(this.path), this.#identity);
    native.close(this.#fd);
  }
}
