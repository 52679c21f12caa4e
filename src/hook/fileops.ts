/**
 * The file operations besides open, as the syscall hook answers them: mkdir, unlink, rmdir, rename,
 * link, symlink, chmod, chown, the utimes family, truncate, access and mknod (FIFOs). Each handler,
 * in order:
 *   1. copies each path once from the program's memory (bounded: PATH_MAX);
 *   2. makes it absolute for the calling thread (its cwd or dirfd: thread-paths.ts);
 *   3. checks NOTIF_ID_VALID: all of the above is about the call that still waits;
 *   4. builds the FileOperation and hands it to serveFileOperation (src/broker/operations.ts: the
 *      same policy, sessions, audit, metrics and learn as the wire protocol's commands), and answers
 *      with its result.
 * A decision the policy makes is never CONTINUEd: the kernel would read the path again, and a racing
 * thread could point it elsewhere. Only access(2) beneath the launch's read-only grants, where no
 * rule decides, is continued: it acts on nothing and tells no more than stat(2), which is not trapped.
 *
 * The syscall → FileOperation table is in the top comment of src/broker/operations.ts.
 */
import { lstatSync, readFileSync, readlinkSync } from 'node:fs';
import { serveFileOperation, serveLinkUnnamed, type FileOperation } from '../broker/operations.js';
import { fromBytes, type ByteString } from '../bytestring.js';
import { E } from '../errno.js';
import { C, native } from '../native.js';
import { Command } from '../protocol/constants.js';
import { CONTINUE, DONE, GONE, type HookCall } from './open.js';
import { notify } from './native.js';
import type { Notification } from './notification.js';
import { processOf } from './procfs.js';
import { noRule } from './system-files.js';
import { AT_FDCWD, locate } from './thread-paths.js';

const AT_SYMLINK_NOFOLLOW = 0x100;
const AT_REMOVEDIR = 0x200;
const AT_EACCESS = 0x200;
const AT_SYMLINK_FOLLOW = 0x400;
const AT_EMPTY_PATH = 0x1000;
const W_OK = 2;

const buffers = [Buffer.allocUnsafeSlow(4096), Buffer.allocUnsafeSlow(4096)];
const timesBuffer = Buffer.allocUnsafeSlow(32);

/** The program's bytes at argument arg, copied once: the string, or GONE / -errno. */
function readRaw(n: Notification, arg: number, which: 0 | 1): ByteString | number {
  const buf = buffers[which]!;
  const length = notify.readString(n.tid, n.uint(arg), n.high(arg), buf);
  if (length === -E.ESRCH) return GONE;
  if (length < 0) return length;
  return fromBytes(buf, 0, length);
}

/** An absolute path for the thread's (dirfd, path at arg), or GONE / -errno. ID_VALID is the caller's. */
function readPath(n: Notification, dirfd: number, arg: number, which: 0 | 1): ByteString | number {
  const raw = readRaw(n, arg, which);
  if (typeof raw === 'number') return raw;
  const where = locate(n.tid, dirfd, raw);
  if (!where.ok) return where.errno === E.ESRCH ? GONE : -where.errno;
  return where.path;
}

/** GONE unless the call still waits. */
function stillWaiting(call: HookCall): boolean {
  return notify.notifyIdValid(call.host.listener, call.n.idLo, call.n.idHi) === 0;
}

/** The thread's umask, which the kernel would apply to a mode it creates with (or 0o022). */
export function umaskOf(tid: number): number {
  try {
    const m = /\nUmask:\s*([0-7]+)/.exec(readFileSync(`/proc/${tid}/status`, 'latin1'));
    return m ? parseInt(m[1]!, 8) : 0o022;
  } catch {
    return 0o022;
  }
}

function operation(command: number, path: ByteString, fields: Partial<FileOperation> = {}): FileOperation {
  return { command, path, path2: '', flags: 0, mode: 0, uid: 0, gid: 0, a: 0, b: 0, c: 0, d: 0, ...fields };
}

/** The broker's answer: 0 becomes DONE (an answer >= 0 would be an fd to install). */
function serve(call: HookCall, op: FileOperation): number {
  const host = call.host;
  const result = serveFileOperation(host.context(), host.peer, op);
  return result === 0 ? DONE : result;
}

