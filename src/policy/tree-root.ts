/**
 * A glob tree such as `/srv/*\/` covers every directory its pattern names, as a tree: /srv/a/ and all
 * beneath it (docs/policy.md). The pattern's own match, /srv/disk.img, is such a directory only if
 * the file there is one, which a lexical decision cannot know. So an allow decided by a glob tree on
 * its own root is good for a directory only: the resolver checks the type of what it
 * resolved, before anything is opened for I/O, and nothing may be created there. Otherwise the rule
 * would grant a regular file it does not name.
 *
 * (A literal tree needs none of this: its root is opened as a directory, or the rule allows nothing.)
 */
import type { OpenOptions } from './open-options.js';
import { display, type ByteString } from '../bytestring.js';
import { Access } from './access.js';
import type { Rule } from './rule.js';

/** Why rule cannot allow access on path, its glob tree's own root, before anything is looked at; or null. */
export function treeRootRefusal(rule: Rule, path: ByteString, access: number): string | null {
  if (access & Access.CREATE)
    return `${rule.origin} covers ${display(path)} only as a directory (a tree's root): nothing can be created as it`;
  if (!(rule.access & Access.DIRECTORY))
    return `${rule.origin} covers ${display(path)} only as a directory (a tree's root), and grants no 'd'`;
  return null;
}

/** open, narrowed to directories: the resolver refuses any other file found there with denyErrno. */
export function directoriesOnly(open: OpenOptions, denyErrno: number): OpenOptions {
  return { ...open, directoriesOnly: denyErrno };
}
