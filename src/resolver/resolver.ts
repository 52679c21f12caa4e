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
 * 6. O_NOATIME never reaches the real open (ioFlagsOf): the broker is not the client.
 *
 * Opens that may block (beneath a network or FUSE filesystem, or where FIFOs are allowed) run the
 * same steps on a small thread pool: `openSlow`. Both run one state machine (machine.ts); results
 * are values (result.ts): an fd, or an errno with its reason. Nothing here throws on the request path.
 * A policy names a root by its path; `openBeneath` pins its fd from the root table (roots.ts).
 *
 * The other file operations (mkdir, unlink, rename, link, symlink, chmod, ..., O_TMPFILE) are
 * `operations` (operations.ts): they pin their roots the same way, and share the machine's resolve
 * flags, verify call and EAGAIN bound.
 */
import { display, type ByteString } from '../bytestring.js';
import { E, errnoName } from '../errno.js';
import { C, native, type NativeOpenPool } from '../native.js';
import { DEFAULT_OPEN_OPTIONS, type HardlinkRule, type OpenOptions } from '../policy/open-options.js';
import { OpenMachine, resolveFlags, Step } from './machine.js';
import { Operations } from './operations.js';
import { failed, refusal, type OpenResult } from './result.js';
import { DEFAULT_ROOT_LIMIT, RootTable, type RootHandle } from './roots.js';

export type { HardlinkRule, OpenOptions } from '../policy/open-options.js';
export { DEFAULT_OPEN_OPTIONS } from '../policy/open-options.js';
export { ioFlagsOf } from './machine.js';
export { codeOf, type OpenResult, type Refusal } from './result.js';
export type { Place } from './operations.js';

