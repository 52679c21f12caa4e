/**
 * The open family (open, creat, openat, openat2) as the broker answers it, in order:
 *   1. the flags (and openat2's struct open_how, size-checked) from the notification;
 *   2. the path, copied once from the program's memory (bounded, NUL-terminated);
 *   3. a relative path resolved against the calling thread's cwd or dirfd;
 *   4. NOTIF_ID_VALID: everything read so far belongs to the call that still waits;
 *   5. /proc and /sys (procfs.ts), O_PATH, CONTINUE where Landlock alone enforces the answer
 *      (continuation.ts), or else the broker's own request path: the same policy, sessions,
 *      audit, metrics and resolver as an open over the hook socket (serveOpen).
 * The server (server.ts) then installs the fd with ADDFD, or answers the errno.
 */
import { serveFileOperation, type FileOperation } from '../broker/operations.js';
import { serveOpen, type OpenRequest, type ServiceContext } from '../broker/service.js';
import { fromBytes, type ByteString } from '../bytestring.js';
import { E } from '../errno.js';
import { C, native } from '../native.js';
import { Access } from '../policy/access.js';
import { normalise } from '../policy/path.js';
import type { Peer } from '../policy/policy.js';
import { Command } from '../protocol/constants.js';
import type { Continuation } from './continuation.js';
import { umaskOf } from './fileops.js';
import { notify } from './native.js';
import type { Notification } from './notification.js';
import { cgroupOf, openBeneath, openFact, ownCgroupFile, processOf, procPath, readOnlyFlags, type ProcPath } from './procfs.js';
import { noRule, openSystemFile } from './system-files.js';
import { AT_FDCWD, locate } from './thread-paths.js';

/** Answers a handler gives besides an fd (>= 0) or -errno. */
export const CONTINUE = -0x10_0000;
/** The call is gone (the target died, or a signal abandoned the call): nothing to answer. */
export const GONE = -0x10_0001;
/** The call succeeded with the value 0 and no fd (mkdir, rename, ...): an answer >= 0 is an fd to install. */
export const DONE = -0x10_0002;

export interface HookStats {
  notifications: number;
  /** answered with an fd the broker opened (ADDFD) */
  installed: number;
  /** run by the kernel itself (CONTINUE) */
  continued: number;
  /** answered with an errno */
  refused: number;
  /** calls whose target was gone before the answer */
  gone: number;
  /** ADDFD failed (EMFILE in the program...): answered with that errno */
  installFailed: number;
  /** own /proc entries and machine facts answered */
  proc: number;
  /** performed by the broker and answered 0: file operations, connect, bind */
  performed: number;
}

/** What a handler may use: the broker's request path, and the launch's facts. */
export interface HookHost {
  readonly listener: number;
  context(): ServiceContext;
  readonly peer: Peer;
  readonly continuation: Continuation;
  readonly stats: HookStats;
}

/** One trapped call being answered. The server reuses it; handlers fill cloexec. */
export interface HookCall {
  n: Notification;
  host: HookHost;
  /** install the fd close-on-exec (the program asked for O_CLOEXEC) */
  cloexec: boolean;
}

export type Handler = (call: HookCall) => number | Promise<number>;

/** The kernel's O_LARGEFILE (Node's constant is 0 on 64-bit): implied on 64-bit, so dropped. */
const KERNEL_O_LARGEFILE = 0o100000;
/**
 * Every open(2) flag the kernel knows (its VALID_OPEN_FLAGS); open and openat ignore the rest, openat2
 * refuses them. Not the broker's allow-list (src/broker/flags.ts ALLOWED): this says what the program
 * asked, as the kernel reads it; that decides what the broker will do.
 */
const VALID_OPEN_FLAGS =
  C.O_ACCMODE |
  C.O_CREAT |
  C.O_EXCL |
  C.O_NOCTTY |
  C.O_TRUNC |
  C.O_APPEND |
  C.O_NONBLOCK |
  C.O_DSYNC |
  C.FASYNC |
  C.O_DIRECT |
  KERNEL_O_LARGEFILE |
  C.O_DIRECTORY |
  C.O_NOFOLLOW |
  C.O_NOATIME |
  C.O_CLOEXEC |
  C.O_PATH |
  C.O_TMPFILE |
  C.O_SYNC;
const RESOLVE_KNOWN =
  C.RESOLVE_NO_XDEV | C.RESOLVE_NO_MAGICLINKS | C.RESOLVE_NO_SYMLINKS | C.RESOLVE_BENEATH | C.RESOLVE_IN_ROOT | C.RESOLVE_CACHED;
