/**
 * A compiled policy: rules in, decisions out. A decision names the rule that made it; an allow names
 * the root directory beneath which the resolver must open (its path: the policy opens nothing), the
 * rest of the path below it, and the rule's open options.
 *
 * Which rule wins: see trie.ts (the most specific, deny before allow at equal specificity). A path
 * that no rule covers is denied with the policy's denial errno (EACCES by default).
 *
 * Which rules apply to a client: the policy's client sections are tried in the order they were
 * written; the first whose every given criterion (uid, gid, session) matches the client's peer
 * credentials applies. A client that matches none gets the default section (the top-level rules),
 * or, if the policy says `unmatched = "refuse"`, its connection is refused (see admits()).
 */
import { constants as fsConstants } from 'node:fs';
import type { ByteString } from '../bytestring.js';
import { E } from '../errno.js';
import { Access, formatAccess } from './access.js';
import { noCarveOuts } from './carve-outs.js';
import type { OpenOptions } from './open-options.js';
import type { Rule } from './rule.js';
import type { Root } from './roots.js';
import { directoriesOnly, treeRootRefusal } from './tree-root.js';
import { Trie, type Entry } from './trie.js';

const { S_IFDIR } = fsConstants;

export interface Peer {
  pid: number;
  uid: number;
  gid: number;
  /** supplementary groups (SO_PEERGROUPS), null where the kernel cannot tell */
  groups: readonly number[] | null;
  /** the launcher's session name, for clients the broker started itself */
  session?: string;
}

export interface Decision {
  allowed: boolean;
  /** the errno for a denial (positive), 0 for an allow */
  errno: number;
  /** the rule that decided, or null for the default deny */
  rule: Rule | null;
  /** the directory the open must stay beneath, absolute (allow only; '' for a denial) */
  root: ByteString;
  /** the path below root, relative, never empty ("." for the root itself) */
  rest: ByteString;
  /** why, in words, for `check` and the audit log */
  reason: string;
  /** how the resolver must open: the rule's options (allow only) */
  open: OpenOptions;
  /** allow only: decided by a glob tree on its own root, so good for a directory only (tree-root.ts) */
  directoryOnly?: boolean;
}

/** Which clients a section applies to: every criterion given must match; a list matches any member. */
export interface SectionSpec {
  /** a label for explanations; defaults to the origin */
  name?: string;
  uids?: readonly number[];
  /** the primary gid or any supplementary group */
  gids?: readonly number[];
  sessions?: readonly string[];
  /** the default section's rules apply too, below this section's at equal specificity */
  includeDefault?: boolean;
  rules: readonly Rule[];
  /** where the section was written: "vm.toml:30" */
  origin: string;
}

export interface PolicyOptions {
  /** errno for denials, EACCES (13) unless set */
  denyErrno?: number;
  /** client sections, in matching order */
  sections?: readonly SectionSpec[];
  /** a client that matches no section: the default section's rules, or a refused connection */
  unmatched?: 'default' | 'refuse';
  /** where the policy came from, for messages: a file name, or "command line" */
  source?: string;
  /** tries already built from these rules and sections (compileTriesSliced); built here if absent */
  tries?: CompiledTries;
}

/** A rule with what deciding needs precomputed: what the trie stores. */
class CompiledRule implements Entry {
  readonly rule: Rule;
  /** the directory an allow rule opens beneath (null for deny rules) */
  readonly root: Root | null;
  /** root.path.length, or 0 for "/" */
  readonly rootLength: number;
  readonly open: OpenOptions;
  /** the decision's reason, made once: a request is decided without building strings */
  readonly reason: string;

  constructor(rule: Rule, root: Root | null) {
    this.rule = rule;
    this.reason = `${rule.effect === 'deny' ? 'denied' : 'allowed'} by ${rule.origin}`;
    this.root = root;
    this.rootLength = root === null || root.path === '/' ? 0 : root.path.length;
    const dirs = (rule.access & Access.DIRECTORY) !== 0;
    this.open =
      rule.followSymlinks || rule.fifos || rule.hardlinks
        ? { followSymlinks: rule.followSymlinks, directories: dirs, fifos: rule.fifos, hardlinks: rule.hardlinks }
        : dirs
          ? DIRECTORIES
          : NO_OPTIONS;
  }
}

const makeEntry = (rule: Rule, root: Root | null): CompiledRule => new CompiledRule(rule, root);

/** The tries a policy decides with: the default section's, and each client section's. */
export interface CompiledTries {
  default: Trie<CompiledRule>;
  sections: Trie<CompiledRule>[];
}

