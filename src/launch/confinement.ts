/**
 * What a launched program may open by itself: the launcher's whole filesystem policy for the
 * confined program, turned into the launch helper's `--path ACCESS PATH` options. Everything else
 * the program must ask the broker for.
 *
 * Access letters for the helper (native/launch.c): r read (files, directory listings), x execute,
 * w write, t truncate (O_TRUNC on a device), i ioctl on a device. Device grants (`--device`) go to
 * the helper as `--device ACCESS PATH`, which refuses anything but a character device itself, on the
 * inode it grants.
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

/**
 * What a granted device node gets: read, write, O_TRUNC (shells' `>`), and its ioctls (Landlock's
 * IOCTL_DEV, on that node only). The program opens it itself; the broker never does (invariant 4).
 */
export const DEVICE_ACCESS = 'rwti';

export interface Grant {
  /** helper access letters */
  access: string;
  path: string;
  /** a `--device` grant: the helper refuses it unless PATH is a character device */
  device?: boolean;
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
export function confinementFor(readOnly: readonly string[] = [], devices: readonly string[] = []): Confinement {
  for (const path of readOnly) checkListable('--ro', path);
  for (const path of devices) checkDevice(path);
  const readable = [...SYSTEM_READ_ONLY, ...readOnly.map(trimSlash)];
  const grants: Grant[] = [
    ...readable.map((path) => ({ access: 'rx', path })),
    ...DEVICES,
    ...devices.map((path) => ({ access: DEVICE_ACCESS, path, device: true })),
  ];
  const passthrough: string[] = [];
  for (const path of readable) {
    const st = statSync(path, { throwIfNoEntry: false });
    if (st) passthrough.push(!st.isDirectory() ? path : path === '/' ? '/' : `${path}/`);
  }
  for (const dev of DEVICES) if (existsSync(dev.path)) passthrough.push(dev.path);
  passthrough.push(...devices);
  return { grants, passthrough };
}

function checkListable(option: string, path: string): void {
  if (!path.startsWith('/')) throw new ConfinementError(`${option} ${path}: the path must be absolute`);
  // OPENHOOK_PASSTHROUGH is a ':'-separated list; a name containing ':' could not be listed exactly.
  if (path.includes(':') || path.includes('\n'))
    throw new ConfinementError(`${option} ${path}: the path must not contain ':' or a newline`);
}

/**
 * A device grant must name a character device (kvm, net/tun, vhost-net are). A regular file or a
 * directory would be a way to widen file access outside the policy, and a block device gives raw
 * access to a whole filesystem. The helper checks again on the inode it grants; this check is here
 * for a clear message before anything starts.
 */
function checkDevice(path: string): void {
  checkListable('--device', path);
  let st;
  try {
    st = statSync(path, { throwIfNoEntry: false });
  } catch (err) {
    throw new ConfinementError(`--device ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (!st) throw new ConfinementError(`--device ${path}: no such device node`);
  if (st.isCharacterDevice()) return;
  const what = st.isBlockDevice() ? 'a block device' : st.isDirectory() ? 'a directory' : st.isFile() ? 'a regular file' : 'not a device';
  throw new ConfinementError(`--device ${path}: ${what}; only character devices may be granted`);
}

function trimSlash(path: string): string {
  return path.length > 1 && path.endsWith('/') ? path.replace(/\/+$/, '') || '/' : path;
}
