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
import { Channel, connectPath } from '../client/channel.js';
import { Wait } from '../client/pending.js';
import { E } from '../errno.js';
import { C, native, PollMode, recvArena, systemError, type NativePoller } from '../native.js';
import { QmpClosedError, QmpError, QmpProtocolError, QmpTimeoutError } from './errors.js';

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
  /** settled early when it gives up (timeout, abort): the reply is still awaited and then dropped */
  wait: Wait<unknown>;
  /** carried fds: the next command with fds waits for this reply */
  withFds: boolean;
}

interface Waiter {
  name: string;
  filter: ((e: QmpEvent) => boolean) | null;
  wait: Wait<QmpEvent>;
}

/** A line longer than this is not QMP; refuse it rather than buffer without bound. */
const MAX_LINE = 64 * 1024 * 1024;

/** Connects to QEMU's QMP socket (retrying until it appears), reads the greeting, and leaves capabilities negotiation mode. */
export async function connectQmp(target: string | number | QmpConnectOptions): Promise<QmpClient> {
  const options: QmpConnectOptions = typeof target === 'string' ? { path: target } : typeof target === 'number' ? { fd: target } : target;
  const timeout = options.timeout ?? 10_000;
  const deadline = Date.now() + timeout;
  let fd: number;
  if (options.fd !== undefined) fd = options.fd;
  else if (options.path !== undefined) {
    // QEMU creates its socket while it starts: not there yet, or not listening yet.
    fd = await connectPath(options.path, {
      type: C.SOCK_STREAM,
      signal: options.signal,
      retry: ['ENOENT', 'ECONNREFUSED'],
      retryMs: 10,
      deadline,
      timeoutError: (code) => new QmpTimeoutError(`QMP socket ${options.path} did not accept a connection in time (${code})`),
    });
  } else throw new TypeError('connectQmp: give a socket path or a connected fd');
  return QmpClient.start(fd, options.commandTimeout ?? 0, Math.max(1, deadline - Date.now()), options.signal);
}

