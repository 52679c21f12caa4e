/** Small parsers shared by commands. */
import { InvalidArgumentError } from './commander.js';

/** '0600' or '600' -> 0o600 */
export function parseMode(text: string): number {
  if (!/^0?[0-7]{3,4}$/.test(text)) throw new InvalidArgumentError(`mode must be octal, like 0600: '${text}'`);
  return parseInt(text, 8);
}

/** A positive whole number, such as a limit. */
export function parseCount(text: string): number {
  if (!/^[1-9][0-9]*$/.test(text) || !Number.isSafeInteger(Number(text)))
    throw new InvalidArgumentError(`expected a positive whole number: '${text}'`);
  return Number(text);
}

/** Milliseconds, 0 or more. */
export function parseMs(text: string): number {
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text)))
    throw new InvalidArgumentError(`expected milliseconds, like 5000: '${text}'`);
  return Number(text);
}

/** Milliseconds, more than 0 (a timeout that can be met). */
export function parsePositiveMs(text: string): number {
  const ms = parseMs(text);
  if (ms === 0) throw new InvalidArgumentError(`expected milliseconds above 0, like 5000: '${text}'`);
  return ms;
}

/** For repeatable options: each use adds its value. */
export const collect = (value: string, previous: string[]): string[] => [...previous, value];

/** A word as sh reads it back unchanged: bare when that is safe, else in single quotes. */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}