/** struct open_how: u64 flags, mode, resolve */
const OPEN_HOW_SIZE = 24;
const PAGE = 4096;

const pathBuffer = Buffer.allocUnsafeSlow(4096);
const howBuffer = Buffer.allocUnsafeSlow(PAGE);

/** One handler for the four calls: they differ only in where their arguments are. */
export function openFamily(call: HookCall, which: 'open' | 'creat' | 'openat' | 'openat2'): number | Promise<number> {
  const n = call.n;
  let dirfd = AT_FDCWD;
  let pathArg = 0;
  let flags: number;
  let mode = 0;
  let resolve = 0;
  switch (which) {
    case 'open':
      flags = n.uint(1) & VALID_OPEN_FLAGS;
      mode = n.uint(2) & 0o7777;
      break;
    case 'creat':
      flags = C.O_CREAT | C.O_WRONLY | C.O_TRUNC;
      mode = n.uint(1) & 0o7777;
      break;
    case 'openat':
      dirfd = n.int(0);
      pathArg = 1;
      flags = n.uint(2) & VALID_OPEN_FLAGS;
      mode = n.uint(3) & 0o7777;
      break;
    case 'openat2': {
      dirfd = n.int(0);
      pathArg = 1;
      const how = readOpenHow(n);
      if (how < 0) return how;
      flags = howBuffer.readUInt32LE(0);
      mode = howBuffer.readUInt32LE(8);
      resolve = howBuffer.readUInt32LE(16);
      break;
    }
  }
  // O_ASYNC on open() enables nothing (open(2), BUGS: only fcntl F_SETFL does), and the broker refuses
  // the bit (invariant 3): drop it, so that the program gets the open the kernel would give it.
  flags = (flags & ~(KERNEL_O_LARGEFILE | C.FASYNC)) >>> 0;
  if (resolve & C.RESOLVE_CACHED) return -E.EAGAIN; // "not in the cache": callers retry without it

  // 2. the path, once
  const length = notify.readString(n.tid, n.uint(pathArg), n.high(pathArg), pathBuffer);
  if (length === -E.ESRCH) return GONE;
  if (length < 0) return length;
  const raw = fromBytes(pathBuffer, 0, length);

  // 3. where it points for this thread
  const where = locate(n.tid, dirfd, raw, { beneath: (resolve & C.RESOLVE_BENEATH) !== 0, inRoot: (resolve & C.RESOLVE_IN_ROOT) !== 0 });

  // 4. all of the above is about the call that still waits (not a reused thread id)
  if (notify.notifyIdValid(call.host.listener, n.idLo, n.idHi) !== 0) return GONE;
  if (!where.ok) return where.errno === E.ESRCH ? GONE : -where.errno;
  const path = where.path;
  call.cloexec = (flags & C.O_CLOEXEC) !== 0;

  // 5. answer
  // O_TMPFILE: an unnamed file in the directory path (c there); linkat(AT_EMPTY_PATH) may name it later (fileops.ts).
  if ((flags & C.O_TMPFILE) === C.O_TMPFILE) return tmpfile(call, path, flags, mode);
  const proc = procPath(path);
  if (proc !== null) return openProc(call, proc, flags);
  const host = call.host;
  const ctx = host.context();
  if (flags & C.O_PATH) return pathOnly(host, ctx, path);
  const grants = host.continuation;
  if (grants.grantsAllow(path, flags)) {
    if (grants.usable(ctx.policy)) return CONTINUE;
    // A rule lies inside the grants: the policy decides what it covers, the broker opens the rest.
    if (noRule(ctx, host.peer, path)) return openSystemFile(ctx, host.peer, grants, path, flags);
  }
  return serveOpen(ctx, host.peer, openRequest(path, flags, mode), null);
}

function tmpfile(call: HookCall, path: ByteString, flags: number, mode: number): number {
  const host = call.host;
  const keep = (flags & (C.O_ACCMODE | C.O_EXCL | C.O_CLOEXEC)) >>> 0;
  const umask = umaskOf(call.n.tid);
  const op: FileOperation = {
    command: Command.TMPFILE,
    path,
    path2: '',
    flags: keep,
    mode: mode & ~umask,
    uid: 0,
    gid: 0,
    a: 0,
    b: 0,
    c: 0,
    d: 0,
  };
  return serveFileOperation(host.context(), host.peer, op);
}

