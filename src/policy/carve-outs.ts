/**
 * Whether a rule that follows symlinks needs its real paths checked (the verify hook of
 * Policy.decide), or whether RESOLVE_BENEATH alone already keeps every answer the policy would give.
 *
 * The verify hook maps the real path of what was resolved back beneath the rule's root and decides
 * again; it can only refuse if some rule other than the deciding one D wins for a path at or
 * beneath the root. This module answers "no such rule can exist" conservatively, for D a literal
 * tree (`allow = "/srv/vm/"`, no glob), whose root is its own path:
 *
 *   1. The kernel finds only what lies at or beneath the root (RESOLVE_BENEATH with NO_MAGICLINKS
 *      and NO_XDEV: no symlink, `..` or mount leads out), so the real path, mapped back, is the root
 *      or a path beneath it, and only rules that can match such a path can decide it.
 *   2. A literal rule R whose path is at or beneath the root can (a carve-out, or another allow with
 *      other letters, or a rule on the same path): it counts.
 *   3. A literal tree R strictly above the root matches every path beneath it, but never wins there:
 *      the first component where R and D differ is the one just below R's path, where D matches a
 *      literal name and R "the rest of a tree", and a literal is more precise (trie.ts). It does not
 *      count. A literal file R elsewhere matches nothing beneath the root: it does not count.
 *   4. A glob R counts whenever its literal part (the directory above its first glob) is at, above
 *      or beneath the root: then it might match something beneath the root. (Some of these never
 *      win either, say `/srv/*\/x` against `/srv/vm/`; counting them only costs the fast path.) A glob
 *      whose literal part leads elsewhere matches nothing beneath the root.
 *
 * If nothing counts, D decides every path at or beneath its root, with the letters it granted when
 * the request was decided: the verify hook would answer 0 for everything the kernel can find, so it
 * may be skipped. A D with a glob, or on a single file (whose root holds names D does not cover), is
 * always checked.
 */
import type { ByteString } from '../bytestring.js';
import type { Rule } from './rule.js';
import { rootOf } from './rule.js';

/** Whether D's followed symlinks need no check on the real path, given every rule of D's section (D among them). */
export function noCarveOuts(d: Rule, rules: readonly Rule[]): boolean {
  if (d.effect !== 'allow' || d.glob || !d.tree) return false;
  const root = d.path;
  for (const r of rules) {
    if (r === d) continue;
    if (!r.glob) {
      if (atOrBeneath(r.path, root)) return false; // 2
      continue; // 3: a tree above loses beneath the root; a file elsewhere matches nothing there
    }
    const literal = rootOf(r);
    if (atOrBeneath(root, literal) || atOrBeneath(literal, root)) return false; // 4
  }
  return true;
}

/** Whether path is dir itself or lies beneath it (both normalised, absolute). */
function atOrBeneath(path: ByteString, dir: ByteString): boolean {
  return dir === '/' || path === dir || (path.startsWith(dir) && path.charCodeAt(dir.length) === 0x2f);
}
