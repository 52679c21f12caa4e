/**
 * A compiled policy: rules in, decisions out. A decision names the rule that made it; an allow names
 * the root directory fd beneath which the resolver must open, and the rest of the path below it.
 *
 * Which rule wins: the most specific rule that covers the path. An exact-file rule is more specific
 * than any tree; a deeper tree is more specific than a shallower one; at equal specificity, deny
 * wins. A path that no rule covers is denied with the policy's denial errno (EACCES by default).
 */
import type { ByteString } from '../bytestring.js';
import { display } from '../bytestring.js';
import { C, native, systemError } from '../native.js';
import { formatAccess } from './access.js';
import { PolicyError, type Rule } from './rule.js';

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
  /** O_PATH fd of the directory the open must stay beneath (allow only) */
  rootFd: number;
  /** the path below rootFd, relative, never empty ("." for the root itself) */
  rest: ByteString;
  /** why, in words, for `check` and the audit log */
  reason: string;
}

export interface PolicyOptions {
  /** errno for denials, EACCES (13) unless set */
  denyErrno?: number;
}

interface CompiledRule extends Rule {
  /** the directory opened as the resolver's root: the tree itself, or an exact file's parent */
  rootPath: ByteString;
  rootFd: number;
}

export class Policy {
  readonly rules: readonly Rule[];
  readonly denyErrno: number;
  #compiled: CompiledRule[];
  #closed = false;

  constructor(rules: readonly Rule[], options: PolicyOptions = {}) {
    this.rules = rules;
    this.denyErrno = options.denyErrno ?? 13;
    const roots = new Map<ByteString, number>();
    try {
      this.#compiled = rules.map((rule) => {
        const rootPath = rule.tree ? rule.path : parentOf(rule.path);
        let rootFd = -1;
        if (rule.effect === 'allow') {
          rootFd = roots.get(rootPath) ?? openRoot(rootPath, rule);
          roots.set(rootPath, rootFd);
        }
        return { ...rule, rootPath, rootFd };
      });
    } catch (err) {
      for (const fd of roots.values()) native.close(fd);
      throw err;
    }
    // Most specific first, deny before allow at equal specificity: the first match decides.
    this.#compiled.sort((a, b) => specificity(b) - specificity(a) || (a.effect === 'deny' ? -1 : 0) - (b.effect === 'deny' ? -1 : 0));
  }

  /** Decides on a normalised absolute path (see path.ts) and the access the request needs. */
  decide(_peer: Peer, path: ByteString, access: number): Decision {
    for (const rule of this.#compiled) {
      if (!covers(rule, path)) continue;
      if (rule.effect === 'deny') return deny(rule, this.denyErrno, `denied by ${rule.origin}`);
      if ((rule.access & access) !== access) {
        return deny(rule, this.denyErrno, `${rule.origin} grants '${formatAccess(rule.access)}', the request needs '${formatAccess(access)}'`);
      }
      const rest = path.length === rule.rootPath.length ? '.' : path.slice(rule.rootPath === '/' ? 1 : rule.rootPath.length + 1);
      return { allowed: true, errno: 0, rule, rootFd: rule.rootFd, rest, reason: `allowed by ${rule.origin}` };
    }
    return deny(null, this.denyErrno, 'no rule covers this path (default deny)');
  }

  /** Closes the root directory fds. The policy must not decide after this. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const seen = new Set<number>();
    for (const rule of this.#compiled) {
      if (rule.rootFd >= 0 && !seen.has(rule.rootFd)) {
        seen.add(rule.rootFd);
        native.close(rule.rootFd);
      }
    }
  }
}

function deny(rule: Rule | null, errno: number, reason: string): Decision {
  return { allowed: false, errno, rule, rootFd: -1, rest: '', reason };
}

function covers(rule: CompiledRule, path: ByteString): boolean {
  if (!rule.tree) return path === rule.path;
  if (rule.path === '/') return true;
  return path === rule.path || (path.startsWith(rule.path) && path.charCodeAt(rule.path.length) === 0x2f);
}

/** An exact file beats every tree; among trees, the deeper one is more specific. */
function specificity(rule: Rule): number {
  const depth = rule.path === '/' ? 0 : rule.path.split('/').length - 1;
  return rule.tree ? depth : 1_000_000 + depth;
}

function parentOf(path: ByteString): ByteString {
  const i = path.lastIndexOf('/');
  return i <= 0 ? '/' : path.slice(0, i);
}

function openRoot(path: ByteString, rule: Rule): number {
  const fd = native.open(path, C.O_PATH | C.O_DIRECTORY, 0);
  if (fd < 0) {
    const err = systemError(fd, 'open', display(path));
    throw new PolicyError(`${rule.origin}: cannot open ${rule.tree ? 'directory' : 'parent directory'} ${display(path)}: ${err.message}`);
  }
  return fd;
}
