#!/usr/bin/env node
/** The openhook command line: one file per command. */
import { Command } from 'commander';
import { VERSION } from '../broker/metrics.js';
import { checkCommand } from './check.js';
import { demoCommand } from './demo.js';
import { runCommand } from './run.js';
import { serveCommand } from './serve.js';
import { statusCommand } from './status.js';

const program = new Command('openhook')
  .description('delegate open() to a policy broker over a UNIX socket')
  .version(VERSION)
  // Options after a subcommand belong to it, so that `run` can pass CMD's options through untouched.
  .enablePositionalOptions()
  .addCommand(serveCommand())
  .addCommand(checkCommand())
  .addCommand(runCommand())
  .addCommand(statusCommand())
  .addCommand(demoCommand());

await program.parseAsync(process.argv);
