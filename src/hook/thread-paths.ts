/**
 * Where a trapped call's path points, as the calling thread sees it: a relative path is resolved
 * against that thread's working directory (/proc/TID/cwd: threads may chdir apart with unshare) or
 * against its dirfd (/proc/TID/fd/N), then '.' and '..' are collapsed lexically.
 *
 * Everything read here about the thread is read once, and the caller checks NOTIF_ID_VALID after it
 * and before using it: a thread that died (and whose id was reused) would otherwise lend us another
 * process's directory.
 */
import { readlinkSync, statSync } from 'node:fs';
import type { ByteString } from '../bytestring.js';
import { E } from '../errno.js';

export const AT_FDCWD = -100;

/** A path, absolute and without '.', '..' or empty components; or the errno the call fails with. */
export type Located = { ok: true; path: ByteString } | { ok: false; errno: number };

export interface LocateOptions {
  /** openat2's RESOLVE_BENEATH: the result must stay beneath the dirfd (absolute paths: EXDEV) */
  beneath?: boolean;
  /** openat2's RESOLVE_IN_ROOT: the dirfd is '/' for this path */
  inRoot?: boolean;
}

const fail = (errno: number): Located => ({ ok: false, errno });

/** The directory a dirfd (or AT_FDCWD) of thread tid names, or an errno as openat(2) would give it. */
export function directoryOf(tid: number, dirfd: number): Located {
  const link = dirfd === AT_FDCWD ? `/proc/${tid}/cwd` : `/proc/${tid}/fd/${dirfd}`;
  if (dirfd !== AT_FDCWD && dirfd < 0) return fail(E.EBADF);
  let target: ByteString;
  try {
    target = readlinkSync(link, 'latin1');
  } catch (err) {
    // No such fd: EBADF. No such thread: it is gone, and ID_VALID will say so.
    return fail((err as NodeJS.ErrnoException).code === 'ENOENT' && dirfd !== AT_FDCWD ? E.EBADF : E.ESRCH);
  }
  // Sockets, pipes and anonymous inodes read 'socket:[N]', 'pipe:[N]', 'anon_inode:...'.
  if (target.charCodeAt(0) !== 0x2f) return fail(E.ENOTDIR);
  // A removed directory cannot be the base of a name (openat gives ENOENT there too).
  if (target.endsWith(' (deleted)')) return fail(E.ENOENT);
  if (dirfd !== AT_FDCWD) {
    // The magic link leads to the file itself: is it a directory? (stat never opens it)
    const st = statSync(link, { throwIfNoEntry: false });
    if (!st) return fail(E.EBADF);
    if (!st.isDirectory()) return fail(E.ENOTDIR);
  }
  return { ok: true, path: target };
}

/** The absolute path the call names. raw is the program's path bytes, as copied once. */
export function locate(tid: number, dirfd: number, raw: ByteString, options: LocateOptions = {}): Located {
  if (raw.length === 0) return fail(E.ENOENT);
  const absolute = raw.charCodeAt(0) === 0x2f;
  if (absolute && options.beneath) return fail(E.EXDEV);
  if (absolute && !options.inRoot) return { ok: true, path: collapse('/', raw, null) ?? raw };
  const base = directoryOf(tid, dirfd);
  if (!base.ok) return base;
  const joined = collapse(base.path, raw, options.inRoot ? 'in-root' : options.beneath ? 'beneath' : null);
  if (joined === null) return fail(E.EXDEV);
  return { ok: true, path: joined };
}

/**
 * base + '/' + rel with '.', '..' and empty components collapsed; a trailing '/' (or a last '.' or
 * '..') is kept as a trailing '/', which asks for a directory. confine 'beneath': '..' never climbs
 * above base (null when it tries: RESOLVE_BENEATH's EXDEV); 'in-root': it stops at base, which is
 * also what an absolute rel starts from (RESOLVE_IN_ROOT); null: '..' stops at '/', as the kernel's.
 * Lexical: the broker then opens exactly this path, beneath a rule's root, without following links.
 */
export function collapse(base: ByteString, rel: ByteString, confine: 'beneath' | 'in-root' | null): ByteString | null {
  if (rel.charCodeAt(0) === 0x2f && !confine && !/\/\/|\/\.\.?(?:\/|$)/.test(rel)) return rel;
  const out = base === '/' || (rel.charCodeAt(0) === 0x2f && !confine) ? [] : base.slice(1).split('/');
  const floor = confine ? out.length : 0;
  const parts = rel.split('/');
  for (const part of parts) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (out.length > floor) out.pop();
      else if (confine === 'beneath') return null;
      continue;
    }
    out.push(part);
  }
  const last = parts[parts.length - 1];
  const dir = last === '' || last === '.' || last === '..';
  const path = '/' + out.join('/');
  return dir && path !== '/' ? path + '/' : path;
}
