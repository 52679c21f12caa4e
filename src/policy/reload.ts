/**
 * Live reload of a policy file: on demand (SIGHUP) and, if asked, whenever the file changes.
 *
 * The new policy is read, checked and compiled off to the side; only a policy that compiled whole
 * is handed to apply() (Broker.setPolicy swaps it in atomically). A file that is unreadable, empty,
 * malformed or cut short keeps the old policy in force, and the error names the line and column.
 *
 * Watching: editors and `mv` replace a file rather than write it in place, which a watch on the file
 * itself would lose, so the directory is watched and events are filtered by name. Events come in
 * bursts while a file is written; a short quiet period (debounce) gathers them into one reload.
 */
import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { loadPolicyFile } from './file.js';
import type { Policy, PolicyOptions } from './policy.js';
import { PolicyError } from './rule.js';

export interface ReloaderOptions {
  file: string;
  apply: (policy: Policy) => void;
  /** where reloads and their errors are reported */
  log: (message: string) => void;
  /** quiet period before a change is reloaded, ms (default 100) */
  debounceMs?: number;
  compile?: Pick<PolicyOptions, 'rootLimit'>;
}

export class PolicyReloader {
  readonly file: string;
  #opts: ReloaderOptions;
  #watcher: FSWatcher | null = null;
  #timer: NodeJS.Timeout | null = null;
  /** reloads that succeeded and that failed, for tests and status */
  loaded = 0;
  failed = 0;

  constructor(options: ReloaderOptions) {
    this.#opts = options;
    this.file = resolve(options.file);
  }

  /** Reloads now. Returns true if the new policy is in force. */
  reload(why: string): boolean {
    const started = performance.now();
    let policy: Policy;
    try {
      policy = loadPolicyFile(this.#opts.file, this.#opts.compile);
    } catch (err) {
      if (!(err instanceof PolicyError)) throw err;
      this.failed++;
      this.#opts.log(`policy reload (${why}) failed, the old policy stays in force: ${err.message}`);
      return false;
    }
    this.#opts.apply(policy);
    this.loaded++;
    this.#opts.log(`policy reloaded (${why}) from ${this.#opts.file}: ${policy.ruleCount} rules in ${Math.round(performance.now() - started)} ms`);
    return true;
  }

  /** Reloads whenever the file changes (or is replaced). */
  watch(): void {
    if (this.#watcher) return;
    const name = basename(this.file);
    const debounce = this.#opts.debounceMs ?? 100;
    this.#watcher = watch(dirname(this.file), { persistent: false }, (_event, changed) => {
      if (changed !== null && changed.toString() !== name) return;
      if (this.#timer) clearTimeout(this.#timer);
      this.#timer = setTimeout(() => {
        this.#timer = null;
        this.reload('file changed');
      }, debounce);
    });
    this.#watcher.on('error', (err) => this.#opts.log(`cannot watch ${this.file}: ${err.message}`));
  }

  close(): void {
    this.#watcher?.close();
    this.#watcher = null;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }
}
