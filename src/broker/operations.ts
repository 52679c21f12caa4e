/**
 * What the broker does with one file operation (mkdir, unlink, rename, link, symlink, chmod, chown,
 * utimes, truncate, access, mkfifo, O_TMPFILE), shaped like serveOpen:
 *
 *   validate flags -> normalise the path(s) -> policy.decide at each end -> perform beneath the
 *     root(s) the decisions name (the resolver's operations, src/resolver/operations.ts, which pin
 *     the roots) -> account (metrics, audit)
 *
 * Both ways in call it: the wire protocol's file-operation commands (connection.ts) and the syscall
 * hook, which builds the same FileOperation from the trapped syscall's arguments. Rights per
 * operation (docs/policy.md):
 *
 * | operation           | needs                                                                  |
 * |---------------------|------------------------------------------------------------------------|
 * | mkdir               | m at the path                                                          |
 * | unlink, rmdir       | u at the path                                                          |
 * | rename              | u at the source; c (a directory: m) at the destination; replacing what |
 * |                     | is there needs u there too (and without u, RENAME_NOREPLACE is added)  |
 * | rename (EXCHANGE)   | u and c (or m, by what arrives) at both ends                           |
 * | link                | r at the source (and its rule's hardlinks setting), c at the new name  |
 * | symlink             | s at the new name; the target is stored as given                       |
 * | chmod, chown        | a; chown never changes ownership                                        |
 * | utimes              | a; setting both times to now (touch) needs a or w                      |
 * | truncate            | w                                                                      |
 * | mkfifo              | c, and the rule's fifos = true                                         |
 * | tmpfile             | c on the directory                                                     |
 * | access              | answered by the policy: R_OK r, W_OK w (a directory: c), X_OK x (a     |
 * |                     | directory: r); F_OK: exists beneath an allow rule                      |
 *
 * For the syscall hook: how a trapped syscall becomes a FileOperation (paths made absolute from the
 * program's cwd or dirfd first, as for an open; flags the syscall has and the command does not take
 * are the hook's to refuse or drop):
 *
 * | syscall                                   | command, fields                                           |
 * |-------------------------------------------|-----------------------------------------------------------|
 * | mkdir, mkdirat                            | MKDIR path, mode                                          |
 * | unlink, unlinkat(0) / rmdir, unlinkat(AT_REMOVEDIR) | UNLINK path / RMDIR path                        |
 * | rename, renameat, renameat2               | RENAME path, path2, flags (RENAME_NOREPLACE, RENAME_EXCHANGE; RENAME_WHITEOUT: EINVAL) |
 * | link, linkat (no AT_EMPTY_PATH)           | LINK path, path2 (AT_SYMLINK_FOLLOW: resolve it in the hook, or refuse) |
 * | linkat(fd, "", ..., AT_EMPTY_PATH)        | serveLinkUnnamed(fd from pidfd_getfd, path2)              |
 * | symlink, symlinkat                        | SYMLINK path = target as given, path2 = new name          |
 * | chmod, fchmodat(, AT_SYMLINK_NOFOLLOW)    | CHMOD path, mode, flags                                   |
 * | chown, lchown, fchownat                   | CHOWN path, uid, gid (u32; -1 unchanged), flags           |
 * | utimensat, utimes, utime, futimesat       | UTIMES path, a b c d (NULL times: both UTIME_NOW), flags  |
 * | truncate                                  | TRUNCATE path, a = length                                 |
 * | access, faccessat, faccessat2             | ACCESS path, mode (R_OK 4, W_OK 2, X_OK 1; F_OK 0)        |
 * | mknod, mknodat of S_IFIFO                 | MKFIFO path, mode (any other type: EPERM in the hook)     |
 * | open, openat, openat2 with O_TMPFILE      | TMPFILE path (the directory), flags = access mode (+O_EXCL, O_CLOEXEC) |
 *
 * Each operation is synchronous, on the event loop. (On a network filesystem these syscalls may wait
 * as an open may; running them on the resolver's pool is a follow-up: see src/resolver/operations.ts.)
 */
import { fromBytes, type ByteString } from '../bytestring.js';
import { E } from '../errno.js';
import { C } from '../native.js';
import { Access } from '../policy/access.js';
import { normalise } from '../policy/path.js';
import type { Decision, Peer } from '../policy/policy.js';
import { Command, COMMAND_NAMES } from '../protocol/constants.js';
import type { Request } from '../protocol/frames.js';
import type { Operations, Place } from '../resolver/operations.js';
import type { ServiceContext } from './service.js';

