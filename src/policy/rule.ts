/**
 * A rule: allow or deny, on an exact file or a directory tree. Written `PATH` or `PATH/` (a tree),
 * with access letters for allow rules.
 */
import { fromText, type ByteString } from '../bytestring.js';
import { parseAccess } from './access.js';
import { normalise } from './path.js';

export interface Rule {
  effect: 'allow' | 'deny';
  /** normalised absolute path, without a trailing slash (except the root "/") */
  path: ByteString;
  /** true: the rule covers everything beneath path, and path itself */
  tree: boolean;
  /** access bits an allow rule grants; 0 for deny */
  access: number;
  /** where the rule came from, for explanations: "--allow /srv/vm/:rw" or "vm.toml:12" */
  origin: string;
}

export class PolicyError extends Error {
  override name = 'PolicyError';
}

/** Parses the PATH of a rule: absolute, no '..', a trailing '/' makes a tree. */
export function parseRulePath(text: string, origin: string): { path: ByteString; tree: boolean } {
  if (!text.startsWith('/')) throw new PolicyError(`${origin}: path '${text}' must be absolute`);
  const tree = text.endsWith('/');
  const n = normalise(fromText(text));
  if (!n.ok) throw new PolicyError(`${origin}: path '${text}': ${n.reason}`);
  return { path: n.path, tree: tree || n.path === '/' };
}

/** `--allow PATH:ACCESS` */
export function parseAllowFlag(spec: string): Rule {
  const origin = `--allow ${spec}`;
  const colon = spec.lastIndexOf(':');
  if (colon <= 0) throw new PolicyError(`${origin}: expected PATH:ACCESS, for example /srv/vm/:rw`);
  const { path, tree } = parseRulePath(spec.slice(0, colon), origin);
  let access: number;
  try {
    access = parseAccess(spec.slice(colon + 1));
  } catch (err) {
    throw new PolicyError(`${origin}: ${(err as Error).message}`);
  }
  return { effect: 'allow', path, tree, access, origin };
}

/** `--deny PATH` */
export function parseDenyFlag(spec: string): Rule {
  const origin = `--deny ${spec}`;
  const { path, tree } = parseRulePath(spec, origin);
  return { effect: 'deny', path, tree, access: 0, origin };
}
