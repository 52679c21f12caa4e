/**
 * The one state machine for an operation beneath a rule's root. It decides what to do; it never
 * waits. Each native call it needs is a step that a driver runs: the sync driver inline on the event
 * loop, the pool driver as a job on a pool thread (drivers.ts). Both drivers run the same machine,
 * so a fix here holds on both paths.
 *
 * The open operation: LOOKUP (openat2 with O_PATH beneath the root) -> type, link and verify checks
 * -> REOPEN (through /proc/self/fd, with the real flags); a lookup that finds nothing, with O_CREAT,
 * goes to CREATE (O_CREAT|O_EXCL); an EEXIST there (someone created it meanwhile) looks up once more;
 * an EAGAIN from any resolving step retries from the lookup, at most `eagainRetries` times.
 *
 * How to add an operation (mkdir, unlink, rename, link, symlink, chmod, utimes, truncate,
 * O_TMPFILE+linkat): give each native call it needs a Step (and a case in both drivers' runStep: a
 * native call and a pool job), then write its transitions in `advance`: which step follows which
 * answer. The lookup, the checks of what was found (`#vet`), the EAGAIN bound and the results come
 * with the machine; do not copy them.
 */
import { readlinkSync } from 'node:fs';
import type { ByteString } from '../bytestring.js';
import { E } from '../errno.js';
import { C, native } from '../native.js';
import type { HardlinkRule, OpenOptions } from '../policy/open-options.js';
import { failed, refusal, type OpenResult, type Refusal } from './result.js';

/** The native calls a machine asks its driver for. */
export const Step = {
  /** nothing more to run: the result is in `result` */
  DONE: 0,
  /** openat2(dirfd, path, flags | O_PATH, resolve); answers the fd, and the file's mode and nlink */
  LOOKUP: 1,
  /** openat2(dirfd, path, flags, mode, resolve) with O_CREAT|O_EXCL */
  CREATE: 2,
  /** open("/proc/self/fd/<dirfd>", flags) */
  REOPEN: 3,
} as const;
export type Step = (typeof Step)[keyof typeof Step];

/** What a machine needs of its resolver. */
export interface MachineSettings {
  readonly hardlinks: HardlinkRule;
  readonly eagainRetries: number;
  readonly stats: { eagain: number; eagainFailures: number };
}

const DANGLING = refusal(E.EACCES, 'O_CREAT through a dangling symlink');
const HARDLINKED = refusal(E.EACCES, 'file has more than one hard link');
const HARDLINKED_WRITE = refusal(E.EACCES, 'file has more than one hard link: write access refused');
const DIRECTORY = refusal(E.EACCES, 'directories are not allowed by this rule');
const FIFO = refusal(E.EACCES, 'FIFO refused');
const SOCKET = refusal(E.EACCES, 'socket refused');
const DEVICE = refusal(E.EACCES, 'device refused');
/** Per errno (the policy's denial errno): where a rule grants a directory only, anything else. */
const notDirectories: Refusal[] = [];
function notADirectory(errno: number): Refusal {
  return (notDirectories[errno] ??= refusal(errno, 'the rule covers this path only as a directory (a tree root)'));
}

export class OpenMachine {
  // The step to run, read by the driver.
  step: Step = Step.DONE;
  dirfd = -1;
  path: ByteString = '';
  flags = 0;
  mode = 0;
  resolve = 0;
  /** LOOKUP: the flags of the real open, for a driver that can reopen at once (see `mayReopen`) */
  ioFlags = 0;
  /**
   * LOOKUP: the driver may reopen what it found at once, with ioFlags, if it is a regular file with
   * one link (native.openFile): what #vet always allows when there is no verify hook and no O_EXCL.
   */
  mayReopen = false;
  /** REOPEN of a FIFO: it blocks until the other end opens, so a driver must be able to cancel it */
  fifo = false;
  /** the outcome, once step is DONE */
  result: OpenResult = -1;

  readonly #settings: MachineSettings;
  #rootFd = -1;
  #rest: ByteString = '';
  #flags = 0;
  #createMode = 0;
  #options!: OpenOptions;
  #lookupResolve = 0;
  #create = false;
  #exclusive = false;
  #attempts = 0;
  #raced = false;
  /** the O_PATH fd found by the lookup, closed once reopened or refused */
  #found = -1;

  constructor(settings: MachineSettings) {
    this.#settings = settings;
  }