/**
 * One file operation, as the wire or the hook states it: the frame's numbers (command MKDIR ...
 * TMPFILE; CHOWN's uid and gid, u32, 0xffffffff or -1 keeping an id; UTIMES' a b c d, atime sec and
 * nsec then mtime's; TRUNCATE's length in a; unused ones 0) and its names as byte strings.
 */
export interface FileOperation extends Pick<Request, 'command' | 'flags' | 'mode' | 'uid' | 'gid' | 'a' | 'b' | 'c' | 'd'> {
  /** the path (SYMLINK: the target, stored as given) */
  path: ByteString;
  /** RENAME, LINK: the destination; SYMLINK: the new name; '' for the others */
  path2: ByteString;
}

/** The FileOperation a decoded file-operation frame carries (names copied out of the buffer). */
export function fileOperationFrom(req: Request): FileOperation {
  return {
    command: req.command,
    path: fromBytes(req.buf, req.nameOffset, req.nameOffset + req.nameLength),
    path2: req.name2Length ? fromBytes(req.buf, req.name2Offset, req.name2Offset + req.name2Length) : '',
    flags: req.flags,
    mode: req.mode,
    uid: req.uid,
    gid: req.gid,
    a: req.a,
    b: req.b,
    c: req.c,
    d: req.d,
  };
}

/** What one request got to, for the accounting at the end. */
interface Outcome {
  errno: number;
  reason: string;
  /** access needed at the first path, and at the second */
  access: number;
  access2: number;
  decision: Decision | null;
}

/**
 * Decides and performs one file operation. Returns 0 (TMPFILE: an fd the caller sends and closes),
 * or -errno. Never throws on bad input.
 */
export function serveFileOperation(ctx: ServiceContext, peer: Peer, op: FileOperation): number {
  const started = performance.now();
  const out: Outcome = { errno: 0, reason: '', access: 0, access2: 0, decision: null };
  const result = perform(ctx, peer, op, out);
  if (result < 0 && out.errno === 0) out.errno = -result;
  const allowed = out.decision?.allowed ?? false;
  const name = COMMAND_NAMES[op.command] ?? String(op.command);
  ctx.metrics.recordOperation(name, allowed, allowed ? out.errno : 0);
  if (!allowed && out.errno === 0) out.errno = E.EACCES; // never "allowed nothing, errno 0"
  const elapsedMs = performance.now() - started;
  ctx.audit?.record({
    time: Date.now(),
    peer,
    command: op.command,
    path: op.path,
    path2: op.path2 || undefined,
    flags: op.flags,
    mode: op.mode,
    access: out.access,
    access2: out.access2 || undefined,
    allowed,
    rule: out.decision?.rule ?? null,
    errno: result < 0 ? -result : 0,
    reason: out.reason,
    latencyUs: Math.round(elapsedMs * 1000),
  });
  return result;
}

/**
 * The hook's "link an fd" (linkat(fd, "", dir, name, AT_EMPTY_PATH), as after open(O_TMPFILE)): fd is
 * the broker's copy of the program's fd (pidfd_getfd), which the caller closes. Needs c at path; only
 * an unnamed file may be linked so (operations.ts, linkUnnamed).
 */
export function serveLinkUnnamed(ctx: ServiceContext, peer: Peer, fd: number, path: ByteString): number {
  const started = performance.now();
  const out: Outcome = { errno: 0, reason: '', access: 0, access2: 0, decision: null };
  const ops = ctx.resolver.operations;
  const to = decideAt(ctx, peer, path, Access.CREATE, out, true);
  const result = typeof to === 'number' ? to : done(ops, ops.linkUnnamed(fd, to), out);
  const allowed = out.decision?.allowed ?? false;
  ctx.metrics.recordOperation('link', allowed, allowed && result < 0 ? -result : 0);
  ctx.audit?.record({
    time: Date.now(),
    peer,
    command: Command.LINK,
    path: `/proc/self/fd/${fd}`,
    path2: path,
    flags: 0,
    mode: 0,
    access: 0,
    access2: out.access2,
    allowed,
    rule: out.decision?.rule ?? null,
    errno: result < 0 ? -result : 0,
    reason: out.reason,
    latencyUs: Math.round((performance.now() - started) * 1000),
  });
  return result;
}

const NOFOLLOW_ONLY = C.AT_SYMLINK_NOFOLLOW;
const AT_EACCESS = 0x200;

