/**
 * connect() and bind() as the syscall hook answers them (the filter traps both for every family:
 * the address lies in the program's memory, where no filter can look). In order:
 *   1. the address, copied once (bounded by addrlen, at most a sockaddr_storage);
 *   2. the program's socket, as the broker's own fd for the same open file (pidfd_getfd), and its
 *      domain, type and status flags, as the kernel knows them;
 *   3. a relative socket path resolved against the calling thread's working directory;
 *   4. NOTIF_ID_VALID: everything read so far belongs to the call that still waits;
 *   5. by the socket's domain (which no thread can change, unlike the address in memory):
 *      - AF_UNIX: a path address is decided by the policy (n connect, b bind) and performed by the
 *        broker on its fd for the program's socket, beneath the rule's root (broker/sockets.ts);
 *        an abstract or unnamed one is refused (EACCES), and so is any type but SOCK_STREAM and
 *        SOCK_SEQPACKET. The kernel never runs an AF_UNIX call itself.
 *      - AF_INET, AF_INET6: connect is performed by the broker with the copied address, on its fd
 *        for the program's socket; bind is continued.
 *      - any other domain: bind is continued, connect refused (EACCES).
 *      Why not continue a connect whose socket is not AF_UNIX: CONTINUE makes the kernel look up
 *      the fd number and read the address again; meanwhile another thread may have put an AF_UNIX
 *      socket at that number (dup2) and written a path into the address, which would then be
 *      connected unchecked. A continued bind is safe: making a socket file needs Landlock's
 *      MAKE_SOCK, which the launch never grants. docs/security.md has the whole argument.
 * The program's socket keeps its number, flags and options: nothing is installed in its place.
 */
import { sockets, serveSocketOperation, type SocketOperation } from '../broker/sockets.js';
import { fromBytes } from '../bytestring.js';
import { E } from '../errno.js';
import { C, native } from '../native.js';
import { notify } from './native.js';
import { CONTINUE, GONE, DONE, type HookCall } from './open.js';
import { processOf } from './procfs.js';
import { AT_FDCWD, locate } from './thread-paths.js';

/** sizeof(struct sockaddr_storage): the kernel refuses a longer addrlen (EINVAL) */
const SOCKADDR_STORAGE = 128;
/** offsetof(struct sockaddr_un, sun_path) */
const SUN_PATH = 2;
/** SOCK_TYPE_MASK: SO_TYPE is the type alone, but keep to the kernel's mask */
const TYPE_MASK = 0xf;
/** Waiting for a blocking connect: first and longest pause between looks, in ms. */
const WAIT_FIRST_MS = 1;
const WAIT_MAX_MS = 50;

const address = Buffer.allocUnsafeSlow(SOCKADDR_STORAGE);
const info = new Int32Array(3);

export function socketCall(call: HookCall, which: SocketOperation): number | Promise<number> {
  const n = call.n;
  const host = call.host;
  const fd = n.int(0);
  const length = n.int(2);
  if (length < 0 || length > SOCKADDR_STORAGE) return -E.EINVAL;

  // 1. the address, once
  if (length > 0) {
    const got = notify.readMemory(n.tid, n.uint(1), n.high(1), address, length);
    if (got === -E.ESRCH) return GONE;
    if (got < 0) return -E.EFAULT;
  }

  // 2. the program's socket
  const tgid = processOf(n.tid);
  if (tgid < 0) return GONE;
  const sock = sockets.programSocket(n.tid, tgid, fd, info);
  const [domain, type, status] = [info[0]!, info[1]! & TYPE_MASK, info[2]!];
  try {
    // 3. a UNIX path, where it points for this thread
    const unix = sock >= 0 && domain === C.AF_UNIX ? unixPath(n.tid, length) : null;

    // 4. all of the above is about the call that still waits
    if (notify.notifyIdValid(host.listener, n.idLo, n.idHi) !== 0) return GONE;
    if (sock < 0) return sock === -E.ESRCH ? GONE : sock === -E.EPERM ? -E.EACCES : sock;

    // 5. answer
    if (domain !== C.AF_UNIX) {
      if (which === 'bind') return CONTINUE;
      if (domain !== C.AF_INET && domain !== C.AF_INET6) return -E.EACCES;
      return settle(connectCopy(call, sock, length, (status & C.O_NONBLOCK) !== 0));
    }
    if (unix === null) return -E.EINVAL;
    if (typeof unix === 'number') return unix === -E.ESRCH ? GONE : unix;
    if (type !== C.SOCK_STREAM && type !== C.SOCK_SEQPACKET) return -E.EACCES;
    const ctx = host.context();
    if (which === 'bind' || status & C.O_NONBLOCK) return settle(serveSocketOperation(ctx, host.peer, which, unix, sock));
    return settle(connectBlocking(call, unix, sock));
  } finally {
    if (sock >= 0) closeLater(sock);
  }
}

