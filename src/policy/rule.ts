/**
 * A rule: allow or deny, on an exact file, a directory tree (`PATH/`), or a glob pattern (`*` within
 * one component, `**` across components). Allow rules carry access letters and options.
 */
import type { HardlinkRule } from './open-options.js';
import { display, fromText, type ByteString } from '../bytestring.js';
import { errnoName, errnoValue } from '../errno.js';
import { Access, formatAccess, parseAccess } from './access.js';
import { NAME_MAX, PATH_MAX } from './path.js';

export interface Rule {
  effect: 'allow' | 'deny';
  /**
   * The normalised pattern: absolute, no empty, '.' or '..' components, no trailing slash (except
   * "/"). Byte string. Without globs it is the exact path; with globs, `\*` and `\\` stay escaped.
   */
  path: ByteString;
  /** true: the rule covers everything beneath what path matches, and that itself */
  tree: boolean;
  /** path contains a glob (`*` or `**`) */
  glob: boolean;
  /** access bits an allow rule grants (see access.ts); 0 for deny */
  access: number;
  /**
   * allow rules: follow symlinks that stay beneath the rule's root. Default: on where the rule grants
   * `s` (the program may make symlinks there, so they must work), else off; `follow_symlinks` says
   * otherwise (docs/policy.md, *Following symlinks*).
   */
  followSymlinks: boolean;
  /** allow rules: FIFOs may be opened (off by default; such opens run off the event loop) */
  fifos?: boolean;
  /** allow rules: regular files with more than one link (unset: the broker's default, 'read-only') */
  hardlinks?: HardlinkRule;
  /** deny rules: the errno to answer with, instead of the policy's (0: the policy's) */
  denyErrno: number;
  /** where the rule came from, for explanations: "--allow /srv/vm/:rw" or "vm.toml:12" */
  origin: string;
}

/** Why a policy could not be loaded. file/line/column name the place when there is one. */
const HARDLINK_RULES: readonly HardlinkRule[] = ['allow', 'read-only', 'refuse'];

export class PolicyError extends Error {
  override name = 'PolicyError';
  readonly code = 'OPENHOOK_BAD_POLICY';
  readonly file: string | undefined;
  readonly line: number | undefined;
  readonly column: number | undefined;
  /** the key of a rule that is wrong ('allow', 'deny', 'access', 'deny_errno'), where known */
  readonly key: string | undefined;

  constructor(message: string, where?: { file?: string; line?: number; column?: number; key?: string }) {
    const prefix =
      where?.file !== undefined ? `${where.file}${where.line ? `:${where.line}${where.column ? `:${where.column}` : ''}` : ''}: ` : '';
    super(prefix + message);
    this.file = where?.file;
    this.line = where?.line;
    this.column = where?.column;
    this.key = where?.key;
  }
}

/** A component of a compiled pattern: a literal name, or a glob. */
export type Segment = ByteString | Glob;

export interface Glob {
  /** '**': zero or more whole components; '*': one whole component; 'part': `*` inside a name, like `*.img` */
  kind: '**' | '*' | 'part';
  /** for 'part': the literal pieces between the stars (unescaped) */
  pieces: ByteString[];
  /** the component as written (escaped), to tell identical globs apart from different ones */
  text: ByteString;
}

/** The components of a rule's pattern, ready for the trie. `/` has none. */
export function segments(rule: Pick<Rule, 'path' | 'glob'>): Segment[] {
  if (rule.path === '/') return [];
  const parts = rule.path.slice(1).split('/');
  if (!rule.glob) return parts;
  return parts.map((part) => {
    if (part === '**') return { kind: '**', pieces: [], text: part };
    const pieces = splitStars(part);
    if (pieces.length === 1) return pieces[0]!;
    if (pieces.length === 2 && pieces[0] === '' && pieces[1] === '') return { kind: '*', pieces: [], text: part };
    return { kind: 'part', pieces, text: part };
  });
}

