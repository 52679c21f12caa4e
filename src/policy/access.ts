/**
 * Access rights, as rules grant them and requests need them (docs/policy.md has the table):
 *
 *   r read            w write (includes truncate)     c create new files (needs w)
 *   d list and open directories, read-only (needs r)
 *   m make directories    u remove (unlink files, rmdir directories)    s make symlinks
 *   a change attributes (mode and times; never set-id bits, never ownership)
 *   x execute (Landlock EXECUTE on the tree, fixed at launch by `run`)
 *   n connect to a UNIX socket here    b bind a UNIX socket here (make its socket file)
 *   all   every letter: "everything in this tree"
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
  MKDIR: 16,
  REMOVE: 32,
  SYMLINK: 64,
  ATTRIBUTES: 128,
  EXECUTE: 256,
  CONNECT: 512,
  BIND: 1024,
} as const;

const letters: ReadonlyArray<[string, number]> = [
  ['r', Access.READ],
  ['w', Access.WRITE],
  ['c', Access.CREATE],
  ['d', Access.DIRECTORY],
  ['m', Access.MKDIR],
  ['u', Access.REMOVE],
  ['s', Access.SYMLINK],
  ['a', Access.ATTRIBUTES],
  ['x', Access.EXECUTE],
  ['n', Access.CONNECT],
  ['b', Access.BIND],
];

/** Every letter: what `all` grants. */
export const ALL_ACCESS = letters.reduce((bits, [, b]) => bits | b, 0);

/** The letters, in order, for messages. */
export const ACCESS_LETTERS = letters.map(([l]) => l).join('');

/** What each letter means, for `check` and the docs. */
export const ACCESS_MEANING: Readonly<Record<string, string>> = {
  r: 'read',
  w: 'write (includes truncate)',
  c: 'create new files',
  d: 'list and open directories',
  m: 'make directories',
  u: 'remove files and directories',
  s: 'make symlinks',
  a: 'change mode and times',
  x: 'execute',
  n: 'connect to UNIX sockets',
  b: 'bind UNIX sockets (make socket files)',
};

export class AccessError extends Error {
  override name = 'AccessError';
}

const parsed = new Map<string, number>();

/** 'rwc' (or 'all') -> bits. Throws AccessError on an unknown or repeated letter, c without w, or d without r. */
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
  if (text === 'all') return ALL_ACCESS;
  let bits = 0;
  for (const ch of text) {
    const entry = letters.find(([l]) => l === ch);
    if (!entry) {
      throw new AccessError(`unknown access letter '${ch}' in '${text}' (use letters of ${ACCESS_LETTERS}, or 'all')`);
    }
    if (bits & entry[1]) throw new AccessError(`access letter '${ch}' repeated in '${text}'`);
    bits |= entry[1];
  }
  if (bits === 0) throw new AccessError(`empty access: give at least one of ${ACCESS_LETTERS}, or 'all'`);
  if (bits & Access.CREATE && !(bits & Access.WRITE)) throw new AccessError(`'c' (create) needs 'w' in '${text}'`);
  if (bits & Access.DIRECTORY && !(bits & Access.READ)) throw new AccessError(`'d' (directories) needs 'r' in '${text}'`);
  return bits;
}

/** Bits -> letters; every letter reads 'all'. */
export function formatAccess(bits: number): string {
  if (bits === ALL_ACCESS) return 'all';
  return letters.map(([l, b]) => (bits & b ? l : '')).join('') || '-';
}

/** What each operation needs, by the name `check` accepts for it (docs/policy.md). */
export const OPERATION_ACCESS: Readonly<Record<string, string>> = {
  open: 'r',
  read: 'r',
  write: 'w',
  create: 'wc',
  list: 'rd',
  mkdir: 'm',
  unlink: 'u',
  rmdir: 'u',
  'rename-from': 'u',
  'rename-to': 'c',
  'rename-dir-to': 'm',
  'link-from': 'r',
  'link-to': 'c',
  symlink: 's',
  chmod: 'a',
  chown: 'a',
  utimes: 'a',
  truncate: 'w',
  mkfifo: 'c',
  tmpfile: 'c',
  exec: 'x',
  connect: 'n',
  bind: 'b',
};

/**
 * What a request needs, as `check` takes it: letters (without the pairing rules of a grant: a rename's
 * destination needs c alone), 'all', or an operation's name (OPERATION_ACCESS). Throws AccessError.
 */
export function parseRequestAccess(text: string): number {
  if (text === 'all') return ALL_ACCESS;
  const op = Object.hasOwn(OPERATION_ACCESS, text) ? OPERATION_ACCESS[text]! : text;
  let bits = 0;
  for (const ch of op) {
    const entry = letters.find(([l]) => l === ch);
    if (!entry)
      throw new AccessError(
        `unknown access '${text}': give letters of ${ACCESS_LETTERS}, 'all', or an operation (${Object.keys(OPERATION_ACCESS).join(', ')})`,
      );
    bits |= entry[1];
  }
  if (bits === 0) throw new AccessError(`empty access: give letters of ${ACCESS_LETTERS}`);
  return bits;
}

/** 'm make directories, u remove files and directories' for the letters of bits. */
export function explainAccess(bits: number): string {
  return letters
    .filter(([, b]) => bits & b)
    .map(([l]) => `${l} ${ACCESS_MEANING[l]}`)
    .join(', ');
}