/** A result as the server takes it: DONE for 0 (nothing to install), else the -errno. */
function settle(r: number | Promise<number>): number | Promise<number> {
  return typeof r === 'number' ? (r === 0 ? DONE : r) : r.then((v) => (v === 0 ? DONE : v));
}

/** The sockets the broker still uses after the handler returned (an async wait): closed when done. */
const inUse = new Map<number, number>();

function closeLater(sock: number): void {
  if (!inUse.has(sock)) native.close(sock);
}

function hold<T>(sock: number, work: Promise<T>): Promise<T> {
  inUse.set(sock, (inUse.get(sock) ?? 0) + 1);
  return work.finally(() => {
    const left = (inUse.get(sock) ?? 1) - 1;
    if (left > 0) inUse.set(sock, left);
    else {
      inUse.delete(sock);
      native.close(sock);
    }
  });
}

/**
 * The UNIX address in the copy: an absolute path; null for a wrong family or length (EINVAL, as
 * the kernel); -EACCES for an abstract or unnamed address; or -errno from resolving it.
 */
function unixPath(tid: number, length: number): string | number | null {
  if (length < SUN_PATH || address.readUInt16LE(0) !== C.AF_UNIX) return null;
  if (length === SUN_PATH || address[SUN_PATH] === 0) return -E.EACCES; // unnamed (autobind) or abstract
  // sun_path need not end in a NUL: the kernel stops at addrlen, or at the first NUL before it.
  const nul = address.indexOf(0, SUN_PATH);
  const raw = fromBytes(address, SUN_PATH, nul >= 0 && nul < length ? nul : length);
  const where = locate(tid, AT_FDCWD, raw);
  if (!where.ok) return where.errno === E.ESRCH ? -E.ESRCH : -where.errno;
  if (where.path.endsWith('/')) return -E.ENOENT;
  return where.path;
}

const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A connect on a blocking socket: the broker never blocks, so the program's socket is made
 * non-blocking for the broker's try (a few microseconds: the program's thread is waiting in this
 * very connect) and blocking again after. A listener whose backlog is full answers EAGAIN: then the
 * broker tries again, with the policy decided again each time, until it is accepted or the call is
 * gone, as the kernel would wait.
 */
function connectBlocking(call: HookCall, path: string, sock: number): number | Promise<number> {
  const { host, n } = call;
  const attempt = (quiet: boolean): number => {
    const set = sockets.setNonblock(sock, true);
    if (set < 0) return set;
    const r = serveSocketOperation(host.context(), host.peer, 'connect', path, sock, quiet);
    sockets.setNonblock(sock, false);
    return r;
  };
  const first = attempt(true);
  if (first !== -E.EAGAIN) return first;
  const { idLo, idHi } = n;
  return hold(
    sock,
    (async () => {
      for (let wait = WAIT_FIRST_MS; ; wait = Math.min(wait * 2, WAIT_MAX_MS)) {
        await pause(wait);
        if (notify.notifyIdValid(host.listener, idLo, idHi) !== 0) return GONE;
        const r = attempt(true);
        if (r !== -E.EAGAIN) return r;
      }
    })(),
  );
}

/**
 * connect() of the copied AF_INET or AF_INET6 address, on the broker's fd for the program's socket.
 * A blocking socket is made non-blocking for the broker's connect, which then ends in the
 * background (EINPROGRESS): the broker looks until it has, restores blocking, and answers with
 * its outcome (SO_ERROR), as the program's blocking connect would have.
 */
function connectCopy(call: HookCall, sock: number, length: number, nonblocking: boolean): number | Promise<number> {
  if (nonblocking) return sockets.connectRaw(sock, address, length);
  const set = sockets.setNonblock(sock, true);
  if (set < 0) return set;
  const r = sockets.connectRaw(sock, address, length);
  if (r !== -E.EINPROGRESS) {
    sockets.setNonblock(sock, false);
    return r;
  }
  const { host, n } = call;
  const { idLo, idHi } = n;
  return hold(
    sock,
    (async () => {
      for (let wait = WAIT_FIRST_MS; ; wait = Math.min(wait * 2, WAIT_MAX_MS)) {
        await pause(wait);
        if (sockets.pollWritable(sock) !== 0) break;
        if (notify.notifyIdValid(host.listener, idLo, idHi) !== 0) return GONE;
      }
      sockets.setNonblock(sock, false);
      const err = sockets.socketError(sock);
      return err > 0 ? -err : err;
    })(),
  );
}
