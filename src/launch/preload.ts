/**
 * Where the interposer (native/preload.c, built by node-gyp on npm install) lies, for LD_PRELOAD.
 * The path is absolute, so that a program started in any directory loads the same library.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The absolute path of libopenhook-preload.so (the same from src/launch and dist/launch). */
export const PRELOAD_LIBRARY = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'Release', 'libopenhook-preload.so');

/** The LD_PRELOAD value that puts the interposer first, keeping what the user preloads already. */
export function preloadValue(existing = process.env.LD_PRELOAD): string {
  if (!existsSync(PRELOAD_LIBRARY)) throw new Error(`the interposer is not built (${PRELOAD_LIBRARY} is missing): run npm install`);
  return existing ? `${PRELOAD_LIBRARY}:${existing}` : PRELOAD_LIBRARY;
}
