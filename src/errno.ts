/**
 * Errno names and numbers, without the native addon: code that may run in a worker thread (the
 * policy reload thread) must not load the addon, whose receive arena is one per process.
 */
import { constants } from 'node:os';

/**
 * errno numbers by name, as this system defines them: `E.EACCES`. The one table for src/ and test/:
 * write names, never numbers.
 */
export const E = constants.errno;

const values = constants.errno as Record<string, number>;
const names = new Map<number, string>();
for (const [name, value] of Object.entries(values)) {
  if (!names.has(value)) names.set(value, name);
}

/** 'EACCES' for 13 (or -13). */
export function errnoName(errno: number): string {
  return names.get(Math.abs(errno)) ?? `E${Math.abs(errno)}`;
}

/** An errno number for a name: errnoValue('EACCES') === 13. */
export function errnoValue(name: string): number | undefined {
  return Object.hasOwn(values, name) ? values[name] : undefined;
}
