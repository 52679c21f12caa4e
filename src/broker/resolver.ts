/**
 * The resolver turns an allowed request into an fd without ever leaving the rule's root, whatever
 * symlinks, races or special files the client has planted (DESIGN.md, invariants 2 to 4).
 *
 * 1. Resolve with openat2 beneath the root's O_PATH fd: RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS,
 *    RESOLVE_NO_XDEV and, unless the rule says otherwise, RESOLVE_NO_SYMLINKS. The kernel enforces
 *    what the policy decided lexically, so a symlink swap cannot win a race against a check.
 * 2. Resolve with O_PATH first, and look at what was found before opening it for I/O: a FIFO, a
 *    device or a socket is refused without ever being opened, so there is no side effect and no hang.
 *    A regular file with more than one link is refused for writing unless the rule allows it: a hard
 *    link can make a file from outside the tree appear inside it, and no path check can tell.
 * 3. Reopen the checked inode through /proc/self/fd with the real flags, so that what is opened is
 *    exactly what was checked.
 * 4. A file that does not exist yet is created with O_CREAT|O_EXCL, which cannot follow a planted
 *    symlink and always makes a regular file; its mode is then set explicitly (setuid, setgid and
 *    sticky removed, the resolver's umask applied, the process umask irrelevant).
 * 5. openat2 answers EAGAIN when a rename or mount raced a lookup that it cannot prove safe; that is
 *    retried a bounded number of times, then EAGAIN goes to the client. There is no fallback.
 *
 * Opens that may block (beneath a network or FUSE filesystem, or where FIFOs are allowed) run the
 * same steps on a small thread pool: `openSlow`. Results are fds or negative errnos; nothing here
 * throws on the request path.
 */
import { C, native, type NativeOpenPool } from '../native.js';
import type { ByteString } from '../bytestring.js';

const EACCES = 13, EAGAIN = 11, EEXIST = 17, ENOENT = 2, ENOTDIR = 20, EISDIR = 21, ELOOP = 40, ECANCELED = 125;

/** Retries after an EAGAIN from openat2 before the client gets EAGAIN. */
export const EAGAIN_RETRIES = 8;

/**
 * What to do with a regular file that has more than one hard link:
 * 'allow' opens it; 'read-only' (the default) refuses write access (O_WRONLY, O_RDWR, O_TRUNC) with
 * EACCES; 'refuse' refuses every open of it.
 */
export type HardlinkRule = 'allow' | 'read-only' | 'refuse';

export interface OpenOptions {
  /** follow symlinks that stay beneath the root (the kernel still refuses any that leave it) */
  followSymlinks: boolean;
  /** directories may be opened (read-only) */
  directories: boolean;
  /** FIFOs may be opened; such opens always run on the thread pool, since they block until the other end opens (default false) */
  fifos?: boolean;
  /** regular files with more than one link (default: the resolver's, 'read-only' unless configured) */
  hardlinks?: HardlinkRule;
  /**
   * Called with the resolved O_PATH fd before anything is opened for I/O (so O_TRUNC has not
   * happened yet); returns 0, or an errno to refuse with. The policy uses it to hold deny carve-outs
   * on the real path when symlinks are followed. When it is set, a new file is never created through
   * a symlink (the create step resolves with RESOLVE_NO_SYMLINKS), since a created file cannot be
   * checked before it exists.
   */
  verify?: (pathFd: number) => number;
}

export const DEFAULT_OPEN_OPTIONS: Readonly<OpenOptions> = Object.freeze({ followSymlinks: false, directories: false });

export interface ResolverOptions {
  /** permission bits removed from every create mode, on top of setuid, setgid and sticky (default 0o022) */
  umask?: number;
  /** what to do with hard-linked files where a rule does not say (default 'read-only') */
  hardlinks?: HardlinkRule;
  /**
   * Which opens run on the thread pool. 'auto' (default): beneath roots on network and FUSE
   * filesystems, and wherever FIFOs are allowed. 'always': every open (slower; for tests and for
   * filesystems this resolver does not recognise).
   */
  offload?: 'auto' | 'always';
  /** EAGAIN retries (default EAGAIN_RETRIES) */
  eagainRetries?: number;
  /** most threads the pool may start (default 16) */
  poolThreads?: number;
  /** most jobs waiting for a thread (default 1024); beyond, a slow open gets EAGAIN */
  poolQueue?: number;
}

