/**
 * What a launched program may open by itself: the launcher's whole filesystem policy for the
 * confined program, turned into the launch helper's `--path ACCESS PATH` options. Everything else
 * the program must ask the broker for.
 *
 * Access letters for the helper (native/launch.c): r read (files, directory listings), x execute,
 * w write, t truncate (O_TRUNC on a device), i ioctl on a device.
 */
import { existsSync, statSync } from 'node:fs';

/** Read and execute beneath these: what a dynamically linked program needs to start. */
export const SYSTEM_READ_ONLY: readonly string[] = ['/usr', '/lib', '/lib64', '/bin', '/sbin', '/etc'];

/** Devices a program may open for reading and writing. Only the terminal gets ioctls (termios). */
export const DEVICES: ReadonlyArray<{ path: string; access: string }> = [
  { path: '/dev/null', access: 'rwt' },
  { path: '/dev/zero', access: 'rwt' },
  { path: '/dev/urandom', access: 'rwt' },
  { path: '/dev/tty', access: 'rwti' },
];

export interface Grant {
  /** helper access letters */
  access: string;
  path: string;
}

export interface Confinement {
  /** what the helper is told to grant, in order */
  grants: Grant[];
  /**
   * What the program may open itself, for OPENHOOK_PASSTHROUGH: directories end in '/' (a tree, as
   * in policy rules), files do not. Only paths that exist now are listed.
   */
  passthrough: string[];
}

export class ConfinementError extends Error {
  override name = 'ConfinementError';
}

/**
 * The grants for a launch: the system directories, the devices, and the caller's read-only
 * additions (`--ro`). Missing paths are still passed to the helper, which skips and reports them.
 */
export function confinementFor(readOnly: readonly string[] = []): Confinement {
  for (const path of readOnly) {
    if (!path.startsWith('/')) throw new ConfinementError(`--ro ${path}: the path must be absolute`);
    // OPENHOOK_PASSTHROUGH is a ':'-separated list; a name containing ':' could not be listed exactly.
    if (path.includes(':') || path.includes('\n')) throw new ConfinementError(`--ro ${path}: the path must not contain ':' or a newline`);
  }
  const readable = [...SYSTEM_READ_ONLY, ...readOnly.map(trimSlash)];
  const grants: Grant[] = [...readable.map((path) => ({ access: 'rx', path })), ...DEVICES];
  const passthrough: string[] = [];
  for (const path of readable) {
    const st = statSync(path, { throwIfNoEntry: false });
    if (st) passthrough.push(!st.isDirectory() ? path : path === '/' ? '/' : `${path}/`);
  }
  for (const dev of DEVICES) if (existsSync(dev.path)) passthrough.push(dev.path);
  return { grants, passthrough };
}

function trimSlash(path: string): string {
  return path.length > 1 && path.endsWith('/') ? path.replace(/\/+$/, '') || '/' : path;
}
