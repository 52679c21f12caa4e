/**
 * Where things are in a TOML document: the line and column of each table of an array of tables
 * (`[[rule]]`, or `{ ... }` inside `rule = [ ... ]`) and, on request, of every key. The parser
 * (smol-toml) gives values but no positions; rules need their file:line, and validation errors need
 * the line and column of the offending key.
 *
 * The input has already been parsed successfully, so this scanner only has to know enough TOML to
 * stay in step: strings of all four kinds, comments, headers, arrays and inline tables.
 *
 * Paths name what the parser returned: `rule[3]`, `client[0].rule[2].access`, `deny_errno`.
 */

export interface Position {
  line: number;
  column: number;
}

const NL = 0x0a,
  HASH = 0x23,
  LBRACK = 0x5b,
  RBRACK = 0x5d,
  LBRACE = 0x7b,
  RBRACE = 0x7d;
const COMMA = 0x2c,
  DOT = 0x2e,
  DQ = 0x22,
  SQ = 0x27,
  BSLASH = 0x5c;
/** Nesting of arrays and inline tables that smol-toml accepts (its maxDepth default). */
const MAX_DEPTH = 1000;

export interface Located {
  /** for each array of tables ("rule", "client[0].rule"), the line of each of its tables, in order */
  arrays: Map<string, number[]>;
  /** with keys: the position of every key and table ("client[0].uid", "rule[3]") */
  keys: Map<string, Position>;
  /**
   * Where the document may be cut into pieces that parse alone and mean together what it means
   * whole: the offsets of its `[[rule]]` and `[[client]]` headers, when every header is one of
   * `[[rule]]`, `[[client]]`, `[[client.rule]]` and no top-level key is `rule` or `client`
   * (otherwise empty). A `[[client]]` keeps its `[[client.rule]]` tables: they are never cut from it.
   */
  cuts: number[];
}

export function locate(text: string, withKeys: boolean): Located {
  return new Scanner(text, withKeys).run();
}

class Scanner {
  #s: string;
  #i = 0;
  #line = 1;
  #lineStart = 0;
  #keys: boolean;
  #out = new Map<string, Position>();
  #arrays = new Map<string, number[]>();
  #lastRaw = '';
  #lastArray = '';
  #cuts: number[] = [];
  #lastCut = false;
  #cuttable = true;

  constructor(text: string, withKeys: boolean) {
    this.#s = text;
    this.#keys = withKeys;
  }

