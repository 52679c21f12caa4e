/**
 * connect() and bind() of a UNIX path socket, decided and performed by the broker for the syscall
 * hook (src/hook/sockets.ts brings the program's socket and the path), shaped like serveFileOperation:
 *
 *   normalise the path -> policy.decide (n to connect, b to bind) -> perform beneath the rule's root
 *   -> account (metrics, audit)
 *
 * Performing, on the broker's fd for the program's own socket (the same open file):
 * - connect: the socket file is found with openat2 and O_PATH beneath the root (the resolver's
 *   findInode: no symlink followed unless the rule follows symlinks, and then only beneath the
 *   root), must be a socket (else ECONNREFUSED, as the kernel says), and the kernel connects to
 *   "/proc/self/fd/FD", the magic link of that very inode.
 * - bind: the parent directory is found with openat2 beneath the root (withParent), and the kernel
 *   binds to "/proc/self/fd/DIRFD/NAME": it makes the socket file NAME in that directory, and an
 *   existing NAME (a symlink too) is EADDRINUSE, never followed.
 * Neither ever hands the kernel a path it would resolve from '/' or from a working directory.
 */
import type { ByteString } from '../bytestring.js';
import { E } from '../errno.js';
import { C, native } from '../native.js';
import { Access } from '../policy/access.js';
import { normalise } from '../policy/path.js';
import type { Decision, Peer } from '../policy/policy.js';
import { COMMAND_NAMES, HookOperation } from '../protocol/constants.js';
import type { Operations, Place } from '../resolver/operations.js';
import type { ServiceContext } from './service.js';

/** The native calls this needs (native/hooksockets.c). */
export interface SocketBinding {
  /** the broker's fd for fd in thread tid (process tgid), out = [domain, type, status flags]; or -errno */
  programSocket(tid: number, tgid: number, fd: number, out: Int32Array): number;
  /** connect(sock, "/proc/self/fd/target"): 0 or -errno */
  unixConnectTo(sock: number, target: number): number;
  /** bind(sock, "/proc/self/fd/dirfd/name"): 0 or -errno */
  unixBindAt(sock: number, dirfd: number, name: ByteString): number;
  /** connect(fd, addr, len) of a copied address: 0 or -errno */
  connectRaw(fd: number, addr: Buffer, len: number): number;
  /** 1 once a connect in progress has ended, 0 before, or -errno */
  pollWritable(fd: number): number;
  /** SO_ERROR (positive), 0, or -errno */
  socketError(fd: number): number;
  /** sets or clears O_NONBLOCK on the open file: 0 or -errno */
  setNonblock(fd: number, on: boolean): number;
}

export const sockets = native as unknown as SocketBinding;

export type SocketOperation = 'connect' | 'bind';

/**
 * Decides and performs one connect or bind of sock (the broker's fd for the program's AF_UNIX
 * socket) to path (absolute, as the program named it). 0 or -errno. quiet: a -EAGAIN result is not
 * recorded (the caller tries again: a blocking connect to a listener whose backlog is full).
 */
export function serveSocketOperation(
  ctx: ServiceContext,
  peer: Peer,
  which: SocketOperation,
  path: ByteString,
  sock: number,
  quiet = false,
): number {
  const started = performance.now();
  const access = which === 'connect' ? Access.CONNECT : Access.BIND;
  let decision: Decision | null = null;
  let reason = '';
  let result: number;
  const norm = normalise(path);
  if (!norm.ok) {
    reason = norm.reason;
    result = -(norm.errno === 'ENAMETOOLONG' ? E.ENAMETOOLONG : E.EINVAL);
  } else if (ctx.audit?.refusing) {
    reason = 'the audit log cannot be written (fail-closed)';
    result = -E.EIO;
  } else {
    decision = ctx.policy.decide(peer, norm.path, access);
    reason = decision.reason;
    if (!decision.allowed) result = -decision.errno;
    else {
      const ops = ctx.resolver.operations;
      const at: Place = { root: decision.root, rest: decision.rest, options: decision.open };
      ops.refusal = '';
      result = which === 'connect' ? connectBeneath(ops, at, sock) : ops.withParent(at, (dir, name) => sockets.unixBindAt(sock, dir, name));
      if (result < 0 && ops.refusal) reason = ops.refusal;
    }
  }
  if (quiet && result === -E.EAGAIN) return result;
  const allowed = decision?.allowed ?? false;
  const command = which === 'connect' ? HookOperation.SOCKET_CONNECT : HookOperation.SOCKET_BIND;
  ctx.metrics.recordOperation(COMMAND_NAMES[command]!, allowed, allowed && result < 0 ? -result : 0);
  ctx.audit?.record({
    time: Date.now(),
    peer,
    command,
    path,
    flags: 0,
    mode: 0,
    access,
    allowed,
    rule: decision?.rule ?? null,
    errno: result < 0 ? -result : allowed ? 0 : E.EACCES,
    reason,
    latencyUs: Math.round((performance.now() - started) * 1000),
  });
  return result;
}

function connectBeneath(ops: Operations, at: Place, sock: number): number {
  const found = ops.findInode(at, false);
  if (typeof found === 'number') return found;
  try {
    if ((found.mode & C.S_IFMT) !== C.S_IFSOCK) {
      ops.refusal = 'not a socket';
      return -E.ECONNREFUSED;
    }
    return sockets.unixConnectTo(sock, found.fd);
  } finally {
    native.close(found.fd);
  }
}
