#!/usr/bin/env node
/**
 * The openhook command line: one file per command.
 *
 * Only the command being run is loaded: `openhook run -- CMD` sits in front of every program it
 * launches, so its start-up time is the program's, and loading modules is most of it. Without a
 * known command (--help, --version, a typo), all are loaded so that help lists them.
 */
import { VERSION } from '../version.js';
import { Command } from './commander.js';

const commands: Record<string, () => Promise<Command>> = {
  serve: async () => (await import('./serve.js')).serveCommand(),
  check: async () => (await import('./check.js')).checkCommand(),
  run: async () => (await import('./run.js')).runCommand(),
  status: async () => (await import('./status.js')).statusCommand(),
  demo: async () => (await import('./demo.js')).demoCommand(),
  'preload-path': async () => (await import('./preload-path.js')).preloadPathCommand(),
};

const program = new Command('openhook')
  .description('delegate open() to a policy broker over a UNIX socket')
  .version(VERSION)
  // Options after a subcommand belong to it, so that `run` can pass CMD's options through untouched.
  .enablePositionalOptions();

// The program's own options are --help and --version only, so the first word is the command.
const first = process.argv[2];
const names = first !== undefined && Object.hasOwn(commands, first) ? [first] : Object.keys(commands);
for (const name of names) program.addCommand(await commands[name]!());

await program.parseAsync(process.argv);