/** Whether something (anything, a dangling symlink too) has this name. */
function exists(path: ByteString): boolean {
  try {
    return lstatSync(Buffer.from(path, 'latin1'), { throwIfNoEntry: false }) !== undefined;
  } catch {
    return false;
  }
}

/**
 * A refused create of a name that exists: the kernel says EEXIST before it asks any security
 * module (mkdir -p, and Python's and Node's recursive mkdir, walk up through such names).
 */
function creating(result: number, path: ByteString): number {
  return result < 0 && result !== DONE && result !== GONE && result !== -E.EEXIST && exists(path) ? -E.EEXIST : result;
}

/** One path: read, located, checked; then answer(path). */
function onePath(call: HookCall, dirfd: number, arg: number, answer: (path: ByteString) => number): number {
  const path = readPath(call.n, dirfd, arg, 0);
  if (!stillWaiting(call)) return GONE;
  if (typeof path === 'number') return path;
  return answer(path);
}

/** Two paths (each with its dirfd). */
function twoPaths(
  call: HookCall,
  dirfd1: number,
  arg1: number,
  dirfd2: number,
  arg2: number,
  answer: (from: ByteString, to: ByteString) => number,
): number {
  const from = readPath(call.n, dirfd1, arg1, 0);
  const to = typeof from === 'number' ? from : readPath(call.n, dirfd2, arg2, 1);
  if (!stillWaiting(call)) return GONE;
  if (typeof from === 'number') return from;
  if (typeof to === 'number') return to;
  return answer(from, to);
}

// ---- mkdir, unlink, rmdir ------------------------------------------------------------------------

export function mkdir(call: HookCall, at: boolean): number {
  const n = call.n;
  const dirfd = at ? n.int(0) : AT_FDCWD;
  const arg = at ? 1 : 0;
  const mode = n.uint(arg + 1) & 0o7777;
  const umask = umaskOf(n.tid);
  return onePath(call, dirfd, arg, (path) => creating(serve(call, operation(Command.MKDIR, path, { mode: mode & ~umask })), path));
}

/** unlink(path), rmdir(path), unlinkat(dirfd, path, flags). */
export function unlink(call: HookCall, which: 'unlink' | 'rmdir' | 'unlinkat'): number {
  const n = call.n;
  const dirfd = which === 'unlinkat' ? n.int(0) : AT_FDCWD;
  const arg = which === 'unlinkat' ? 1 : 0;
  const flags = which === 'unlinkat' ? n.uint(2) : which === 'rmdir' ? AT_REMOVEDIR : 0;
  if (flags & ~AT_REMOVEDIR) return -E.EINVAL;
  const command = flags & AT_REMOVEDIR ? Command.RMDIR : Command.UNLINK;
  return onePath(call, dirfd, arg, (path) => {
    // unlink("name/") names a directory: the kernel says EISDIR or ENOTDIR, never removes a file.
    if (command === Command.UNLINK && path.length > 1 && path.endsWith('/')) return trailingSlash(path.slice(0, -1));
    return serve(call, operation(command, path));
  });
}

/** unlink("name/"): EISDIR for a directory, ENOTDIR for anything else, ENOENT for nothing. */
function trailingSlash(path: ByteString): number {
  let st;
  try {
    st = lstatSync(Buffer.from(path, 'latin1'), { throwIfNoEntry: false });
  } catch {
    return -E.ENOENT;
  }
  return st === undefined ? -E.ENOENT : st.isDirectory() ? -E.EISDIR : -E.ENOTDIR;
}

// ---- rename, link, symlink -----------------------------------------------------------------------

/** rename(old, new), renameat(od, old, nd, new), renameat2(od, old, nd, new, flags). */
export function rename(call: HookCall, which: 'rename' | 'renameat' | 'renameat2'): number {
  const n = call.n;
  if (which === 'rename')
    return twoPaths(call, AT_FDCWD, 0, AT_FDCWD, 1, (from, to) => serve(call, operation(Command.RENAME, from, { path2: to })));
  const flags = which === 'renameat2' ? n.uint(4) : 0;
  return twoPaths(call, n.int(0), 1, n.int(2), 3, (from, to) => serve(call, operation(Command.RENAME, from, { path2: to, flags })));
}