/** Reads openat2's struct open_how as the kernel checks it: size, zeroed tail, known bits. */
function readOpenHow(n: Notification): number {
  const size = n.value(3);
  if (size < OPEN_HOW_SIZE) return -E.EINVAL;
  if (size > PAGE) return -E.E2BIG;
  const got = notify.readMemory(n.tid, n.uint(2), n.high(2), howBuffer, size);
  if (got === -E.ESRCH) return GONE;
  if (got < 0) return -E.EFAULT;
  for (let i = OPEN_HOW_SIZE; i < size; i++) if (howBuffer[i] !== 0) return -E.E2BIG;
  const flags = howBuffer.readUInt32LE(0),
    mode = howBuffer.readUInt32LE(8),
    resolve = howBuffer.readUInt32LE(16);
  if (howBuffer.readUInt32LE(4) !== 0 || howBuffer.readUInt32LE(12) !== 0 || howBuffer.readUInt32LE(20) !== 0) return -E.EINVAL;
  if ((flags & ~VALID_OPEN_FLAGS) >>> 0 !== 0 || (resolve & ~RESOLVE_KNOWN) >>> 0 !== 0 || mode & ~0o7777) return -E.EINVAL;
  if (mode !== 0 && !(flags & C.O_CREAT) && (flags & C.O_TMPFILE) !== C.O_TMPFILE) return -E.EINVAL;
  if (resolve & C.RESOLVE_BENEATH && resolve & C.RESOLVE_IN_ROOT) return -E.EINVAL;
  return 0;
}

/** The scratch request every trapped open fills, as the connection does: serveOpen copies what outlives it. */
const scratchRequest: OpenRequest = { command: Command.QEMU_OPEN, path: '', flags: 0, mode: 0 };

/** The request the broker's request path takes, made from a trapped call: an open, as QEMU_OPEN says it. */
function openRequest(path: ByteString, flags: number, mode: number): OpenRequest {
  scratchRequest.path = path;
  scratchRequest.flags = flags >>> 0;
  scratchRequest.mode = mode;
  return scratchRequest;
}

/**
 * O_PATH: ADDFD cannot install an O_PATH fd, and an O_PATH fd reads and writes nothing: its
 * uses that matter are trapped again (openat relative to it is resolved from its real path and
 * decided; reopening it through /proc/self/fd is a magic-link walk, refused) or checked by Landlock
 * (execveat). The kernel runs it (CONTINUE) where the grants cover the path or the policy would let
 * the program read or list it; elsewhere it is refused with the policy's errno, so that a path the policy
 * refuses looks refused to every kind of open.
 */
function pathOnly(host: HookHost, ctx: ServiceContext, path: ByteString): number {
  const grants = host.continuation;
  if (grants.beneath(path) && (grants.usable(ctx.policy) || noRule(ctx, host.peer, path))) return CONTINUE;
  const norm = normalise(path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path);
  if (!norm.ok) return -ctx.policy.denyErrno;
  let decision = ctx.policy.decide(host.peer, norm.path, Access.READ);
  if (!decision.allowed && decision.rule?.effect === 'allow') {
    decision = ctx.policy.decide(host.peer, norm.path, Access.DIRECTORY); // a directory it may only list
  }
  return decision.allowed ? CONTINUE : -decision.errno;
}

/** /proc and /sys: the program's own entries and the machine facts (procfs.ts); the rest refused. */
function openProc(call: HookCall, p: ProcPath, flags: number): number {
  const { n, host } = call;
  if (p.kind === 'refused' || !readOnlyFlags(flags)) return -E.EACCES;
  host.stats.proc++;
  if (p.kind === 'fact') return openFact(p.mount, p.rest, flags);
  const tgid = processOf(n.tid);
  if (tgid < 0) return GONE;
  if (p.kind === 'cgroup') {
    const cgroup = cgroupOf(tgid);
    if (notify.notifyIdValid(host.listener, n.idLo, n.idHi) !== 0) return GONE;
    if (cgroup === null || !ownCgroupFile(p.rest, cgroup)) return -E.EACCES;
    return openFact('/sys/fs/cgroup', p.rest, flags);
  }
  if (p.pid !== null && p.pid !== tgid && p.pid !== n.tid) return -E.EACCES; // another process's
  const dir = p.thread || (p.pid === n.tid && n.tid !== tgid) ? `/proc/${tgid}/task/${n.tid}` : `/proc/${tgid}`;
  const dirFd = native.open(dir, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  if (dirFd < 0) return GONE;
  // The directory is the caller's only if the caller still waits: else its id may have been reused.
  if (notify.notifyIdValid(host.listener, n.idLo, n.idHi) !== 0) {
    native.close(dirFd);
    return GONE;
  }
  const fd = openBeneath(dirFd, p.rest, flags);
  native.close(dirFd);
  return fd;
}
