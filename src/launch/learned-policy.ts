/**
 * Turns what a program asked for in learn mode into a minimal policy, written in the TOML subset
 * every openhook policy loader reads (notes/team.md):
 *
 *   [[rule]]
 *   allow = "/srv/vm/"   # trailing / = tree
 *   access = "rw"
 *
 * Minimal means:
 * - a directory collapses into one tree rule when every entry it holds now was used, directly or
 *   (for a subdirectory) by collapsing too; the highest such directory wins. An entry nobody asked
 *   for (another file, a symlink, an empty subdirectory) keeps its directory from collapsing, so a
 *   tree never grants a file the program did not use;
 * - every other path gets an exact rule;
 * - each rule has the narrowest access letters that let every request it covers pass: the union of
 *   what they needed ('c' brings 'w', which the policy format requires), and 'd' where a path that
 *   was read is a directory (requests cannot say they want one; the resolver finds out).
 *
 * Names are written as exact paths: '*' and '\' are escaped as the policy format says (\* and \\),
 * so that a learned name never turns into a glob.
 */
import { lstatSync, readdirSync } from 'node:fs';
import { display, toBytes, type ByteString } from '../bytestring.js';
import { Access, formatAccess } from '../policy/access.js';

export interface LearnedRule {
  /** normalised absolute path, no trailing slash */
  path: ByteString;
  tree: boolean;
  /** access bits */
  access: number;
}

/** Lists a directory's entry names (byte strings), or null if it cannot be read. */
export type ListDirectory = (dir: ByteString) => Array<{ name: ByteString; isDirectory: boolean }> | null;

const listDirectory: ListDirectory = (dir) => {
  try {
    return readdirSync(toBytes(dir), { withFileTypes: true, encoding: 'buffer' }).map((e) => ({
      name: e.name.toString('latin1'),
      isDirectory: e.isDirectory(),
    }));
  } catch {
    return null;
  }
};

/** Whether a path is a directory now (not following a final symlink, as the resolver does not). */
export type IsDirectory = (path: ByteString) => boolean;

export const isDirectory: IsDirectory = (path) => {
  try {
    return lstatSync(toBytes(path)).isDirectory();
  } catch {
    return false;
  }
};

function parentOf(path: ByteString): ByteString {
  const i = path.lastIndexOf('/');
  return i <= 0 ? '/' : path.slice(0, i);
}

function childOf(dir: ByteString, name: ByteString): ByteString {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

/** The minimal rules for the paths used (normalised path → access bits), sorted by path. */
export function minimalRules(
  used: ReadonlyMap<ByteString, number>,
  list: ListDirectory = listDirectory,
  isDir: IsDirectory = isDirectory,
): LearnedRule[] {
  // Directories with something used beneath them: only these can collapse, and only these are read.
  const ancestors = new Set<ByteString>();
  for (const path of used.keys()) {
    for (let d = parentOf(path); d !== '/' && !ancestors.has(d); d = parentOf(d)) ancestors.add(d);
  }
  const memo = new Map<ByteString, boolean>();
  const fullyUsed = (dir: ByteString): boolean => {
    const known = memo.get(dir);
    if (known !== undefined) return known;
    const entries = list(dir);
    let all = entries !== null && entries.length > 0;
    for (const e of entries ?? []) {
      if (!all) break;
      const child = childOf(dir, e.name);
      if (used.has(child)) continue;
      all = e.isDirectory && ancestors.has(child) && fullyUsed(child);
    }
    memo.set(dir, all);
    return all;
  };

  const rules = new Map<string, LearnedRule>();
  for (const [path, access] of used) {
    let top: ByteString | null = null;
    // Never collapse to "/" itself: a rule for everything is not a learned policy.
    for (let d = parentOf(path); d !== '/' && fullyUsed(d); d = parentOf(d)) top = d;
    const key = top !== null ? `${top}/` : path;
    const rule = rules.get(key) ?? { path: top ?? path, tree: top !== null, access: 0 };
    rule.access |= access;
    if (access & Access.READ && isDir(path)) rule.access |= Access.DIRECTORY;
    rules.set(key, rule);
  }
  // A path that is itself a collapsed tree's directory is covered by the tree, which must then grant
  // what that path needed too: `tar cf out.tar many` opens many/ itself (r on a directory: 'd').
  const trees = new Map([...rules.values()].filter((r) => r.tree).map((r) => [r.path, r]));
  for (const rule of rules.values()) {
    const tree = rule.tree ? undefined : trees.get(rule.path);
    if (tree) tree.access |= rule.access;
  }
  const out = [...rules.values()].filter((r) => r.tree || !trees.has(r.path));
  for (const rule of out) if (rule.access & Access.CREATE) rule.access |= Access.WRITE;
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** A rule's path as the policy format writes an exact name: '*' and '\\' escaped. */
export function literalPattern(path: ByteString): ByteString {
  return path.replace(/[*\\]/g, (c) => `\\${c}`);
}

/** A TOML basic string for a byte string that is valid UTF-8, or null if it is not. */
export function tomlString(path: ByteString): string | null {
  const bytes = toBytes(path);
  const text = bytes.toString('utf8');
  if (!Buffer.from(text, 'utf8').equals(bytes)) return null;
  let out = '"';
  for (const ch of text) {
    const c = ch.codePointAt(0)!;
    if (ch === '"' || ch === '\\') out += `\\${ch}`;
    else if (c < 0x20 || c === 0x7f) out += `\\u${c.toString(16).padStart(4, '0')}`;
    else out += ch;
  }
  return `${out}"`;
}

/** Control characters escaped, so that a name can never end a comment line and start a rule. */
function oneLine(text: string): string {
  // eslint-disable-next-line no-control-regex -- finding control characters is the point: they get escaped
  return text.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** The policy file's text. header: comment lines (without '#'). */
export function formatPolicy(rules: readonly LearnedRule[], header: readonly string[] = []): string {
  const lines = header.map((h) => `# ${oneLine(h)}`.trimEnd());
  for (const rule of rules) {
    const pattern = literalPattern(rule.path);
    const value = tomlString(rule.tree ? `${pattern === '/' ? '' : pattern}/` : pattern);
    lines.push('');
    if (value === null) {
      // TOML holds only UTF-8 text; such a name cannot be written as a rule.
      lines.push(
        `# not written: the name is not UTF-8: ${oneLine(display(rule.path))}${rule.tree ? '/' : ''} (access ${formatAccess(rule.access)})`,
      );
      continue;
    }
    lines.push('[[rule]]', `allow = ${value}`, `access = "${formatAccess(rule.access)}"`);
  }
  return `${lines.join('\n')}\n`;
}
