/**
 * Errors of the QMP client. A command that QEMU refuses rejects with a QmpError carrying QEMU's own
 * error class and description; failures of the connection have classes with stable codes, in the
 * manner of the client library (src/client/errors.ts).
 */
import { OpenHookError } from '../client/errors.js';

/** QEMU answered a command with {"error": {"class": ..., "desc": ...}}. */
export class QmpError extends OpenHookError {
  override name = 'QmpError';
  override readonly code = 'ERR_QMP_COMMAND';
  /** QEMU's error class: 'GenericError', 'CommandNotFound', 'DeviceNotFound', ... */
  readonly class: string;
  /** QEMU's description, for people */
  readonly desc: string;
  /** the command that failed */
  readonly command: string;

  constructor(command: string, errorClass: string, desc: string) {
    super(`${command}: ${desc} (${errorClass})`);
    this.command = command;
    this.class = errorClass;
    this.desc = desc;
  }
}

/** The QMP connection is closed (by close(), or because QEMU exited); pending commands fail with it. */
export class QmpClosedError extends OpenHookError {
  override name = 'QmpClosedError';
  override readonly code = 'ERR_QMP_CLOSED';
}

/** No reply (or greeting, or event) within the timeout. */
export class QmpTimeoutError extends OpenHookError {
  override name = 'QmpTimeoutError';
  override readonly code = 'ERR_QMP_TIMEOUT';
}

/** QEMU sent something that is not QMP; the connection is closed. */
export class QmpProtocolError extends OpenHookError {
  override name = 'QmpProtocolError';
  override readonly code = 'ERR_QMP_PROTOCOL';
}

/** A block job ended with an error, or was cancelled. */
export class QmpJobError extends OpenHookError {
  override name = 'QmpJobError';
  override readonly code = 'ERR_QMP_JOB';
  readonly jobId: string;
  constructor(jobId: string, message: string) {
    super(`job ${jobId}: ${message}`);
    this.jobId = jobId;
  }
}
