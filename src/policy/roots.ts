/**
 * The directory an allow rule opens beneath: its root. The policy only names it; the resolver keeps
 * the open fds of roots (src/resolver/roots.ts). One Root per directory of a trie, shared by every
 * rule with that root.
 */
import type { ByteString } from '../bytestring.js';

export class Root {
  readonly path: ByteString;
  constructor(path: ByteString) {
    this.path = path;
  }
}
