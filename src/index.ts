/** openhook: delegate open() to a policy broker over a UNIX socket. */
export { connect, OpenHookClient, type ConnectOptions, type ReconnectOptions, type RequestOptions } from './client/client.js';
export { AbortError, ClientClosedError, ConnectionLostError, OpenHookError, ProtocolError, TimeoutError } from './client/errors.js';
export { toFlags, type OpenFlags } from './client/flags.js';
export { Broker, Listener, type BrokerOptions, type ListenOptions } from './broker/broker.js';
export type { AuditRecord, AuditSink } from './broker/audit.js';
export { Resolver } from './resolver/resolver.js';
export {
  Access,
  compilePolicy,
  formatAccess,
  loadPolicyFile,
  parseAccess,
  parseAllowFlag,
  parseDenyFlag,
  parsePolicyText,
  Policy,
  PolicyError,
  readPolicyFile,
  Section,
  type Decision,
  type Peer,
  type PolicyOptions,
  type PolicySpec,
  type Rule,
  type SectionSpec,
} from './policy/index.js';
export * as protocol from './protocol/frames.js';
export { Command, Feature } from './protocol/constants.js';
export {
  connectQmp,
  QmpClient,
  QmpListener,
  type QmpConnectOptions,
  type QmpEvent,
  type QmpGreeting,
  type ExecuteOptions,
} from './qemu/qmp.js';
export { QmpClosedError, QmpError, QmpJobError, QmpProtocolError, QmpTimeoutError } from './qemu/errors.js';
export { FdSetImages, type FdSet, type ImageNode, type AddImageOptions, type SnapshotOptions, type PushOptions } from './qemu/fdset.js';
export { BrokerOpener, PolicyOpener, type ImageOpener } from './qemu/opener.js';
export { runJob } from './qemu/jobs.js';
export { openhookRun, qmpArgs, spawnQemu, type QemuProcess, type QmpWiring, type SpawnQemuOptions } from './qemu/spawn.js';
export type { StatusReport } from './broker/metrics.js';
