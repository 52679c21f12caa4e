/**
 * One socket to a broker: sends frames, and receives replies with the fds they carry.
 *
 * A link knows framing (a SOCK_SEQPACKET message is a frame; SOCK_STREAM is reassembled) and which
 * replies carry an fd, and nothing about requests: the client (client.ts) matches replies to requests
 * and decides what to do when a link is lost. A link is used once; reconnecting makes a new one.
 */
import { C, native, PollMode, recvArena, recvMeta, systemError, type NativePoller } from '../native.js';
import { Command } from '../protocol/constants.js';
import { decodeReply, type Reply } from '../protocol/frames.js';
import { FrameAssembler } from '../protocol/stream.js';
import { ClientClosedError, ProtocolError } from './errors.js';
import { E } from '../errno.js';

export type LinkKind = 'seqpacket' | 'stream';

export interface LinkEvents {
  /** A well-formed reply, and the fd it carried (the receiver owns it and must close it) or -1. */
  reply(reply: Reply, fd: number): void;
  /** The link failed or the broker closed it. The link is closed already; never called after close(). */
  lost(err: Error): void;
}

const { EAGAIN, ECONNRESET } = E;

/** Whether a successful reply to this command carries an fd: opens do; HELLO and STATUS do not. */
function carriesFd(command: number): boolean {
  return command !== Command.HELLO && command !== Command.STATUS;
}

export class Link {
  readonly fd: number;
  readonly kind: LinkKind;
  #ownsFd: boolean;
  #events: LinkEvents;
  #poller: NativePoller;
  #assembler: FrameAssembler | null;
  /** stream mode: fds received and not yet matched to a reply, in arrival order */
  #fds: number[] = [];
  #outbox: Buffer[] = [];
  #closed = false;
  #onFrame = (buf: Buffer, offset: number, length: number): void => this.#onReply(buf, offset, length, -1, 0);

  constructor(fd: number, kind: LinkKind, ownsFd: boolean, events: LinkEvents) {
    this.fd = fd;
    this.kind = kind;
    this.#ownsFd = ownsFd;
    this.#events = events;
    this.#assembler = kind === 'stream' ? new FrameAssembler() : null;
    this.#poller = new native.Poller(fd, PollMode.Receive, 64, (events, count, status) => this.#onPoll(events, count, status));
    this.#poller.start(C.UV_READABLE);
    this.#poller.ref(false); // an idle connection does not keep the process alive
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Whether the link keeps the process alive: yes while requests wait for replies. */
  ref(on: boolean): void {
    if (!this.#closed) this.#poller.ref(on);
  }

  send(frame: Buffer): void {
    if (this.#closed) return;
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
    this.#fail(brokenBy(n, 'sendmsg'));
  }

  /** Closes the link (and its fd, if it owns it) without reporting anything. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#poller.close();
    if (this.#ownsFd) native.close(this.fd);
    for (const fd of this.#fds) native.close(fd);
    this.#fds.length = 0;
    this.#outbox.length = 0;
  }

  #fail(err: Error, fd = -1): void {
    if (fd >= 0) native.close(fd);
    if (this.#closed) return;
    this.close();
    this.#events.lost(err);
  }

  #flush(): void {
    while (this.#outbox.length > 0) {
      const head = this.#outbox[0]!;
      const n = native.send(this.fd, head, 0, head.length, -1);
      if (n === -EAGAIN) return;
      if (n < 0) return this.#fail(brokenBy(n, 'sendmsg'));
      if (n < head.length) this.#outbox[0] = head.subarray(n);
      else this.#outbox.shift();
    }
    this.#poller.start(C.UV_READABLE);
  }

  #onPoll(events: number, count: number, status: number): void {
    if (this.#closed) return;
    if (events & C.UV_WRITABLE) this.#flush();
    for (let i = 0, m = 0; i < count; i++) {
      const offset = recvMeta[m]!, length = recvMeta[m + 1]!, flags = recvMeta[m + 2]!, nfds = recvMeta[m + 3]!;
      const fdStart = m + 4;
      m = fdStart + nfds;
      if (this.#closed) {
        // A reply handler closed us mid-batch: the fds of the rest are ours to close.
        for (let k = 0; k < nfds; k++) native.close(recvMeta[fdStart + k]!);
        continue;
      }
      if (flags & (C.MSG_TRUNC | C.MSG_CTRUNC)) {
        for (let k = 0; k < nfds; k++) native.close(recvMeta[fdStart + k]!);
        this.#fail(new ProtocolError(flags & C.MSG_CTRUNC ? 'fds from the broker were truncated' : 'a reply was truncated'));
        continue;
      }
      if (this.#assembler) {
        for (let k = 0; k < nfds; k++) this.#fds.push(recvMeta[fdStart + k]!);
        if (!this.#assembler.push(recvArena, offset, length, this.#onFrame)) this.#fail(new ProtocolError('the broker sent a frame of impossible size'));
      } else {
        this.#onReply(recvArena, offset, length, fdStart, nfds);
      }
    }
    if (status !== 0 && !this.#closed) this.#fail(brokenBy(status === C.STATUS_EOF ? -ECONNRESET : status, 'recvmsg', status === C.STATUS_EOF));
  }

  /**
   * One reply frame. For SOCK_SEQPACKET its fds are recvMeta[fdStart, fdStart+nfds); on a stream
   * (fdStart < 0) fds arrive with the first byte of their reply, so they are taken in order.
   */
  #onReply(buf: Buffer, offset: number, length: number, fdStart: number, nfds: number): void {
    if (this.#closed) return;
    const reply = decodeReply(buf, offset, length);
    const wantsFd = reply !== null && reply.result === 0 && carriesFd(reply.command);
    let fd = -1;
    if (fdStart >= 0) {
      for (let k = 0; k < nfds; k++) {
        const got = recvMeta[fdStart + k]!;
        if (k === 0 && wantsFd) fd = got;
        else native.close(got);
      }
      if (reply && nfds !== (wantsFd ? 1 : 0)) return this.#fail(new ProtocolError(`a reply (result ${reply.result}) carried ${nfds} fds`), fd);
    } else if (wantsFd) {
      fd = this.#fds.shift() ?? -1;
      if (fd < 0) return this.#fail(new ProtocolError('a successful reply arrived without its fd'));
    }
    if (!reply) return this.#fail(new ProtocolError('malformed reply'), fd);
    this.#events.reply(reply, fd);
  }
}

/** The error for a link that broke: the broker closing it is a ClientClosedError, the rest are errnos. */
function brokenBy(errno: number, syscall: string, eof = false): Error {
  if (eof || errno === -ECONNRESET) return new ClientClosedError('the broker closed the connection');
  return systemError(errno, syscall);
}
