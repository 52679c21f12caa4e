/**
 * Block jobs over QMP (blockdev-create, block-commit, ...): start one, follow its JOB_STATUS_CHANGE
 * events, complete it when it becomes ready if asked, and report how it ended. QEMU keeps a job's
 * error only until the job is dismissed, so it is read with query-jobs before dismissing.
 */
import { Wait } from '../client/pending.js';
import { QmpJobError, QmpTimeoutError } from './errors.js';
import type { QmpClient, QmpEvent } from './qmp.js';

export interface JobOptions {
  /** a job that becomes ready (active commit, mirror) is completed with job-complete */
  complete?: boolean;
  /** ms for the whole job; 0 or absent: none */
  timeout?: number;
  signal?: AbortSignal;
}

interface JobInfo {
  id: string;
  status: string;
  error?: string;
}

/** Runs `command` with args (which must name its 'job-id') to its end; rejects with QmpJobError if it failed. */
export async function runJob(
  qmp: QmpClient,
  command: string,
  args: Record<string, unknown> & { 'job-id': string },
  options: JobOptions = {},
): Promise<void> {
  const id = args['job-id'];
  let completedError: string | undefined;
  let aborted = false;
  let onEvent!: (e: QmpEvent) => void;
  // Listen before starting the job: its first events may come before the command's reply.
  const concluded = new Promise<void>((resolve, reject) => {
    onEvent = (e) => {
      if (e.event === 'BLOCK_JOB_COMPLETED' && e.data.device === id && typeof e.data.error === 'string') completedError = e.data.error;
      if (e.event !== 'JOB_STATUS_CHANGE' || e.data.id !== id) return;
      const status = e.data.status as string;
      if (status === 'aborting') aborted = true;
      if (status === 'ready' && options.complete) qmp.execute('job-complete', { id }).catch(reject);
      if (status === 'concluded' || status === 'null') resolve();
    };
    qmp.on('event', onEvent);
    qmp.whenClosed.then(() => reject(new QmpJobError(id, 'the QMP connection closed before the job ended')));
  });
  concluded.catch(() => {}); // observed below; never an unhandled rejection if the command fails first
  try {
    await qmp.execute(command, args, { signal: options.signal, timeout: options.timeout });
    const ended = new Wait<void>({
      timeout: options.timeout,
      timeoutError: () => new QmpTimeoutError(`job ${id} did not end within ${options.timeout} ms`),
    });
    concluded.then(
      () => ended.resolve(),
      (err: Error) => ended.reject(err),
    );
    await ended.promise;
  } finally {
    qmp.off('event', onEvent);
  }
  const jobs = await qmp.execute<JobInfo[]>('query-jobs');
  const job = jobs.find((j) => j.id === id);
  if (job) await qmp.execute('job-dismiss', { id });
  const error = job?.error ?? completedError;
  if (error) throw new QmpJobError(id, error);
  if (aborted) throw new QmpJobError(id, 'cancelled');
}
