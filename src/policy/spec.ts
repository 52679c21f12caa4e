/**
 * The policy file: TOML (parsed by smol-toml), checked against a schema, turned into rules and
 * client sections that know where they were written. Every error names the file, line and column.
 *
 * This module reads and checks only; file.ts compiles. It must not load the native addon, even
 * indirectly: the reload thread (reload-worker.ts) runs it, and the addon's receive arena is one per
 * process (native.ts installs it when loaded), so loading it in a thread would take the arena from
 * the broker.
 *
 *     deny_errno = "EACCES"          # optional: errno for denials
 *     unmatched = "default"          # optional: or "refuse" (clients matching no [[client]])
 *
 *     [[rule]]                        # top-level rules: the default section
 *     allow = "/srv/vm/"              # or deny = "..."; trailing / = tree; * and ** globs
 *     access = "rw"                   # r, w, c (needs w), d (directories, needs r)
 *     follow_symlinks = false         # allow rules: follow symlinks beneath the root
 *     fifos = false                   # allow rules: FIFOs may be opened (on the broker's thread pool)
 *     hardlinks = "read-only"         # allow rules: files with several links: allow, read-only, refuse
 *
 *     [[client]]                      # a section: the first whose criteria all match applies
 *     uid = 107                       # or [107, 108]; gid = ...; session = "vm1"
 *     include_default = false         # also apply the top-level rules
 *     [[client.rule]]
 *     allow = "/srv/vm/vm1/"
 *     access = "rwc"
 *
 * See docs/policy.md for the whole format and worked examples.
 */
import { readFileSync } from 'node:fs';
import { isUtf8 } from 'node:buffer';
import { parse, TomlError } from 'smol-toml';
import { locate, type Located, type Position } from './locate.js';
import type { SectionSpec } from './policy.js';
import { makeRule, parseErrno, PolicyError, type Rule, type RuleSpec } from './rule.js';

/** A policy file, parsed and checked but not compiled (no fds, no trie). */
export interface PolicySpec {
  rules: Rule[];
  sections: SectionSpec[];
  denyErrno: number;
  unmatched: 'default' | 'refuse';
  source: string;
}

/** Reads and checks a policy file. Throws PolicyError with file:line:column. */
export function readPolicyFile(path: string): PolicySpec {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    throw new PolicyError(`cannot read the policy: ${(err as Error).message}`, { file: path });
  }
  if (!isUtf8(bytes)) throw new PolicyError('the policy is not valid UTF-8 text', { file: path, ...firstBadUtf8(bytes) });
  return parsePolicyText(bytes.toString('utf8'), path);
}

// ---- the schema ------------------------------------------------------------------------------------

type FieldType = 'string' | 'boolean' | 'errno' | 'ids' | 'strings' | 'tables' | readonly string[];

const TOP: Record<string, FieldType> = { deny_errno: 'errno', unmatched: ['default', 'refuse'], rule: 'tables', client: 'tables' };
const RULE: Record<string, FieldType> = {
  allow: 'string',
  deny: 'string',
  access: 'string',
  follow_symlinks: 'boolean',
  fifos: 'boolean',
  hardlinks: ['allow', 'read-only', 'refuse'],
  deny_errno: 'errno',
};
const CLIENT: Record<string, FieldType> = {
  name: 'string',
  uid: 'ids',
  gid: 'ids',
  session: 'strings',
  include_default: 'boolean',
  rule: 'tables',
};

const typeNames: Record<string, string> = {
  string: 'a string',
  boolean: 'true or false',
  errno: 'an errno name such as "EACCES", or a number',
  ids: 'a number or a list of numbers',
  strings: 'a string or a list of strings',
  tables: 'a list of tables ([[...]])',
};

/** A problem at a path of the parsed document; turned into a PolicyError with a position later. */
class Issue {
  constructor(
    readonly path: string,
    readonly message: string,
  ) {}
}

type Table = Record<string, unknown>;