/** link(old, new), linkat(od, old, nd, new, flags). */
export function link(call: HookCall, at: boolean): number {
  const n = call.n;
  if (!at)
    return twoPaths(call, AT_FDCWD, 0, AT_FDCWD, 1, (from, to) => creating(serve(call, operation(Command.LINK, from, { path2: to })), to));
  const flags = n.uint(4);
  if (flags & ~(AT_SYMLINK_FOLLOW | AT_EMPTY_PATH)) return -E.EINVAL;
  if (flags & AT_EMPTY_PATH) {
    const raw = readRaw(n, 1, 0);
    if (raw === '') return linkHeldFile(call, n.int(0));
    if (typeof raw === 'number' && raw !== -E.EFAULT) return stillWaiting(call) ? raw : GONE;
  }
  return twoPaths(call, n.int(0), 1, n.int(2), 3, (from, to) => {
    if (flags & AT_SYMLINK_FOLLOW) {
      // The classic way to name an O_TMPFILE file without privileges: /proc/self/fd/N.
      const fd = ownFdPath(n.tid, from);
      if (fd !== null) return linkFd(call, fd, to);
      // Otherwise follow: only a source that is not a symlink is linked (the broker never follows).
      let st;
      try {
        st = lstatSync(Buffer.from(from, 'latin1'), { throwIfNoEntry: false });
      } catch {
        st = undefined;
      }
      if (st?.isSymbolicLink()) return -E.EPERM;
    }
    return creating(serve(call, operation(Command.LINK, from, { path2: to })), to);
  });
}

/** linkat(fd, "", newdirfd, new, AT_EMPTY_PATH): the file the program holds gets a name. */
function linkHeldFile(call: HookCall, fd: number): number {
  const n = call.n;
  const to = readPath(n, n.int(2), 3, 1);
  if (!stillWaiting(call)) return GONE;
  if (typeof to === 'number') return to;
  if (fd === AT_FDCWD) return -E.EPERM; // the working directory: a directory cannot be linked
  return linkFd(call, fd, to);
}

function linkFd(call: HookCall, fd: number, to: ByteString): number {
  const n = call.n;
  const tgid = processOf(n.tid);
  if (tgid < 0) return GONE;
  const held = notify.fetchFd(n.tid, tgid, fd);
  if (!stillWaiting(call)) {
    if (held >= 0) native.close(held);
    return GONE;
  }
  if (held < 0) return held === -E.ESRCH ? GONE : held === -E.EBADF ? -E.EBADF : -E.EPERM;
  try {
    const host = call.host;
    const result = serveLinkUnnamed(host.context(), host.peer, held, to);
    return result === 0 ? DONE : creating(result, to);
  } finally {
    native.close(held);
  }
}

/** /proc/self/fd/N, /proc/thread-self/fd/N, /proc/<own pid or tid>/fd/N: N; else null. */
function ownFdPath(tid: number, path: ByteString): number | null {
  const m = /^\/proc\/(self|thread-self|\d+)\/fd\/(\d+)$/.exec(path);
  if (!m) return null;
  if (m[1] !== 'self' && m[1] !== 'thread-self' && Number(m[1]) !== tid && Number(m[1]) !== processOf(tid)) return null;
  return Number(m[2]);
}

/** symlink(target, new), symlinkat(target, newdirfd, new): the target is stored as given. */
export function symlink(call: HookCall, at: boolean): number {
  const n = call.n;
  const target = readRaw(n, 0, 1);
  const dirfd = at ? n.int(1) : AT_FDCWD;
  const arg = at ? 2 : 1;
  const path = typeof target === 'number' ? target : readPath(n, dirfd, arg, 0);
  if (!stillWaiting(call)) return GONE;
  if (typeof target === 'number') return target;
  if (typeof path === 'number') return path;
  if (target === '') return -E.ENOENT;
  return creating(serve(call, operation(Command.SYMLINK, target, { path2: path })), path);
}

// ---- attributes ----------------------------------------------------------------------------------

/** chmod(path, mode), fchmodat(dirfd, path, mode), fchmodat2(dirfd, path, mode, flags). */
export function chmod(call: HookCall, which: 'chmod' | 'fchmodat' | 'fchmodat2'): number {
  const n = call.n;
  const dirfd = which === 'chmod' ? AT_FDCWD : n.int(0);
  const arg = which === 'chmod' ? 0 : 1;
  const mode = n.uint(arg + 1) & 0o7777;
  const flags = which === 'fchmodat2' ? n.uint(3) : 0;
  if (flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH)) return -E.EINVAL;
  return attribute(call, dirfd, arg, flags, (path) => operation(Command.CHMOD, path, { mode, flags: flags & AT_SYMLINK_NOFOLLOW }));
}

