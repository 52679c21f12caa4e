/**
 * Typed loader for the native addon (native/module.c and its parts).
 *
 * The addon holds only the syscalls Node lacks. Calls on the request path return a result or a
 * negative errno; use `check()` to turn a negative result into a Node-style error where throwing is
 * the right thing. Set-up calls throw Node-style errors (`code`, `errno`, `syscall`).
 *
 * Every such error is built here, by systemError(), whichever side throws it: the addon calls it
 * (setErrorFactory, below) with the errno and the syscall's name. One builder, with the complete
 * table of errno names (os.constants) and libuv's wording, as Node's own errors have.
 */
import { createRequire } from 'node:module';
import { getSystemErrorMap } from 'node:util';
import { errnoName } from './errno.js';

/** libuv's names and descriptions by negative errno (on Linux, libuv's codes are -errno); loaded on first use. */
let systemErrors: Map<number, [string, string]> | undefined;

export interface NativeConstants {
  SOCK_STREAM: number;
  SOCK_SEQPACKET: number;
  SOCK_DGRAM: number;
  AF_UNIX: number;
  AF_INET: number;
  AF_INET6: number;
  O_RDONLY: number;
  O_WRONLY: number;
  O_RDWR: number;
  O_ACCMODE: number;
  O_CREAT: number;
  O_EXCL: number;
  O_NOCTTY: number;
  O_TRUNC: number;
  O_APPEND: number;
  O_NONBLOCK: number;
  O_DSYNC: number;
  O_SYNC: number;
  O_DIRECT: number;
  O_LARGEFILE: number;
  O_DIRECTORY: number;
  O_NOFOLLOW: number;
  O_NOATIME: number;
  O_CLOEXEC: number;
  O_PATH: number;
  O_TMPFILE: number;
  FASYNC: number;
  RESOLVE_NO_XDEV: number;
  RESOLVE_NO_MAGICLINKS: number;
  RESOLVE_NO_SYMLINKS: number;
  RESOLVE_BENEATH: number;
  RESOLVE_IN_ROOT: number;
  RESOLVE_CACHED: number;
  S_IFMT: number;
  S_IFREG: number;
  S_IFDIR: number;
  S_IFLNK: number;
  S_IFIFO: number;
  S_IFSOCK: number;
  S_IFCHR: number;
  S_IFBLK: number;
  MSG_TRUNC: number;
  MSG_CTRUNC: number;
  /** OpenPool job kinds */
  JOB_LOOKUP: number;
  JOB_CREATE: number;
  JOB_REOPEN: number;
  JOB_STATFS: number;
  JOB_CLOSE: number;
  UV_READABLE: number;
  UV_WRITABLE: number;
  UV_DISCONNECT: number;
  /** status passed to a receiving poller's callback when the peer has closed */
  STATUS_EOF: number;
  /** the largest legal frame: OPEN_TAGGED's 22 header bytes + a 65535-byte name (MAX_FRAME) */
  FRAME_MAX: number;
  MAX_FDS_PER_MSG: number;
  /** native/fileops.c */
  AT_REMOVEDIR: number;
  RENAME_NOREPLACE: number;
  RENAME_EXCHANGE: number;
  UTIME_NOW: number;
  UTIME_OMIT: number;
  AT_SYMLINK_NOFOLLOW: number;
  R_OK: number;
  W_OK: number;
  X_OK: number;
  F_OK: number;
}

/** What a poller does when its socket is readable. */
export const PollMode = {
  /** only report readiness */
  Notify: 0,
  /** drain messages into the receive arena, keeping received fds for the caller */
  Receive: 1,
  /**
   * drain messages with no control buffer: the kernel never installs a client's fds in this process,
   * drops them at once, and flags the message MSG_CTRUNC (nfds is always 0)
   */
  ReceiveDiscardFds: 2,
} as const;
export type PollMode = (typeof PollMode)[keyof typeof PollMode];

/**
 * callback(events, count, status): events is a UV_* mask; count is the number of messages drained
 * into the arena (receive modes); status is 0, STATUS_EOF when the peer closed, or -errno.
 */
export type PollCallback = (events: number, count: number, status: number) => void;

/** callback(id, result, statMode, statNlink): result is an fd or -errno; the stat facts come with a lookup. */
export type PoolCallback = (id: number, result: number, statMode: number, statNlink: number) => void;

/**
 * A small pool of threads for opens that may block (network and FUSE filesystems, FIFOs). Each job is
 * one resolver step; results come back on the event loop through the callback.
 */