function isTable(v: unknown): v is Table {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

function isId(v: unknown): boolean {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < 0xffffffff;
}

function checkType(v: unknown, type: FieldType): boolean {
  if (Array.isArray(type)) return typeof v === 'string' && type.includes(v);
  switch (type) {
    case 'string':
      return typeof v === 'string';
    case 'boolean':
      return typeof v === 'boolean';
    case 'errno':
      return typeof v === 'string' || (typeof v === 'number' && Number.isInteger(v));
    case 'ids':
      return isId(v) || (Array.isArray(v) && v.every(isId));
    case 'strings':
      return typeof v === 'string' || (Array.isArray(v) && v.every((s) => typeof s === 'string'));
    case 'tables':
      return Array.isArray(v) && v.every(isTable);
  }
  return false;
}

/** Checks a table's keys against a schema: no unknown keys, each of the right type. */
function checkTable(t: Table, schema: Record<string, FieldType>, path: string, what: string): void {
  for (const key in t) {
    const type = schema[key];
    if (type === undefined)
      throw new Issue(
        path ? `${path}.${key}` : key,
        `unknown key '${key}' in ${what} (expected one of: ${Object.keys(schema).join(', ')})`,
      );
    if (!checkType(t[key], type)) {
      const expected = Array.isArray(type) ? type.map((s) => `"${s}"`).join(' or ') : typeNames[type as string];
      throw new Issue(path ? `${path}.${key}` : key, `'${key}' must be ${expected}`);
    }
  }
}

// ---- parsing -----------------------------------------------------------------------------------------

/** Tables per piece when a large document is parsed in pieces (see parsePolicyText). */
const PIECE = 2048;

/** Parses and checks policy text. file names it in messages and rule origins. */
export function parsePolicyText(text: string, file: string): PolicySpec {
  // Table positions give every rule its file:line; key positions are needed only for an error.
  const where = locate(text, false);
  const builder = new Builder(where, file);
  try {
    if (where.cuts.length <= PIECE) {
      builder.add(parseToml(text, file));
    } else {
      // A large policy is parsed in pieces cut before [[rule]] or [[client]] headers, each checked
      // and turned into rules at once: the parser's many short-lived objects then die young,
      // instead of all living through the whole parse (a third of the load time went to the
      // garbage collector). Cut there, the pieces mean together what the document means whole.
      for (let k = 0; k < where.cuts.length; k += PIECE) {
        const start = k === 0 ? 0 : where.cuts[k]!;
        const end = k + PIECE < where.cuts.length ? where.cuts[k + PIECE]! : text.length;
        let piece: Table;
        try {
          piece = parse(text.slice(start, end)) as Table;
        } catch (err) {
          if (!(err instanceof TomlError)) throw err;
          parseToml(text, file); // the error as the whole document has it (line, column, excerpt)
          throw err; // unreachable: a piece fails only if the whole does
        }
        builder.add(piece);
      }
    }
    return builder.finish();
  } catch (err) {
    if (!(err instanceof Issue)) throw err;
    const pos = positionOf(locate(text, true).keys, err.path);
    throw new PolicyError(err.message, { file, ...pos });
  }
}

function parseToml(text: string, file: string): Table {
  try {
    return parse(text) as Table;
  } catch (err) {
    if (err instanceof TomlError) {
      const what = err.message.replace(/^Invalid TOML document: /, '').split('\n')[0];
      throw new PolicyError(`${what}\n${err.codeblock}`.trimEnd(), { file, line: err.line, column: err.column });
    }
    throw err;
  }
}

/** The position of path, or of its nearest enclosing thing that has one. */
function positionOf(positions: Map<string, Position>, path: string): Position | undefined {
  for (let p = path; p; p = p.replace(/(\.[^.[\]]+|\[\d+\])$/, '')) {
    const pos = positions.get(p);
    if (pos) return pos;
    if (!/(\.[^.[\]]+|\[\d+\])$/.test(p)) break;
  }
  return undefined;
}

/** Checks parsed documents (the whole, or its pieces in order) and collects rules and sections. */
class Builder {
  readonly rules: Rule[] = [];
  readonly sections: SectionSpec[] = [];
  #top: Table | null = null;
  #where: Located;
  #file: string;

  constructor(where: Located, file: string) {
    this.#where = where;
    this.#file = file;
  }

  #originOf(array: string): (i: number) => string {
    const lines = this.#where.arrays.get(array) ?? [];
    return (i) => `${this.#file}:${lines[i] ?? '?'}`;
  }

  add(doc: Table): void {
    checkTable(doc, TOP, '', 'the policy');
    this.#top ??= doc; // top-level keys can only be in the first piece
    buildRules((doc.rule as Table[] | undefined) ?? [], 'rule', this.#originOf('rule'), this.rules);
    for (const c of (doc.client as Table[] | undefined) ?? []) {
      const path = `client[${this.sections.length}]`;
      checkTable(c, CLIENT, path, '[[client]]');
      if (c.uid === undefined && c.gid === undefined && c.session === undefined) {
        throw new Issue(path, '[[client]] needs at least one of uid, gid, session (clients matching none get the top-level rules)');
      }
      const list = <T>(v: T | T[] | undefined): T[] | undefined => (v === undefined ? undefined : Array.isArray(v) ? v : [v]);
      const origin = this.#originOf('client')(this.sections.length);
      this.sections.push({
        name: (c.name as string | undefined) ?? `[[client]] at ${origin}`,
        uids: list(c.uid as number | number[] | undefined),
        gids: list(c.gid as number | number[] | undefined),
        sessions: list(c.session as string | string[] | undefined),
        includeDefault: (c.include_default as boolean | undefined) ?? false,
        rules: buildRules((c.rule as Table[] | undefined) ?? [], `${path}.rule`, this.#originOf(`${path}.rule`), []),
        origin,
      });
    }
  }

  finish(): PolicySpec {
    const top = this.#top ?? {};
    if (this.rules.length === 0 && this.sections.every((s) => s.rules.length === 0)) {
      throw new Issue('', 'the policy has no rules: an empty policy would deny everything (write at least one [[rule]])');
    }
    let denyErrno = 13;
    if (top.deny_errno !== undefined) denyErrno = wrap('deny_errno', () => parseErrno(top.deny_errno as string | number));
    return {
      rules: this.rules,
      sections: this.sections,
      denyErrno,
      unmatched: (top.unmatched as 'default' | 'refuse' | undefined) ?? 'default',
      source: this.#file,
    };
  }
}

/** Checks rule tables and appends their rules to out; indices continue from out.length. */
function buildRules(list: Table[], base: string, originOf: (i: number) => string, out: Rule[]): Rule[] {
  for (let k = 0; k < list.length; k++) {
    const t = list[k]!;
    const i = out.length;
    try {
      // Issues name keys relative to the rule; its own path is built only for an error.
      checkTable(t, RULE, '', '[[rule]]');
      const isAllow = t.allow !== undefined;
      if (isAllow === (t.deny !== undefined)) throw new Issue('', 'a rule needs exactly one of allow = "PATH" or deny = "PATH"');
      if (isAllow && t.access === undefined) throw new Issue('', 'an allow rule needs access = "LETTERS" (rwcdmusaxnb, or "all")');
      if (isAllow && t.deny_errno !== undefined)
        throw new Issue('deny_errno', 'deny_errno belongs on deny rules (or at the top, for every denial)');
      if (!isAllow && t.access !== undefined) throw new Issue('access', 'a deny rule takes no access letters: it denies every access');
      for (const key of ['follow_symlinks', 'fifos', 'hardlinks'] as const) {
        if (!isAllow && t[key] !== undefined) throw new Issue(key, `${key} belongs on allow rules`);
      }
      out.push(makeRule(t as RuleSpec, originOf(i)));
    } catch (err) {
      // Point at the key that is wrong: the path, the letters, the errno, or the rule itself.
      const key = err instanceof Issue ? err.path : err instanceof PolicyError ? (err.key ?? '') : null;
      if (key === null) throw err;
      throw new Issue(key ? `${base}[${i}].${key}` : `${base}[${i}]`, (err as Error).message);
    }
  }
  return out;
}

/** Runs f, turning a PolicyError into an Issue at path. */
function wrap<T>(path: string, f: () => T): T {
  try {
    return f();
  } catch (err) {
    if (err instanceof PolicyError) throw new Issue(path, err.message);
    throw err;
  }
}

/** The line and column of the first byte that is not part of a well-formed UTF-8 sequence. */
function firstBadUtf8(bytes: Buffer): { line: number; column: number } {
  let line = 1,
    lineStart = 0;
  for (let i = 0; i < bytes.length;) {
    const b = bytes[i]!;
    const n = b < 0x80 ? 1 : b >= 0xc2 && b < 0xe0 ? 2 : b >= 0xe0 && b < 0xf0 ? 3 : b >= 0xf0 && b < 0xf5 ? 4 : 0;
    if (n === 0 || i + n > bytes.length || !isUtf8(bytes.subarray(i, i + n))) return { line, column: i - lineStart + 1 };
    if (b === 0x0a) {
      line++;
      lineStart = i + 1;
    }
    i += n;
  }
  return { line, column: 1 };
}
