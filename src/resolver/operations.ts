/**
 * File operations beneath a rule's root (DESIGN.md, invariant 9): mkdir, unlink, rmdir, rename,
 * link, symlink, mkfifo, chmod, chown, utimes, truncate, O_TMPFILE, and the lookup that access()
 * answers with. The policy has decided already; these only perform, and never leave the root.
 *
 * Every operation is a short sequence of native steps on fds, never on a path string:
 *
 * - An operation on a name (mkdir, unlink, rename, link's and symlink's new name, mkfifo) finds the
 *   name's PARENT directory with openat2 beneath the root (RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS,
 *   RESOLVE_NO_XDEV, and RESOLVE_NO_SYMLINKS unless the rule follows symlinks), then calls the `*at`
 *   syscall with that directory fd and the last component alone. A symlink swapped in for a parent
 *   makes openat2 fail (or, where symlinks are followed, stay beneath the root); the last component
 *   is never followed by these syscalls.
 * - An operation on an inode (chmod, chown, utimes, link's source) finds it with openat2 and O_PATH
 *   beneath the root, looks at what it found, and acts on that fd: what is changed is exactly what
 *   was checked.
 * - openat2 answers EAGAIN when a rename or mount raced the lookup; both finders retry a bounded
 *   number of times, then EAGAIN goes to the client (see withParent and findInode).
 *
 * Results are 0 (or an fd) or -errno; nothing here throws on the request path. `refusal` says why
 * the last refusal that was not the kernel's happened, for the audit log.
 */
import type { ByteString } from '../bytestring.js';
import { E } from '../errno.js';
import { C, FC, native } from '../native.js';
import { EAGAIN_RETRIES, type OpenOptions, type Resolver } from '../broker/resolver.js';

/** Where one end of an operation lies: beneath rootFd, at rest ('.' is the root itself). */
export interface Beneath {
  rootFd: number;
  rest: ByteString;
  options: OpenOptions;
}

/** What findInode found: the O_PATH fd, and what it is. */
export interface Found {
  fd: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
}

const stat = new Float64Array(8);
const typeOut = new Float64Array(2);

export class Operations {
  readonly eagainRetries: number;
  /** EAGAIN answers from openat2, each retried up to the bound */
  eagain = 0;
  /** Why the last refusal that was not the kernel's happened: a constant string, for the audit log. */
  refusal = '';

  constructor(readonly resolver: Resolver, eagainRetries = EAGAIN_RETRIES) {
    this.eagainRetries = eagainRetries;
  }

  // ---- The two finders: every operation starts with one (or two) of them. -----------------------

  /**
   * Finds the parent directory of `at` beneath its root and calls step(dirFd, name) with the last
   * component; closes the directory after. The rule's root itself has no parent beneath the root, so
   * it cannot be made, removed or renamed through its rule (EBUSY, as for a mount point).
   */
  withParent(at: Beneath, step: (dirFd: number, name: ByteString) => number): number {
    const dir = this.#openParent(at);
    if (dir < 0) return dir;
    try {
      return step(dir, lastName(at.rest));
    } finally {
      native.close(dir);
    }
  }