export interface NativeOpenPool {
  /** 0 when queued, -EAGAIN when the queue is full, or another -errno */
  submit(id: number, job: number, dirfd: number, path: string, flags: number, mode: number, resolve: number): number;
  /** [threads, idle, queued, pending] */
  stats(): [number, number, number, number];
  close(): void;
}

export interface NativePoller {
  /** events: UV_READABLE | UV_WRITABLE; 0 stops the watcher */
  start(events: number): void;
  /** whether the watcher keeps the event loop alive */
  ref(on: boolean): void;
  close(): void;
}

interface NativeBinding {
  constants: NativeConstants;
  /** the one builder of Node-style errors, for set-up calls that throw (called with errno > 0) */
  setErrorFactory(factory: (errno: number, syscall: string) => Error): void;
  socket(type: number): number;
  socketpair(type: number, nonblocking: boolean): [number, number];
  /** identity: device, inode and ctime of the socket file, to recognise it at unlink time */
  listenUnix(path: string | Buffer, type: number, mode: number, backlog: number): { fd: number; identity: bigint };
  unlinkSocket(path: string | Buffer, identity: bigint): boolean;
  connectUnix(path: string | Buffer, type: number): number;
  accept(fd: number): number;
  send(fd: number, buf: Uint8Array, offset: number, length: number, passFd: number): number;
  sendFds(fd: number, buf: Uint8Array, fds: number[]): number;
  /** registers the reply batch area: bytes, and [offset, length, fd] per reply */
  setReplyArena(arena: Buffer, meta: Int32Array): void;
  /**
   * sends the first count replies of the batch area with one sendmmsg (SOCK_SEQPACKET), closing the
   * fd of each reply that went out; returns how many went out, -EAGAIN if none could, or -errno
   */
  sendReplies(fd: number, count: number): number;
  /** after each wake-up that received messages, keep polling up to us microseconds before sleeping (0: off) */
  setBusyPoll(us: number): void;
  /** SO_SNDBUF, or -errno */
  sendBufferSize(fd: number): number;
  /** SIOCOUTQ: for a UNIX socket, the memory of sent messages its peer has not read yet; or -errno */
  sendQueued(fd: number): number;
  setRecvArena(arena: Buffer, meta: Int32Array): void;
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  peerGroups(fd: number): number[] | null;
  peerPidfd(fd: number): number;
  socketType(fd: number): number;
  /** what an inherited fd is; path: the bound UNIX address as a byte string ('@...' if abstract) */
  socketInfo(fd: number): { domain: number; type: number; listening: boolean; path: string };
  /** for inherited sockets, which arrive blocking and inheritable */
  setNonblockCloexec(fd: number): void;
  /** bytes waiting in the receive queue (SIOCINQ), or -errno */
  receiveQueued(fd: number): number;
  /** 1 if the peer closed the socket (POLLHUP), 0 if it is there (perhaps having shut its writing only), or -errno */
  peerClosed(fd: number): number;
  /** one SOCK_DGRAM message to a UNIX address ('@name' is abstract); bytes sent or -errno */
  sendDatagram(address: string | Buffer, buf: Uint8Array): number;
  openat2(dirfd: number, path: string | Buffer, flags: number, mode: number, resolve: number): number;
  /** openat2 (pass O_PATH) and fstat of the result in one call; out as for fstat */
  lookup(dirfd: number, path: string | Buffer, flags: number, resolve: number, out: Float64Array): number;
  /**
   * lookup(), and when what it found is a regular file with one link (and ioFlags do not ask for a
   * directory) the reopen with ioFlags too: out[8] = 1 and the result is the open file (or -errno).
   * Otherwise out[8] = 0 and the result is the O_PATH fd (or -errno) for the caller to check.
   * out: Float64Array(9), [0..7] as for fstat.
   */
  openFile(dirfd: number, path: string | Buffer, pathFlags: number, resolve: number, ioFlags: number, out: Float64Array): number;
  /** openat2 with O_CREAT (pass O_EXCL too), then fchmod to exactly mode, whatever the process umask */
  create(dirfd: number, path: string | Buffer, flags: number, mode: number, resolve: number): number;
  open(path: string | Buffer, flags: number, mode: number): number;
  /** opens the inode of an O_PATH fd with real flags, through a procfs /proc/self/fd opened once */
  reopen(fd: number, flags: number): number;
  /** out = [mode, nlink, uid, gid, size, rdev, dev, ino] */
  fstat(fd: number, out: Float64Array): number;
  /** F_DUPFD_CLOEXEC: a new fd for the same open file, or -errno */
  dup(fd: number): number;
  close(fd: number): number;
  // ---- native/fileops.c: the *at calls the broker performs for a program; each 0 (or fd) or -errno.
  // Names are single components in a directory fd found safely (src/resolver/operations.ts).
  /** mkdirat, then the mode set exactly (the broker's process umask does not decide it) */
  mkdirat(dirfd: number, name: string | Buffer, mode: number): number;
  /** flags: 0 or AT_REMOVEDIR */
  unlinkat(dirfd: number, name: string | Buffer, flags: number): number;
  renameat2(olddirfd: number, oldname: string | Buffer, newdirfd: number, newname: string | Buffer, flags: number): number;
  /** a new name for the inode an O_PATH or O_TMPFILE fd holds */
  linkFd(fd: number, newdirfd: number, newname: string | Buffer): number;
  /** the target is stored as given */
  symlinkat(target: string | Buffer, newdirfd: number, name: string | Buffer): number;
  /** mknodat of a FIFO (never a device), then the mode set exactly */
  mkfifoat(dirfd: number, name: string | Buffer, mode: number): number;
  /** chmod of the inode an O_PATH fd holds (a symlink: -EOPNOTSUPP) */
  chmodFd(fd: number, mode: number): number;
  /** fchownat(fd, "", uid, gid, AT_EMPTY_PATH); -1 keeps an id */
  chownFd(fd: number, uid: number, gid: number): number;
  /** utimensat on the inode an O_PATH fd holds; nsec may be UTIME_NOW or UTIME_OMIT */
  utimensFd(fd: number, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): number;
  ftruncate(fd: number, length: number): number;
  /** lstat of a name in a directory fd: out = [mode, nlink] */
  fstatatNoFollow(dirfd: number, name: string | Buffer, out: Float64Array): number;
  /** maxBytes > 0 caps the bytes drained per wake-up (SOCK_STREAM only; at least 4096) */
  Poller: new (fd: number, mode: PollMode, maxMessages: number, callback: PollCallback, maxBytes?: number) => NativePoller;
  OpenPool: new (maxThreads: number, maxQueued: number, callback: PoolCallback) => NativeOpenPool;
}

