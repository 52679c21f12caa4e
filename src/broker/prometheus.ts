/**
 * The broker's counters in the Prometheus text exposition format (version 0.0.4), from the same
 * report that STATUS answers, so the two never disagree.
 */
import { DENIAL_NAMES, LATENCY_BUCKETS, type StatusReport } from './metrics.js';

export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

export function prometheusText(r: StatusReport): string {
  const out: string[] = [];
  const metric = (name: string, type: 'counter' | 'gauge' | 'histogram', help: string, samples: Array<[string, number]>): void => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) out.push(`${name}${labels} ${formatValue(value)}`);
  };
  metric('openhook_start_time_seconds', 'gauge', 'Start time of the broker, seconds since the epoch.', [
    ['', Date.parse(r.startedAt) / 1000],
  ]);
  metric('openhook_policy_generation', 'gauge', 'Policies loaded since start (1 = the first).', [['', r.policy.generation]]);
  metric('openhook_policy_rules', 'gauge', 'Rules in the policy in force.', [['', r.policy.rules]]);
  metric('openhook_policy_reload_failures_total', 'counter', 'Reloads refused because the new policy was invalid.', [
    ['', r.policy.reloadFailures],
  ]);
  metric('openhook_connections', 'gauge', 'Client connections open now.', [['', r.connections.open]]);
  metric('openhook_connections_total', 'counter', 'Client connections accepted or adopted.', [['', r.connections.total]]);
  metric('openhook_connections_refused_total', 'counter', 'Connections closed at accept: the policy has no section for the client.', [
    ['', r.connections.refused],
  ]);
  metric('openhook_requests_total', 'counter', 'Open requests decided.', [['', r.requests.total]]);
  metric('openhook_requests_allowed_total', 'counter', 'Open requests the policy allowed.', [['', r.requests.allowed]]);
  metric('openhook_slow_opens_total', 'counter', 'Allowed opens run on the thread pool (FUSE, NFS, FIFOs).', [['', r.requests.slow]]);
  metric('openhook_slow_opens_pending', 'gauge', 'Opens on the thread pool now.', [['', r.requests.pending]]);
  metric(
    'openhook_requests_denied_total',
    'counter',
    'Open requests denied, by reason.',
    DENIAL_NAMES.map((reason) => [`{reason="${reason}"}`, r.denials[reason]]),
  );
  metric(
    'openhook_open_errors_total',
    'counter',
    'Allowed requests whose open failed, by errno.',
    Object.entries(r.errors.open).map(([errno, n]) => [`{errno="${errno}"}`, n]),
  );
  const ops = Object.entries(r.operations ?? {});
  metric(
    'openhook_file_operations_total',
    'counter',
    'File operations (mkdir, unlink, rename, ...), by operation and outcome: done, denied by the policy, or allowed but failed.',
    ops.flatMap(([op, n]) =>
      (['done', 'denied', 'failed'] as const).map((outcome): [string, number] => [`{operation="${op}",outcome="${outcome}"}`, n[outcome]]),
    ),
  );
  metric('openhook_protocol_errors_total', 'counter', 'Frames answered -EPROTO.', [['', r.errors.protocol]]);
  metric('openhook_faults_total', 'counter', 'Connections dropped for an unexpected fault.', [['', r.errors.faults]]);
  metric('openhook_accept_errors_total', 'counter', 'Accept failures (EMFILE, ENFILE, ENOMEM).', [['', r.errors.accept]]);

  const byBound = new Map(r.latency.buckets);
  const samples: Array<[string, number]> = [];
  let cumulative = 0;
  for (let b = 0; b < LATENCY_BUCKETS; b++) {
    const le = 2 ** b / 1e6;
    cumulative += byBound.get(le) ?? 0;
    samples.push([`_bucket{le="${formatValue(le)}"}`, cumulative]);
  }
  samples.push(['_bucket{le="+Inf"}', r.latency.count], ['_sum', r.latency.sumSeconds], ['_count', r.latency.count]);
  metric(
    'openhook_request_duration_seconds',
    'histogram',
    'Time from decoding an open request to its decision and open being done.',
    samples,
  );
  return out.join('\n') + '\n';
}

function formatValue(v: number): string {
  if (Number.isInteger(v)) return String(v);
  return String(Number(v.toPrecision(9)));
}
