/** fs.open-style flag strings, as numbers for the wire. */
import { constants as fsc } from 'node:fs';

const table: Record<string, number> = {
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
};

export type OpenFlags = number | keyof typeof table | 'r' | 'r+' | 'w' | 'wx' | 'w+' | 'wx+' | 'a' | 'ax' | 'a+' | 'ax+' | 'rs' | 'rs+';

export function toFlags(flags: OpenFlags): number {
  if (typeof flags === 'number') {
    if (!Number.isInteger(flags) || flags < 0 || flags > 0xffffffff) throw new RangeError(`invalid open flags: ${flags}`);
    return flags;
  }
  const n = table[flags];
  if (n === undefined) throw new TypeError(`unknown open flags '${flags}' (use r, r+, w, wx, w+, a, a+, ... or a number)`);
  return n;
}
