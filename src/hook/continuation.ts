/**
 * When the kernel may run a trapped open itself (SECCOMP_USER_NOTIF_FLAG_CONTINUE): only where
 * Landlock alone enforces the same answer the broker would give (DESIGN.md, invariant 8).
 *
 * CONTINUE lets the kernel read the path again from the program's memory, and resolve it against a
 * working directory or dirfd that another thread may have changed meanwhile: what the kernel opens
 * may not be what was checked here. So what was checked must not matter. It does not when:
 *   - the open only reads (or, for the granted devices, what their grant lets it do), and
 *   - its path lies beneath one of the launch's Landlock grants (the system directories, --ro
 *     paths, /dev/null ...: src/launch/confinement.ts), which the program could read even if the
 *     broker were wrong, and
 *   - no policy rule says anything about any path inside any grant: a rule there (a deny of
 *     /etc/shadow, an allow of /usr/share/foo) is a decision the policy makes, and a racing program
 *     could steer a continued open from anywhere in the grants to it. With such a rule, nothing is
 *     continued: every open is decided by the policy and performed by the broker.
 * Whatever the kernel then opens, Landlock checks it against the same grants.
 */
import type { ByteString } from '../bytestring.js';
import { C } from '../native.js';
import { DEVICES, type Grant } from '../launch/confinement.js';
import type { Policy } from '../policy/policy.js';
import type { Rule } from '../policy/rule.js';
import { rootOf } from '../policy/rule.js';

export class Continuation {
  /** read-only trees, each ending in '/' */
  readonly #trees: ByteString[];
  /** single granted files (devices) and whether they may be written */
  readonly #files = new Map<ByteString, { write: boolean; truncate: boolean }>();
  /** whether any grant is free of policy rules (computed per policy: a reload swaps it) */
  #checked = new WeakMap<Policy, boolean>();
  readonly #always: boolean;

  /**
   * grants: what the launch helper gave the program (trees with 'r', files with letters).
   * always: continue beneath the grants whatever the policy says (learn mode, where the policy
   * allows everything and decides nothing).
   */
  constructor(grants: readonly Grant[], always = false) {
    const trees: ByteString[] = [];
    for (const g of grants) {
      if (!g.access.includes('r') && !g.access.includes('w')) continue;
      // Devices are single files: the built-in ones and --device grants (which may live anywhere).
      if (g.device === true || DEVICES.some((d) => d.path === g.path))
        this.#files.set(g.path, { write: g.access.includes('w'), truncate: g.access.includes('t') });
      else trees.push(g.path === '/' ? '/' : `${g.path}/`);
    }
    this.#trees = trees;
    this.#always = always;
  }

  /** The grants' paths, for intersection checks and reports. */
  get paths(): ByteString[] {
    return [...this.#trees.map((t) => (t === '/' ? t : t.slice(0, -1))), ...this.#files.keys()];
  }

  /** Whether a policy leaves every grant alone (no rule inside, or over, any of them). */
  usable(policy: Policy): boolean {
    if (this.#always) return true;
    let ok = this.#checked.get(policy);
    if (ok === undefined) {
      const rules: Rule[] = [...policy.rules, ...policy.sections.flatMap((s) => s.rules)];
      ok = !rules.some((r) => this.paths.some((g) => intersects(r, g)));
      this.#checked.set(policy, ok);
    }
    return ok;
  }

  /** Whether the kernel may run this open itself. path: absolute, collapsed. */
  allows(policy: Policy, path: ByteString, flags: number): boolean {
    return this.grantsAllow(path, flags) && this.usable(policy);
  }

  /** Whether path is one of the granted single files (a device). */
  grantedFile(path: ByteString): boolean {
    return this.#files.has(path);
  }

  /** Whether the grants let the program do this open itself (whoever then performs it). */
  grantsAllow(path: ByteString, flags: number): boolean {
    const mode = flags & C.O_ACCMODE;
    const file = this.#files.get(path);
    // O_CREAT of a granted device that exists opens it (shells write '> /dev/null' so); O_EXCL fails.
    if (file !== undefined)
      return !(flags & C.O_EXCL && flags & C.O_CREAT) && (mode === C.O_RDONLY || file.write) && (!(flags & C.O_TRUNC) || file.truncate);
    return mode === C.O_RDONLY && !(flags & (C.O_CREAT | C.O_TRUNC)) && this.beneath(path);
  }

  /** Whether a path lies beneath (or is) a granted tree. */
  beneath(path: ByteString): boolean {
    for (const t of this.#trees) {
      if (t === '/' || path.startsWith(t) || path === t.slice(0, -1)) return true;
    }
    return false;
  }
}

/** Whether a rule covers any path at or beneath grant g. */
function intersects(rule: Rule, g: ByteString): boolean {
  const root = rootOf(rule);
  const beneath = rule.tree || rule.glob;
  if (root === g || root.startsWith(g === '/' ? '/' : `${g}/`)) return true;
  return beneath && (root === '/' || g.startsWith(`${root}/`));
}
