/**
 * Errors of the client library. A refused open rejects with a Node-style SystemError (code 'EACCES',
 * errno, syscall 'open', path), like fs.open would. Failures of the client itself have classes with
 * stable codes, in the manner of undici.
 */
export class OpenHookError extends Error {
  override name = 'OpenHookError';
  readonly code: string = 'ERR_OPENHOOK';
}

/** The connection is closed, by close() or by the broker; pending and later requests fail with it. */
export class ClientClosedError extends OpenHookError {
  override name = 'ClientClosedError';
  override readonly code = 'ERR_OPENHOOK_CLOSED';
}

/** The broker sent something that is not a valid reply; the connection is closed. */
export class ProtocolError extends OpenHookError {
  override name = 'ProtocolError';
  override readonly code = 'ERR_OPENHOOK_PROTOCOL';
}

/** No reply within the timeout. */
export class TimeoutError extends OpenHookError {
  override name = 'TimeoutError';
  override readonly code = 'ERR_OPENHOOK_TIMEOUT';
}

/** The request's AbortSignal fired. Like DOM aborts: name 'AbortError', code 'ABORT_ERR'. */
export class AbortError extends OpenHookError {
  override name = 'AbortError';
  override readonly code = 'ABORT_ERR';
  constructor(message = 'The operation was aborted', options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * The broker went away before answering, and the request was not sent again: it was not safe to
 * repeat (an open with O_CREAT|O_EXCL may or may not have been done), it had been repeated once
 * already, or no broker came back within the reconnect timeout.
 */
export class ConnectionLostError extends OpenHookError {
  override name = 'ConnectionLostError';
  override readonly code = 'ERR_OPENHOOK_CONNECTION_LOST';
}
