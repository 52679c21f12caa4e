/**
 * The replies of one wake-up of one SOCK_SEQPACKET connection, sent together when its frames have
 * been served: one sendmmsg, and the fds closed in C (native.sendReplies), instead of a send and a
 * close per request. One per broker, shared by its connections, since a wake-up is served and
 * flushed before the next begins. Slots of REPLY_SLOT bytes; [offset, length, fd] per reply in meta.
 */
import { native } from '../native.js';

/** Bytes of one reply slot: larger replies are never batched. */
export const REPLY_SLOT = 32;

/**
 * The native side sends from one arena at a time (setReplyArena). Which batch's arena it holds now,
 * so that two brokers in one process can each own a batch.
 */
let installed: ReplyBatch | null = null;

export class ReplyBatch {
  /** replies it can hold: as many as one wake-up may read */
  readonly capacity: number;
  readonly #arena: Buffer;
  readonly #meta: Int32Array;
  /** whose wake-up is being batched, or null: only its replies may join */
  owner: object | null = null;
  /** replies held */
  count = 0;

  constructor(capacity: number) {
    this.capacity = capacity;
    this.#arena = Buffer.alloc(capacity * REPLY_SLOT);
    this.#meta = new Int32Array(capacity * 3);
  }

  get full(): boolean {
    return this.count === this.capacity;
  }

  /** Adds buf[0, length) (at most REPLY_SLOT bytes) with fd, which the batch owns from here on. */
  add(buf: Buffer, length: number, fd: number): void {
    const i = this.count++;
    const at = i * REPLY_SLOT;
    const arena = this.#arena;
    for (let b = 0; b < length; b++) arena[at + b] = buf[b]!; // a dozen bytes: cheaper than Buffer#copy
    this.#meta[i * 3] = at;
    this.#meta[i * 3 + 1] = length;
    this.#meta[i * 3 + 2] = fd;
  }

  /**
   * Sends the held replies on socket fd. Returns how many went (their fds closed), or -errno; the
   * rest stay held for unsent() or discard().
   */
  send(fd: number): number {
    if (installed !== this) {
      native.setReplyArena(this.#arena, this.#meta);
      // eslint-disable-next-line @typescript-eslint/no-this-alias -- records which batch's arena the addon holds; not an alias for a closure
      installed = this;
    }
    return native.sendReplies(fd, this.count);
  }

  /** The replies from index `from` on, as [bytes, fd] (copied), and empties the batch: they go to a queue. */
  unsent(from: number): [Buffer, number][] {
    const out: [Buffer, number][] = [];
    for (let i = from; i < this.count; i++) {
      const at = this.#meta[i * 3]!;
      out.push([Buffer.from(this.#arena.subarray(at, at + this.#meta[i * 3 + 1]!)), this.#meta[i * 3 + 2]!]);
    }
    this.count = 0;
    return out;
  }

  /** Closes the fds of the held replies and empties the batch (the client is gone). */
  discard(): void {
    for (let i = 0; i < this.count; i++) if (this.#meta[i * 3 + 2]! >= 0) native.close(this.#meta[i * 3 + 2]!);
    this.count = 0;
  }
}
