/**
 * One client connection: receives frames, hands each to the service, and sends the replies.
 *
 * The client is assumed hostile. What it can cost the broker is bounded:
 * - Replies leave in request order, as the RFC's synchronous clients expect. A reply that the socket
 *   cannot take now waits in the connection's queue, and while anything waits there the connection
 *   reads nothing more: a client that never reads its replies stalls only itself. Requests already
 *   read behind a waiting reply are kept as bytes and served (opened) only when their turn comes, so
 *   the queue holds at most one open fd. If the queue makes no progress for `stallMs`, the client
 *   is dropped.
 * - Each wake-up reads at most BATCH messages (and STREAM_BUDGET bytes on SOCK_STREAM), so one
 *   flooding client gets its turn like every other and no more.
 * - On SOCK_STREAM, a frame that has begun must be complete within `frameMs`.
 * - Fds that a client attaches never enter the broker's fd table (see PollMode.ReceiveDiscardFds);
 *   the message is answered -EPROTO.
 * - An open that may block runs on the resolver's thread pool. An RFC open waits for it in order; a
 *   tagged open's reply goes out whenever it is ready, and the connection keeps reading meanwhile.
 */
import { C, native, PollMode, recvArena, recvMeta, type NativePoller } from '../native.js';
import type { Peer } from '../policy/policy.js';
import { Command } from '../protocol/constants.js';
import { hostEndian } from '../protocol/endian.js';
import {
  DecodeError,
  decodeRequest,
  encodeHelloReply,
  encodeReply,
  encodeTaggedReply,
  newRequest,
  type Request,
} from '../protocol/frames.js';
import { FrameAssembler } from '../protocol/stream.js';
import { REPLY_SLOT, type ReplyBatch } from './reply-batch.js';
import { fromBytes } from '../bytestring.js';
import { OpenCancel } from '../resolver/resolver.js';
import { FEATURES, serveOpen, type OpenRequest, type ServiceContext } from './service.js';
import { E } from '../errno.js';
import { fileOperationFrom, serveFileOperation } from './operations.js';

const { EPROTO, EAGAIN, EINVAL } = E;
/** Messages drained per wake-up: enough to amortise the call into JS, few enough to be fair. */
export const BATCH = 64;
/** Bytes drained per wake-up on SOCK_STREAM, where one read can hold many frames. */
const STREAM_BUDGET = 16 * 1024;

export type SocketKind = 'seqpacket' | 'stream';

export interface ConnectionLimits {
  /** entries (replies and requests) that may wait in one connection's queue before it is dropped */
  queue: number;
  /** ms that a waiting reply may go unread before the client is dropped */
  stallMs: number;
  /** ms within which a frame that has begun must complete (SOCK_STREAM) */
  frameMs: number;
  /** tagged opens that one connection may have on the thread pool; beyond, it reads no more until one ends */
  slowTagged: number;
}

export const DEFAULT_CONNECTION_LIMITS: Readonly<ConnectionLimits> = Object.freeze({
  queue: 1024,
  stallMs: 10_000,
  frameMs: 5_000,
  slowTagged: 16,
});

/**
 * The connections that stem from one accepted or adopted socket: the root and those made from it by
 * CONNECT (and from those, and so on). They share one identity and one budget, and end with the root:
 * when a launcher closes a session's connection, the session is over for every process in it.
 */
export interface ConnectionFamily {
  /** the live derived connections (the root is not among them) */
  readonly derived: Set<Connection>;
}

export interface ConnectionHost {
  context(): ServiceContext;
  /** CONNECT: the client's end of a fresh connection served like `from`, or -errno */
  derive(from: Connection): number;
  /** STATUS: the whole reply frame, or -errno (-EACCES for a peer that may not see it) */
  status(conn: Connection): Buffer | number;
  /** a frame was answered -EPROTO (counted for STATUS) */
  protocolError(): void;
  /** feature bits offered besides FEATURES (SESSION, where sessions are hosted) */
  readonly extraFeatures?: number;
  /**
   * SESSION: the reply (with the hook socket) and what takes the connection's fd over once the
   * reply is out, or a refusal. Absent: the command is unknown here (-EPROTO).
   */
  session?(conn: Connection, name: Buffer, claims: Buffer): SessionAnswer;
  readonly limits: Readonly<ConnectionLimits>;
  /** where the replies of one wake-up of a SOCK_SEQPACKET connection gather (reply-batch.ts) */
  readonly replies: ReplyBatch;
  /** asks the host to call expire() once now >= conn.deadline() */
  watch(conn: Connection): void;
  /** called once, when the connection has closed */
  released(conn: Connection): void;
  /** an unexpected fault: reported, then the connection is closed */
  fault(conn: Connection, err: unknown): void;
}

