/**
 * One seccomp notification, read in place from the words notifyRecv filled. The server keeps one
 * instance per slot of its batch and refills it: reading a notification allocates nothing.
 */
import { NOTIFICATION_WORDS } from './native.js';

const TWO_32 = 0x1_0000_0000;

export class Notification {
  readonly words = new Uint32Array(NOTIFICATION_WORDS);

  get idLo(): number {
    return this.words[0]!;
  }

  get idHi(): number {
    return this.words[1]!;
  }

  /** the thread that made the call (a thread id, not the process id) */
  get tid(): number {
    return this.words[2]!;
  }

  get nr(): number {
    return this.words[4]!;
  }

  get arch(): number {
    return this.words[5]!;
  }

  /** argument i's low 32 bits, as the kernel reads an int argument (a dirfd, flags, a mode) */
  int(i: number): number {
    return this.words[8 + 2 * i]! | 0;
  }

  /** argument i's low 32 bits, unsigned */
  uint(i: number): number {
    return this.words[8 + 2 * i]!;
  }

  /** argument i's high 32 bits (a pointer's, or a 64-bit value's) */
  high(i: number): number {
    return this.words[9 + 2 * i]!;
  }

  /** argument i as a number: exact below 2^53, which covers every user-space address */
  value(i: number): number {
    return this.words[9 + 2 * i]! * TWO_32 + this.words[8 + 2 * i]!;
  }
}