function perform(ctx: ServiceContext, peer: Peer, op: FileOperation, out: Outcome): number {
  const bad = flagsError(op);
  if (bad) {
    out.reason = 'flags refused';
    return -bad;
  }
  if (ctx.audit?.refusing) {
    out.reason = 'the audit log cannot be written (fail-closed)';
    return -E.EIO;
  }
  const ops = ctx.resolver.operations;
  const noFollow = (op.flags & NOFOLLOW_ONLY) !== 0;
  switch (op.command) {
    case Command.MKDIR:
      return single(ctx, peer, op.path, Access.MKDIR, out, (at) => ops.mkdir(at, op.mode), ops);
    case Command.UNLINK:
      return single(ctx, peer, op.path, Access.REMOVE, out, (at) => ops.unlink(at, false), ops);
    case Command.RMDIR:
      return single(ctx, peer, op.path, Access.REMOVE, out, (at) => ops.unlink(at, true), ops);
    case Command.SYMLINK:
      return single(ctx, peer, op.path2, Access.SYMLINK, out, (at) => ops.symlink(op.path, at), ops, true);
    case Command.CHMOD:
      return single(ctx, peer, op.path, Access.ATTRIBUTES, out, (at) => ops.chmod(at, op.mode, noFollow), ops);
    case Command.CHOWN:
      return single(ctx, peer, op.path, Access.ATTRIBUTES, out, (at) => ops.chown(at, op.uid | 0, op.gid | 0, noFollow), ops);
    case Command.UTIMES: {
      // touch(1) on a file one may write sets both times to now: unconfined, write permission is enough.
      const touch = op.b === C.UTIME_NOW && op.d === C.UTIME_NOW;
      const need = touch && !allows(ctx, peer, op.path, Access.ATTRIBUTES) ? Access.WRITE : Access.ATTRIBUTES;
      return single(ctx, peer, op.path, need, out, (at) => ops.utimes(at, op.a, op.b, op.c, op.d, noFollow), ops);
    }
    case Command.TRUNCATE:
      return single(ctx, peer, op.path, Access.WRITE, out, (at) => ops.truncate(at, op.a), ops);
    case Command.TMPFILE:
      return single(ctx, peer, op.path, Access.CREATE, out, (at) => ops.tmpfile(at, op.flags, op.mode), ops);
    case Command.MKFIFO:
      return single(
        ctx,
        peer,
        op.path,
        Access.CREATE,
        out,
        (at) => {
          if (!at.options.fifos) {
            out.reason = 'FIFOs are not allowed by this rule';
            return -E.EACCES;
          }
          return ops.mkfifo(at, op.mode);
        },
        ops,
      );
    case Command.LINK:
      return link(ctx, peer, op, out, ops);
    case Command.RENAME:
      return rename(ctx, peer, op, out, ops);
    case Command.ACCESS:
      return access(ctx, peer, op, out, ops);
    default:
      out.reason = 'unknown file operation';
      return -E.EINVAL;
  }
}

/** The errno for flags or numbers this operation cannot take, or 0. */
function flagsError(op: FileOperation): number {
  const f = op.flags >>> 0;
  switch (op.command) {
    case Command.RENAME: {
      const known = C.RENAME_NOREPLACE | C.RENAME_EXCHANGE;
      if (f & ~known || f === known) return E.EINVAL;
      return 0;
    }
    case Command.CHMOD:
    case Command.CHOWN:
    case Command.UTIMES:
      return f & ~NOFOLLOW_ONLY ? E.EINVAL : 0;
    case Command.ACCESS:
      return f & ~AT_EACCESS || op.mode & ~7 ? E.EINVAL : 0;
    case Command.TRUNCATE:
      return f || op.a < 0 ? E.EINVAL : 0;
    case Command.TMPFILE: {
      const acc = f & C.O_ACCMODE;
      if (acc !== C.O_WRONLY && acc !== C.O_RDWR) return E.EINVAL; // as open(2) with O_TMPFILE
      return f & ~(C.O_ACCMODE | C.O_EXCL | C.O_CLOEXEC) ? E.EINVAL : 0;
    }
    default:
      return f ? E.EINVAL : 0;
  }
}