  run(): Located {
    const s = this.#s;
    let table = '';
    if (s.charCodeAt(0) === 0xfeff) this.#i = 1;
    for (;;) {
      this.#skipBlank(true);
      if (this.#i >= s.length) break;
      if (s.charCodeAt(this.#i) === LBRACK) {
        table = this.#header();
      } else {
        const pos = this.#keys ? this.#pos() : null;
        const key = this.#key();
        const path = table ? `${table}.${key}` : key;
        if (!table && /^(rule|client)(\.|$)/.test(key)) this.#cuttable = false;
        if (pos) this.#out.set(path, pos);
        this.#i++; // '='
        this.#skipBlank(false);
        this.#value(path);
      }
      this.#skipToEol();
    }
    return { arrays: this.#arrays, keys: this.#out, cuts: this.#cuttable ? this.#cuts : [] };
  }

  /** Records an element of an array of tables; returns its path. */
  #element(array: string, line: number, column: number): string {
    let list = this.#arrays.get(array);
    if (!list) this.#arrays.set(array, (list = []));
    list.push(line);
    // Only errors need the element's path and column: building them for 100k rules costs load time.
    if (!this.#keys) return '';
    const path = `${array}[${list.length - 1}]`;
    this.#out.set(path, { line, column });
    return path;
  }

  #pos(): Position {
    return { line: this.#line, column: this.#i - this.#lineStart + 1 };
  }

  #newline(at: number): void {
    this.#line++;
    this.#lineStart = at + 1;
  }

  /** Skips spaces, tabs, comments and (if newlines) line ends. */
  #skipBlank(newlines: boolean): void {
    const s = this.#s;
    while (this.#i < s.length) {
      const c = s.charCodeAt(this.#i);
      if (c === 0x20 || c === 0x09 || c === 0x0d) this.#i++;
      else if (c === HASH) while (this.#i < s.length && s.charCodeAt(this.#i) !== NL) this.#i++;
      else if (c === NL && newlines) this.#newline(this.#i++);
      else break;
    }
  }

  #skipToEol(): void {
    this.#skipBlank(false);
  }

  /** `[a.b]` or `[[a.b]]`; returns the path of the table the following keys belong to. */
  #header(): string {
    const s = this.#s;
    const start = this.#i;
    const line = this.#line,
      column = this.#i - this.#lineStart + 1;
    const array = s.charCodeAt(this.#i + 1) === LBRACK;
    // A header written again right after its own tables (`[[rule]]` 100,000 times) names the same
    // array: no header in between can have changed the index of an enclosing table.
    const close = s.indexOf(']', this.#i);
    const raw = close > 0 ? s.slice(this.#i, close) : '';
    if (array && raw === this.#lastRaw && !/["']/.test(raw)) {
      this.#i = close + 2;
      if (this.#lastCut) this.#cuts.push(start);
      return this.#element(this.#lastArray, line, column) || `${this.#lastArray}[${this.#arrays.get(this.#lastArray)!.length - 1}]`;
    }
    this.#i += array ? 2 : 1;
    const parts: string[] = [];
    for (;;) {
      this.#skipBlank(false);
      parts.push(this.#simpleKey());
      this.#skipBlank(false);
      if (s.charCodeAt(this.#i) === DOT) this.#i++;
      else break;
    }
    this.#i += array ? 2 : 1; // ']' or ']]'
    let path = '';
    for (let j = 0; j < parts.length; j++) {
      path = path ? `${path}.${parts[j]}` : parts[j]!;
      const list = this.#arrays.get(path);
      if (j < parts.length - 1 && list !== undefined) path += `[${list.length - 1}]`;
    }
    this.#lastRaw = array ? raw : '';
    this.#lastArray = path;
    this.#lastCut = array && (path === 'rule' || path === 'client');
    if (this.#lastCut) this.#cuts.push(start);
    else if (!array || !/^client\[\d+\]\.rule$/.test(path)) this.#cuttable = false;
    if (array) path = this.#element(path, line, column) || `${path}[${this.#arrays.get(path)!.length - 1}]`;
    else if (this.#keys) this.#out.set(path, { line, column });
    return path;
  }

  /** A dotted key, up to (not including) the `=` that follows it. */
  #key(): string {
    const s = this.#s;
    let key = '';
    for (;;) {
      this.#skipBlank(false);
      key += this.#simpleKey();
      this.#skipBlank(false);
      if (s.charCodeAt(this.#i) !== DOT) return key;
      this.#i++;
      key += '.';
    }
  }

  #simpleKey(): string {
    const s = this.#s;
    const c = s.charCodeAt(this.#i);
    if (c === DQ || c === SQ) {
      const start = this.#i;
      this.#string();
      const raw = s.slice(start + 1, this.#i - 1);
      return c === DQ ? raw.replace(/\\(["\\])/g, '$1') : raw;
    }
    const start = this.#i;
    let i = start;
    for (; i < s.length; i++) {
      const k = s.charCodeAt(i);
      if (!((k >= 0x61 && k <= 0x7a) || (k >= 0x41 && k <= 0x5a) || (k >= 0x30 && k <= 0x39) || k === 0x5f || k === 0x2d)) break;
    }
    this.#i = i;
    return s.slice(start, i);
  }

  /** Any string at #i; leaves #i after its closing quote(s). */
  #string(): void {
    const s = this.#s;
    const q = s.charCodeAt(this.#i);
    const multi = s.charCodeAt(this.#i + 1) === q && s.charCodeAt(this.#i + 2) === q;
    if (!multi) {
      // One line, no newlines to count: jump from quote to quote, skipping escaped ones.
      let at = this.#i + 1;
      for (;;) {
        const end = s.indexOf(q === DQ ? '"' : "'", at);
        if (end < 0) return void (this.#i = s.length);
        let slashes = 0;
        if (q === DQ) while (s.charCodeAt(end - 1 - slashes) === BSLASH) slashes++;
        if (slashes % 2 === 0) return void (this.#i = end + 1);
        at = end + 1;
      }
    }
    this.#i += 3;
    while (this.#i < s.length) {
      const c = s.charCodeAt(this.#i);
      if (c === BSLASH && q === DQ) {
        if (s.charCodeAt(this.#i + 1) === NL) this.#newline(this.#i + 1);
        this.#i += 2;
        continue;
      }
      if (c === NL) this.#newline(this.#i);
      if (c === q && (!multi || (s.charCodeAt(this.#i + 1) === q && s.charCodeAt(this.#i + 2) === q))) {
        this.#i += multi ? 3 : 1;
        // A multi-line string may end with up to two more quotes that belong to its content.
        if (multi) for (let k = 0; k < 2 && s.charCodeAt(this.#i) === q; k++) this.#i++;
        return;
      }
      this.#i++;
    }
  }

  #value(path: string, depth = 0): void {
    const s = this.#s;
    const c = s.charCodeAt(this.#i);
    if (c === DQ || c === SQ) return this.#string();
    if ((c === LBRACK || c === LBRACE) && depth >= MAX_DEPTH) {
      // Deeper than the parser accepts: it refuses the document with a position, so stop here
      // rather than recurse until the stack runs out.
      this.#i = s.length;
      return;
    }
    if (c === LBRACK) {
      this.#i++;
      for (let k = 0; ; k++) {
        this.#skipBlank(true);
        if (this.#i >= s.length || s.charCodeAt(this.#i) === RBRACK) break;
        const element =
          (s.charCodeAt(this.#i) === LBRACE && this.#element(path, this.#line, this.#i - this.#lineStart + 1)) || `${path}[${k}]`;
        if (this.#keys) this.#out.set(element, this.#pos());
        this.#value(element, depth + 1);
        this.#skipBlank(true);
        if (s.charCodeAt(this.#i) === COMMA) this.#i++;
      }
      this.#i++;
      return;
    }
    if (c === LBRACE) {
      this.#i++;
      for (;;) {
        this.#skipBlank(true);
        if (this.#i >= s.length || s.charCodeAt(this.#i) === RBRACE) break;
        const pos = this.#pos();
        const key = `${path}.${this.#key()}`;
        if (this.#keys) this.#out.set(key, pos);
        this.#i++; // '='
        this.#skipBlank(false);
        this.#value(key, depth + 1);
        this.#skipBlank(true);
        if (s.charCodeAt(this.#i) === COMMA) this.#i++;
      }
      this.#i++;
      return;
    }
    // A number, boolean or date: up to the next delimiter.
    while (this.#i < s.length) {
      const d = s.charCodeAt(this.#i);
      if (d === COMMA || d === RBRACK || d === RBRACE || d === NL || d === HASH) break;
      this.#i++;
    }
  }
}
