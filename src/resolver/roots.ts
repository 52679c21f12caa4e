/**
 * The directories that allow rules open beneath ("roots"), as O_PATH fds: shared, opened lazily,
 * bounded in number, and reference-counted. The policy names a root by its path; this table, on the
 * resolver's side, maps the path to a pinned fd.
 *
 * Why lazily and bounded: a policy of 100,000 rules may name 100,000 different roots (one directory
 * per guest). Opening them all at load time would cost 100,000 fds and most of the load-time budget,
 * and would freeze each root at the inode it had then. Instead a root is opened at its first use,
 * shared by every rule with the same root, and kept in a table of at most `limit` open roots; the
 * oldest is retired when the table is full (it is simply reopened when next needed).
 *
 * Why reference-counted: an open beneath a root may still be running (asynchronously) when the root
 * is retired, or when a reload retires every root (retireAll). An open pins the root's handle; the
 * fd is closed only when it is retired and no open holds it any more.
 *
 * A root that does not exist (yet) is not an error at load time: the request gets the open's errno
 * (ENOENT), and the root is tried again at the next request, so a directory created after the policy
 * was loaded works without a reload.
 */
import type { ByteString } from '../bytestring.js';
import { E } from '../errno.js';
import { C, native } from '../native.js';

/** One open fd of a root. */
export class RootHandle {
  readonly path: ByteString;
  readonly fd: number;
  refs = 0;
  retired = false;
  constructor(path: ByteString, fd: number) {
    this.path = path;
    this.fd = fd;
  }
}

export const DEFAULT_ROOT_LIMIT = 1024;

export class RootTable {
  readonly limit: number;
  /** open roots by path, oldest first */
  readonly #open = new Map<ByteString, RootHandle>();
  #closed = false;

  constructor(limit = DEFAULT_ROOT_LIMIT) {
    this.limit = Math.max(1, limit);
  }

  /** How many roots hold an open fd now. */
  get openCount(): number {
    return this.#open.size;
  }

  /** Pins the root at path, opening it if need be. Returns the handle, or -errno. */
  acquire(path: ByteString): RootHandle | number {
    let h = this.#open.get(path);
    if (h === undefined) {
      if (this.#closed) return -E.EBADF;
      const fd = native.open(path, C.O_PATH | C.O_DIRECTORY, 0);
      if (fd < 0) return fd;
      h = new RootHandle(path, fd);
      this.#open.set(path, h);
      if (this.#open.size > this.limit) this.#retire(this.#open.keys().next().value!);
    }
    h.refs++;
    return h;
  }

  release(h: RootHandle): void {
    if (--h.refs === 0 && h.retired) native.close(h.fd);
  }

  /**
   * Retires every root: later opens reopen them (a reload then sees directories as they are now),
   * opens in flight keep theirs until they finish.
   */
  retireAll(): void {
    for (const path of [...this.#open.keys()]) this.#retire(path);
  }

  /** Retires every root and opens no more. */
  close(): void {
    this.#closed = true;
    this.retireAll();
  }

  #retire(path: ByteString): void {
    const h = this.#open.get(path);
    if (!h) return;
    this.#open.delete(path);
    h.retired = true;
    if (h.refs === 0) native.close(h.fd);
  }
}
