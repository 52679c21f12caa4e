/**
 * `openhook preload-path`: where the interposer is, for LD_PRELOAD by hand (docs/interposer.md). The
 * path depends on where the package is installed, so a shell asks the command instead of guessing.
 */
import { existsSync } from 'node:fs';
import { Command } from './commander.js';
import { PRELOAD_LIBRARY } from '../launch/preload.js';

export function preloadPathCommand(): Command {
  return new Command('preload-path')
    .description('print the absolute path of the interposer (libopenhook-preload.so), for LD_PRELOAD')
    .action(() => {
      if (!existsSync(PRELOAD_LIBRARY)) {
        process.stderr.write(`openhook preload-path: the interposer is not built (${PRELOAD_LIBRARY} is missing): run npm install\n`);
        process.exitCode = 1;
        return;
      }
      process.stdout.write(`${PRELOAD_LIBRARY}\n`);
    });
}
