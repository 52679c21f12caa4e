/**
 * open(2) flags from the wire: which are allowed, what access they need, and what the broker really
 * passes to the kernel (DESIGN.md, invariant 3).
 */
import { C } from '../native.js';
import { Access } from '../policy/access.js';
import { E } from '../errno.js';

/**
 * Every flag a client may send. Anything else (O_PATH, O_TMPFILE, FASYNC, unknown bits) is refused.
 * (The syscall hook first reads a trapped call's flags as the kernel would: src/hook/open.ts.)
 */
const ALLOWED =
  C.O_ACCMODE |
  C.O_CREAT |
  C.O_EXCL |
  C.O_NOCTTY |
  C.O_TRUNC |
  C.O_APPEND |
  C.O_NONBLOCK |
  C.O_DSYNC |
  C.O_SYNC |
  C.O_DIRECT |
  C.O_LARGEFILE |
  C.O_DIRECTORY |
  C.O_NOFOLLOW |
  C.O_NOATIME |
  C.O_CLOEXEC;

/** The errno for a flag word no rule can allow, or 0. */
export function flagsError(flags: number): number {
  if ((flags & C.O_ACCMODE) === C.O_ACCMODE) return E.EINVAL; // access mode 3
  if ((flags & C.O_TMPFILE) === C.O_TMPFILE) return E.EINVAL; // O_TMPFILE (which contains O_DIRECTORY)
  if (flags & C.O_PATH) return E.EINVAL;
  if ((flags & ~ALLOWED) >>> 0 !== 0) return E.EINVAL;
  if (flags & C.O_CREAT && flags & C.O_DIRECTORY) return E.EINVAL; // open(2) refuses this pair too
  return 0;
}

/** The access a request needs. O_TRUNC needs write even with O_RDONLY, where Linux truncates. */
export function accessFor(flags: number): number {
  const mode = flags & C.O_ACCMODE;
  let need = 0;
  if (mode === C.O_RDONLY || mode === C.O_RDWR) need |= Access.READ;
  if (mode === C.O_WRONLY || mode === C.O_RDWR || flags & C.O_TRUNC) need |= Access.WRITE;
  if (flags & C.O_CREAT) need |= Access.CREATE;
  return need;
}

const names: ReadonlyArray<[string, number]> = [
  ['O_CREAT', C.O_CREAT],
  ['O_EXCL', C.O_EXCL],
  ['O_NOCTTY', C.O_NOCTTY],
  ['O_TRUNC', C.O_TRUNC],
  ['O_APPEND', C.O_APPEND],
  ['O_NONBLOCK', C.O_NONBLOCK],
  ['O_SYNC', C.O_SYNC],
  ['O_DSYNC', C.O_DSYNC],
  ['O_DIRECT', C.O_DIRECT],
  ['O_LARGEFILE', C.O_LARGEFILE],
  ['O_DIRECTORY', C.O_DIRECTORY],
  ['O_NOFOLLOW', C.O_NOFOLLOW],
  ['O_NOATIME', C.O_NOATIME],
  ['O_CLOEXEC', C.O_CLOEXEC],
  ['O_PATH', C.O_PATH],
  ['O_TMPFILE', C.O_TMPFILE & ~C.O_DIRECTORY],
];

/** 'O_RDWR|O_CREAT|0x40000000' — symbolic, for logs and messages. */
export function describeFlags(flags: number): string {
  const acc = flags & C.O_ACCMODE;
  const parts = [acc === C.O_RDONLY ? 'O_RDONLY' : acc === C.O_WRONLY ? 'O_WRONLY' : acc === C.O_RDWR ? 'O_RDWR' : 'O_ACCMODE'];
  let rest = (flags & ~C.O_ACCMODE) >>> 0;
  for (const [name, bit] of names) {
    if ((rest & bit) === bit && bit !== 0) {
      // O_SYNC includes O_DSYNC's bit; name the larger one only.
      parts.push(name);
      rest = (rest & ~bit) >>> 0;
    }
  }
  if (rest) parts.push(`0x${rest.toString(16)}`);
  return parts.join('|');
}
