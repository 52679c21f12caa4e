/**
 * What a rule says about how its files may be opened. The policy states it; the resolver
 * (src/resolver/) carries it out. It lives here so that the policy imports nothing of the resolver.
 */
import type { ByteString } from '../bytestring.js';

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
   * Called with the real path of what was resolved, the real path of the root ('' where one
   * cannot be read: refuse then) and the file type found (S_IFMT bits), before anything
   * is opened for I/O (so O_TRUNC has not happened yet); returns 0, or an errno to refuse with. The
   * policy uses it to hold deny carve-outs on the real path when symlinks are followed. When it is
   * set, a new file is never created through a symlink (the create step resolves with
   * RESOLVE_NO_SYMLINKS), since a created file cannot be checked before it exists.
   */
  verify?: (real: ByteString, rootReal: ByteString, type: number) => number;
  /**
   * Set (to the errno to refuse with) where the rule grants a directory only (a glob tree on its own
   * root, see tree-root.ts): anything else found there is refused before it is opened for I/O.
   */
  directoriesOnly?: number;
}

export const DEFAULT_OPEN_OPTIONS: Readonly<OpenOptions> = Object.freeze({ followSymlinks: false, directories: false });