/** The rule lists the tries are built from: a section with include_default gets the default rules below its own. */
function trieRules(rules: readonly Rule[], sections: readonly SectionSpec[]): (readonly Rule[])[] {
  return [rules, ...sections.map((s) => (s.includeDefault ? [...s.rules, ...rules] : s.rules))];
}

function compileTries(rules: readonly Rule[], sections: readonly SectionSpec[]): CompiledTries {
  const tries = trieRules(rules, sections).map((list) => {
    const trie = new Trie<CompiledRule>();
    for (const r of list) trie.add(r, makeEntry);
    return trie;
  });
  return { default: tries[0]!, sections: tries.slice(1) };
}

/**
 * compileTries() in slices, yielding to the event loop between them: a reload of a large policy
 * then never stalls the requests that the old policy is still serving meanwhile.
 */
export async function compileTriesSliced(rules: readonly Rule[], sections: readonly SectionSpec[], slice = 5000): Promise<CompiledTries> {
  const tries: Trie<CompiledRule>[] = [];
  for (const list of trieRules(rules, sections)) {
    const trie = new Trie<CompiledRule>();
    for (let i = 0; i < list.length; i++) {
      trie.add(list[i]!, makeEntry);
      if (i % slice === slice - 1) await new Promise((resolve) => setImmediate(resolve));
    }
    tries.push(trie);
  }
  return { default: tries[0]!, sections: tries.slice(1) };
}

export class Section {
  readonly name: string;
  readonly origin: string;
  readonly uids: readonly number[] | null;
  readonly gids: readonly number[] | null;
  readonly sessions: readonly string[] | null;
  readonly rules: readonly Rule[];
  /** the default section's rules apply too (include_default) */
  readonly includeDefault: boolean;
  /** @internal */
  readonly trie: Trie<CompiledRule>;
  /** @internal the reason of a default deny in this section, made once */
  readonly noRule: string;
  /** every rule the trie holds: this section's, then the default section's with include_default */
  readonly #trieRules: readonly Rule[];
  /** per following rule: whether its real paths need checking (carve-outs.ts), found once */
  readonly #checked = new Map<Rule, boolean>();

  constructor(
    spec: Omit<SectionSpec, 'rules'> & { rules: readonly Rule[] },
    trie: Trie<CompiledRule>,
    isDefault = false,
    defaultRules: readonly Rule[] = [],
  ) {
    this.name = spec.name ?? spec.origin;
    this.origin = spec.origin;
    this.uids = spec.uids?.length ? spec.uids : null;
    this.gids = spec.gids?.length ? spec.gids : null;
    this.sessions = spec.sessions?.length ? spec.sessions : null;
    this.rules = spec.rules;
    this.includeDefault = spec.includeDefault ?? false;
    this.trie = trie;
    this.noRule = `no rule covers this path (default deny${isDefault ? '' : `, section ${this.name}`})`;
    this.#trieRules = this.includeDefault ? [...spec.rules, ...defaultRules] : spec.rules;
  }

  /**
   * Whether symlinks followed under rule (of this section) need the real path decided again: only
   * if some other rule of the section might decide a path beneath its root (carve-outs.ts).
   */
  checksRealPaths(rule: Rule): boolean {
    let checks = this.#checked.get(rule);
    // The scan is linear in the rules: in a large policy, checking is kept rather than scanning
    // per rule (quadratic over a policy of many following rules).
    if (checks === undefined)
      this.#checked.set(rule, (checks = this.#trieRules.length > CARVE_OUT_SCAN_LIMIT || !noCarveOuts(rule, this.#trieRules)));
    return checks;
  }

  matches(peer: Peer): boolean {
    if (this.uids && !this.uids.includes(peer.uid)) return false;
    if (this.gids && !this.gids.includes(peer.gid) && !peer.groups?.some((g) => this.gids!.includes(g))) return false;
    if (this.sessions && (peer.session === undefined || !this.sessions.includes(peer.session))) return false;
    return true;
  }
}

/** Sections with more rules than this always check real paths under following rules. */
const CARVE_OUT_SCAN_LIMIT = 1000;

const NO_OPTIONS: OpenOptions = { followSymlinks: false, directories: false };
const DIRECTORIES: OpenOptions = { followSymlinks: false, directories: true };

export class Policy {
  /** the default section's rules */
  readonly rules: readonly Rule[];
  readonly denyErrno: number;
  readonly sections: readonly Section[];
  readonly unmatched: 'default' | 'refuse';
  readonly source: string;
  /** the rules of the default section */
  readonly defaultSection: Section;

