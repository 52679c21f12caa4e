/**
 * The directories that allow rules open beneath ("roots"), as O_PATH fds: shared, opened lazily,
 * bounded in number, and reference-counted.
 *
 * Why lazily and bounded: a policy of 100,000 rules may name 100,000 different roots (one directory
 * per guest). Opening them all at load time would cost 100,000 fds and most of the load-time budget,
 * and would freeze each root at the inode it had then. Instead a root is opened at its first use,
 * shared by every rule with the same root, and kept in a table of at most `limit` open roots; the
 * oldest is retired when the table is full (it is simply reopened when next needed).
 *
 * Why reference-counted: an open beneath a root may still be running (asynchronously) when the root
 * is retired or its policy is replaced by a reload. A decision pins the root's handle; the fd is
 * closed only when it is retired and no decision holds it any more.
 *
 * A root that does not exist (yet) is not an error at load time: the request gets the open's errno
 * (ENOENT), and the root is tried again at the next request, so a directory created after the policy
 * was loaded works without a reload.
 */
import type { ByteString } from '../bytestring.js';
import { C, native } from '../native.js';

/** One open fd of a root. */
export class RootHandle {
  readonly fd: number;
  refs = 0;
  retired = false;
  /** the directory's real path, read when first needed (follow_symlinks checks) */
  real: ByteString | null = null;
  constructor(fd: number) {
    this.fd = fd;
  }
}

export class Root {
  readonly path: ByteString;
  /** the current handle, or null until opened (or after it was retired) */
  handle: RootHandle | null = null;
  constructor(path: ByteString) {
    this.path = path;
  }
}

export const DEFAULT_ROOT_LIMIT = 1024;

/**
 * The open roots of one policy. Root objects live in the policy's tries (one per directory); this
 * table bounds how many of them hold an fd at once.
 */
export class RootTable {
  readonly limit: number;
  /** open roots, oldest first */
  #open: Root[] = [];
  #closed = false;

  constructor(limit = DEFAULT_ROOT_LIMIT) {
    this.limit = Math.max(1, limit);
  }

  /** How many roots hold an open fd now. */
  get openCount(): number {
    return this.#open.length;
  }

  /** Pins root's handle, opening it if need be. Returns the handle, or -errno. */
  acquire(root: Root): RootHandle | number {
    let h = root.handle;
    if (h === null) {
      if (this.#closed) return -9; // EBADF: the policy was closed
      const fd = native.open(root.path, C.O_PATH | C.O_DIRECTORY, 0);
      if (fd < 0) return fd;
      h = root.handle = new RootHandle(fd);
      this.#open.push(root);
      if (this.#open.length > this.limit) this.#retire(this.#open.shift()!);
    }
    h.refs++;
    return h;
  }

  release(h: RootHandle): void {
    if (--h.refs === 0 && h.retired) native.close(h.fd);
  }

  #retire(root: Root): void {
    const h = root.handle;
    if (!h) return;
    root.handle = null;
    h.retired = true;
    if (h.refs === 0) native.close(h.fd);
  }

  /** Retires every root: fds close now, or when the last open using them finishes. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const r of this.#open) this.#retire(r);
    this.#open.length = 0;
  }
}
