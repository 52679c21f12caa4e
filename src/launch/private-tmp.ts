/**
 * A session's private temporary directory (`openhook run`, on by default): compilers and scripts
 * that write to $TMPDIR or /tmp work under confinement without the real temp directory being
 * granted, and what they leave there is gone when the session ends.
 *
 * - made 0700 under the real temp directory (os.tmpdir()), with a name no one can guess ahead;
 * - granted `all` through the policy as a tree (a rule added to every section);
 * - TMPDIR, TMP and TEMP name it in the program's environment;
 * - removed when the session ends, by fds: each directory opened beneath its parent without
 *   following symlinks, each name removed with unlinkat in its directory. A process the program
 *   left behind may still be renaming and swapping names in there; it can make the removal fail,
 *   never make it follow a symlink out.
 */
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { E } from '../errno.js';
import { C, native } from '../native.js';
import { ALL_ACCESS } from '../policy/access.js';
import { Policy } from '../policy/policy.js';
import type { Rule } from '../policy/rule.js';

export const PRIVATE_TMP_ORIGIN = "the session's private temporary directory";

/** Makes the directory (0700, as mkdtemp makes it). */
export function makePrivateTmp(parent: string = tmpdir()): string {
  return mkdtempSync(join(parent, 'openhook-session-'));
}

/** The rule that grants it: everything in this tree. */
export function privateTmpRule(dir: string): Rule {
  return {
    effect: 'allow',
    path: dir,
    tree: true,
    glob: false,
    access: ALL_ACCESS,
    followSymlinks: false,
    denyErrno: 0,
    origin: PRIVATE_TMP_ORIGIN,
  };
}

/** The environment that points a program at it. */
export function privateTmpEnv(dir: string): Record<string, string> {
  return { TMPDIR: dir, TMP: dir, TEMP: dir };
}

/**
 * policy with one more rule, in the default section and in every client section, so that whichever
 * section the session matches grants it. The given policy is closed (its roots released).
 */
export function withRule(policy: Policy, rule: Rule): Policy {
  const sections = policy.sections.map((s) => ({
    name: s.name,
    origin: s.origin,
    ...(s.uids ? { uids: s.uids } : {}),
    ...(s.gids ? { gids: s.gids } : {}),
    ...(s.sessions ? { sessions: s.sessions } : {}),
    // A section that includes the default rules has the rule through them.
    rules: s.includeDefault ? s.rules : [...s.rules, rule],
    includeDefault: s.includeDefault,
  }));
  const next = new Policy([...policy.rules, rule], {
    denyErrno: policy.denyErrno,
    unmatched: policy.unmatched,
    source: policy.source,
    sections,
  });
  policy.close();
  return next;
}

const RESOLVE = C.RESOLVE_BENEATH | C.RESOLVE_NO_SYMLINKS | C.RESOLVE_NO_MAGICLINKS | C.RESOLVE_NO_XDEV;
/** Passes over a directory before giving up: a leftover process may keep making names in it. */
const PASSES = 8;

/** Removes dir and everything in it without ever following a symlink. True if it is gone. */
export function removePrivateTmp(dir: string): boolean {
  const parent = native.open(dirname(dir), C.O_PATH | C.O_DIRECTORY, 0);
  if (parent < 0) return false;
  try {
    const name = basename(dir);
    for (let pass = 0; pass < PASSES; pass++) {
      const top = native.openat2(parent, name, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0, RESOLVE);
      if (top === -E.ENOENT) return true;
      if (top < 0) return false; // a symlink now stands there: never followed, and not ours to remove
      try {
        emptyDirectory(top);
      } finally {
        native.close(top);
      }
      const gone = native.unlinkat(parent, name, C.AT_REMOVEDIR);
      if (gone === 0 || gone === -E.ENOENT) return true;
    }
    return false;
  } finally {
    native.close(parent);
  }
}

/** Removes what the directory dirFd holds, depth first, every step on fds. */
function emptyDirectory(dirFd: number, depth = 0): void {
  if (depth > 256) return; // deeper trees are left for the next pass (or the admin): no unbounded recursion
  let names: Buffer[];
  try {
    // The magic link names exactly the directory this fd holds, whatever was renamed since.
    names = readdirSync(`/proc/self/fd/${dirFd}`, { encoding: 'buffer' });
  } catch {
    return;
  }
  for (const name of names) {
    const removed = native.unlinkat(dirFd, name, 0);
    if (removed !== -E.EISDIR && removed !== -E.EPERM) continue; // done, or gone, or cannot be
    const sub = native.openat2(dirFd, name, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0, RESOLVE);
    if (sub < 0) continue;
    try {
      emptyDirectory(sub, depth + 1);
    } finally {
      native.close(sub);
    }
    native.unlinkat(dirFd, name, C.AT_REMOVEDIR);
  }
}