/** Normalises and decides one end: where it lies (its root by path; the resolver pins it while it performs), or -errno. */
function decideAt(ctx: ServiceContext, peer: Peer, raw: ByteString, access: number, out: Outcome, second = false): Place | number {
  if (second) out.access2 |= access;
  else out.access |= access;
  const norm = normalise(raw);
  if (!norm.ok) {
    out.reason = norm.reason;
    return -(norm.errno === 'EINVAL' ? E.EINVAL : norm.errno === 'ENAMETOOLONG' ? E.ENAMETOOLONG : ctx.policy.denyErrno);
  }
  const d = ctx.policy.decide(peer, norm.path, access);
  out.decision = d;
  out.reason = d.reason;
  if (!d.allowed) return -d.errno;
  return { root: d.root, rest: d.rest, options: d.open };
}

/** Whether the policy would allow access at raw. */
function allows(ctx: ServiceContext, peer: Peer, raw: ByteString, access: number): boolean {
  const norm = normalise(raw);
  return norm.ok && ctx.policy.decide(peer, norm.path, access).allowed;
}

function single(
  ctx: ServiceContext,
  peer: Peer,
  raw: ByteString,
  access: number,
  out: Outcome,
  step: (at: Place) => number,
  ops: Operations,
  second = false,
): number {
  const at = decideAt(ctx, peer, raw, access, out, second);
  if (typeof at === 'number') return at;
  return done(ops, step(at), out);
}

/** After the perform step: the operation's own refusal reason, if it gave one. */
function done(ops: Operations, result: number, out: Outcome): number {
  if (result < 0 && ops.refusal) out.reason = ops.refusal;
  return result;
}

/** What arriving at a place needs: c for what is not a directory, m for a directory. */
function arriving(type: number): number {
  return type === C.S_IFDIR ? Access.MKDIR : Access.CREATE;
}

function link(ctx: ServiceContext, peer: Peer, op: FileOperation, out: Outcome, ops: Operations): number {
  // The source needs read: a hard link to a file outside every rule is refused here, by the policy.
  const from = decideAt(ctx, peer, op.path, Access.READ, out);
  if (typeof from === 'number') return from;
  const to = decideAt(ctx, peer, op.path2, Access.CREATE, out, true);
  if (typeof to === 'number') return to;
  return done(ops, ops.link(from, to), out);
}

function rename(ctx: ServiceContext, peer: Peer, op: FileOperation, out: Outcome, ops: Operations): number {
  const exchange = (op.flags & C.RENAME_EXCHANGE) !== 0;
  const from = decideAt(ctx, peer, op.path, Access.REMOVE, out);
  if (typeof from === 'number') return from;
  const moving = ops.typeOf(from);
  if (moving < 0) return done(ops, moving, out);
  const to = decideAt(ctx, peer, op.path2, (exchange ? Access.REMOVE : 0) | arriving(moving), out, true);
  if (typeof to === 'number') return to;
  let flags = op.flags;
  if (exchange) {
    // What comes back to the source must be allowed to arrive there too.
    const back = ops.typeOf(to);
    if (back < 0) return done(ops, back, out);
    const again = decideAt(ctx, peer, op.path, Access.REMOVE | arriving(back), out);
    if (typeof again === 'number') return again;
  } else if (ops.typeOf(to) > 0) {
    // Replacing what is at the destination removes it: that needs u there too.
    const replace = decideAt(ctx, peer, op.path2, Access.REMOVE | arriving(moving), out, true);
    if (typeof replace === 'number') return replace;
  } else if (!allows(ctx, peer, op.path2, Access.REMOVE)) {
    // Nothing there now; if something appears before the rename, without u the kernel must not replace it.
    flags |= C.RENAME_NOREPLACE;
  }
  return done(ops, ops.rename(from, to, flags), out);
}

/**
 * access(2), answered by the policy so that `test -w` tells the truth: the path must exist beneath
 * an allow rule (F_OK), and the rule must grant what each bit asks.
 */
function access(ctx: ServiceContext, peer: Peer, op: FileOperation, out: Outcome, ops: Operations): number {
  const at = decideAt(ctx, peer, op.path, 0, out);
  if (typeof at === 'number') return at;
  const type = ops.typeAt(at);
  if (type < 0) return done(ops, type, out);
  const dir = type === C.S_IFDIR;
  let need = 0;
  if (op.mode & C.R_OK) need |= Access.READ;
  if (op.mode & C.W_OK) need |= dir ? Access.CREATE : Access.WRITE;
  if (op.mode & C.X_OK) need |= dir ? Access.READ : Access.EXECUTE;
  if (need === 0) return 0;
  const again = decideAt(ctx, peer, op.path, need, out);
  return typeof again === 'number' ? again : 0;
}
