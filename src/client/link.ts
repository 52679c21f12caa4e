/**
 * One socket to a broker: sends frames, and receives replies with the fds they carry.
 *
 * A link knows framing (a SOCK_SEQPACKET message is a frame; SOCK_STREAM is reassembled) and which
 * replies carry an fd, and nothing about requests: the client (client.ts) matches replies to requests
 * and decides what to do when a link is lost. A link is used once; reconnecting makes a new one.
 * The socket itself (poller, outbox, how it ends) is a Channel (channel.ts), shared with QMP.
 */
import { C, native, recvArena, recvMeta } from '../native.js';
import { Command } from '../protocol/constants.js';
import { decodeReply, type Reply } from '../protocol/frames.js';
import { FrameAssembler } from '../protocol/stream.js';
import { Channel } from './channel.js';
import { ClientClosedError, ProtocolError } from './errors.js';

export type LinkKind = 'seqpacket' | 'stream';

export interface LinkEvents {
  /** A well-formed reply, and the fd it carried (the receiver owns it and must close it) or -1. */
  reply(reply: Reply, fd: number): void;
  /** The link failed or the broker closed it. The link is closed already; never called after close(). */
  lost(err: Error): void;
}

/** Whether a successful reply to this command carries an fd: opens do; HELLO and STATUS do not. */
function carriesFd(command: number): boolean {
  // Of the file operations, only TMPFILE answers with an fd.
  return command !== Command.HELLO && command !== Command.STATUS && (command < Command.MKDIR || command === Command.TMPFILE);
}

export class Link {
  readonly fd: number;
  readonly kind: LinkKind;
  #events: LinkEvents;
  #channel: Channel;
  #assembler: FrameAssembler | null;
  /** stream mode: fds received and not yet matched to a reply, in arrival order */
  #fds: number[] = [];
  #onFrame = (buf: Buffer, offset: number, length: number): void => this.#onReply(buf, offset, length, -1, 0);

  constructor(fd: number, kind: LinkKind, ownsFd: boolean, events: LinkEvents) {
    this.fd = fd;
    this.kind = kind;
    this.#events = events;
    this.#assembler = kind === 'stream' ? new FrameAssembler() : null;
    this.#channel = new Channel(fd, {
      ownsFd,
      fds: 'keep',
      batch: 64,
      record: (offset, length, flags, fdStart, nfds) => this.#onRecord(offset, length, flags, fdStart, nfds),
      ended: (err) => {
        this.#dropFds();
        events.lost(err);
      },
      peerClosed: (cause) => new ClientClosedError('the broker closed the connection', { cause }),
    });
    this.#channel.ref(false); // an idle connection does not keep the process alive
  }

  get closed(): boolean {
    return this.#channel.closed;
  }

  /** Whether the link keeps the process alive: yes while requests wait for replies. */
  ref(on: boolean): void {
    this.#channel.ref(on);
  }

  send(frame: Buffer): void {
    this.#channel.send(frame);
  }

  /** Closes the link (and its fd, if it owns it) without reporting anything. */
  close(): void {
    this.#channel.close();
    this.#dropFds();
  }

  #dropFds(): void {
    for (const fd of this.#fds) native.close(fd);
    this.#fds.length = 0;
  }

  #fail(err: Error, fd = -1): void {
    if (fd >= 0) native.close(fd);
    this.#channel.fail(err);
  }

  #onRecord(offset: number, length: number, flags: number, fdStart: number, nfds: number): void {
    if (flags & (C.MSG_TRUNC | C.MSG_CTRUNC)) {
      for (let k = 0; k < nfds; k++) native.close(recvMeta[fdStart + k]!);
      this.#fail(new ProtocolError(flags & C.MSG_CTRUNC ? 'fds from the broker were truncated' : 'a reply was truncated'));
      return;
    }
    if (this.#assembler) {
      for (let k = 0; k < nfds; k++) this.#fds.push(recvMeta[fdStart + k]!);
      if (!this.#assembler.push(recvArena, offset, length, this.#onFrame))
        this.#fail(new ProtocolError('the broker sent a frame of impossible size'));
    } else {
      this.#onReply(recvArena, offset, length, fdStart, nfds);
    }
  }

  /**
   * One reply frame. For SOCK_SEQPACKET its fds are recvMeta[fdStart, fdStart+nfds); on a stream
   * (fdStart < 0) fds arrive with the first byte of their reply, so they are taken in order.
   */
  #onReply(buf: Buffer, offset: number, length: number, fdStart: number, nfds: number): void {
    if (this.#channel.closed) return;
    const reply = decodeReply(buf, offset, length);
    const wantsFd = reply !== null && reply.result === 0 && carriesFd(reply.command);
    let fd = -1;
    if (fdStart >= 0) {
      for (let k = 0; k < nfds; k++) {
        const got = recvMeta[fdStart + k]!;
        if (k === 0 && wantsFd) fd = got;
        else native.close(got);
      }
      if (reply && nfds !== (wantsFd ? 1 : 0))
        return this.#fail(new ProtocolError(`a reply (result ${reply.result}) carried ${nfds} fds`), fd);
    } else if (wantsFd) {
      fd = this.#fds.shift() ?? -1;
      if (fd < 0) return this.#fail(new ProtocolError('a successful reply arrived without its fd'));
    }
    if (!reply) return this.#fail(new ProtocolError('malformed reply'), fd);
    this.#events.reply(reply, fd);
  }
}
