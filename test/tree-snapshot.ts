/**
 * A tree's state for comparing two runs: every name beneath it with its type, permission bits and
 * content (a file's bytes as a hash, a symlink's target), sorted. Names in `skip` (relative, exact)
 * are recorded without their content: files whose bytes hold inode numbers or times (git's index).
 */
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';

export interface SnapshotOptions {
  /** relative names whose content is not compared */
  skip?: string[];
  /** record mtimes too (byte-for-byte checks of a tree a refused program must leave as it was) */
  times?: boolean;
}

export function snapshot(root: string, options: SnapshotOptions = {}): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(root, rel)).sort()) {
      const path = rel ? `${rel}/${name}` : name;
      const st = lstatSync(join(root, path));
      const mode = (st.mode & 0o7777).toString(8);
      const time = options.times ? ` mtime=${st.mtimeMs}` : '';
      if (st.isDirectory()) {
        out.push(`d ${path} ${mode}${time}`);
        walk(path);
      } else if (st.isSymbolicLink()) {
        out.push(`l ${path} -> ${readlinkSync(join(root, path))}`);
      } else if (st.isFile()) {
        const content = options.skip?.includes(path)
          ? 'skipped'
          : createHash('sha256')
              .update(readFileSync(join(root, path)))
              .digest('hex')
              .slice(0, 16);
        out.push(`f ${path} ${mode} ${st.size} ${content} links=${st.nlink}${time}`);
      } else if (st.isFIFO()) {
        out.push(`p ${path} ${mode}`);
      } else {
        out.push(`? ${path} ${mode}`);
      }
    }
  };
  walk('');
  return out;
}
