/**
 * Frame reassembly for SOCK_STREAM, where a frame may arrive split across reads or several frames in
 * one read. Whole frames inside a chunk are handed out in place, without copying; only a partial tail
 * is copied aside until the rest arrives.
 */
import { MAX_FRAME } from './constants.js';
import { isValidFrameSize } from './frames.js';
import { hostEndian } from './endian.js';

export type FrameSink = (buf: Buffer, offset: number, length: number) => void;

export class FrameAssembler {
  #pending: Buffer | null = null;
  #have = 0;

  /** Bytes held back, waiting for the rest of a frame. */
  get pendingBytes(): number {
    return this.#have;
  }

  /**
   * Feeds bytes. Calls sink for each complete frame, in order. Returns false when the stream carries
   * an impossible size: the stream cannot be resynchronised and the connection must end.
   */
  push(chunk: Buffer, offset: number, length: number, sink: FrameSink): boolean {
    let pos = offset;
    const end = offset + length;
    if (this.#have > 0) {
      pos = this.#fillPending(chunk, pos, end, sink);
      if (pos < 0) return false;
    }
    while (pos < end) {
      if (end - pos < 4) {
        this.#stash(chunk, pos, end);
        return true;
      }
      const size = hostEndian.readU32(chunk, pos);
      if (!isValidFrameSize(size)) return false;
      if (end - pos < size) {
        this.#stash(chunk, pos, end);
        return true;
      }
      sink(chunk, pos, size);
      pos += size;
    }
    return true;
  }

  #stash(chunk: Buffer, from: number, to: number): void {
    if (!this.#pending) this.#pending = Buffer.allocUnsafe(MAX_FRAME);
    chunk.copy(this.#pending, this.#have, from, to);
    this.#have += to - from;
  }

  /** Completes the held-back frame from the chunk; returns the new position, or -1 on a bad size. */
  #fillPending(chunk: Buffer, pos: number, end: number, sink: FrameSink): number {
    const pending = this.#pending!;
    if (this.#have < 4) {
      const take = Math.min(4 - this.#have, end - pos);
      chunk.copy(pending, this.#have, pos, pos + take);
      this.#have += take;
      pos += take;
      if (this.#have < 4) return pos;
    }
    const size = hostEndian.readU32(pending, 0);
    if (!isValidFrameSize(size)) return -1;
    const take = Math.min(size - this.#have, end - pos);
    chunk.copy(pending, this.#have, pos, pos + take);
    this.#have += take;
    pos += take;
    if (this.#have === size) {
      this.#have = 0;
      sink(pending, 0, size);
    }
    return pos;
  }
}
