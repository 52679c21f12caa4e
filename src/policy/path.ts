/**
 * Lexical path normalisation. Decisions are made on the normalised absolute path; the kernel then
 * enforces them with openat2 beneath the rule's root (DESIGN.md, invariant 2). Nothing here touches
 * the filesystem.
 */
import type { ByteString } from '../bytestring.js';

/** Linux's PATH_MAX and NAME_MAX, counted in bytes. */
export const PATH_MAX = 4096;
export const NAME_MAX = 255;

export type NormaliseResult = { ok: true; path: ByteString } | { ok: false; errno: 'EINVAL' | 'EACCES' | 'ENAMETOOLONG'; reason: string };

/**
 * Collapses `//` and `/./`, drops a trailing `/`, and refuses what must never reach a decision:
 * relative or empty names, NUL bytes, `..` in any position, and over-long names or components.
 */
export function normalise(path: ByteString): NormaliseResult {
  if (path.length === 0) return { ok: false, errno: 'EINVAL', reason: 'empty name' };
  if (path.charCodeAt(0) !== 0x2f) return { ok: false, errno: 'EINVAL', reason: 'relative name' };
  if (path.includes('\0')) return { ok: false, errno: 'EINVAL', reason: 'NUL byte in name' };
  if (path.length >= PATH_MAX) return { ok: false, errno: 'ENAMETOOLONG', reason: 'name longer than PATH_MAX' };
  // The common case is already normal: no empty, '.' or '..' components and no trailing slash.
  if (!/\/\/|\/\.\.?(?:\/|$)/.test(path) && (path.length === 1 || path.charCodeAt(path.length - 1) !== 0x2f)) {
    if (path.length > NAME_MAX && hasLongComponent(path))
      return { ok: false, errno: 'ENAMETOOLONG', reason: 'component longer than NAME_MAX' };
    return { ok: true, path };
  }
  const parts: string[] = [];
  for (const part of path.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') return { ok: false, errno: 'EACCES', reason: "'..' in name" };
    if (part.length > NAME_MAX) return { ok: false, errno: 'ENAMETOOLONG', reason: 'component longer than NAME_MAX' };
    parts.push(part);
  }
  return { ok: true, path: '/' + parts.join('/') };
}

function hasLongComponent(path: string): boolean {
  let start = 0;
  for (let i = 0; i <= path.length; i++) {
    if (i === path.length || path.charCodeAt(i) === 0x2f) {
      if (i - start > NAME_MAX) return true;
      start = i + 1;
    }
  }
  return false;
}
