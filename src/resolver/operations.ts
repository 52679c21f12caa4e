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
 * - openat2 answers EAGAIN when a rename or mount raced the lookup; both finders retry within the
 *   open machine's bound and count in the resolver's stats (machine.ts, retryEagain), then EAGAIN
 *   goes to the client. The resolve flags and the verify hook's call are the machine's too.
 * - A place names its root by path, as a policy decision does. Each operation pins the root's fd
 *   in the resolver's root table for as long as it runs (both roots, for a rename or link between
 *   two rules), as Resolver.openPlace does for an open: neither the table's bound nor a reload
 *   closes a root under an operation in flight.
 * - truncate is an open for writing (the open machine, on the event loop) and an ftruncate.
 *
 * Every operation runs on the event loop, synchronously. On a network or FUSE filesystem these
 * syscalls may wait as an open may; running them on the resolver's pool (as openSlow does for opens)
 * is a follow-up.
 *
 * Results are 0 (or an fd) or -errno; nothing here throws on the request path. `refusal` says why
 * the last refusal that was not the kernel's happened, for the audit log.
 */
import { display, type ByteString } from '../bytestring.js';
import { E, errnoName } from '../errno.js';
import { C, native } from '../native.js';
import type { OpenOptions } from '../policy/open-options.js';
import { resolveFlags, retryEagain, verify, verifyName } from './machine.js';
import type { Resolver } from './resolver.js';

/** Where one end of an operation lies: beneath the root directory at `root`, at rest ('.' is the root itself). */
export interface Place {
  /** absolute, as a policy decision names it */
  root: ByteString;
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
  /** Why the last refusal that was not the kernel's happened, for the audit log. */
  refusal = '';

  constructor(readonly resolver: Resolver) {}