  /** Starts an open of rest beneath rootFd; flags have passed flagsError(), createMode is final. */
  start(rootFd: number, rest: ByteString, flags: number, createMode: number, options: OpenOptions): Step {
    this.#rootFd = rootFd;
    this.#rest = rest;
    this.#flags = flags;
    this.#createMode = createMode;
    this.#options = options;
    this.#lookupResolve = resolveFlags(options);
    this.ioFlags = ioFlagsOf(flags);
    this.#create = (flags & C.O_CREAT) !== 0;
    this.#exclusive = this.#create && (flags & C.O_EXCL) !== 0;
    this.#attempts = 0;
    this.#raced = false;
    this.#found = -1;
    this.result = -1;
    return this.#lookup();
  }

  /**
   * Takes the answer of the step just run (an fd or -errno; for LOOKUP also the file's mode and
   * nlink, and whether the driver already reopened it) and returns the next step.
   */
  advance(answer: number, fileMode: number, nlink: number, reopened: boolean): Step {
    switch (this.step) {
      case Step.LOOKUP:
        if (reopened) return this.#done(answer);
        if (answer === -E.EAGAIN) return this.#again();
        if (answer === -E.ENOENT && this.#create) {
          return this.#run(
            Step.CREATE,
            this.#rootFd,
            this.#rest,
            this.ioFlags | C.O_CREAT | C.O_EXCL,
            this.#createMode,
            createResolve(this.#lookupResolve, this.#options),
          );
        }
        if (answer < 0) return this.#done(answer);
        this.#found = answer;
        return this.#vet(answer, fileMode, nlink);
      case Step.CREATE:
        if (answer === -E.EAGAIN) return this.#again();
        if (answer === -E.EEXIST && !this.#exclusive) {
          // Someone created it between our two looks: open what is there now, once. A second time
          // means the name is a symlink to nothing (we never create through one).
          if (this.#raced) return this.#done(DANGLING);
          this.#raced = true;
          return this.#lookup();
        }
        return this.#done(answer);
      case Step.REOPEN:
        this.#closeFound();
        return this.#done(answer);
      default:
        return this.step;
    }
  }

  /** Ends the operation with result (a driver's cancellation), closing what the machine holds. */
  abort(result: OpenResult): void {
    this.#closeFound();
    this.#done(result);
  }

  #lookup(): Step {
    this.mayReopen = !this.#options.verify && this.#options.directoriesOnly === undefined && !this.#exclusive;
    return this.#run(Step.LOOKUP, this.#rootFd, this.#rest, C.O_PATH | C.O_CLOEXEC | (this.#flags & C.O_NOFOLLOW), 0, this.#lookupResolve);
  }

  /** An EAGAIN from a resolving step: look up again, within the bound. */
  #again(): Step {
    return retryEagain(this.#settings, ++this.#attempts) ? this.#lookup() : this.#done(-E.EAGAIN);
  }

  /** What the lookup found may be reopened with the request's flags, or the open ends refused. */
  #vet(found: number, fileMode: number, nlink: number): Step {
    const options = this.#options;
    let refused: Refusal | null = this.#exclusive
      ? failed(E.EEXIST)
      : check(fileMode, nlink, this.#flags, options, this.#settings.hardlinks);
    if (refused === null && options.directoriesOnly !== undefined && (fileMode & C.S_IFMT) !== C.S_IFDIR)
      refused = notADirectory(options.directoriesOnly);
    if (refused === null && options.verify) {
      const errno = verify(found, this.#rootFd, fileMode & C.S_IFMT, options.verify);
      if (errno) refused = failed(errno);
    }
    if (refused !== null) {
      this.#closeFound();
      return this.#done(refused);
    }
    this.fifo = (fileMode & C.S_IFMT) === C.S_IFIFO;
    return this.#run(Step.REOPEN, found, '', this.ioFlags, 0, 0);
  }

  #run(step: Step, dirfd: number, path: ByteString, flags: number, mode: number, resolve: number): Step {
    this.dirfd = dirfd;
    this.path = path;
    this.flags = flags;
    this.mode = mode;
    this.resolve = resolve;
    if (step !== Step.REOPEN) this.fifo = false;
    if (step !== Step.LOOKUP) this.mayReopen = false;
    return (this.step = step);
  }

