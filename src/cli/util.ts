/** Small parsers shared by commands. */
import { InvalidArgumentError } from './commander.js';

/** '0600' or '600' -> 0o600 */
export function parseMode(text: string): number {
  if (!/^0?[0-7]{3,4}$/.test(text)) throw new InvalidArgumentError(`mode must be octal, like 0600: '${text}'`);
  return parseInt(text, 8);
}

/** A positive whole number, such as a limit. */
export function parseCount(text: string): number {
  if (!/^[1-9][0-9]*$/.test(text) || !Number.isSafeInteger(Number(text))) throw new InvalidArgumentError(`expected a positive whole number: '${text}'`);
  return Number(text);
}