/** chown(path, u, g), lchown(path, u, g), fchownat(dirfd, path, u, g, flags). */
export function chown(call: HookCall, which: 'chown' | 'lchown' | 'fchownat'): number {
  const n = call.n;
  const at = which === 'fchownat';
  const dirfd = at ? n.int(0) : AT_FDCWD;
  const arg = at ? 1 : 0;
  const flags = at ? n.uint(4) : which === 'lchown' ? AT_SYMLINK_NOFOLLOW : 0;
  if (flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH)) return -E.EINVAL;
  const uid = n.uint(arg + 1),
    gid = n.uint(arg + 2);
  return attribute(call, dirfd, arg, flags, (path) => operation(Command.CHOWN, path, { uid, gid, flags: flags & AT_SYMLINK_NOFOLLOW }));
}

/**
 * utime(path, {actime, modtime}), utimes(path, timeval[2]), futimesat(dirfd, path, timeval[2]),
 * utimensat(dirfd, path, timespec[2], flags) with a path (the filter lets utimensat(fd, NULL) run).
 */
export function utimes(call: HookCall, which: 'utime' | 'utimes' | 'futimesat' | 'utimensat'): number {
  const n = call.n;
  const at = which === 'futimesat' || which === 'utimensat';
  const dirfd = at ? n.int(0) : AT_FDCWD;
  const arg = at ? 1 : 0;
  const flags = which === 'utimensat' ? n.uint(3) : 0;
  if (flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH)) return -E.EINVAL;
  const timesArg = arg + 1;
  let a = 0,
    b = C.UTIME_NOW,
    c = 0,
    d = C.UTIME_NOW;
  if (n.value(timesArg) !== 0) {
    const size = which === 'utime' ? 16 : 32;
    const got = notify.readMemory(n.tid, n.uint(timesArg), n.high(timesArg), timesBuffer, size);
    if (got === -E.ESRCH) return GONE;
    if (got < 0) return stillWaiting(call) ? -E.EFAULT : GONE;
    if (which === 'utime') {
      a = Number(timesBuffer.readBigInt64LE(0));
      c = Number(timesBuffer.readBigInt64LE(8));
      b = d = 0;
    } else {
      a = Number(timesBuffer.readBigInt64LE(0));
      b = Number(timesBuffer.readBigInt64LE(8));
      c = Number(timesBuffer.readBigInt64LE(16));
      d = Number(timesBuffer.readBigInt64LE(24));
      if (which !== 'utimensat') {
        // timeval: microseconds
        if (b < 0 || b >= 1_000_000 || d < 0 || d >= 1_000_000) return stillWaiting(call) ? -E.EINVAL : GONE;
        b *= 1000;
        d *= 1000;
      } else if (!validNsec(b) || !validNsec(d)) {
        return stillWaiting(call) ? -E.EINVAL : GONE;
      }
    }
  }
  if (b === C.UTIME_OMIT && d === C.UTIME_OMIT) {
    // Nothing to change: the kernel still looks the name up.
    return onePath(call, dirfd, arg, (path) =>
      exists(path.endsWith('/') && path.length > 1 ? path.slice(0, -1) : path) ? DONE : -E.ENOENT,
    );
  }
  return attribute(call, dirfd, arg, flags, (path) => operation(Command.UTIMES, path, { a, b, c, d, flags: flags & AT_SYMLINK_NOFOLLOW }));
}

function validNsec(ns: number): boolean {
  return ns === C.UTIME_NOW || ns === C.UTIME_OMIT || (ns >= 0 && ns < 1_000_000_000);
}

/**
 * The path of an attribute change, or AT_EMPTY_PATH with "": the file the fd names, which has no
 * path the policy can decide on; refused (EPERM, as the deny filter did) rather than guessed.
 * fchmod, fchown and futimens act on a held fd and are not trapped.
 */