// The addon refuses to load in a worker thread (the receive arena below is one per process, and a
// worker that installed its own would take it from the broker's pollers): see init() in module.c.

const require = createRequire(import.meta.url);
const binding = require('../build/Release/openhook.node') as NativeBinding;
binding.setErrorFactory((errno, syscall) => systemError(errno, syscall));
// N-API hands the exports and the constants over as dictionary-mode objects (properties added one
// at a time), and every load from such an object in optimised code goes through V8's generic
// LoadIC: about 14 ns against 2 here, and the request path makes dozens. Plain copies are fast-mode.
export const C: NativeConstants = { ...binding.constants };
export const native: NativeBinding = Object.fromEntries(
  Object.getOwnPropertyNames(binding).map((k) => [k, k === 'constants' ? C : binding[k as keyof NativeBinding]]),
) as unknown as NativeBinding;

/**
 * The receive arena shared by every receiving poller: message bytes, and an index of records
 * [offset, length, msgFlags, nfds, fd...]. A batch is valid only inside the poller callback that
 * reported it; copy what must outlive it.
 */
// 64 slots of 65,600 bytes, one per message of a batch (see drain_seqpacket in native/poller.c): 4 MB of
// address space, of which only the pages that messages are written to are ever touched.
export const recvArena = Buffer.allocUnsafeSlow(64 * 65_600);
export const recvMeta = new Int32Array(16 * 1024);
native.setRecvArena(recvArena, recvMeta);

export interface SystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
}

/** A Node-style error for an errno (positive or negative): code, errno (negative, as Node has it), syscall. */
export function systemError(errno: number, syscall: string, path?: string): SystemError {
  const code = errnoName(errno);
  const text = describeErrno(errno);
  const err = new Error(`${code}: ${text}, ${syscall}${path !== undefined ? ` '${path}'` : ''}`) as SystemError;
  err.code = code;
  err.errno = -Math.abs(errno);
  err.syscall = syscall;
  if (path !== undefined) err.path = path;
  return err;
}

/** Returns a non-negative result, or throws the Node-style error for a negative one. */
export function check(result: number, syscall: string, path?: string): number {
  if (result < 0) throw systemError(result, syscall, path);
  return result;
}

/** A lower-case description, as Node's own errors word them. */
export function describeErrno(errno: number): string {
  systemErrors ??= getSystemErrorMap();
  return systemErrors.get(-Math.abs(errno))?.[1] ?? errnoName(errno).toLowerCase();
}