/** What the host answers to SESSION. */
export type SessionAnswer =
  | { result: number; reply: Buffer; fd: -1; handover?: undefined }
  | { result: 0; reply: Buffer; fd: number; handover: (fd: number) => void };

/** What one place in the reply order holds. */
const EntryState = {
  /** a reply (bytes, and an fd or -1) to send */
  READY: 0,
  /** an RFC open under way on the thread pool: everything behind it waits */
  WAITING: 1,
  /** a request read but not yet served (its frame in bytes): served when its turn comes */
  DEFERRED: 2,
  /** nothing to send (a tagged open that went to the pool answers out of order) */
  DONE: 3,
} as const;
type EntryState = (typeof EntryState)[keyof typeof EntryState];
const { READY, WAITING, DEFERRED, DONE } = EntryState;

/** One place in the reply order. */
interface Entry {
  state: EntryState;
  /** READY: the reply; DEFERRED: the request frame */
  bytes: Buffer;
  /** READY: the fd to send with the first byte, or -1 */
  fd: number;
  /** the fd came from a slow open: the resolver closes it off the event loop */
  slow: boolean;
}

/** Scratch space shared by all connections: requests are served one at a time on the event loop. */
const request = newRequest();
const openRequest: OpenRequest = { command: 0, path: '', flags: 0, mode: 0 };
const replyBuf = Buffer.alloc(32);
const EMPTY = Buffer.alloc(0);

/**
 * Send-buffer memory one reply (with its fd) may take: 768 bytes on Linux 6.18 x86-64 (the skb's
 * truesize), with room to spare. A UNIX SOCK_SEQPACKET socket refuses a send (EAGAIN) only when
 * its send buffer is full, so replies that fit in it all go out.
 */
const REPLY_COST = 2048;

