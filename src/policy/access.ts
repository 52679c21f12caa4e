/**
 * Access rights, as rules grant them and requests need them. Letters: r read, w write (includes
 * truncate), c create new files (needs w), d open directories, read-only (needs r).
 *
 * `d` is a property of what may be opened rather than of how: a request cannot say it wants a
 * directory (the resolver finds out), so requests never need DIRECTORY; a rule that grants it lets
 * the resolver hand out directory fds beneath it.
 */
export const Access = {
  READ: 1,
  WRITE: 2,
  CREATE: 4,
  DIRECTORY: 8,
} as const;

const letters: ReadonlyArray<[string, number]> = [
  ['r', Access.READ],
  ['w', Access.WRITE],
  ['c', Access.CREATE],
  ['d', Access.DIRECTORY],
];

export class AccessError extends Error {
  override name = 'AccessError';
}

const parsed = new Map<string, number>();

/** 'rwc' -> bits. Throws AccessError on an unknown or repeated letter, c without w, or d without r. */
export function parseAccess(text: string): number {
  // Large policies repeat a handful of access strings many times over.
  let bits = parsed.get(text);
  if (bits === undefined) {
    bits = parseLetters(text);
    if (parsed.size < 64) parsed.set(text, bits);
  }
  return bits;
}

function parseLetters(text: string): number {
  let bits = 0;
  for (const ch of text) {
    const entry = letters.find(([l]) => l === ch);
    if (!entry) throw new AccessError(`unknown access letter '${ch}' in '${text}' (use r, w, c, d)`);
    if (bits & entry[1]) throw new AccessError(`access letter '${ch}' repeated in '${text}'`);
    bits |= entry[1];
  }
  if (bits === 0) throw new AccessError('empty access: give at least one of r, w, c, d');
  if (bits & Access.CREATE && !(bits & Access.WRITE)) throw new AccessError(`'c' (create) needs 'w' in '${text}'`);
  if (bits & Access.DIRECTORY && !(bits & Access.READ)) throw new AccessError(`'d' (directories) needs 'r' in '${text}'`);
  return bits;
}

export function formatAccess(bits: number): string {
  return letters.map(([l, b]) => (bits & b ? l : '')).join('') || '-';
}