  constructor(rules: readonly Rule[], options: PolicyOptions = {}) {
    this.rules = rules;
    this.denyErrno = options.denyErrno ?? E.EACCES;
    this.unmatched = options.unmatched ?? 'default';
    this.source = options.source ?? 'command line';
    const tries = options.tries ?? compileTries(rules, options.sections ?? []);
    this.defaultSection = new Section({ name: 'default', origin: 'default section', rules }, tries.default, true);
    this.sections = (options.sections ?? []).map((s, i) => new Section(s, tries.sections[i]!, false, rules));
  }

  /** The number of rules, counting each once. */
  get ruleCount(): number {
    return this.rules.length + this.sections.reduce((n, s) => n + s.rules.length, 0);
  }

  /** The section whose rules apply to peer, or null if the policy refuses it. */
  sectionFor(peer: Peer): Section | null {
    for (const s of this.sections) if (s.matches(peer)) return s;
    return this.unmatched === 'refuse' ? null : this.defaultSection;
  }

  /** Whether a client may connect at all (the broker asks at accept). */
  admits(peer: Peer): boolean {
    return this.sectionFor(peer) !== null;
  }

  /** Decides on a normalised absolute path (see path.ts) and the access the request needs. */
  decide(peer: Peer, path: ByteString, access: number): Decision {
    const section = this.sectionFor(peer);
    if (section === null)
      return deny(null, this.denyErrno, 'this client matches no section of the policy, and unmatched clients are refused');
    const c = section.trie.match(path);
    if (c === null) return deny(null, this.denyErrno, section.noRule);
    const rule = c.rule;
    if (rule.effect === 'deny') return deny(rule, rule.denyErrno || this.denyErrno, c.reason);
    if ((rule.access & access) !== access) {
      return deny(
        rule,
        this.denyErrno,
        `${rule.origin} grants '${formatAccess(rule.access)}', the request needs '${formatAccess(access)}'`,
      );
    }
    const directoryOnly = rule.glob && section.trie.matchedTreeRoot;
    const refusal = directoryOnly ? treeRootRefusal(rule, path, access) : null;
    if (refusal !== null) return deny(rule, this.denyErrno, refusal);
    const rest = path.length === c.rootLength || path === '/' ? '.' : path.slice(c.rootLength + 1);
    // Following rules check the real path only where a carve-out could be reached: without one,
    // RESOLVE_BENEATH alone keeps the answer (carve-outs.ts), and opens keep the fast path.
    const open =
      rule.followSymlinks && section.checksRealPaths(rule)
        ? {
            ...c.open,
            verify: (real: ByteString, rootReal: ByteString, type: number) => this.#verify(section, access, c, real, rootReal, type),
          }
        : c.open;
    if (directoryOnly)
      return {
        allowed: true,
        errno: 0,
        rule,
        root: c.root!.path,
        rest,
        reason: c.reason,
        open: directoriesOnly(open, this.denyErrno),
        directoryOnly,
      };
    return { allowed: true, errno: 0, rule, root: c.root!.path, rest, reason: c.reason, open };
  }

  /**
   * For rules that follow symlinks: the deny carve-outs must hold on the real path too. Called by
   * the resolver with the real path of what it resolved (and of the root), before anything is opened
   * for I/O: maps the real path back beneath the rule's root and decides again. Returns 0 or the
   * errno to refuse with.
   */
  #verify(section: Section, access: number, rule: CompiledRule, real: ByteString, rootReal: ByteString, type: number): number {
    if (real === '' || rootReal === '') return this.denyErrno;
    let lexical: string;
    const root = rule.root!.path;
    if (real === rootReal) lexical = root;
    else if (rootReal === '/' && real.startsWith('/')) lexical = joinPath(root, real.slice(1));
    else if (real.startsWith(rootReal) && real.charCodeAt(rootReal.length) === 0x2f)
      lexical = joinPath(root, real.slice(rootReal.length + 1));
    else return this.denyErrno; // outside the root: the kernel should have refused already
    const again = section.trie.match(lexical)?.rule ?? null;
    if (again === null || again.effect === 'deny') return again?.denyErrno || this.denyErrno;
    if (again.glob && section.trie.matchedTreeRoot && type !== S_IFDIR) return this.denyErrno;
    return (again.access & access) === access ? 0 : this.denyErrno;
  }

  /** Nothing to release: a policy holds no fds (the resolver keeps the roots open). */
  close(): void {}
}

function joinPath(dir: ByteString, rel: ByteString): ByteString {
  return dir === '/' ? '/' + rel : dir + '/' + rel;
}

function deny(rule: Rule | null, errno: number, reason: string): Decision {
  return { allowed: false, errno, rule, root: '', rest: '', reason, open: NO_OPTIONS };
}