export class Connection {
  readonly fd: number;
  readonly peer: Peer;
  readonly kind: SocketKind;
  readonly family: ConnectionFamily;
  /** made by CONNECT, and counted in family.derived */
  readonly derived: boolean;
  #host: ConnectionHost;
  #limits: Readonly<ConnectionLimits>;
  #poller: NativePoller;
  #events = 0;
  #assembler: FrameAssembler | null;
  #queue: Entry[] = [];
  #cancel = new OpenCancel();
  #slowTagged = 0;
  /** no more requests will be read: EOF, or a stream that cannot be resynchronised */
  #ending = false;
  /** graceful stop: serve what the client has sent, then close (see drain()) */
  #draining = false;
  /** when the head reply first could not be sent (0: it is not blocked) */
  #blockedSince = 0;
  /** SOCK_STREAM: when the frame now being assembled began (0: none) */
  #partialSince = 0;
  #framesSeen = 0;
  /** SO_SNDBUF, read when first needed (the broker never changes it) */
  #sndbuf = 0;
  #closed = false;
  /** SESSION granted: the fd goes to the session (see close()) instead of being closed */
  #handover: ((fd: number) => void) | null = null;
  #onFrame = (buf: Buffer, offset: number, length: number): void => {
    this.#framesSeen++;
    this.#frame(buf, offset, length);
  };

  constructor(host: ConnectionHost, fd: number, peer: Peer, kind: SocketKind, family: ConnectionFamily | null = null) {
    this.#host = host;
    this.#limits = host.limits;
    this.fd = fd;
    this.peer = peer;
    this.kind = kind;
    this.family = family ?? { derived: new Set() };
    this.derived = family !== null;
    this.#assembler = kind === 'stream' ? new FrameAssembler() : null;
    this.#poller = new native.Poller(
      fd,
      PollMode.ReceiveDiscardFds,
      BATCH,
      (events, count, status) => this.#onPoll(events, count, status),
      kind === 'stream' ? STREAM_BUDGET : 0,
    );
    this.#interest(C.UV_READABLE);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Replies and requests waiting in order. */
  get queued(): number {
    return this.#queue.length;
  }

  /** When this connection must be expired (ms, Date.now() clock), or 0 if it has no deadline. */
  deadline(): number {
    const stall = this.#blockedSince ? this.#blockedSince + this.#limits.stallMs : 0;
    const frame = this.#partialSince ? this.#partialSince + this.#limits.frameMs : 0;
    return stall && frame ? Math.min(stall, frame) : stall || frame;
  }

  /** Called by the host when deadline() has passed. */
  expire(): void {
    if (this.#closed) return;
    const d = this.deadline();
    if (d === 0 || Date.now() < d) return;
    if (this.#partialSince && this.#partialSince + this.#limits.frameMs <= Date.now()) {
      // A half-sent frame: say why, best effort, and end (the stream cannot be resynchronised).
      this.#partialSince = 0;
      this.#protocolEnd();
      return;
    }
    this.close();
  }

  #onPoll(events: number, count: number, status: number): void {
    try {
      if (events & C.UV_WRITABLE) this.#pump();
      // Batch the replies only if they surely fit in the socket (one reply may always be tried):
      // a reply that cannot be sent keeps its fd, and a client that never reads must not make the
      // broker hold more than one.
      const batch = this.#host.replies;
      if (count > 0 && !this.#assembler && (count === 1 || this.#sendRoom() >= count * REPLY_COST)) batch.owner = this;
      for (let i = 0, m = 0; i < count && !this.#closed && !this.#ending; i++) {
        const offset = recvMeta[m]!,
          length = recvMeta[m + 1]!,
          flags = recvMeta[m + 2]!;
        m += 4; // no fds: the kernel dropped them (MSG_CTRUNC)
        this.#receive(offset, length, flags);
      }
      if (batch.owner === this) {
        this.#flushBatch();
        batch.owner = null;
      }
      if (this.#closed) return;
      if (status === C.STATUS_EOF) {
        this.#ending = true; // answer what was asked (a stream may have shut down only its writing), then close
        // But a client that has closed its socket reads no answer: cancel what waits for it, or a
        // FIFO open sent just before the close would pin a pool thread until someone opens the
        // FIFO's other end (the hang-up below is never seen once the connection is ending).
        if (native.peerClosed(this.fd) === 1) this.#cancel.cancel();
      } else if (status !== 0) {
        this.close(); // ECONNRESET and the like: the client is gone
        return;
      } else if (count === 0 && events & C.UV_DISCONNECT && !(events & C.UV_READABLE)) {
        // The client hung up while we were not reading (a reply or a slow open waits): whatever
        // waits for it is cancelled, so that a FIFO open cannot pin a thread for a client long gone.
        this.#ending = true;
        this.#cancel.cancel();
      }
      this.#settle();
    } catch (err) {
      this.#host.fault(this, err);
      this.close();
    }
  }

  #receive(offset: number, length: number, msgFlags: number): void {
    if (this.#assembler) {
      if (msgFlags & C.MSG_CTRUNC) {
        // Fds on a stream: a protocol error that no frame can carry; answer and end.
        this.#protocolEnd();
        return;
      }
      const before = this.#framesSeen;
      const wasPartial = this.#assembler.pendingBytes > 0;
      if (!this.#assembler.push(recvArena, offset, length, this.#onFrame)) {
        // A stream with an impossible size cannot be resynchronised.
        this.#protocolEnd();
        return;
      }
      if (this.#assembler.pendingBytes === 0) this.#partialSince = 0;
      else if (!wasPartial || this.#framesSeen !== before) {
        this.#partialSince = Date.now();
        this.#host.watch(this);
      }
      return;
    }
    if (msgFlags & (C.MSG_TRUNC | C.MSG_CTRUNC)) {
      // Truncated data, or control data (fds) that the broker refuses to take: a protocol error,
      // never a partial request.
      this.#host.protocolError();
      this.#inOrder(encodeReply(replyBuf, 0, length >= 8 ? hostEndian.readU32(recvArena, offset + 4) : 0, -EPROTO), -1, null);
      return;
    }
    this.#frame(recvArena, offset, length);
  }

  /** A complete frame: served now if nothing waits before it, else kept (copied) for its turn. */
  #frame(buf: Buffer, offset: number, length: number): void {
    if (this.#closed) return;
    if (this.#queue.length === 0) {
      this.#serve(buf, offset, length, null);
      return;
    }
    this.#push(DEFERRED, Buffer.from(buf.subarray(offset, offset + length)), -1);
  }

  /** Serves one frame. Its reply goes to slot (a deferred entry whose turn it is), or out at once when slot is null. */
  #serve(buf: Buffer, offset: number, length: number, slot: Entry | null): void {
    const err = decodeRequest(buf, offset, length, request);
    if (err !== DecodeError.OK) {
      this.#host.protocolError();
      this.#inOrder(encodeReply(replyBuf, 0, err === DecodeError.SHORT && length < 8 ? 0 : request.command, -EPROTO), -1, slot);
      return;
    }
    switch (request.command) {
      case Command.QEMU_OPEN: {
        const out = serveOpen(this.#host.context(), this.peer, openRequestOf(request), this.#cancel);
        if (typeof out !== 'number') {
          this.#waitFor(out, slot);
          return;
        }
        this.#inOrder(encodeReply(replyBuf, 0, Command.QEMU_OPEN, out < 0 ? out : 0), out < 0 ? -1 : out, slot);
        return;
      }
      case Command.OPEN_TAGGED: {
        const id = request.id;
        const out = serveOpen(this.#host.context(), this.peer, openRequestOf(request), this.#cancel);
        if (typeof out !== 'number') {
          if (slot) slot.state = DONE;
          this.#slowTagged++;
          out.then(
            (fd) => this.#taggedDone(id, fd),
            (err: unknown) =>
              this.#guard(() => {
                throw err;
              }),
          );
          return;
        }
        this.#inOrder(encodeTaggedReply(replyBuf, 0, id, out < 0 ? out : 0), out < 0 ? -1 : out, slot);
        return;
      }
      case Command.HELLO:
        this.#inOrder(encodeHelloReply(replyBuf, 0, (FEATURES | (this.#host.extraFeatures ?? 0)) & request.features), -1, slot);
        return;
      case Command.SESSION: {
        if (!this.#host.session) {
          this.#host.protocolError();
          this.#inOrder(encodeReply(replyBuf, 0, Command.SESSION, -EPROTO), -1, slot);
          return;
        }
        if (request.flags !== 0) {
          // No flags are defined yet; refusing unknown ones keeps them free for later meanings.
          this.#inOrder(encodeReply(replyBuf, 0, Command.SESSION, -EINVAL), -1, slot);
          return;
        }
        const nameEnd = request.nameOffset + request.nameLength;
        const answer = this.#host.session(this, buf.subarray(request.nameOffset, nameEnd), buf.subarray(nameEnd, offset + length));
        if (answer.handover) {
          // Nothing more is read here: the launcher's next message carries its listener (an fd),
          // for the session, which takes the socket over once this reply is out.
          this.#handover = answer.handover;
          this.#ending = true;
        }
        this.#inOrder(answer.reply.length, answer.fd, slot, answer.reply);
        return;
      }
      case Command.CONNECT: {
        // No flags are defined yet; refusing unknown ones keeps them free for later meanings.
        const fd = request.flags !== 0 ? -EINVAL : this.#host.derive(this);
        this.#inOrder(encodeReply(replyBuf, 0, Command.CONNECT, fd < 0 ? fd : 0), fd < 0 ? -1 : fd, slot);
        return;
      }
      case Command.STATUS: {
        // No flags are defined yet; refusing unknown ones keeps them free for later meanings.
        const answer = request.flags !== 0 ? -EINVAL : this.#host.status(this);
        if (typeof answer === 'number') this.#inOrder(encodeReply(replyBuf, 0, Command.STATUS, answer), -1, slot);
        else this.#inOrder(answer.length, -1, slot, answer);
        return;
      }
      default: {
        // A file operation (decodeRequest knows no other commands): 0 or -errno; TMPFILE's fd.
        const out = serveFileOperation(this.#host.context(), this.peer, fileOperationFrom(request));
        this.#inOrder(
          encodeReply(replyBuf, 0, request.command, out < 0 ? out : 0),
          out > 0 && request.command === Command.TMPFILE ? out : -1,
          slot,
        );
        return;
      }
    }
  }

  /**
   * A reply in request order: buf[0, length) with fd (owned from here on). Into slot if given; else
   * straight to the socket, queued if it cannot take it now.
   */
  #inOrder(length: number, fd: number, slot: Entry | null, buf: Buffer = replyBuf): void {
    if (this.#closed) {
      if (fd >= 0) native.close(fd);
    } else if (slot) {
      slot.state = READY;
      slot.bytes = Buffer.from(buf.subarray(0, length));
      slot.fd = fd;
    } else if (this.#queue.length > 0) {
      this.#push(READY, Buffer.from(buf.subarray(0, length)), fd);
    } else if (this.#host.replies.owner === this && length <= REPLY_SLOT) {
      this.#batchReply(length, fd, buf);
    } else {
      this.#sendReply(length, fd, buf);
    }
  }

  /** Within a wake-up: the reply joins the batch, sent when the wake-up's frames are served. */
  #batchReply(length: number, fd: number, buf: Buffer): void {
    const batch = this.#host.replies;
    if (batch.full) {
      this.#flushBatch();
      if (this.#closed || this.#queue.length > 0) {
        this.#inOrder(length, fd, null, buf); // the socket filled up or failed: queue it, or drop it
        return;
      }
    }
    batch.add(buf, length, fd);
  }

  /** Nothing waits before it: straight to the socket, or queued with what the socket did not take. */
  #sendReply(length: number, fd: number, buf: Buffer): void {
    const n = native.send(this.fd, buf, 0, length, fd);
    if (n === length) {
      if (fd >= 0) native.close(fd);
      return;
    }
    if (n >= 0 || n === -EAGAIN) {
      // A stream took part of it (the fd went with the first byte), or the socket is full.
      if (n > 0 && fd >= 0) native.close(fd);
      this.#push(READY, Buffer.from(buf.subarray(n > 0 ? n : 0, length)), n > 0 ? -1 : fd);
      this.#blocked();
      return;
    }
    if (fd >= 0) native.close(fd);
    this.close(); // EPIPE, ECONNRESET: the client is gone
  }

  /** Bytes the socket's send buffer can still take: SO_SNDBUF less what the client has not read. */
  #sendRoom(): number {
    if (this.#sndbuf <= 0) this.#sndbuf = native.sendBufferSize(this.fd);
    const queued = native.sendQueued(this.fd);
    return this.#sndbuf > 0 && queued >= 0 ? this.#sndbuf - queued : 0;
  }

  /**
   * Sends the batch of this wake-up's replies. Those the socket cannot take now go to the head of
   * the queue, in order, ahead of anything queued behind them in this wake-up.
   */
  #flushBatch(): void {
    const batch = this.#host.replies;
    const n = batch.count;
    if (n === 0) return;
    const sent = batch.send(this.fd);
    if (sent === n) {
      batch.count = 0;
      return;
    }
    if (sent < 0 && sent !== -EAGAIN) {
      batch.discard();
      this.close(); // EPIPE, ECONNRESET: the client is gone
      return;
    }
    const rest: Entry[] = batch.unsent(sent < 0 ? 0 : sent).map(([bytes, fd]) => ({ state: READY, bytes, fd, slow: false }));
    this.#queue.unshift(...rest);
    this.#blocked();
    if (this.#queue.length > this.#limits.queue) this.close();
  }

  /** An RFC open on the thread pool: its place in the order waits until it is done. */
  #waitFor(slow: Promise<number>, slot: Entry | null): void {
    const entry = slot ?? this.#push(WAITING, EMPTY, -1);
    entry.state = WAITING;
    slow.then(
      (fd) => {
        if (this.#closed) {
          this.#release(fd, true);
          return;
        }
        entry.state = READY;
        entry.bytes = Buffer.alloc(12);
        encodeReply(entry.bytes, 0, Command.QEMU_OPEN, fd < 0 ? fd : 0);
        entry.fd = fd < 0 ? -1 : fd;
        entry.slow = true;
        this.#guard(() => this.#pump());
      },
      (err: unknown) =>
        this.#guard(() => {
          throw err;
        }),
    );
  }

  /** A tagged open from the thread pool: its reply may overtake others. */
  #taggedDone(id: number, fd: number): void {
    this.#slowTagged--;
    if (this.#closed) {
      this.#release(fd, true);
      return;
    }
    const bytes = Buffer.alloc(16);
    encodeTaggedReply(bytes, 0, id, fd < 0 ? fd : 0);
    this.#push(READY, bytes, fd < 0 ? -1 : fd, true);
    this.#guard(() => this.#pump());
  }

  #push(state: EntryState, bytes: Buffer, fd: number, slow = false): Entry {
    const entry: Entry = { state, bytes, fd, slow };
    this.#queue.push(entry);
    if (this.#queue.length > this.#limits.queue) this.close();
    return entry;
  }

  /** Sends what is ready at the head of the queue, serving deferred requests as their turn comes. */
  #pump(): void {
    const queue = this.#queue;
    while (queue.length > 0 && !this.#closed) {
      const head = queue[0]!;
      if (head.state === WAITING) break;
      if (head.state === DONE) {
        queue.shift();
        continue;
      }
      if (head.state === DEFERRED) {
        const frame = head.bytes;
        this.#serve(frame, 0, frame.length, head);
        continue;
      }
      const n = native.send(this.fd, head.bytes, 0, head.bytes.length, head.fd);
      if (n === -EAGAIN) {
        this.#blocked();
        break;
      }
      if (n < 0) {
        this.close();
        return;
      }
      this.#release(head.fd, head.slow);
      head.fd = -1;
      this.#blockedSince = 0;
      if (n < head.bytes.length) {
        head.bytes = head.bytes.subarray(n);
        continue;
      }
      queue.shift();
    }
    if (queue.length === 0 || queue[0]!.state === WAITING) this.#blockedSince = 0;
    this.#settle();
  }

  #blocked(): void {
    if (this.#blockedSince === 0) {
      this.#blockedSince = Date.now();
      this.#host.watch(this);
    }
  }

  /** Reads only when nothing waits; wants writability only while a reply is blocked; ends when all is answered. */
  #settle(): void {
    if (this.#closed) return;
    const idle = this.#queue.length === 0;
    if (idle && this.#slowTagged === 0 && (this.#ending || this.#drained())) {
      this.close();
      return;
    }
    let events = 0;
    if (idle && !this.#ending && this.#slowTagged < this.#limits.slowTagged) events |= C.UV_READABLE;
    if (this.#blockedSince) events |= C.UV_WRITABLE;
    // While not reading, still notice a hang-up (EPOLLRDHUP); once ending, never again (it would repeat).
    if (!(events & C.UV_READABLE) && !this.#ending) events |= C.UV_DISCONNECT;
    this.#interest(events);
  }

  #interest(events: number): void {
    if (events === this.#events) return;
    this.#events = events;
    this.#poller.start(events);
  }

  /** -EPROTO, then no more reading; the connection closes once its replies are out. */
  #protocolEnd(): void {
    this.#host.protocolError();
    this.#inOrder(encodeReply(replyBuf, 0, 0, -EPROTO), -1, null);
    this.#ending = true;
    this.#partialSince = 0;
    if (!this.#closed) this.#settle();
  }

  /** Closes the broker's copy of a sent (or unsendable) fd. */
  #release(fd: number, slow: boolean): void {
    if (fd < 0) return;
    if (slow) this.#host.context().resolver.release(fd);
    else native.close(fd);
  }

  #guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.#host.fault(this, err);
      this.close();
    }
  }

  // ---- Graceful stop ------------------------------------------------------------------------------

  /**
   * Serves what the client has sent, and closes once nothing it sent is left unread, no open is under
   * way for it, and every reply is out. The broker cuts what is left at its deadline.
   */
  drain(): void {
    this.#draining = true;
    if (!this.#closed) this.#settle();
  }

  /**
   * Draining, and nothing sent is left unread (requests still queued in the socket wake us again).
   * A connection that others were made from by CONNECT waits for them: they end with it.
   */
  #drained(): boolean {
    return this.#draining && (this.derived || this.family.derived.size === 0) && native.receiveQueued(this.fd) <= 0;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const batch = this.#host.replies;
    if (batch.owner === this) {
      batch.discard();
      batch.owner = null;
    }
    this.#cancel.cancel();
    this.#poller.close();
    for (const e of this.#queue) this.#release(e.fd, e.slow);
    this.#queue.length = 0;
    if (this.#handover) this.#handover(this.fd);
    else native.close(this.fd);
    this.#host.released(this);
  }
}

/** The open a decoded frame asks for (in the shared scratch request: serveOpen copies what outlives it). */
function openRequestOf(frame: Request): OpenRequest {
  openRequest.command = frame.command;
  openRequest.path = fromBytes(frame.buf, frame.nameOffset, frame.nameOffset + frame.nameLength);
  openRequest.flags = frame.flags;
  openRequest.mode = frame.mode;
  return openRequest;
}