export class QmpClient extends EventEmitter {
  readonly fd: number;
  #greeting: QmpGreeting | null = null;
  #greetingWait: Wait<QmpGreeting> | null = null;
  #timeout: number;
  #channel: Channel;
  #decoder = new StringDecoder('utf8');
  #partial = '';
  #nextId = 1;
  #pending = new Map<string, Pending>();
  #waiters = new Set<Waiter>();
  /** commands with fds that wait for the one in flight to be answered */
  #fdQueue: Array<() => void> = [];
  #fdInFlight = false;
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
    this.#channel = new Channel(fd, {
      ownsFd: true,
      // QEMU sends no fds on QMP: any that arrive are dropped by the kernel, never installed here.
      fds: 'discard',
      batch: 16,
      record: (offset, length) => this.#onText(this.#decoder.write(recvArena.subarray(offset, offset + length))),
      ended: (err) => this.#shutdown(err),
      peerClosed: (cause) => new QmpClosedError('QEMU closed the QMP connection', { cause }),
    });
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
    const fds = options.fds && options.fds.length > 0 ? options.fds : null;
    const timeout = options.timeout ?? this.#timeout;
    const wait = new Wait<unknown>({
      timeout,
      signal: options.signal,
      timeoutError: () => new QmpTimeoutError(`${command}: no reply within ${timeout} ms`),
      onGiveUp: () => this.#updateRef(),
    });
    if (wait.settled) return wait.promise as Promise<T>;
    const req: Pending = { id: `openhook-${this.#nextId++}`, command, wait, withFds: fds !== null };
    const message = Buffer.from(
      JSON.stringify(args === undefined ? { execute: command, id: req.id } : { execute: command, arguments: args, id: req.id }) + '\n',
    );
    const send = (): void => {
      if (this.#closed) return; // #shutdown has rejected it
      if (req.wait.settled) {
        // Given up before it was sent: never send it, and let the next command with fds go.
        this.#pending.delete(req.id);
        if (req.withFds) this.#nextFdCommand();
        return;
      }
      if (req.withFds) this.#fdInFlight = true;
      this.#channel.send(message, fds);
    };
    this.#pending.set(req.id, req);
    this.#updateRef();
    if (fds && (this.#fdInFlight || this.#fdQueue.length > 0)) this.#fdQueue.push(send);
    else send();
    return wait.promise as Promise<T>;
  }

  /**
   * Waits for the next event named `name` (that passes the filter). Register the wait before the
   * command that causes the event, or the event may come first.
   */
  waitEvent(name: string, options: WaitEventOptions = {}): Promise<QmpEvent> {
    if (this.#closed) return Promise.reject(this.#closeError ?? new QmpClosedError('the QMP connection is closed'));
    const w: Waiter = {
      name,
      filter: options.filter ?? null,
      wait: new Wait<QmpEvent>({
        timeout: options.timeout,
        signal: options.signal,
        timeoutError: () => new QmpTimeoutError(`no ${name} event within ${options.timeout} ms`),
        onGiveUp: () => this.#dropWaiter(w),
      }),
    };
    if (!w.wait.settled) {
      this.#waiters.add(w);
      this.#updateRef();
    }
    return w.wait.promise;
  }

  #dropWaiter(w: Waiter): void {
    this.#waiters.delete(w);
    this.#updateRef();
  }

  /** Closes the connection. Pending commands and event waits reject with QmpClosedError. */
  close(): void {
    this.#shutdown(new QmpClosedError('the QMP connection was closed'));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  async #handshake(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    this.#greetingWait = new Wait<QmpGreeting>({
      timeout: timeoutMs,
      signal,
      timeoutError: () => new QmpTimeoutError(`no QMP greeting within ${timeoutMs} ms`),
    });
    this.#updateRef();
    try {
      await this.#greetingWait.promise;
    } finally {
      this.#greetingWait = null;
    }
    await this.execute('qmp_capabilities', undefined, { timeout: timeoutMs, signal });
  }

  #nextFdCommand(): void {
    this.#fdInFlight = false;
    const next = this.#fdQueue.shift();
    if (next) next();
  }

  #updateRef(): void {
    if (this.#closed) return;
    let busy = this.#waiters.size > 0 || this.#greeting === null;
    if (!busy) for (const p of this.#pending.values()) if (!p.wait.settled) busy = true;
    this.#channel.ref(busy);
  }

  #onText(text: string): void {
    if (!text) return;
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
      this.#greetingWait?.resolve(this.#greeting);
      return;
    }
    if (typeof msg.event === 'string') {
      const event = msg as unknown as QmpEvent;
      event.data ??= {};
      for (const w of [...this.#waiters]) {
        if (w.name === event.event && (!w.filter || w.filter(event))) {
          this.#dropWaiter(w);
          w.wait.resolve(event);
        }
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
    if ('error' in msg) {
      const e = (msg.error ?? {}) as { class?: string; desc?: string };
      req.wait.reject(new QmpError(req.command, String(e.class ?? 'GenericError'), String(e.desc ?? 'unknown error')));
    } else {
      req.wait.resolve(msg.return);
    }
    this.#updateRef();
  }

  #shutdown(err: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeError = err;
    this.#channel.close();
    for (const req of this.#pending.values()) req.wait.reject(err);
    this.#pending.clear();
    this.#fdQueue = [];
    for (const w of this.#waiters) w.wait.reject(err);
    this.#waiters.clear();
    this.#greetingWait?.reject(err);
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
    const accepted = new Wait<number>({
      timeout,
      signal: options.signal,
      timeoutError: () => new QmpTimeoutError(`QEMU did not connect to ${this.path} within ${timeout} ms`),
    });
    if (!accepted.settled) {
      this.#cancel = () => accepted.reject(new QmpClosedError('the QMP listener was closed'));
      this.#poller = new native.Poller(this.#fd, PollMode.Notify, 0, () => {
        const got = native.accept(this.#fd);
        if (got >= 0) accepted.resolve(got);
        else if (got !== -E.EAGAIN) accepted.reject(systemError(got, 'accept', this.path));
      });
      this.#poller.start(C.UV_READABLE);
    }
    let fd: number;
    try {
      fd = await accepted.promise;
    } finally {
      this.#cancel = null;
      this.#poller?.close();
      this.#poller = null;
    }
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