/** Counters, for tests and for `STATUS`-style reports. */
export interface ResolverStats {
  /** EAGAIN answers from openat2 (each one retried, up to the bound) */
  eagain: number;
  /** requests that got EAGAIN after every retry */
  eagainFailures: number;
  /** opens run on the thread pool */
  slowOpens: number;
}

/**
 * Cancels a connection's slow opens when it goes away. A FIFO open blocked on a pool thread is
 * released by opening the FIFO's other end (O_RDWR|O_NONBLOCK never blocks on a FIFO), so that a
 * client that disconnects cannot pin a thread forever. An open stalled in a filesystem cannot be
 * interrupted; its result is closed when it arrives.
 */
export class OpenCancel {
  cancelled = false;
  /** O_PATH fds of FIFOs whose reopen is in flight */
  readonly fifos = new Set<number>();

  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    for (const fd of this.fifos) {
      const poke = native.reopen(fd, C.O_RDWR | C.O_NONBLOCK | C.O_CLOEXEC);
      if (poke >= 0) native.close(poke);
    }
  }
}

/** Filesystems on which a lookup or an open can wait on a network or a user-space server. */
const BLOCKING_FILESYSTEMS = new Set([
  0x6969, // NFS
  0x517b, // SMB
  0xff534d42, // CIFS
  0xfe534d42, // SMB2
  0x65735546, // FUSE (sshfs, virtiofs, ...)
  0x00c36400, // Ceph
  0x01021997, // 9P
  0x6b414653, 0x5346414f, // AFS
  0x73757245, // Coda
  0x7461636f, // OCFS2
  0x01161970, // GFS2
  0x0bd00bd0, // Lustre
  0x13661366, // OrangeFS
  0x47504653, // GPFS
  0x786f4256, // VirtualBox shared folders
]);

/** Whether a filesystem magic number (statfs f_type) names a filesystem whose opens may block. */
export function mayBlock(fsMagic: number): boolean {
  return BLOCKING_FILESYSTEMS.has(fsMagic >>> 0);
}

interface JobResult {
  result: number;
  mode: number;
  nlink: number;
}

/**
 * What this kernel and process lack for the resolver to be safe, or null. The broker refuses to start
 * without openat2 and its RESOLVE_* flags (Linux 5.6), or without procfs at /proc (to reopen a checked
 * inode): failing closed at start is clearer than failing every request.
 */
export function missingSupport(): string | null {
  const root = native.open('/', C.O_PATH | C.O_DIRECTORY, 0);
  if (root < 0) return `cannot open / (errno ${-root})`;
  try {
    const fd = native.openat2(root, '.', C.O_PATH | C.O_CLOEXEC, 0, resolveFlags(DEFAULT_OPEN_OPTIONS));
    if (fd === -38) return 'this kernel has no openat2 (Linux 5.6 or later is needed)';
    if (fd === -22) return 'this kernel lacks a RESOLVE_* flag of openat2 (Linux 5.6 or later is needed)';
    if (fd < 0) return `openat2 failed (errno ${-fd})`;
    const again = native.reopen(fd, C.O_RDONLY | C.O_DIRECTORY | C.O_CLOEXEC);
    native.close(fd);
    if (again < 0) return 'procfs is not mounted at /proc (needed to reopen exactly the checked file)';
    native.close(again);
    return null;
  } finally {
    native.close(root);
  }
}

export class Resolver {
  readonly umask: number;
  readonly hardlinks: HardlinkRule;
  readonly offload: 'auto' | 'always';
  readonly eagainRetries: number;
  readonly stats: ResolverStats = { eagain: 0, eagainFailures: 0, slowOpens: 0 };
  /** Why the last refusal by type or links happened, for the audit log: a constant string. */
  refusal = '';
  readonly #stat = new Float64Array(9);
  /** Per rule root: does it lie on a filesystem whose opens may block? Keyed by the rule object, since fd numbers are reused after a reload. */
  readonly #rootBlocks = new WeakMap<object, boolean>();
  readonly #poolThreads: number;
  readonly #poolQueue: number;
  #pool: NativeOpenPool | null = null;
  #closed = false;
  #jobs = new Map<number, (r: JobResult) => void>();
  #nextJob = 1;