  #done(result: OpenResult): Step {
    this.result = typeof result === 'number' && result < 0 ? failed(-result) : result;
    return (this.step = Step.DONE);
  }

  #closeFound(): void {
    if (this.#found >= 0) native.close(this.#found); // an O_PATH fd: closing it never waits
    this.#found = -1;
  }
}

/** The refusal of what was found, or null if it may be opened with flags. */
function check(mode: number, nlink: number, flags: number, options: OpenOptions, hardlinks: HardlinkRule): Refusal | null {
  const type = mode & C.S_IFMT;
  if (type === C.S_IFREG) {
    if (flags & C.O_DIRECTORY) return failed(E.ENOTDIR);
    if (nlink > 1) {
      const rule = options.hardlinks ?? hardlinks;
      if (rule === 'refuse') return HARDLINKED;
      if (rule === 'read-only' && writes(flags)) return HARDLINKED_WRITE;
    }
    return null;
  }
  if (type === C.S_IFDIR) {
    if ((flags & C.O_ACCMODE) !== C.O_RDONLY || flags & C.O_TRUNC) return failed(E.EISDIR);
    return options.directories ? null : DIRECTORY;
  }
  if (type === C.S_IFIFO && options.fifos === true) return null;
  // A symlink is found only with O_NOFOLLOW (open(2) says ELOOP); FIFOs, devices and sockets are
  // never opened for I/O.
  if (type === C.S_IFLNK) return failed(E.ELOOP);
  return type === C.S_IFIFO ? FIFO : type === C.S_IFSOCK ? SOCKET : DEVICE;
}

/**
 * An EAGAIN from openat2 (a rename or mount raced the lookup), counted: whether attempt (1 for the
 * first EAGAIN) may look up again, within the bound. The open machine and the other file operations
 * (operations.ts) share it, so both keep one bound and one count.
 */
export function retryEagain(settings: MachineSettings, attempt: number): boolean {
  settings.stats.eagain++;
  if (attempt <= settings.eagainRetries) return true;
  settings.stats.eagainFailures++;
  return false;
}

/** The policy's verify hook, given the real paths of what was found and of the root. */
export function verify(found: number, rootFd: number, type: number, hook: NonNullable<OpenOptions['verify']>): number {
  return hook(realPath(found), realPath(rootFd), type);
}

/**
 * The verify hook for a name in a directory found beneath the root (mkdir, unlink, rename, link,
 * symlink, mkfifo): what the operation touches is the name, so its real path is decided, not the
 * directory's, or a deny on a file would be reached through a symlink to its directory
 * (`ln -s . l; rm l/secret`). type: what the name is now, or S_IFDIR where there is nothing (what
 * a name op may make at a glob tree's root is decided lexically).
 */
export function verifyName(dir: number, name: ByteString, rootFd: number, type: number, hook: NonNullable<OpenOptions['verify']>): number {
  const real = realPath(dir);
  if (real === '') return hook('', '', type);
  return hook(real === '/' ? `/${name}` : `${real}/${name}`, realPath(rootFd), type);
}

function realPath(fd: number): ByteString {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`, 'latin1');
  } catch {
    return '';
  }
}

/** A create never follows a symlink when a verify hook must see the file: it cannot before it exists. */
function createResolve(resolve: number, options: OpenOptions): number {
  return options.verify ? resolve | C.RESOLVE_NO_SYMLINKS : resolve;
}

export function resolveFlags(options: OpenOptions): number {
  return C.RESOLVE_BENEATH | C.RESOLVE_NO_MAGICLINKS | C.RESOLVE_NO_XDEV | (options.followSymlinks ? 0 : C.RESOLVE_NO_SYMLINKS);
}

/**
 * The flags of the real open: O_NOCTTY always; O_CLOEXEC on the broker's own copy, which is closed
 * once sent. O_NOATIME is removed: the kernel allows it only to the file's owner (or CAP_FOWNER),
 * and the broker is not the client, so a broker running as root would let any client read without
 * updating atime, hiding its reads from atime-based auditing. Stripping it (rather than refusing
 * with EPERM) keeps programs that ask for it opportunistically working; they get an ordinary open.
 */
export function ioFlagsOf(flags: number): number {
  return (flags | C.O_NOCTTY | C.O_CLOEXEC) & ~(C.O_CREAT | C.O_EXCL | C.O_NOATIME);
}

function writes(flags: number): boolean {
  return (flags & C.O_ACCMODE) !== C.O_RDONLY || (flags & C.O_TRUNC) !== 0;
}