  /** The parent directory's O_PATH fd (the caller closes it), or -errno. */
  #openParent(at: Beneath): number {
    if (at.rest === '.') return this.#refuse('the rule\'s root itself', E.EBUSY);
    const slash = at.rest.lastIndexOf('/');
    const dirPath = slash < 0 ? '.' : at.rest.slice(0, slash);
    const dir = this.#retrying(() => native.openat2(at.rootFd, dirPath, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0, resolveFlags(at.options)));
    if (dir < 0 || !at.options.verify) return dir;
    // Symlinks followed: the deny carve-outs must hold on the directory's real path too.
    const refused = at.options.verify(dir);
    if (refused) {
      native.close(dir);
      return this.#refuse('the real directory is not allowed', refused);
    }
    return dir;
  }

  /**
   * Finds the inode at `at` with O_PATH beneath its root: the final symlink followed where the rule
   * follows symlinks and noFollow is false, else the symlink itself. The caller closes found.fd.
   */
  findInode(at: Beneath, noFollow: boolean): Found | number {
    const flags = C.O_PATH | C.O_CLOEXEC | (noFollow ? C.O_NOFOLLOW : 0);
    const fd = this.#retrying(() => native.lookup(at.rootFd, at.rest, flags, resolveFlags(at.options), stat));
    if (fd < 0) return fd;
    const refused = at.options.verify ? at.options.verify(fd) : 0;
    if (refused) {
      native.close(fd);
      return this.#refuse('the real path is not allowed', refused);
    }
    return { fd, mode: stat[0]!, nlink: stat[1]!, uid: stat[2]!, gid: stat[3]! };
  }

  /** What a name is (S_IFMT bits, never 0), without following it; or -errno (-ENOENT: nothing there). */
  typeOf(at: Beneath): number {
    return this.withParent(at, (dir, name) => {
      const r = native.fstatatNoFollow(dir, name, typeOut);
      return r < 0 ? r : typeOut[0]! & C.S_IFMT;
    });
  }

  // ---- Operations on a name ---------------------------------------------------------------------

  /** mkdir: the mode's permission bits, less the resolver's umask (no set-id or sticky bits). */
  mkdir(at: Beneath, mode: number): number {
    this.refusal = '';
    return this.withParent(at, (dir, name) => native.mkdirat(dir, name, this.resolver.createMode(mode)));
  }

  /** unlink (directory false) or rmdir (directory true). */
  unlink(at: Beneath, directory: boolean): number {
    this.refusal = '';
    return this.withParent(at, (dir, name) => native.unlinkat(dir, name, directory ? FC.AT_REMOVEDIR : 0));
  }

  /** renameat2 between two parents, each found beneath its own root (two rules: two roots). */
  rename(from: Beneath, to: Beneath, flags: number): number {
    this.refusal = '';
    return this.withParent(from, (fromDir, fromName) => this.withParent(to, (toDir, toName) => native.renameat2(fromDir, fromName, toDir, toName, flags)));
  }

  /** symlink: the target is stored as given; following it later is checked as every resolution is. */
  symlink(target: ByteString, at: Beneath): number {
    this.refusal = '';
    if (target.length === 0) return -E.ENOENT; // as symlink(2)
    return this.withParent(at, (dir, name) => native.symlinkat(target, dir, name));
  }

  /** mkfifo: a FIFO (never a device), with the mode's permission bits less the umask. */
  mkfifo(at: Beneath, mode: number): number {
    this.refusal = '';
    return this.withParent(at, (dir, name) => native.mkfifoat(dir, name, this.resolver.createMode(mode)));
  }

  /**
   * A hard link: the source found with O_PATH beneath its root (never following a final symlink, as
   * link(2)), checked, then linked by fd into the destination's parent. A directory cannot be linked
   * (EPERM); a source whose rule refuses hard-linked files is refused (EACCES): the link would make
   * it one.
   */
  link(from: Beneath, to: Beneath): number {
    this.refusal = '';
    const found = this.findInode(from, true);
    if (typeof found === 'number') return found;
    try {
      const type = found.mode & C.S_IFMT;
      if (type === C.S_IFDIR) return -E.EPERM;
      if (type !== C.S_IFREG && type !== C.S_IFLNK) return this.#refuse('only regular files and symlinks may be linked', E.EACCES);
      if ((from.options.hardlinks ?? this.resolver.hardlinks) === 'refuse') return this.#refuse('the source\'s rule refuses hard-linked files', E.EACCES);
      return this.withParent(to, (dir, name) => native.linkFd(found.fd, dir, name));
    } finally {
      native.close(found.fd);
    }
  }

  /**
   * A name for an unnamed file (O_TMPFILE) that the program holds: the hook brings the fd with
   * pidfd_getfd. Only a file with no name may be linked this way: a file with a name could be one
   * from outside every rule, which this would pull into the tree (link it by path instead).
   */
  linkUnnamed(fd: number, to: Beneath): number {
    this.refusal = '';
    if (native.fstat(fd, stat) < 0) return -E.EBADF;
    if ((stat[0]! & C.S_IFMT) !== C.S_IFREG || stat[1] !== 0) return this.#refuse('only an unnamed file (O_TMPFILE) may be linked by fd', E.EACCES);
    return this.withParent(to, (dir, name) => native.linkFd(fd, dir, name));
  }

  // ---- Operations on an inode -------------------------------------------------------------------

  /**
   * chmod: never set-id bits. Directories keep the sticky bit (it only restricts who may remove
   * names in them); files lose it. A symlink: EOPNOTSUPP, as lchmod.
   */
  chmod(at: Beneath, mode: number, noFollow: boolean): number {
    this.refusal = '';
    return this.#onInode(at, noFollow, (f) => native.chmodFd(f.fd, safeMode(f.mode, mode)));
  }

  /**
   * chown never changes ownership: to the owner and group the file already has (-1: unchanged), it
   * succeeds, as unconfined (cp -a and tar x do this); to anything else, EPERM.
   */
  chown(at: Beneath, uid: number, gid: number, noFollow: boolean): number {
    this.refusal = '';
    return this.#onInode(at, noFollow, (f) => {
      const sameUid = uid === -1 || uid === 0xffffffff || uid === f.uid;
      const sameGid = gid === -1 || gid === 0xffffffff || gid === f.gid;
      return sameUid && sameGid ? 0 : this.#refuse('ownership never changes', E.EPERM);
    });
  }

  /** utimensat on the inode found; nsec may be UTIME_NOW or UTIME_OMIT. */
  utimes(at: Beneath, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number, noFollow: boolean): number {
    this.refusal = '';
    return this.#onInode(at, noFollow, (f) => native.utimensFd(f.fd, atimeSec, atimeNsec, mtimeSec, mtimeNsec));
  }

  /** Whether the name exists beneath the root: 0, or the lookup's -errno. Permission is the policy's answer. */
  exists(at: Beneath): number {
    this.refusal = '';
    return this.#onInode(at, false, () => 0);
  }

  /** The S_IFMT type of what the path names (symlinks followed as the rule allows), or -errno. */
  typeAt(at: Beneath): number {
    return this.#onInode(at, false, (f) => f.mode & C.S_IFMT);
  }

  /**
   * truncate by path: opened O_WRONLY beneath the root by the resolver (which refuses what it
   * refuses for every open: directories, FIFOs, devices, hard-linked files by the rule's setting),
   * then ftruncate.
   */
  truncate(at: Beneath, length: number): number {
    this.refusal = '';
    if (length < 0 || !Number.isSafeInteger(length)) return -E.EINVAL;
    const fd = this.resolver.open(at.rootFd, at.rest, C.O_WRONLY | C.O_NONBLOCK, 0, at.options);
    if (fd < 0) {
      this.refusal = this.resolver.refusal;
      return fd;
    }
    try {
      return native.ftruncate(fd, length);
    } finally {
      native.close(fd);
    }
  }

  /**
   * An unnamed file (O_TMPFILE) in the directory at `at`: the fd, or -errno. accessMode is O_WRONLY
   * or O_RDWR; O_EXCL makes it unlinkable for good. Its mode is set exactly, as a create's.
   */
  tmpfile(at: Beneath, flags: number, mode: number): number {
    this.refusal = '';
    const dir = this.#retrying(() => native.openat2(at.rootFd, at.rest, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0, resolveFlags(at.options)));
    if (dir < 0) return dir;
    try {
      const refused = at.options.verify ? at.options.verify(dir) : 0;
      if (refused) return this.#refuse('the real directory is not allowed', refused);
      const made = mode & 0o777 & ~this.resolver.umask;
      const fd = native.openat2(dir, '.', C.O_TMPFILE | (flags & (C.O_ACCMODE | C.O_EXCL)) | C.O_CLOEXEC, made, 0);
      if (fd >= 0) native.chmodFd(fd, made);
      return fd;
    } finally {
      native.close(dir);
    }
  }

  // ---- Shared steps -----------------------------------------------------------------------------

  #onInode(at: Beneath, noFollow: boolean, step: (f: Found) => number): number {
    const found = this.findInode(at, noFollow);
    if (typeof found === 'number') return found;
    try {
      return step(found);
    } finally {
      native.close(found.fd);
    }
  }

  /** openat2, retried on EAGAIN (a rename or mount raced the lookup) a bounded number of times. */
  #retrying(lookup: () => number): number {
    for (let again = 0; ; again++) {
      const fd = lookup();
      if (fd !== -E.EAGAIN) return fd;
      this.eagain++;
      if (again >= this.eagainRetries) return fd;
    }
  }

  #refuse(reason: string, errno: number): number {
    this.refusal = reason;
    return -errno;
  }
}

/** The mode chmod really sets: permission bits, and sticky on a directory only. */
export function safeMode(type: number, mode: number): number {
  return mode & ((type & C.S_IFMT) === C.S_IFDIR ? 0o1777 : 0o777);
}

function lastName(rest: ByteString): ByteString {
  const slash = rest.lastIndexOf('/');
  return slash < 0 ? rest : rest.slice(slash + 1);
}

function resolveFlags(options: OpenOptions): number {
  return C.RESOLVE_BENEATH | C.RESOLVE_NO_MAGICLINKS | C.RESOLVE_NO_XDEV | (options.followSymlinks ? 0 : C.RESOLVE_NO_SYMLINKS);
}