  constructor(options: ResolverOptions = {}) {
    this.umask = (options.umask ?? 0o022) & 0o777;
    this.hardlinks = options.hardlinks ?? 'read-only';
    this.offload = options.offload ?? 'auto';
    this.eagainRetries = options.eagainRetries ?? EAGAIN_RETRIES;
    this.#poolThreads = options.poolThreads ?? 16;
    this.#poolQueue = options.poolQueue ?? 1024;
  }

  /**
   * Whether an open beneath this root must run on the thread pool (openSlow) rather than on the event
   * loop (open): where FIFOs are allowed, and beneath a root on a network or FUSE filesystem. With
   * RESOLVE_NO_XDEV every file opened lies on the root's own filesystem, so the root decides. One
   * statfs per rule, on the pool.
   */
  offloads(rule: object, rootFd: number, options: OpenOptions): boolean {
    if (options.fifos || this.offload === 'always') return true;
    const known = this.#rootBlocks.get(rule);
    if (known !== undefined) return known;
    // Not known yet. statfs itself can wait on a stalled server, so ask on the pool, and offload
    // until the answer comes.
    this.#rootBlocks.set(rule, true);
    const root = native.dup(rootFd);
    if (root >= 0) {
      void this.#job(C.JOB_STATFS, root, '', 0, 0, 0).then((r) => {
        native.close(root); // an O_PATH fd: closing it never waits
        this.#rootBlocks.set(rule, r.result < 0 || mayBlock(r.mode));
      });
    }
    return true;
  }

  /**
   * Closes the broker's copy of an fd that openSlow gave, on the pool: close() sends FLUSH on FUSE
   * and may write back on NFS, so on a stalled filesystem it could block the event loop.
   */
  release(fd: number): void {
    if (fd < 0) return;
    if (this.#closed) native.close(fd);
    else void this.#job(C.JOB_CLOSE, fd, '', 0, 0, 0);
  }

  /** Opens rest beneath rootFd, on the event loop. flags must have passed flagsError(). Returns an fd or -errno. */
  open(rootFd: number, rest: ByteString, flags: number, mode: number, options: OpenOptions = DEFAULT_OPEN_OPTIONS): number {
    this.refusal = '';
    const resolve = resolveFlags(options);
    const ioFlags = ioFlagsOf(flags);
    const pathFlags = C.O_PATH | C.O_CLOEXEC | (flags & C.O_NOFOLLOW);
    const create = (flags & C.O_CREAT) !== 0;
    const exclusive = create && (flags & C.O_EXCL) !== 0;
    const stat = this.#stat;
    const fast = !options.verify && !exclusive;
    let raced = false;

    for (let again = 0; ; again++) {
      if (again > this.eagainRetries) return this.#gaveUp();
      // Without a verify hook or O_EXCL, the native side reopens at once what #check always allows
      // (a regular file with one link, no O_DIRECTORY) and hands back everything else unopened.
      const found = fast ? native.openFile(rootFd, rest, pathFlags, resolve, ioFlags, stat) : native.lookup(rootFd, rest, pathFlags, resolve, stat);
      if (fast && stat[8] === 1) return found; // openFile reopened it (lookup never sets stat[8])
      if (found === -EAGAIN) {
        this.stats.eagain++;
        continue;
      }
      if (found === -ENOENT && create) {
        const made = native.create(rootFd, rest, ioFlags | C.O_CREAT | C.O_EXCL, this.createMode(mode), createResolve(resolve, options));
        if (made === -EAGAIN) {
          this.stats.eagain++;
          continue;
        }
        if (made === -EEXIST && !exclusive) {
          // Someone created it between our two looks: open what is there now, once. A second
          // time means the name is a symlink to nothing (we never create through one).
          if (raced) return this.#refuse('O_CREAT through a dangling symlink');
          raced = true;
          again--;
          continue;
        }
        return made;
      }
      if (found < 0) return found;
      const refused = this.#vet(found, stat[0]!, stat[1]!, flags, exclusive, options);
      if (refused) return refused;
      const fd = native.reopen(found, ioFlags);
      native.close(found);
      return fd;
    }
  }

  /**
   * The same steps as open(), each on a pool thread, so that a stalled filesystem or a FIFO waiting
   * for its other end never blocks the event loop. Resolves to an fd or -errno, never rejects.
   * Other requests reuse `refusal` meanwhile, so a refusal's reason goes to why.refusal.
   */
  openSlow(rootFd: number, rest: ByteString, flags: number, mode: number, options: OpenOptions, cancel: OpenCancel | null, why: { refusal: string } | null = null): Promise<number> {
    this.stats.slowOpens++;
    // The root is the policy's; a reload may close it while the jobs wait. Hold our own.
    const root = native.dup(rootFd);
    if (root < 0) return Promise.resolve(root);
    return this.#openSlow(root, rest, flags, mode, options, cancel, why).finally(() => native.close(root));
  }

  async #openSlow(rootFd: number, rest: ByteString, flags: number, mode: number, options: OpenOptions, cancel: OpenCancel | null, why: { refusal: string } | null): Promise<number> {
    const resolve = resolveFlags(options);
    const ioFlags = ioFlagsOf(flags);
    const pathFlags = C.O_PATH | C.O_CLOEXEC | (flags & C.O_NOFOLLOW);
    const create = (flags & C.O_CREAT) !== 0;
    const exclusive = create && (flags & C.O_EXCL) !== 0;
    let raced = false;

    for (let again = 0; ; again++) {
      if (again > this.eagainRetries) return this.#gaveUp();
      if (cancel?.cancelled) return -ECANCELED;
      const found = await this.#job(C.JOB_LOOKUP, rootFd, rest, pathFlags, 0, resolve);
      if (found.result === -EAGAIN) {
        this.stats.eagain++;
        continue;
      }
      if (found.result === -ENOENT && create) {
        const made = (await this.#job(C.JOB_CREATE, rootFd, rest, ioFlags | C.O_CREAT | C.O_EXCL, this.createMode(mode), createResolve(resolve, options))).result;
        if (made === -EAGAIN) {
          this.stats.eagain++;
          continue;
        }
        if (made === -EEXIST && !exclusive) {
          if (raced) return this.#refuse('O_CREAT through a dangling symlink', why);
          raced = true;
          again--;
          continue;
        }
        return this.#unlessCancelled(made, cancel);
      }
      if (found.result < 0) return found.result;
      const path = found.result;
      if (cancel?.cancelled) {
        native.close(path);
        return -ECANCELED;
      }
      this.refusal = '';
      const refused = this.#vet(path, found.mode, found.nlink, flags, exclusive, options);
      if (refused) {
        if (why) why.refusal = this.refusal;
        return refused;
      }
      const fifo = (found.mode & C.S_IFMT) === C.S_IFIFO;
      if (fifo) cancel?.fifos.add(path);
      const opened = await this.#job(C.JOB_REOPEN, path, '', ioFlags, 0, 0);
      if (fifo) cancel?.fifos.delete(path);
      native.close(path);
      return this.#unlessCancelled(opened.result, cancel);
    }
  }

  /** The mode a created file gets: permission bits only, less the umask. */
  createMode(mode: number): number {
    return mode & 0o777 & ~this.umask;
  }

  /** Stops the pool; slow opens still in flight have their fds closed when they finish. */
  close(): void {
    this.#closed = true;
    this.#pool?.close();
    this.#pool = null;
    for (const done of this.#jobs.values()) done({ result: -ECANCELED, mode: 0, nlink: 0 });
    this.#jobs.clear();
  }

  /** [threads, idle, queued, pending] of the pool, or null before the first slow open. */
  poolStats(): [number, number, number, number] | null {
    return this.#pool?.stats() ?? null;
  }

  #unlessCancelled(fd: number, cancel: OpenCancel | null): number {
    if (fd >= 0 && cancel?.cancelled) {
      this.release(fd);
      return -ECANCELED;
    }
    return fd;
  }

  #job(job: number, dirfd: number, path: ByteString, flags: number, mode: number, resolve: number): Promise<JobResult> {
    if (this.#closed) return Promise.resolve({ result: -ECANCELED, mode: 0, nlink: 0 });
    if (!this.#pool) this.#pool = new native.OpenPool(this.#poolThreads, this.#poolQueue, (id, result, m, n) => this.#done(id, result, m, n));
    const id = this.#nextJob;
    this.#nextJob = (this.#nextJob % 0xffffffff) + 1;
    const queued = this.#pool.submit(id, job, dirfd, path, flags, mode, resolve);
    if (queued < 0) return Promise.resolve({ result: queued, mode: 0, nlink: 0 });
    return new Promise((resolve) => this.#jobs.set(id, resolve));
  }

  #done(id: number, result: number, mode: number, nlink: number): void {
    const resolve = this.#jobs.get(id);
    if (!resolve) return; // the resolver was closed: the pool closes the fds of jobs it finishes after that
    this.#jobs.delete(id);
    resolve({ result, mode, nlink });
  }

  /**
   * The step after a lookup that found something, on either path: 0 if pathFd may be reopened with
   * flags; otherwise closes pathFd and returns -errno (EEXIST for O_EXCL, or #check's or the verify
   * hook's refusal).
   */
  #vet(pathFd: number, mode: number, nlink: number, flags: number, exclusive: boolean, options: OpenOptions): number {
    const refused = exclusive ? EEXIST : this.#check(mode, nlink, flags, options) || (options.verify ? options.verify(pathFd) : 0);
    if (refused) native.close(pathFd);
    return -refused;
  }

  /** The errno that refuses what was found, or 0 if it may be opened with flags. */
  #check(mode: number, nlink: number, flags: number, options: OpenOptions): number {
    const type = mode & C.S_IFMT;
    if (type === C.S_IFREG) {
      if (flags & C.O_DIRECTORY) return ENOTDIR;
      if (nlink > 1) {
        const rule = options.hardlinks ?? this.hardlinks;
        if (rule === 'refuse' || (rule === 'read-only' && writes(flags))) {
          this.refusal = rule === 'refuse' ? 'file has more than one hard link' : 'file has more than one hard link: write access refused';
          return EACCES;
        }
      }
      return 0;
    }
    if (type === C.S_IFDIR) {
      if ((flags & C.O_ACCMODE) !== C.O_RDONLY || flags & C.O_TRUNC) return EISDIR;
      if (options.directories) return 0;
      this.refusal = 'directories are not allowed by this rule';
      return EACCES;
    }
    if (type === C.S_IFIFO && options.fifos === true) return 0;
    // A symlink is found only with O_NOFOLLOW (open(2) says ELOOP); FIFOs, devices and sockets are
    // never opened for I/O.
    if (type === C.S_IFLNK) return ELOOP;
    this.refusal = type === C.S_IFIFO ? 'FIFO refused' : type === C.S_IFSOCK ? 'socket refused' : 'device refused';
    return EACCES;
  }

  #gaveUp(): number {
    this.stats.eagainFailures++;
    return -EAGAIN;
  }

  #refuse(reason: string, why: { refusal: string } | null = null): number {
    this.refusal = reason;
    if (why) why.refusal = reason;
    return -EACCES;
  }
}

/** A create never follows a symlink when a verify hook must see the file: it cannot before it exists. */
function createResolve(resolve: number, options: OpenOptions): number {
  return options.verify ? resolve | C.RESOLVE_NO_SYMLINKS : resolve;
}

function resolveFlags(options: OpenOptions): number {
  return C.RESOLVE_BENEATH | C.RESOLVE_NO_MAGICLINKS | C.RESOLVE_NO_XDEV | (options.followSymlinks ? 0 : C.RESOLVE_NO_SYMLINKS);
}

/** The flags of the real open: O_NOCTTY always; O_CLOEXEC on the broker's own copy, which is closed once sent. */
export function ioFlagsOf(flags: number): number {
  return (flags | C.O_NOCTTY | C.O_CLOEXEC) & ~(C.O_CREAT | C.O_EXCL);
}

function writes(flags: number): boolean {
  return (flags & C.O_ACCMODE) !== C.O_RDONLY || (flags & C.O_TRUNC) !== 0;
}