/** The literal directory above the first glob (for an exact file: its parent). Opened as the rule's root. */
export function rootOf(rule: Pick<Rule, 'path' | 'glob' | 'tree'>): ByteString {
  let end: number;
  if (rule.glob) {
    const star = firstUnescapedStar(rule.path);
    end = rule.path.lastIndexOf('/', star);
    return end <= 0 ? '/' : unescape(rule.path.slice(0, end));
  }
  if (rule.tree) return rule.path;
  end = rule.path.lastIndexOf('/');
  return end <= 0 ? '/' : rule.path.slice(0, end);
}

/** Splits a component on unescaped `*`, unescaping `\*` and `\\` in the pieces. */
function splitStars(part: string): string[] {
  const pieces: string[] = [];
  let cur = '';
  for (let i = 0; i < part.length; i++) {
    const ch = part[i]!;
    if (ch === '\\' && (part[i + 1] === '*' || part[i + 1] === '\\')) cur += part[++i];
    else if (ch === '*') {
      pieces.push(cur);
      cur = '';
    } else cur += ch;
  }
  pieces.push(cur);
  return pieces;
}

function unescape(text: string): string {
  return text.replace(/\\([*\\])/g, '$1');
}

function firstUnescapedStar(text: string): number {
  for (let i = 0; i < text.length; i++) {
    if (text[i] === '\\' && (text[i + 1] === '*' || text[i + 1] === '\\')) i++;
    else if (text[i] === '*') return i;
  }
  return -1;
}

/**
 * Parses the PATH of a rule (user text, UTF-8): absolute; `//` and `/./` collapse; `..` is refused;
 * a trailing `/` (or a trailing `**`) makes a tree. Throws PolicyError (message without a place;
 * callers add it).
 */
export function parseRulePath(text: string): { path: ByteString; tree: boolean; glob: boolean } {
  if (!text.startsWith('/')) throw new PolicyError(`path '${text}' must be absolute`);
  // The common case, fast (100k-rule policies): printable ASCII, already normal, no globs.
  if (text.length < NAME_MAX && /^[\x20-\x29\x2b-\x5b\x5d-\x7e]*$/.test(text) && !/\/\/|\/\.\.?(?:\/|$)/.test(text)) {
    const tree = text.endsWith('/');
    const path = tree && text.length > 1 ? text.slice(0, -1) : text;
    return { path, tree: tree || path === '/', glob: false };
  }
  if (text.includes('\0')) throw new PolicyError(`path '${text}' contains a NUL byte`);
  const bytes = fromText(text);
  if (bytes.length >= PATH_MAX) throw new PolicyError(`path '${text}' is longer than PATH_MAX`);
  let tree = text.endsWith('/');
  const parts: string[] = [];
  for (const part of bytes.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') throw new PolicyError(`path '${text}': '..' is not allowed in rules`);
    if (part.length > NAME_MAX) throw new PolicyError(`path '${text}': a component is longer than NAME_MAX`);
    if (part !== '**' && splitStars(part).slice(1, -1).includes('')) {
      throw new PolicyError(`path '${text}': '**' must be a whole component, as in /srv/**/disk.img`);
    }
    if (part === '**' && parts[parts.length - 1] === '**') continue; // '**/**' is '**'
    parts.push(part);
  }
  // A trailing '**' means what a tree means: the directory and everything beneath it.
  while (parts.length > 0 && parts[parts.length - 1] === '**') {
    parts.pop();
    tree = true;
  }
  let path = '/' + parts.join('/');
  const glob = firstUnescapedStar(path) >= 0;
  // Without a glob, the escapes have done their work: the path is the exact name.
  if (!glob) path = unescape(path);
  return { path, tree: tree || path === '/', glob };
}

/** An errno from a policy: a name ('EACCES') or a positive number. Throws PolicyError. */
export function parseErrno(value: string | number): number {
  const n = typeof value === 'number' ? value : errnoValue(value);
  if (n === undefined || !Number.isInteger(n) || n <= 0 || n > 4095) {
    throw new PolicyError(`unknown errno ${JSON.stringify(value)} (use a name like "EACCES" or "ENOENT")`);
  }
  return n;
}

