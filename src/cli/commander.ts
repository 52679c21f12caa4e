/**
 * commander, loaded as CommonJS. Imported as an ES module it goes through its ESM wrapper and
 * Node's CommonJS export scan, which costs about 12 ms of every start-up here (measured with
 * hyperfine: `import 'commander'` 103 ms, `require('commander')` 92 ms, an empty script 89 ms), and
 * `openhook run` is in front of every program it launches.
 */
import { createRequire } from 'node:module';
import type * as Commander from 'commander';

const commander = createRequire(import.meta.url)('commander') as typeof Commander;

export const { Command, Option, InvalidArgumentError } = commander;
export type Command = Commander.Command;
export type Option = Commander.Option;
export type InvalidArgumentError = Commander.InvalidArgumentError;
