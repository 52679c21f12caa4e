/**
 * Rules compiled into a trie of path components, so that finding the deciding rule costs time in
 * proportion to the path's depth (and the glob edges met on the way), never to the number of rules.
 *
 * Which rule wins, when several match (the "most specific"): compare how each matches the path,
 * component by component from the root. At the first component where they differ, the more precise
 * match wins:
 *
 *     literal name  >  partial glob (`*.img`)  >  `*`  >  `**` or the rest of a tree (`dir/`)
 *
 * If they match every component alike, a rule that names the path exactly beats a tree that covers
 * it; then deny beats allow; then the rule written first wins.
 *
 * So a deny carve-out inside an allowed tree wins (it matches deeper components literally); an exact
 * file allowed inside a denied tree wins; and `/srv/**\/*.key` denies keys in `/srv/vm/` unless a rule
 * names more of the path literally, such as `/srv/vm/` (the literal `vm` is compared first).
 *
 * The search is a depth-first walk in that order of preference, with branch-and-bound: a branch is
 * abandoned as soon as it is worse than the best match found so far, so a policy of literal rules
 * costs one Map lookup per component. It allocates nothing but the path's component strings.
 */
import type { ByteString } from '../bytestring.js';
import { Root } from './roots.js';
import { rootOf, segments, type Glob, type Rule } from './rule.js';

/** What the trie stores for a rule: the rule, and whatever deciding needs precomputed. */
export interface Entry {
  readonly rule: Rule;
}

const LIT = 4,
  PART = 3,
  STAR = 2,
  WIDE = 1;
const END_EXACT = 2,
  END_TREE = 1;

interface GlobEdge<E extends Entry> {
  glob: Glob;
  rank: number;
  node: Node<E>;
}

class Node<E extends Entry> {
  lit: Map<ByteString, Node<E>> | null = null;
  globs: GlobEdge<E>[] | null = null;
  wide: Node<E> | null = null;
  exact: E | null = null;
  tree: E | null = null;
  /** the directory this node names, shared by every rule that opens beneath it */
  root: Root | null = null;
  /** sequence numbers of exact and tree, for "written first wins" */
  exactSeq = 0;
  treeSeq = 0;
}

/** Whether a is preferred to b at the same place: deny first, then the earlier rule. */
function better(a: Entry, aSeq: number, b: Entry | null, bSeq: number): boolean {
  if (b === null) return true;
  if (a.rule.effect !== b.rule.effect) return a.rule.effect === 'deny';
  return aSeq < bSeq;
}

/** Whether a component matches a partial glob: pieces[0] * pieces[1] * ... * pieces[k]. */
function matchPart(pieces: readonly ByteString[], c: ByteString): boolean {
  const first = pieces[0]!,
    last = pieces[pieces.length - 1]!;
  const end = c.length - last.length;
  if (end < first.length || !c.startsWith(first) || !c.endsWith(last)) return false;
  let pos = first.length;
  for (let k = 1; k < pieces.length - 1; k++) {
    const p = pieces[k]!;
    const at = c.indexOf(p, pos);
    if (at < 0 || at + p.length > end) return false;
    pos = at + p.length;
  }
  return true;
}

// Scratch space for one search at a time (decisions are synchronous).
const MAX_COMPONENTS = 2048; // PATH_MAX / 2
const comps: ByteString[] = [];
const cur = new Uint8Array(MAX_COMPONENTS);
const best = new Uint8Array(MAX_COMPONENTS);

export class Trie<E extends Entry> {
  #root = new Node<E>();
  #seq = 0;
  #count = 0;

  // search state
  #n = 0;
  #best: E | null = null;
  #bestEnd = 0;
  #bestSeq = 0;
  #bestAtRoot = false;
  #gen = 0;

  get size(): number {
    return this.#count;
  }

  /**
   * Whether the last match() was decided by a tree rule on the tree's own directory (the path names
   * it, nothing beneath). For a glob tree such as `/srv/*\/`, that name is a directory only if the
   * file really is one: the policy must check that, since the lexical match cannot.
   */
  get matchedTreeRoot(): boolean {
    return this.#bestAtRoot;
  }

  /**
   * Adds a rule. make() builds its entry, given the Root of the directory it opens beneath (shared
   * with every other rule of this trie that has the same root).
   */
  add(rule: Rule, make: (rule: Rule, root: Root | null) => E): E {
    const seq = this.#seq++;
    this.#count++;
    if (!rule.glob) return this.#addLiteral(rule, seq, make);
    const segs = segments(rule);
    // Allow rules open beneath the literal directory above the first glob; deny rules open nothing.
    const rootDepth = rule.effect === 'deny' ? -1 : segs.findIndex((g) => typeof g !== 'string');
    let node = this.#root;
    let root: Root | null = rootDepth === 0 ? (node.root ??= new Root('/')) : null;
    for (let d = 0; d < segs.length; d++) {
      const seg = segs[d]!;
      if (typeof seg === 'string') {
        node.lit ??= new Map();
        let next = node.lit.get(seg);
        if (!next) node.lit.set(seg, (next = new Node()));
        node = next;
      } else if (seg.kind === '**') {
        node = node.wide ??= new Node();
      } else {
        node.globs ??= [];
        let edge = node.globs.find((e) => e.glob.text === seg.text);
        if (!edge) {
          edge = { glob: seg, rank: seg.kind === '*' ? STAR : PART, node: new Node() };
          node.globs.push(edge);
          // Partial globs before '*': the walk tries the more precise first.
          node.globs.sort((a, b) => b.rank - a.rank);
        }
        node = edge.node;
      }
      if (d + 1 === rootDepth) root = node.root ??= new Root(rootOf(rule));
    }
    return this.#place(node, rule, seq, make(rule, root));
  }