function attribute(call: HookCall, dirfd: number, arg: number, flags: number, build: (path: ByteString) => FileOperation): number {
  if (flags & AT_EMPTY_PATH) {
    const raw = readRaw(call.n, arg, 0);
    if (!stillWaiting(call)) return GONE;
    if (raw === '') return -E.EPERM;
  }
  return onePath(call, dirfd, arg, (path) => {
    // glibc's fchmodat(AT_SYMLINK_NOFOLLOW) without fchmodat2 (tar x does it): an O_PATH fd, then
    // chmod("/proc/self/fd/N"). The fd's file is named by its path now, which the policy decides;
    // the magic link is not followed further (the fd may be a symlink's own).
    const fd = ownFdPath(call.n.tid, path);
    if (fd === null) return serve(call, build(path));
    const held = heldPath(call.n.tid, fd);
    if (!stillWaiting(call)) return GONE;
    if (typeof held === 'number') return held;
    const op = build(held);
    op.flags |= AT_SYMLINK_NOFOLLOW;
    return serve(call, op);
  });
}

/** The path the program's fd names now: /proc/TID/fd/N read once; or -errno. */
function heldPath(tid: number, fd: number): ByteString | number {
  let target: ByteString;
  try {
    target = readlinkSync(`/proc/${tid}/fd/${fd}`, 'latin1');
  } catch {
    return -E.EBADF;
  }
  if (target.charCodeAt(0) !== 0x2f || target.endsWith(' (deleted)')) return -E.EPERM;
  return target;
}

/** truncate(path, length). */
export function truncate(call: HookCall): number {
  const n = call.n;
  if (n.high(1) & 0x8000_0000) return -E.EINVAL;
  const length = n.value(1);
  return onePath(call, AT_FDCWD, 0, (path) => serve(call, operation(Command.TRUNCATE, path, { a: length })));
}

// ---- access, mknod -------------------------------------------------------------------------------

/**
 * access(path, mode), faccessat(dirfd, path, mode), faccessat2(dirfd, path, mode, flags): the
 * policy answers for every path it decides, so that `test -w` tells the truth. Beneath the launch's
 * grants where no rule decides (the system directories), the kernel answers (CONTINUE): Landlock
 * does not check access(2), but it is stat(2)'s kind of question. W_OK there is answered EACCES
 * here: the grants are read-only, and root's "yes" would be a lie that a write then contradicts.
 */
export function access(call: HookCall, which: 'access' | 'faccessat' | 'faccessat2'): number {
  const n = call.n;
  const dirfd = which === 'access' ? AT_FDCWD : n.int(0);
  const arg = which === 'access' ? 0 : 1;
  const mode = n.uint(arg + 1);
  const flags = which === 'faccessat2' ? n.uint(3) : 0;
  if (mode & ~7 || flags & ~(AT_EACCESS | AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH)) return -E.EINVAL;
  if (flags & AT_EMPTY_PATH) {
    const raw = readRaw(n, arg, 0);
    if (!stillWaiting(call)) return GONE;
    if (raw === '') return CONTINUE; // the fd the program holds, named by the unchanged argument
  }
  return onePath(call, dirfd, arg, (path) => {
    const host = call.host;
    const ctx = host.context();
    const bare = path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path;
    if (host.continuation.beneath(bare) && (host.continuation.usable(ctx.policy) || noRule(ctx, host.peer, bare))) {
      if (mode & W_OK && !host.continuation.grantedFile(bare)) return exists(bare) ? -E.EACCES : -E.ENOENT;
      return CONTINUE;
    }
    if (/^\/(proc|sys)(\/|$)/.test(bare)) return CONTINUE;
    return serve(call, operation(Command.ACCESS, path, { mode, flags: flags & AT_EACCESS }));
  });
}

/** mknod(path, mode, dev), mknodat(dirfd, path, mode, dev): FIFOs only; anything else EPERM. */
export function mknod(call: HookCall, at: boolean): number {
  const n = call.n;
  const dirfd = at ? n.int(0) : AT_FDCWD;
  const arg = at ? 1 : 0;
  const mode = n.uint(arg + 1);
  if ((mode & C.S_IFMT) !== C.S_IFIFO) return -E.EPERM;
  const umask = umaskOf(n.tid);
  return onePath(call, dirfd, arg, (path) =>
    creating(serve(call, operation(Command.MKFIFO, path, { mode: mode & 0o7777 & ~umask })), path),
  );
}