  /**
   * Pins the root of `at` for the duration of step(rootFd): an fd from the resolver's root table,
   * released after. A root that cannot be opened refuses with the open's errno.
   */
  #pinned(at: Place, step: (rootFd: number) => number): number {
    const roots = this.resolver.roots;
    const h = roots.acquire(at.root);
    if (typeof h === 'number') return this.#refuse(`its root ${display(at.root)} cannot be opened (${errnoName(h)})`, -h);
    try {
      return step(h.fd);
    } finally {
      roots.release(h);
    }
  }

  // ---- The two finders: every operation starts with one (or two) of them. -----------------------

  /**
   * Finds the parent directory of `at` beneath its root and calls step(dirFd, name) with the last
   * component; closes the directory after. The rule's root itself has no parent beneath the root, so
   * it cannot be made, removed or renamed through its rule (EBUSY, as for a mount point).
   */
  withParent(at: Place, step: (dirFd: number, name: ByteString) => number): number {
    if (at.rest === '.') return this.#refuse("the rule's root itself", E.EBUSY);
    const slash = at.rest.lastIndexOf('/');
    const name = lastName(at.rest);
    return this.#inDirectory(at, slash < 0 ? '.' : at.rest.slice(0, slash), (dir) => step(dir, name), name);
  }

  /**
   * Finds the directory at `path` beneath the root of `at` (O_PATH) and calls step(dirFd); closes it
   * after. Where the real path is checked (symlinks followed, a carve-out beneath the root), the deny
   * carve-outs must hold on the real path of what the step touches: `name` in the directory, or the
   * directory itself.
   */
  #inDirectory(at: Place, path: ByteString, step: (dirFd: number) => number, name?: ByteString): number {
    return this.#pinned(at, (rootFd) => {
      const dir = this.#retrying(() => native.openat2(rootFd, path, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0, resolveFlags(at.options)));
      if (dir < 0) return dir;
      try {
        const hook = at.options.verify;
        let refused = 0;
        if (hook && name === undefined) refused = verify(dir, rootFd, C.S_IFDIR, hook);
        else if (hook) {
          const r = native.fstatatNoFollow(dir, name!, typeOut);
          refused = verifyName(dir, name!, rootFd, r < 0 ? C.S_IFDIR : typeOut[0]! & C.S_IFMT, hook);
        }
        if (refused) return this.#refuse('the real directory is not allowed', refused);
        return step(dir);
      } finally {
        native.close(dir);
      }
    });
  }

  /**
   * Finds the inode at `at` with O_PATH beneath its root: the final symlink followed where the rule
   * follows symlinks and noFollow is false, else the symlink itself. The caller closes found.fd.
   */
  findInode(at: Place, noFollow: boolean): Found | number {
    let found: Found | null = null;
    const flags = C.O_PATH | C.O_CLOEXEC | (noFollow ? C.O_NOFOLLOW : 0);
    const result = this.#pinned(at, (rootFd) => {
      const fd = this.#retrying(() => native.lookup(rootFd, at.rest, flags, resolveFlags(at.options), stat));
      if (fd < 0) return fd;
      const refused = at.options.verify ? verify(fd, rootFd, stat[0]! & C.S_IFMT, at.options.verify) : 0;
      if (refused) {
        native.close(fd);
        return this.#refuse('the real path is not allowed', refused);
      }
      found = { fd, mode: stat[0]!, nlink: stat[1]!, uid: stat[2]!, gid: stat[3]! };
      return 0;
    });
    return (found as Found | null) ?? result;
  }

  /** What a name is (S_IFMT bits, never 0), without following it; or -errno (-ENOENT: nothing there). */
  typeOf(at: Place): number {
    return this.withParent(at, (dir, name) => {
      const r = native.fstatatNoFollow(dir, name, typeOut);
      return r < 0 ? r : typeOut[0]! & C.S_IFMT;
    });
  }

  // ---- Operations on a name ---------------------------------------------------------------------

  /** mkdir: the mode's permission bits, less the resolver's umask (no set-id or sticky bits). */
  mkdir(at: Place, mode: number): number {
    this.refusal = '';
    return this.withParent(at, (dir, name) => native.mkdirat(dir, name, this.resolver.createMode(mode)));
  }

  /** unlink (directory false) or rmdir (directory true). */
  unlink(at: Place, directory: boolean): number {
    this.refusal = '';
    return this.withParent(at, (dir, name) => native.unlinkat(dir, name, directory ? C.AT_REMOVEDIR : 0));
  }

  /** renameat2 between two parents, each found beneath its own root (two rules: two roots). */
  rename(from: Place, to: Place, flags: number): number {
    this.refusal = '';
    return this.withParent(from, (fromDir, fromName) =>
      this.withParent(to, (toDir, toName) => native.renameat2(fromDir, fromName, toDir, toName, flags)),
    );
  }

  /** symlink: the target is stored as given; following it later is checked as every resolution is. */
  symlink(target: ByteString, at: Place): number {
    this.refusal = '';
    if (target.length === 0) return -E.ENOENT; // as symlink(2)
    return this.withParent(at, (dir, name) => native.symlinkat(target, dir, name));
  }

  /** mkfifo: a FIFO (never a device), with the mode's permission bits less the umask. */
  mkfifo(at: Place, mode: number): number {
    this.refusal = '';
    return this.withParent(at, (dir, name) => native.mkfifoat(dir, name, this.resolver.createMode(mode)));
  }

  /**
   * A hard link: the source found with O_PATH beneath its root (never following a final symlink, as
   * link(2)), checked, then linked by fd into the destination's parent. A directory cannot be linked
   * (EPERM); a source whose rule refuses hard-linked files is refused (EACCES): the link would make
   * it one.
   */
  link(from: Place, to: Place): number {
    this.refusal = '';
    const found = this.findInode(from, true);
    if (typeof found === 'number') return found;
    try {
      const type = found.mode & C.S_IFMT;
      if (type === C.S_IFDIR) return -E.EPERM;
      if (type !== C.S_IFREG && type !== C.S_IFLNK) return this.#refuse('only regular files and symlinks may be linked', E.EACCES);
      if ((from.options.hardlinks ?? this.resolver.hardlinks) === 'refuse')
        return this.#refuse("the source's rule refuses hard-linked files", E.EACCES);
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
  linkUnnamed(fd: number, to: Place): number {
    this.refusal = '';
    if (native.fstat(fd, stat) < 0) return -E.EBADF;
    if ((stat[0]! & C.S_IFMT) !== C.S_IFREG || stat[1] !== 0)
      return this.#refuse('only an unnamed file (O_TMPFILE) may be linked by fd', E.EACCES);
    return this.withParent(to, (dir, name) => native.linkFd(fd, dir, name));
  }

  // ---- Operations on an inode -------------------------------------------------------------------

  /**
   * chmod: never set-id bits. Directories keep the sticky bit (it only restricts who may remove
   * names in them); files lose it. A symlink: EOPNOTSUPP, as lchmod.
   */
  chmod(at: Place, mode: number, noFollow: boolean): number {
    this.refusal = '';
    return this.#onInode(at, noFollow, (f) => native.chmodFd(f.fd, safeMode(f.mode, mode)));
  }

  /**
   * chown never changes ownership: to the owner and group the file already has (-1: unchanged), it
   * succeeds, as unconfined (cp -a and tar x do this); to anything else, EPERM.
   */
  chown(at: Place, uid: number, gid: number, noFollow: boolean): number {
    this.refusal = '';
    return this.#onInode(at, noFollow, (f) => {
      const sameUid = uid === -1 || uid === 0xffffffff || uid === f.uid;
      const sameGid = gid === -1 || gid === 0xffffffff || gid === f.gid;
      return sameUid && sameGid ? 0 : this.#refuse('ownership never changes', E.EPERM);
    });
  }

  /** utimensat on the inode found; nsec may be UTIME_NOW or UTIME_OMIT. */
  utimes(at: Place, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number, noFollow: boolean): number {
    this.refusal = '';
    return this.#onInode(at, noFollow, (f) => native.utimensFd(f.fd, atimeSec, atimeNsec, mtimeSec, mtimeNsec));
  }

  /** Whether the name exists beneath the root: 0, or the lookup's -errno. Permission is the policy's answer. */
  exists(at: Place): number {
    this.refusal = '';
    return this.#onInode(at, false, () => 0);
  }

  /** The S_IFMT type of what the path names (symlinks followed as the rule allows), or -errno. */
  typeAt(at: Place): number {
    return this.#onInode(at, false, (f) => f.mode & C.S_IFMT);
  }

  /**
   * truncate by path: opened O_WRONLY beneath the root by the resolver (which refuses what it
   * refuses for every open: directories, FIFOs, devices, hard-linked files by the rule's setting),
   * then ftruncate.
   */
  truncate(at: Place, length: number): number {
    this.refusal = '';
    if (length < 0 || !Number.isSafeInteger(length)) return -E.EINVAL;
    return this.#pinned(at, (rootFd) => {
      const fd = this.resolver.open(rootFd, at.rest, C.O_WRONLY | C.O_NONBLOCK, 0, at.options);
      if (typeof fd !== 'number') return this.#refuse(fd.reason, fd.errno);
      try {
        return native.ftruncate(fd, length);
      } finally {
        native.close(fd);
      }
    });
  }

  /**
   * An unnamed file (O_TMPFILE) in the directory at `at`: the fd, or -errno. accessMode is O_WRONLY
   * or O_RDWR; O_EXCL makes it unlinkable for good. Its mode is set exactly, as a create's.
   */
  tmpfile(at: Place, flags: number, mode: number): number {
    this.refusal = '';
    return this.#inDirectory(at, at.rest, (dir) => {
      const made = this.resolver.createMode(mode);
      const fd = native.openat2(dir, '.', C.O_TMPFILE | (flags & (C.O_ACCMODE | C.O_EXCL)) | C.O_CLOEXEC, made, 0);
      if (fd >= 0) native.chmodFd(fd, made);
      return fd;
    });
  }

  // ---- Shared steps -----------------------------------------------------------------------------

  #onInode(at: Place, noFollow: boolean, step: (f: Found) => number): number {
    const found = this.findInode(at, noFollow);
    if (typeof found === 'number') return found;
    try {
      return step(found);
    } finally {
      native.close(found.fd);
    }
  }

  /** openat2, retried on EAGAIN (a rename or mount raced the lookup) within the machine's bound. */
  #retrying(lookup: () => number): number {
    for (let attempt = 1; ; attempt++) {
      const fd = lookup();
      if (fd !== -E.EAGAIN || !retryEagain(this.resolver, attempt)) return fd;
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