  /** add() for a rule without globs: walks the path's components without splitting it. */
  #addLiteral(rule: Rule, seq: number, make: (rule: Rule, root: Root | null) => E): E {
    const path = rule.path;
    let node = this.#root;
    let root: Root | null = null;
    // The root: the tree itself, or an exact file's directory.
    // Deny rules open nothing: no root. "/" and files directly in it open beneath "/".
    const rootEnd = rule.effect === 'deny' ? -1 : rule.tree ? path.length : path.lastIndexOf('/');
    if (rootEnd === 0 || (rootEnd > 0 && path === '/')) root = node.root ??= new Root('/');
    for (let start = 1; start < path.length;) {
      let end = path.indexOf('/', start);
      if (end < 0) end = path.length;
      const name = path.slice(start, end);
      node.lit ??= new Map();
      let next = node.lit.get(name);
      if (!next) node.lit.set(name, (next = new Node()));
      node = next;
      if (end === rootEnd) root = node.root ??= new Root(path.slice(0, end));
      start = end + 1;
    }
    return this.#place(node, rule, seq, make(rule, root));
  }

  #place(node: Node<E>, rule: Rule, seq: number, entry: E): E {
    if (rule.tree) {
      if (better(entry, seq, node.tree, node.treeSeq)) {
        node.tree = entry;
        node.treeSeq = seq;
      }
    } else if (better(entry, seq, node.exact, node.exactSeq)) {
      node.exact = entry;
      node.exactSeq = seq;
    }
    return entry;
  }

  /** The deciding rule's entry for a normalised absolute path, or null if none matches. */
  match(path: ByteString): E | null {
    let n = 0;
    if (path.length > 1) {
      let start = 1;
      for (let i = 1; i <= path.length; i++) {
        if (i === path.length || path.charCodeAt(i) === 0x2f) {
          comps[n++] = path.slice(start, i);
          start = i + 1;
        }
      }
    }
    this.#n = n;
    this.#best = null;
    this.#bestEnd = 0;
    this.#bestSeq = 0;
    this.#bestAtRoot = false;
    this.#search(this.#root, 0, 1);
    const found = this.#best;
    this.#best = null;
    for (let i = 0; i < n; i++) comps[i] = '';
    return found;
  }

  /**
   * Walks node at component i. cmp compares the ranks so far (cur[0, i)) with the best match's:
   * 1 better (or no best yet), 0 equal, -1 worse (never searched).
   */
  #search(node: Node<E>, i: number, cmp: number): void {
    const n = this.#n;
    if (i === n) {
      // Every candidate here has the same ranks; a new best makes the prefix equal to it (cmp 0).
      const gen = this.#gen;
      if (node.exact) this.#consider(node.exact, node.exactSeq, END_EXACT, cmp);
      if (this.#gen !== gen) cmp = 0;
      if (node.tree) this.#consider(node.tree, node.treeSeq, END_TREE, cmp, true);
      if (this.#gen !== gen) cmp = 0;
      if (node.wide) this.#search(node.wide, i, cmp); // '**' matching no component
      return;
    }
    const c = comps[i]!;
    let gen = this.#gen;
    if (node.lit) {
      const next = node.lit.get(c);
      if (next) {
        this.#step(next, i, LIT, cmp);
        if (this.#gen !== gen) {
          cmp = 0;
          gen = this.#gen;
        }
      }
    }
    if (node.globs) {
      for (const e of node.globs) {
        if (e.glob.kind === '*' || matchPart(e.glob.pieces, c)) {
          this.#step(e.node, i, e.rank, cmp);
          if (this.#gen !== gen) {
            cmp = 0;
            gen = this.#gen;
          }
        }
      }
    }
    // '**' and a tree both cover the following components with WIDE: compare them through.
    if (node.wide || node.tree) {
      let c2 = cmp;
      for (let j = i; j <= n; j++) {
        // here cur[i, j) are WIDE
        if (c2 < 0) break;
        if (j === n) {
          if (node.tree) this.#consider(node.tree, node.treeSeq, END_TREE, c2);
          break;
        }
        if (node.wide) {
          this.#search(node.wide, j, c2);
          if (this.#gen !== gen) {
            cmp = 0;
            c2 = 0;
            gen = this.#gen;
          }
        }
        cur[j] = WIDE;
        if (c2 === 0) c2 = WIDE > best[j]! ? 1 : WIDE < best[j]! ? -1 : 0;
      }
    }
  }

  #step(next: Node<E>, i: number, rank: number, cmp: number): void {
    if (cmp === 0) cmp = rank > best[i]! ? 1 : rank < best[i]! ? -1 : 0;
    if (cmp < 0) return;
    cur[i] = rank;
    this.#search(next, i + 1, cmp);
  }

  #consider(rule: E, seq: number, end: number, cmp: number, atRoot = false): void {
    if (cmp < 0) return;
    if (cmp === 0 && this.#best !== null) {
      if (end < this.#bestEnd) return;
      if (end === this.#bestEnd && !better(rule, seq, this.#best, this.#bestSeq)) return;
    }
    this.#best = rule;
    this.#bestEnd = end;
    this.#bestSeq = seq;
    this.#bestAtRoot = atRoot;
    for (let i = 0, n = this.#n; i < n; i++) best[i] = cur[i]!; // a few components: no subarray to allocate
    this.#gen++;
  }
}
