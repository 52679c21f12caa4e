/**
 * Where the interposer (native/preload.c, built by node-gyp on npm install) lies, for LD_PRELOAD.
 * The path is absolute, so that a program started in any directory loads the same library.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The absolute path of libopenhook-preload.so. */
export const PRELOAD_LIBRARY = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'Release', 'libopenhook-preload.so');

/** The library's path, or an error that says how to build it. */
export function preloadLibrary(): string {
  if (!existsSync(PRELOAD_LIBRARY)) throw new Error(`the interposer is not built (${PRELOAD_LIBRARY} is missing): run npm install`);
  return PRELOAD_LIBRARY;
}

/**
 * The read-only system directories whose read-only opens go to the real call, not the broker: the
 * same list the launcher gives Landlock read access to. Passed as OPENHOOK_PASSTHROUGH.
 */
export const DEFAULT_PASSTHROUGH: readonly string[] = ['/usr', '/lib', '/lib64', '/bin', '/sbin', '/etc'];

/** The environment that makes a program use the interposer, on top of the hook (OPENHOOK_FD or OPENHOOK_SOCKET). */
export function preloadEnv(passthrough: readonly string[] = DEFAULT_PASSTHROUGH, existing = process.env.LD_PRELOAD): Record<string, string> {
  const lib = preloadLibrary();
  return {
    LD_PRELOAD: existing ? `${lib}:${existing}` : lib,
    OPENHOOK_PASSTHROUGH: passthrough.join(':'),
  };
}
