/**
 * Live reload of a policy file: on demand (SIGHUP) and, if asked, whenever the file changes.
 *
 * The new policy is read and checked on a helper thread (a 100,000-rule file takes most of a second
 * to parse), then compiled off to the side; only a policy that compiled whole is handed to apply()
 * (Broker.setPolicy swaps it in atomically). A file that is unreadable, empty,
 * malformed or cut short keeps the old policy in force, and the error names the line and column.
 *
 * Watching: editors and `mv` replace a file rather than write it in place, which a watch on the file
 * itself would lose, so the directory is watched and events are filtered by name. Events come in
 * bursts while a file is written; a short quiet period (debounce) gathers them into one reload.
 */
import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { Worker } from 'node:worker_threads';
import { compilePolicySliced } from './file.js';
import { readPolicyFile, type PolicySpec } from './spec.js';
import type { Policy } from './policy.js';
import { PolicyError, type Rule } from './rule.js';

export interface ReloaderOptions {
  file: string;
  apply: (policy: Policy) => void;
  /** where reloads and their errors are reported */
  log: (message: string) => void;
  /** where failed reloads are reported, if not log (a daemon gives them a higher priority) */
  warn?: (message: string) => void;
  /** told before each reload, SIGHUP or watch alike (a service manager hears RELOADING=1) */
  started?: (why: string) => void;
  /** told after each reload: null when the new policy is in force, else why the old one stays */
  finished?: (error: Error | null, why: string) => void;
  /** quiet period before a change is reloaded, ms (default 100) */
  debounceMs?: number;
  /** read and check the file on a helper thread, so that a large policy never stalls the broker (default true) */
  thread?: boolean;
}

type Reply = { ok: true; spec: PolicySpec } | { ok: false; policyError: boolean; message: string };

export class PolicyReloader {
  readonly file: string;
  #opts: ReloaderOptions;
  #watcher: FSWatcher | null = null;
  #timer: NodeJS.Timeout | null = null;
  #worker: Worker | null = null;
  #waiting: ((reply: Reply) => void)[] = [];
  /** reloads run one after another */
  #queue: Promise<boolean> = Promise.resolve(true);
  /** reloads that succeeded and that failed, for tests and status */
  loaded = 0;
  failed = 0;

  constructor(options: ReloaderOptions) {
    this.#opts = options;
    this.file = resolve(options.file);
  }

  /**
   * Reloads now (after any reload in progress). Resolves to true if the new policy is in force, and
   * to false if the old one stays; it never rejects, so a daemon's SIGHUP cannot bring it down.
   */
  reload(why: string): Promise<boolean> {
    const next = this.#queue.then(() => this.#reload(why));
    this.#queue = next;
    return next;
  }

  async #reload(why: string): Promise<boolean> {
    const started = performance.now();
    this.#opts.started?.(why);
    let error: Error | null = null;
    try {
      const reply = await this.#read();
      if (!reply.ok) throw reply.policyError ? new PolicyError(reply.message) : new Error(reply.message);
      // Compiling opens nothing (roots are opened at first use); it runs on the event loop in slices,
      // while the old policy goes on serving.
      const policy = await compilePolicySliced(reply.spec);
      this.#opts.apply(policy);
      this.loaded++;
      this.#opts.log(
        `policy reloaded (${why}) from ${this.#opts.file}: ${policy.ruleCount} rules in ${Math.round(performance.now() - started)} ms`,
      );
      return true;
    } catch (err) {
      // Whatever went wrong (a bad file, or a fault of ours), the old policy stays in force.
      error = err instanceof Error ? err : new Error(String(err));
      this.failed++;
      (this.#opts.warn ?? this.#opts.log)(`policy reload (${why}) failed, the old policy stays in force: ${error.message}`);
      return false;
    } finally {
      this.#opts.finished?.(error, why);
    }
  }

  /** Reads and checks the file, on the helper thread if there is one. */
  #read(): Promise<Reply> {
    if (this.#opts.thread === false || !this.#ensureWorker()) {
      try {
        return Promise.resolve({ ok: true, spec: readPolicyFile(this.#opts.file) });
      } catch (err) {
        return Promise.resolve({ ok: false, policyError: err instanceof PolicyError, message: (err as Error).message });
      }
    }
    return new Promise((done) => {
      this.#waiting.push(done);
      this.#worker!.postMessage(this.#opts.file);
    });
  }

  #ensureWorker(): boolean {
    if (this.#worker) return true;
    try {
      // Beside this module: reload-worker.js in dist/, reload-worker.ts under tsx (tests).
      const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
      const w = new Worker(new URL(`./reload-worker${ext}`, import.meta.url));
      w.unref();
      // Rules arrive in chunks ahead of the spec they belong to (see reload-worker.ts).
      let chunks: Rule[][][] = [];
      w.on('message', (m: { kind: 'rules'; list: number; rules: Rule[] } | ({ kind: 'done' } & Reply)) => {
        if (m.kind === 'rules') {
          (chunks[m.list] ??= []).push(m.rules);
          return;
        }
        if (m.ok) {
          const all = (list: number): Rule[] => (chunks[list] ?? []).flat();
          m.spec.rules = all(0);
          m.spec.sections.forEach((s, i) => (s.rules = all(i + 1)));
        }
        chunks = [];
        this.#waiting.shift()?.(m);
      });
      w.on('error', (err) => {
        this.#opts.log(`policy reload thread failed (${err.message}); reading on the main thread from now on`);
        this.#worker = null;
        this.#opts.thread = false;
        for (const done of this.#waiting.splice(0)) done({ ok: false, policyError: true, message: `reload thread failed: ${err.message}` });
      });
      this.#worker = w;
      return true;
    } catch (err) {
      this.#opts.log(`cannot start the policy reload thread (${(err as Error).message}); reading on the main thread`);
      this.#opts.thread = false;
      return false;
    }
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
        void this.reload('file changed');
      }, debounce);
    });
    this.#watcher.on('error', (err) => this.#opts.log(`cannot watch ${this.file}: ${err.message}`));
  }

  close(): void {
    this.#watcher?.close();
    this.#watcher = null;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    void this.#worker?.terminate();
    this.#worker = null;
  }
}