/** A rule as written, with the policy file's key names. */
export interface RuleSpec {
  allow?: string;
  deny?: string;
  access?: string;
  follow_symlinks?: boolean;
  fifos?: boolean;
  hardlinks?: HardlinkRule;
  deny_errno?: string | number;
}

/** Builds a rule from its parts; throws PolicyError without a place (callers add it). */
export function makeRule(spec: RuleSpec, origin: string): Rule {
  const effect = spec.allow !== undefined ? 'allow' : 'deny';
  const at = (key: string, f: () => void): void => {
    try {
      f();
    } catch (err) {
      throw new PolicyError((err as Error).message, { key });
    }
  };
  let parsed!: ReturnType<typeof parseRulePath>;
  at(effect, () => (parsed = parseRulePath((spec.allow ?? spec.deny)!)));
  let access = 0;
  if (effect === 'allow') at('access', () => (access = parseAccess(spec.access ?? '')));
  let denyErrno = 0;
  if (spec.deny_errno !== undefined) at('deny_errno', () => (denyErrno = parseErrno(spec.deny_errno!)));
  const { path, tree, glob } = parsed;
  const followSymlinks = effect === 'allow' && (spec.follow_symlinks ?? followsByDefault(access));
  const rule: Rule = { effect, path, tree, glob, access, followSymlinks, denyErrno, origin };
  if (spec.fifos) rule.fifos = true;
  if (spec.hardlinks !== undefined) {
    if (!HARDLINK_RULES.includes(spec.hardlinks))
      throw new PolicyError(`hardlinks must be one of ${HARDLINK_RULES.join(', ')}`, { key: 'hardlinks' });
    rule.hardlinks = spec.hardlinks;
  }
  return rule;
}

/**
 * Whether an allow rule with these letters follows symlinks when it does not say: where it grants
 * `s`. A program that may make symlinks in a tree expects them to work there (`ln -s a b && cat b`,
 * a venv's bin/python3.11 -> python3, node_modules/.bin/x -> ../x/cli.js), and following them costs
 * no safety: resolution stays beneath the root (RESOLVE_BENEATH, NO_MAGICLINKS, NO_XDEV always), and
 * deny rules beneath the root are decided again on the real path (Policy.decide's verify hook).
 */
export function followsByDefault(access: number): boolean {
  return (access & Access.SYMLINK) !== 0;
}

/** `--allow PATH:ACCESS` */
export function parseAllowFlag(spec: string): Rule {
  const origin = `--allow ${spec}`;
  const colon = spec.lastIndexOf(':');
  if (colon <= 0) throw new PolicyError(`${origin}: expected PATH:ACCESS, for example /srv/vm/:rw`);
  try {
    return makeRule({ allow: spec.slice(0, colon), access: spec.slice(colon + 1) }, origin);
  } catch (err) {
    throw new PolicyError(`${origin}: ${(err as Error).message}`);
  }
}

/** `--deny PATH` */
export function parseDenyFlag(spec: string): Rule {
  const origin = `--deny ${spec}`;
  try {
    return makeRule({ deny: spec }, origin);
  } catch (err) {
    throw new PolicyError(`${origin}: ${(err as Error).message}`);
  }
}

/** A rule as people write it: `allow /srv/vm/ r (follow_symlinks)`, `deny /srv/vm/private/`. */
export function describeRule(rule: Rule): string {
  const path = display(rule.path) + (rule.tree && rule.path !== '/' ? '/' : '');
  if (rule.effect === 'deny') return `deny ${path}${rule.denyErrno ? ` (${errnoName(rule.denyErrno)})` : ''}`;
  // follow_symlinks is named where it is not what the letters imply (docs/policy.md).
  const follow =
    rule.followSymlinks === followsByDefault(rule.access) ? false : rule.followSymlinks ? 'follow_symlinks' : 'follow_symlinks = false';
  const options = [follow, rule.fifos && 'fifos', rule.hardlinks && `hardlinks ${rule.hardlinks}`].filter(Boolean);
  return `allow ${path} ${formatAccess(rule.access)}${options.length ? ` (${options.join(', ')})` : ''}`;
}