/** Retries after an EAGAIN from openat2 before the client gets EAGAIN. */
export const EAGAIN_RETRIES = 8;

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
  /** at most this many root directory fds open at once (default 1024; see roots.ts) */
  rootLimit?: number;
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
  0x6b414653,
  0x5346414f, // AFS
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
    if (fd === -E.ENOSYS) return 'this kernel has no openat2 (Linux 5.6 or later is needed)';
    if (fd === -E.EINVAL) return 'this kernel lacks a RESOLVE_* flag of openat2 (Linux 5.6 or later is needed)';
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
  /** the open fds of the roots that policies name */
  readonly roots: RootTable;
  /** every file operation but open, beneath a root a decision names (operations.ts) */
  readonly operations: Operations = new Operations(this);
  readonly #stat = new Float64Array(9);
  /** the sync driver's machine: sync opens never interleave, so one serves them all */
  readonly #machine = new OpenMachine(this);
  /** Per open root: does it lie on a filesystem whose opens may block? Keyed by the handle, since fd numbers are reused. */
  readonly #rootBlocks = new WeakMap<RootHandle, boolean>();
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
    this.roots = new RootTable(options.rootLimit ?? DEFAULT_ROOT_LIMIT);
  }

  /**
   * Opens rest beneath the root directory at path (as a policy decision names it): pins the root's
   * fd for the whole open, so that neither the table's bound nor a reload closes it meanwhile, and
   * runs the open on the event loop or, where it may block, on the pool (a promise then).
   */
  openBeneath(
    root: ByteString,
    rest: ByteString,
    flags: number,
    mode: number,
    options: OpenOptions,
    cancel: OpenCancel | null,
  ): OpenResult | Promise<OpenResult> {
    const h = this.roots.acquire(root);
    if (typeof h === 'number') return refusal(-h, `its root ${display(root)} cannot be opened (${errnoName(h)})`);
    if (this.offloads(h, options)) {
      this.stats.slowOpens++;
      return this.#runPool(new OpenMachine(this), h.fd, rest, flags, mode, options, cancel).finally(() => this.roots.release(h));
    }
    try {
      return this.open(h.fd, rest, flags, mode, options);
    } finally {
      this.roots.release(h);
    }
  }

  /**
   * Whether an open beneath this root must run on the thread pool (openSlow) rather than on the event
   * loop (open): where FIFOs are allowed, and beneath a root on a network or FUSE filesystem. With
   * RESOLVE_NO_XDEV every file opened lies on the root's own filesystem, so the root decides. One
   * statfs per root, on the pool.
   */
  offloads(root: RootHandle, options: OpenOptions): boolean {
    if (options.fifos || this.offload === 'always') return true;
    const known = this.#rootBlocks.get(root);
    if (known !== undefined) return known;
    // Not known yet. statfs itself can wait on a stalled server, so ask on the pool, and offload
    // until the answer comes.
    this.#rootBlocks.set(root, true);
    const fd = native.dup(root.fd);
    if (fd >= 0) {
      void this.#job(C.JOB_STATFS, fd, '', 0, 0, 0).then((r) => {
        native.close(fd); // an O_PATH fd: closing it never waits
        this.#rootBlocks.set(root, r.result < 0 || mayBlock(r.mode));
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

  /** Opens rest beneath rootFd on the event loop: the sync driver. flags must have passed flagsError(). */
  open(rootFd: number, rest: ByteString, flags: number, mode: number, options: OpenOptions = DEFAULT_OPEN_OPTIONS): OpenResult {
    const m = this.#machine;
    const stat = this.#stat;
    let step = m.start(rootFd, rest, flags, this.createMode(mode), options);
    while (step !== Step.DONE) {
      let answer: number,
        reopened = false;
      if (step === Step.LOOKUP) {
        if (m.mayReopen) {
          // The native side reopens at once what the machine always allows (a regular file with
          // one link) and hands back everything else unopened, with stat[8] telling which.
          answer = native.openFile(m.dirfd, m.path, m.flags, m.resolve, m.ioFlags, stat);
          reopened = stat[8] === 1;
        } else {
          answer = native.lookup(m.dirfd, m.path, m.flags, m.resolve, stat);
        }
      } else if (step === Step.CREATE) {
        answer = native.create(m.dirfd, m.path, m.flags, m.mode, m.resolve);
      } else {
        answer = native.reopen(m.dirfd, m.flags);
      }
      step = m.advance(answer, stat[0]!, stat[1]!, reopened);
    }
    return m.result;
  }

  /**
   * The same machine as open(), each step a job on a pool thread, so that a stalled filesystem or a
   * FIFO waiting for its other end never blocks the event loop: the pool driver. Never rejects.
   */
  openSlow(
    rootFd: number,
    rest: ByteString,
    flags: number,
    mode: number,
    options: OpenOptions,
    cancel: OpenCancel | null,
  ): Promise<OpenResult> {
    this.stats.slowOpens++;
    // The caller's fd may be closed while the jobs wait. Hold our own.
    const root = native.dup(rootFd);
    if (root < 0) return Promise.resolve(failed(-root));
    return this.#runPool(new OpenMachine(this), root, rest, flags, mode, options, cancel).finally(() => native.close(root));
  }

  async #runPool(
    m: OpenMachine,
    rootFd: number,
    rest: ByteString,
    flags: number,
    mode: number,
    options: OpenOptions,
    cancel: OpenCancel | null,
  ): Promise<OpenResult> {
    let step = m.start(rootFd, rest, flags, this.createMode(mode), options);
    while (step !== Step.DONE) {
      if (cancel?.cancelled) {
        m.abort(CANCELLED);
        break;
      }
      let done: JobResult;
      if (step === Step.LOOKUP) {
        done = await this.#job(C.JOB_LOOKUP, m.dirfd, m.path, m.flags, 0, m.resolve);
      } else if (step === Step.CREATE) {
        done = await this.#job(C.JOB_CREATE, m.dirfd, m.path, m.flags, m.mode, m.resolve);
      } else {
        const fifo = m.fifo ? m.dirfd : -1;
        if (fifo >= 0) cancel?.fifos.add(fifo);
        done = await this.#job(C.JOB_REOPEN, m.dirfd, '', m.flags, 0, 0);
        if (fifo >= 0) cancel?.fifos.delete(fifo);
      }
      step = m.advance(done.result, done.mode, done.nlink, false);
    }
    const result = m.result;
    if (typeof result === 'number' && cancel?.cancelled) {
      this.release(result);
      return CANCELLED;
    }
    return result;
  }

  /** The mode a created file gets: permission bits only, less the umask. */
  createMode(mode: number): number {
    return mode & 0o777 & ~this.umask;
  }

  /** Stops the pool and closes the roots; slow opens still in flight have their fds closed when they finish. */
  close(): void {
    this.#closed = true;
    this.#pool?.close();
    this.#pool = null;
    for (const done of this.#jobs.values()) done({ result: -E.ECANCELED, mode: 0, nlink: 0 });
    this.#jobs.clear();
    this.roots.close();
  }

  /** [threads, idle, queued, pending] of the pool, or null before the first slow open. */
  poolStats(): [number, number, number, number] | null {
    return this.#pool?.stats() ?? null;
  }

  #job(job: number, dirfd: number, path: ByteString, flags: number, mode: number, resolve: number): Promise<JobResult> {
    if (this.#closed) return Promise.resolve({ result: -E.ECANCELED, mode: 0, nlink: 0 });
    if (!this.#pool)
      this.#pool = new native.OpenPool(this.#poolThreads, this.#poolQueue, (id, result, m, n) => this.#done(id, result, m, n));
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
}

const CANCELLED = failed(E.ECANCELED);
