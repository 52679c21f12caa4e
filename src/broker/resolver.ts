/**
 * The resolver turns an allowed request into an fd without ever leaving the rule's root, whatever
 * symlinks, races or special files the client has planted (DESIGN.md, invariants 2 to 4).
 *
 * 1. Resolve with openat2 beneath the root's O_PATH fd: RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS,
 *    RESOLVE_NO_XDEV and, unless the rule says otherwise, RESOLVE_NO_SYMLINKS. The kernel enforces
 *    what the policy decided lexically, so a symlink swap cannot win a race against a check.
 * 2. Resolve with O_PATH first, and look at what was found before opening it for I/O: a FIFO, a
 *    device or a socket is refused without ever being opened, so there is no side effect and no hang.
 * 3. Reopen the checked inode through /proc/self/fd with the real flags, so that what is opened is
 *    exactly what was checked.
 * 4. A file that does not exist yet is created with O_CREAT|O_EXCL, which cannot follow a planted
 *    symlink and always makes a regular file.
 *
 * Results are fds or negative errnos; nothing here throws on the request path.
 */
import { C, native } from '../native.js';
import type { ByteString } from '../bytestring.js';

const EACCES = 13, EAGAIN = 11, EEXIST = 17, ENOENT = 2, ENOTDIR = 20, EISDIR = 21;

/** openat2 reports EAGAIN when a rename or mount raced the lookup; retry a bounded number of times. */
export const EAGAIN_RETRIES = 8;

export interface OpenOptions {
  /** follow symlinks that stay beneath the root (the kernel still refuses any that leave it) */
  followSymlinks: boolean;
  /** directories may be opened (read-only) */
  directories: boolean;
  /**
   * Called with the resolved O_PATH fd before anything is opened for I/O (so O_TRUNC has not
   * happened yet); returns 0, or an errno to refuse with. The policy uses it to hold deny carve-outs
   * on the real path when symlinks are followed. When it is set, a new file is never created through
   * a symlink (the create step resolves with RESOLVE_NO_SYMLINKS), since a created file cannot be
   * checked before it exists.
   */
  verify?: (pathFd: number) => number;
}

export const DEFAULT_OPEN_OPTIONS: OpenOptions = { followSymlinks: false, directories: false };

export interface ResolverOptions {
  /** permission bits removed from every create mode, on top of setuid, setgid and sticky */
  umask?: number;
}

export class Resolver {
  readonly umask: number;
  readonly #stat = new Float64Array(8);

  constructor(options: ResolverOptions = {}) {
    this.umask = (options.umask ?? 0o022) & 0o777;
  }

  /** Opens rest beneath rootFd. flags must have passed flagsError(). Returns an fd or -errno. */
  open(rootFd: number, rest: ByteString, flags: number, mode: number, options: OpenOptions = DEFAULT_OPEN_OPTIONS): number {
    const resolve = C.RESOLVE_BENEATH | C.RESOLVE_NO_MAGICLINKS | C.RESOLVE_NO_XDEV | (options.followSymlinks ? 0 : C.RESOLVE_NO_SYMLINKS);
    // O_NOCTTY always; O_CLOEXEC on the broker's copy, which is closed once sent.
    const ioFlags = (flags | C.O_NOCTTY | C.O_CLOEXEC) & ~(C.O_CREAT | C.O_EXCL);
    const pathFlags = C.O_PATH | C.O_CLOEXEC | (flags & C.O_NOFOLLOW);
    const create = (flags & C.O_CREAT) !== 0;
    const exclusive = create && (flags & C.O_EXCL) !== 0;

    for (let attempt = 0; ; attempt++) {
      if (attempt > EAGAIN_RETRIES) return -EAGAIN;
      const found = this.#openat2(rootFd, rest, pathFlags, 0, resolve);
      if (found === -EAGAIN) continue;
      if (found === -ENOENT && create) {
        const made = this.#openat2(rootFd, rest, ioFlags | C.O_CREAT | C.O_EXCL, mode & 0o777 & ~this.umask, options.verify ? resolve | C.RESOLVE_NO_SYMLINKS : resolve);
        // Someone else created it between our two looks: without O_EXCL, open what is there now.
        if ((made === -EEXIST && !exclusive) || made === -EAGAIN) continue;
        return made;
      }
      if (found < 0) return found;
      if (exclusive) {
        native.close(found);
        return -EEXIST;
      }
      const refused = this.#checkType(found, flags, options) || (options.verify ? options.verify(found) : 0);
      if (refused) {
        native.close(found);
        return -refused;
      }
      const fd = native.reopen(found, ioFlags);
      native.close(found);
      return fd;
    }
  }

  /** The errno that refuses what fd is, or 0 if it may be opened with flags. */
  #checkType(fd: number, flags: number, options: OpenOptions): number {
    const err = native.fstat(fd, this.#stat);
    if (err < 0) return -err;
    const type = this.#stat[0]! & C.S_IFMT;
    if (type === C.S_IFREG) return flags & C.O_DIRECTORY ? ENOTDIR : 0;
    if (type === C.S_IFDIR) {
      if ((flags & C.O_ACCMODE) !== C.O_RDONLY || flags & C.O_TRUNC) return EISDIR;
      return options.directories ? 0 : EACCES;
    }
    // FIFOs, devices, sockets, and a symlink reached with O_NOFOLLOW: never opened for I/O.
    return flags & C.O_NOFOLLOW && type === C.S_IFLNK ? 40 /* ELOOP, as open(2) says */ : EACCES;
  }

  #openat2(dirfd: number, path: ByteString, flags: number, mode: number, resolve: number): number {
    return native.openat2(dirfd, path, flags, mode, resolve);
  }
}
