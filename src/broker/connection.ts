/**
 * One client connection: receives frames, hands each to the service, and sends the replies.
 *
 * Replies on one connection leave in request order, as the RFC's synchronous clients expect. A reply
 * that the socket cannot take now waits in a bounded outbox (with its fd still open); while anything
 * waits there, the connection reads no more requests, so a client that never reads its replies stalls
 * only itself.
 */
import { C, native, PollMode, recvArena, recvMeta, type NativePoller } from '../native.js';
import type { Peer } from '../policy/policy.js';
import { Command } from '../protocol/constants.js';
import { hostEndian } from '../protocol/endian.js';
import { DecodeError, decodeRequest, encodeHelloReply, encodeReply, encodeTaggedReply, newRequest } from '../protocol/frames.js';
import { FrameAssembler } from '../protocol/stream.js';
import { FEATURES, serveOpen, type ServiceContext } from './service.js';

const EPROTO = 71, EINVAL = 22;
/** Messages drained per wake-up: enough to amortise the call into JS, few enough to be fair. */
const BATCH = 64;
/** Replies that may wait for a slow reader before the connection is dropped. */
const OUTBOX_LIMIT = 256;

export type SocketKind = 'seqpacket' | 'stream';

interface Pending {
  bytes: Buffer;
  fd: number;
}

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
  /** called once, when the connection has closed */
  released(conn: Connection): void;
  /** an unexpected fault: reported, then the connection is closed */
  fault(conn: Connection, err: unknown): void;
}

/** Scratch space shared by all connections: requests are served one at a time on the event loop. */
const request = newRequest();
const replyBuf = Buffer.alloc(32);

export class Connection {
  readonly fd: number;
  readonly peer: Peer;
  readonly kind: SocketKind;
  readonly family: ConnectionFamily;
  /** made by CONNECT, and counted in family.derived */
  readonly derived: boolean;
  #host: ConnectionHost;
  #poller: NativePoller;
  #assembler: FrameAssembler | null;
  #outbox: Pending[] = [];
  #closed = false;
  #onFrame = (buf: Buffer, offset: number, length: number): void => this.#serve(buf, offset, length);

  constructor(host: ConnectionHost, fd: number, peer: Peer, kind: SocketKind, family: ConnectionFamily | null = null) {
    this.#host = host;
    this.fd = fd;
    this.peer = peer;
    this.kind = kind;
    this.family = family ?? { derived: new Set() };
    this.derived = family !== null;
    this.#assembler = kind === 'stream' ? new FrameAssembler() : null;
    this.#poller = new native.Poller(fd, PollMode.ReceiveDiscardFds, BATCH, (events, count, status) => this.#onPoll(events, count, status));
    this.#poller.start(C.UV_READABLE);
  }

  get closed(): boolean {
    return this.#closed;
  }

  #onPoll(events: number, count: number, status: number): void {
    try {
      if (events & C.UV_WRITABLE) this.#flush();
      for (let i = 0, m = 0; i < count && !this.#closed; i++) {
        const offset = recvMeta[m]!, length = recvMeta[m + 1]!, flags = recvMeta[m + 2]!;
        m += 4; // fds were closed by the poller and are not listed
        this.#receive(offset, length, flags);
      }
      if (status !== 0 && !this.#closed) this.close();
    } catch (err) {
      this.#host.fault(this, err);
      this.close();
    }
  }

  #receive(offset: number, length: number, msgFlags: number): void {
    if (this.#assembler) {
      if (!this.#assembler.push(recvArena, offset, length, this.#onFrame)) {
        // A stream with an impossible size cannot be resynchronised.
        this.#reply(encodeReply(replyBuf, 0, 0, -EPROTO), -1);
        this.close();
      }
      return;
    }
    if (msgFlags & (C.MSG_TRUNC | C.MSG_CTRUNC)) {
      // Truncated data or control data is a protocol error, never a partial request.
      this.#reply(encodeReply(replyBuf, 0, length >= 8 ? hostEndian.readU32(recvArena, offset + 4) : 0, -EPROTO), -1);
      return;
    }
    this.#serve(recvArena, offset, length);
  }

  #serve(buf: Buffer, offset: number, length: number): void {
    if (this.#closed) return;
    const err = decodeRequest(buf, offset, length, request);
    if (err !== DecodeError.OK) {
      this.#reply(encodeReply(replyBuf, 0, err === DecodeError.SHORT && length < 8 ? 0 : request.command, -EPROTO), -1);
      return;
    }
    switch (request.command) {
      case Command.QEMU_OPEN: {
        const out = serveOpen(this.#host.context(), this.peer, request);
        this.#reply(encodeReply(replyBuf, 0, Command.QEMU_OPEN, out.result), out.fd);
        return;
      }
      case Command.OPEN_TAGGED: {
        const id = request.id;
        const out = serveOpen(this.#host.context(), this.peer, request);
        this.#reply(encodeTaggedReply(replyBuf, 0, id, out.result), out.fd);
        return;
      }
      case Command.HELLO:
        this.#reply(encodeHelloReply(replyBuf, 0, FEATURES & request.features), -1);
        return;
      case Command.CONNECT: {
        // No flags are defined yet; refusing unknown ones keeps them free for later meanings.
        const fd = request.connectFlags !== 0 ? -EINVAL : this.#host.derive(this);
        this.#reply(encodeReply(replyBuf, 0, Command.CONNECT, fd < 0 ? fd : 0), fd < 0 ? -1 : fd);
        return;
      }
    }
  }

  /** Sends replyBuf[0, length) with fd (closed here once sent or dropped), or queues it. */
  #reply(length: number, fd: number): void {
    if (this.#closed) {
      if (fd >= 0) native.close(fd);
      return;
    }
    if (this.#outbox.length === 0) {
      const n = native.send(this.fd, replyBuf, 0, length, fd);
      if (n === length) {
        if (fd >= 0) native.close(fd);
        return;
      }
      if (n >= 0 || n === -11 /* EAGAIN */) {
        // A stream took part of it (the fd went with the first byte), or the socket is full.
        this.#enqueue(replyBuf.subarray(n > 0 ? n : 0, length), n > 0 ? -1 : fd);
        if (n > 0 && fd >= 0) native.close(fd);
        return;
      }
      if (fd >= 0) native.close(fd);
      this.close(); // EPIPE, ECONNRESET: the client is gone
      return;
    }
    this.#enqueue(replyBuf.subarray(0, length), fd);
  }

  #enqueue(bytes: Buffer, fd: number): void {
    this.#outbox.push({ bytes: Buffer.from(bytes), fd });
    if (this.#outbox.length > OUTBOX_LIMIT) {
      this.close();
      return;
    }
    // Read nothing more until the client has taken its replies: it stalls only itself.
    this.#poller.start(C.UV_WRITABLE);
  }

  #flush(): void {
    while (this.#outbox.length > 0) {
      const head = this.#outbox[0]!;
      const n = native.send(this.fd, head.bytes, 0, head.bytes.length, head.fd);
      if (n === -11) return;
      if (n < 0) {
        this.close();
        return;
      }
      if (head.fd >= 0) native.close(head.fd);
      head.fd = -1;
      if (n < head.bytes.length) {
        head.bytes = head.bytes.subarray(n);
        continue;
      }
      this.#outbox.shift();
    }
    this.#poller.start(C.UV_READABLE);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#poller.close();
    for (const p of this.#outbox) if (p.fd >= 0) native.close(p.fd);
    this.#outbox.length = 0;
    native.close(this.fd);
    this.#host.released(this);
  }
}

