/**
 * Reads beneath the launch's grants (the system directories, --ro paths, the granted devices) when
 * the kernel may not run them itself: when a policy rule lies inside a grant, CONTINUE could be
 * steered to that rule's paths by a racing program (continuation.ts), so the broker opens these
 * files itself and decides on what it opened, never on a path the program could change:
 *
 *   1. look the path up from '/' as the kernel would for the program (symlinks followed, since the
 *      system directories are full of them; magic links never), getting an O_PATH fd;
 *   2. read that fd's real path (/proc/self/fd/N): it must lie beneath a grant, and no policy rule
 *      may cover it (a rule's path is the policy's to decide: refused here);
 *   3. only then open it for reading: a regular file, a directory, or a granted device.
 */
import { readlinkSync } from 'node:fs';
import type { ServiceContext } from '../broker/service.js';
import type { ByteString } from '../bytestring.js';
import { E } from '../errno.js';
import { C, native } from '../native.js';
import { Access } from '../policy/access.js';
import type { Peer } from '../policy/policy.js';
import type { Continuation } from './continuation.js';

let rootFd = -1;
const stat = new Float64Array(9);

/** Whether no policy rule covers path (in the peer's section). */
export function noRule(ctx: ServiceContext, peer: Peer, path: ByteString): boolean {
  return ctx.policy.decide(peer, path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path, Access.READ).rule === null;
}

/** Opens a granted system file read-only for the program; an fd or -errno. path: absolute, collapsed. */
export function openSystemFile(ctx: ServiceContext, peer: Peer, grants: Continuation, path: ByteString, flags: number): number {
  if (rootFd < 0) rootFd = native.open('/', C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  if (rootFd < 0) return rootFd;
  const rel = path === '/' ? '.' : path.slice(1);
  const found = native.openat2(rootFd, rel, C.O_PATH | C.O_CLOEXEC | (flags & (C.O_NOFOLLOW | C.O_DIRECTORY)), 0, C.RESOLVE_NO_MAGICLINKS);
  if (found < 0) return found;
  try {
    let real: ByteString;
    try {
      real = readlinkSync(`/proc/self/fd/${found}`, 'latin1');
    } catch {
      return -E.EACCES;
    }
    if (native.fstat(found, stat) < 0) return -E.EACCES;
    const type = stat[0]! & C.S_IFMT;
    const device = grants.grantedFile(real);
    if (!device && !grants.beneath(real)) return -ctx.policy.denyErrno;
    if (!noRule(ctx, peer, real)) return -ctx.policy.denyErrno;
    if (type === C.S_IFDIR ? false : type !== C.S_IFREG && !(device && type === C.S_IFCHR)) return -E.EACCES;
    return native.reopen(found, (flags & ~(C.O_CREAT | C.O_EXCL)) | C.O_CLOEXEC | C.O_NOCTTY);
  } finally {
    native.close(found);
  }
}
