/** fs.open-style flag strings, as numbers for the wire. */
import { constants as fsc } from 'node:fs';

const table = {
  r: fsc.O_RDONLY,
  'r+': fsc.O_RDWR,
  rs: fsc.O_RDONLY | fsc.O_SYNC,
  'rs+': fsc.O_RDWR | fsc.O_SYNC,
  w: fsc.O_WRONLY | fsc.O_CREAT | fsc.O_TRUNC,
  wx: fsc.O_WRONLY | fsc.O_CREAT | fsc.O_TRUNC | fsc.O_EXCL,
  'w+': fsc.O_RDWR | fsc.O_CREAT | fsc.O_TRUNC,
  'wx+': fsc.O_RDWR | fsc.O_CREAT | fsc.O_TRUNC | fsc.O_EXCL,
  a: fsc.O_WRONLY | fsc.O_CREAT | fsc.O_APPEND,
  ax: fsc.O_WRONLY | fsc.O_CREAT | fsc.O_APPEND | fsc.O_EXCL,
  'a+': fsc.O_RDWR | fsc.O_CREAT | fsc.O_APPEND,
  'ax+': fsc.O_RDWR | fsc.O_CREAT | fsc.O_APPEND | fsc.O_EXCL,
} as const satisfies Record<string, number>;

export type OpenFlags = number | keyof typeof table;

export function toFlags(flags: OpenFlags): number {
  if (typeof flags === 'number') {
    if (!Number.isInteger(flags) || flags < 0 || flags > 0xffffffff) throw new RangeError(`invalid open flags: ${flags}`);
    return flags;
  }
  const n = (table as Record<string, number>)[flags]; // flags may be any string at run time
  if (n === undefined) throw new TypeError(`unknown open flags '${flags}' (use r, r+, w, wx, w+, a, a+, ... or a number)`);
  return n;
}
