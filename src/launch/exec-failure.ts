/**
 * Why CMD could not be executed (EACCES from execve), told apart from outside the confinement: the
 * file itself (a directory, no execute permission) or the confinement (Landlock lets a program run
 * only from /usr, /bin, ... and the --ro paths). Blaming the confinement for a file that is simply
 * not executable sends the user to the wrong fix.
 */
import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, join, resolve } from 'node:path';

/** The file execvp would run for command, or null if none is found. */
function locate(command: string, path = process.env.PATH ?? ''): string | null {
  if (command.includes('/')) return resolve(command);
  for (const dir of path.split(delimiter)) {
    const candidate = join(dir === '' ? '.' : dir, command);
    try {
      if (!statSync(candidate).isDirectory()) return resolve(candidate);
    } catch {
      // not in this directory
    }
  }
  return null;
}

export function describeExecDenied(command: string): string {
  const file = locate(command);
  try {
    if (file !== null && statSync(file).isDirectory()) return `${command}: is a directory, not a program`;
    if (file !== null) accessSync(file, constants.X_OK);
  } catch {
    return `${command}: permission denied: ${file} is not executable (chmod +x it, or run it with its interpreter: sh ${command})`;
  }
  return `${command}: permission denied: inside the confinement a program can run only from /usr, /bin, ... or a directory given with --ro`;
}
