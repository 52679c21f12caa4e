/**
 * One client-side socket: the native poller, an outbox (with the fds that go with a message),
 * partial sends and write interest, and the records received. The client's Link (link.ts) and the
 * QMP client (qemu/qmp.ts) both talk through one; each parses its own protocol from the records.
 *
 * Records are what the poller drained into the receive arena: one SOCK_SEQPACKET message each, or
 * one chunk of a SOCK_STREAM's bytes. A record's fds are recvMeta[fdStart, fdStart + nfds), and the
 * receiver owns them. A record handler may close the channel; the fds of the records after it in the
 * same batch are then closed here.
 *
 * How a channel ends, the same for every user and socket type:
 * - The peer went away: end-of-file on receive, or ECONNRESET on receive, or EPIPE or ECONNRESET
 *   on send. All four mean only that the other side closed (ECONNRESET: it closed with our bytes
 *   unread; EPIPE: we wrote after it closed), so all four end the channel with the owner's
 *   `peerClosed` error, whose cause is the SystemError when there was one. Records drained in the
 *   same wake-up are delivered first; a partial frame or line left at the end is dropped.
 * - Any other errno ends it with a Node-style SystemError (syscall 'recvmsg' or 'sendmsg').
 * The channel is closed before `ended` is called, and `ended` is never called after close().
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { E } from '../errno.js';
import { C, native, PollMode, recvMeta, systemError, type NativePoller } from '../native.js';
import { abortError } from './pending.js';

export interface ChannelOptions {
  /** whether close() closes the fd too */
  ownsFd: boolean;
  /** keep received fds (the client's replies carry them) or have the kernel drop them (QMP) */
  fds: 'keep' | 'discard';
  /** the most records one wake-up drains */
  batch: number;
  /** one record: bytes recvArena[offset, offset + length), and its fds (see above) */
  record(offset: number, length: number, flags: number, fdStart: number, nfds: number): void;
  /** the channel ended (see above); it is closed already */
  ended(err: Error): void;
  /** the error for "the peer went away" */
  peerClosed(cause?: Error): Error;
}

export class Channel {
  readonly fd: number;
  #options: ChannelOptions;
  #poller: NativePoller;
  #outbox: Array<{ buf: Buffer; fds: readonly number[] | null }> = [];
  #closed = false;

  constructor(fd: number, options: ChannelOptions) {
    this.fd = fd;
    this.#options = options;
    const mode = options.fds === 'keep' ? PollMode.Receive : PollMode.ReceiveDiscardFds;
    this.#poller = new native.Poller(fd, mode, options.batch, (events, count, status) => this.#onPoll(events, count, status));
    this.#poller.start(C.UV_READABLE);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Whether the channel keeps the process alive (a receiving poller does by default). */
  ref(on: boolean): void {
    if (!this.#closed) this.#poller.ref(on);
  }

  /**
   * Sends buf, with fds (the caller keeps them) on its first byte. What the socket does not take now
   * waits in order for it to become writable. A failure ends the channel, before send returns.
   */
  send(buf: Buffer, fds: readonly number[] | null = null): void {
    if (this.#closed) return;
    const out = fds !== null && fds.length > 0 ? fds : null;
    if (this.#outbox.length > 0) {
      this.#outbox.push({ buf, fds: out });
      return;
    }
    // The common case, one whole message sent at once, allocates nothing.
    const n = this.#sendmsg(buf, out);
    if (n === buf.length) return;
    if (n < 0 && n !== -E.EAGAIN) return this.#end(n, 'sendmsg');
    // Partly sent (the fds went with the first byte) or not at all: the rest waits for POLLOUT.
    this.#outbox.push(n > 0 ? { buf: buf.subarray(n), fds: null } : { buf, fds: out });
    this.#poller.start(C.UV_READABLE | C.UV_WRITABLE);
  }

  /** Closes the channel (and its fd, if it owns it) without reporting anything. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#poller.close();
    if (this.#options.ownsFd) native.close(this.fd);
    this.#outbox.length = 0;
  }

  /** Ends the channel with err: closed, then reported once. */
  fail(err: Error): void {
    if (this.#closed) return;
    this.close();
    this.#options.ended(err);
  }

  /** One sendmsg, with fds on the first byte: the bytes sent, or -errno. */
  #sendmsg(buf: Buffer, fds: readonly number[] | null): number {
    return fds ? native.sendFds(this.fd, buf, fds as number[]) : native.send(this.fd, buf, 0, buf.length, -1);
  }

  #flush(): void {
    while (this.#outbox.length > 0) {
      const head = this.#outbox[0]!;
      const n = this.#sendmsg(head.buf, head.fds);
      if (n === -E.EAGAIN) return;
      if (n < 0) return this.#end(n, 'sendmsg');
      head.fds = null; // the fds went with the first byte
      if (n < head.buf.length) {
        head.buf = head.buf.subarray(n);
        return;
      }
      this.#outbox.shift();
    }
    this.#poller.start(C.UV_READABLE);
  }

  #onPoll(events: number, count: number, status: number): void {
    if (this.#closed) return;
    if (events & C.UV_WRITABLE) this.#flush();
    for (let i = 0, m = 0; i < count; i++) {
      const offset = recvMeta[m]!,
        length = recvMeta[m + 1]!,
        flags = recvMeta[m + 2]!,
        nfds = recvMeta[m + 3]!;
      const fdStart = m + 4;
      m = fdStart + nfds;
      if (this.#closed) {
        for (let k = 0; k < nfds; k++) native.close(recvMeta[fdStart + k]!);
        continue;
      }
      this.#options.record(offset, length, flags, fdStart, nfds);
    }
    if (status !== 0) this.#end(status === C.STATUS_EOF ? 0 : status, 'recvmsg');
  }

  /** The one mapping of a failed receive or send (errno 0: end-of-file) to how the channel ends. */
  #end(errno: number, syscall: string): void {
    if (this.#closed) return;
    const peerGone = errno === 0 || errno === -E.ECONNRESET || errno === -E.EPIPE;
    const cause = errno === 0 ? undefined : systemError(errno, syscall);
    this.fail(peerGone ? this.#options.peerClosed(cause) : cause!);
  }
}

export interface ConnectPathOptions {
  /** C.SOCK_STREAM or C.SOCK_SEQPACKET */
  type: number;
  signal?: AbortSignal;
  /**
   * errno codes that mean "not yet": tried again every retryMs. EAGAIN (a full backlog: the
   * listener is busy, not gone) is always among them.
   */
  retry?: readonly string[];
  retryMs?: number;
  /** Date.now() after which a "not yet" is final: then timeoutError(code) is thrown */
  deadline?: number;
  timeoutError?: (code: string) => Error;
}

/**
 * Connects a UNIX socket to path without blocking the event loop, trying again while the answer is
 * "not yet". Rejects with openhook's AbortError when the signal fires, and with the SystemError
 * (its path set) for any other failure.
 */
export async function connectPath(path: string, options: ConnectPathOptions): Promise<number> {
  const name = Buffer.from(path);
  for (;;) {
    if (options.signal?.aborted) throw abortError(options.signal);
    try {
      return native.connectUnix(name, options.type);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      if (code !== 'EAGAIN' && !options.retry?.includes(code)) throw Object.assign(err as Error, { path });
      if (options.deadline !== undefined && Date.now() >= options.deadline) {
        throw options.timeoutError?.(code) ?? Object.assign(err as Error, { path });
      }
      await sleep(options.retryMs ?? 5);
    }
  }
}
