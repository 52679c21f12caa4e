/**
 * Health and metrics: `openhook status` against a real broker, who may ask (peer credentials, real
 * uids), and the same counters scraped as Prometheus text.
 */
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, closeSync, mkdirSync, writeFileSync } from 'node:fs';
import { get, type IncomingMessage } from 'node:http';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Broker } from '../src/broker/broker.js';
import type { StatusReport } from '../src/broker/metrics.js';
import { connect } from '../src/client/client.js';
import { C, native } from '../src/native.js';
import { Policy } from '../src/policy/policy.js';
import { parseAllowFlag } from '../src/policy/rule.js';
import { encodeConnect, encodeStatusRequest } from '../src/protocol/frames.js';
import { CLI, cliForOthers, fixture, forOthers, probe, receiveOne, rfcOpenFrame, rfcReplyHex, tempDir } from './helpers.js';
import { killLeftovers, startDaemon, type Daemon } from './service-helpers.js';
import { E } from '../src/errno.js';

const run = promisify(execFile);
const NOBODY = 65534;
const { EACCES, EINVAL } = E;

const tmp = tempDir();
// Others must reach the sockets in here (access control is the broker's job in these tests), but
// list and open nothing.
chmodSync(tmp.path, 0o711);
const vm = join(tmp.path, 'vm');
mkdirSync(join(vm, 'private'), { recursive: true });
writeFileSync(join(vm, 'disk.img'), 'disk');
after(() => {
  killLeftovers();
  tmp.cleanup();
});

/** `openhook status ARGS`, as root or as another uid: exit code, stdout, stderr. */
function status(args: string[], uid?: number): { code: number | null; out: string; err: string } {
  const cli = uid === undefined ? CLI : cliForOthers();
  const r = spawnSync(process.execPath, [cli, 'status', ...args], { encoding: 'utf8', ...(uid !== undefined ? { uid, gid: uid } : {}) });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function scrape(options: {
  socketPath?: string;
  host?: string;
  port?: number;
  path?: string;
}): Promise<{ res: IncomingMessage; body: string }> {
  return new Promise((resolve, reject) => {
    get({ ...options, path: options.path ?? '/metrics' }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ res, body }));
    }).on('error', reject);
  });
}

describe('openhook status', () => {
  let d: Daemon;
  const sock = join(tmp.path, 'status.sock');
  before(async () => {
    d = await startDaemon(['--socket', sock, '--mode', '0666', `--allow=${vm}/:r`, `--deny=${vm}/private/`]);
    await using client = await connect(sock);
    const outcomes = await Promise.all(
      [
        client.open(join(vm, 'disk.img')), // allowed
        client.open(join(vm, 'missing')), // allowed, ENOENT
        client.open('/etc/passwd'), // no rule
        client.open(join(vm, 'private', 'key')), // deny rule
        client.open(join(vm, 'disk.img'), 'r+'), // the rule grants r only
        client.open(join(vm, 'disk.img'), C.O_PATH), // flags no rule can allow
        client.open('relative/name'), // refused before any rule
      ].map((p) =>
        p.then(
          (fd) => (closeSync(fd), 'fd'),
          (e: NodeJS.ErrnoException) => e.code,
        ),
      ),
    );
    assert.deepEqual(outcomes, ['fd', 'ENOENT', 'EACCES', 'EACCES', 'EACCES', 'EINVAL', 'EINVAL']);
    const lying = rfcOpenFrame(join(vm, 'disk.img'), C.O_RDONLY);
    lying.writeUInt16LE(3, 16);
    probe(sock, 'seqpacket', [lying]);
  });
  after(async () => {
    assert.equal(await d.stop(), 0);
  });

  it('reports uptime, policy generation, connections, requests, denials by reason, errors and latencies (--json)', () => {
    const r = status(['--socket', sock, '--json']);
    assert.equal(r.code, 0, r.err);
    const report = JSON.parse(r.out) as StatusReport;
    assert.equal(report.pid, d.pid);
    assert.equal(report.state, 'serving');
    assert.ok(report.uptimeSeconds > 0);
    assert.equal(report.policy.generation, 1);
    assert.equal(report.policy.rules, 2);
    // The first opens beneath a root run on the thread pool until the broker knows its file system.
    const { slow, ...requests } = report.requests;
    assert.deepEqual(requests, { total: 7, allowed: 2, denied: 5, pending: 0 });
    assert.ok(slow <= 2);
    assert.deepEqual(report.denials, { 'no-rule': 1, 'deny-rule': 1, access: 1, flags: 1, path: 1, audit: 0 });
    assert.deepEqual(report.errors, { open: { ENOENT: 1 }, protocol: 1, faults: 0, accept: 0 });
    assert.equal(report.connections.open, 1, 'the status command itself');
    assert.ok(report.connections.total >= 3);
    assert.equal(report.latency.count, 7);
    assert.equal(
      report.latency.buckets.reduce((sum, [, n]) => sum + n, 0),
      7,
    );
    assert.ok(report.latency.sumSeconds > 0);
  });

  it('prints the same for people', () => {
    const r = status(['--socket', sock]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, new RegExp(`^openhook broker at ${sock}: serving \\(pid ${d.pid}, uid 0,`));
    assert.match(r.out, /^ {2}policy +generation 1, 2 rule\(s\)/m);
    assert.match(r.out, /^ {2}requests +7: 2 allowed, 5 denied; \d on the thread pool, 0 under way$/m);
    assert.match(r.out, /^ {2}denied +no-rule 1 · deny-rule 1 · access 1 · flags 1 · path 1 · audit 0$/m);
    assert.match(r.out, /^ {2}open errors +ENOENT 1$/m);
    assert.match(r.out, /^ {2}faults +1 malformed frame\(s\)/m);
    assert.match(r.out, /^ {2}latency +p50 < [\d.]+ (µs|ms), p90 < .*, p99 < .* \(mean [\d.]+ µs\)$/m);
  });

  it('is refused to another uid: the command says so, and the raw frame gets -EACCES', () => {
    const r = status(['--socket', sock], NOBODY);
    assert.equal(r.code, 1);
    assert.match(r.err, /permission denied: the broker answers STATUS only to its own user and to root/);
    assert.equal(r.out, '');

    const asNobody = spawnSync(
      process.execPath,
      [
        '-e',
        `
      const { execFileSync } = require('node:child_process');
      process.stdout.write(execFileSync(${JSON.stringify(forOthers(fixture('rfc-probe')))}, [${JSON.stringify(sock)}, 'seqpacket', ${JSON.stringify(encodeStatusRequest().toString('hex'))}]));
    `,
      ],
      { encoding: 'utf8', uid: NOBODY, gid: NOBODY },
    );
    assert.equal(asNobody.stdout.trim(), `reply=${rfcReplyHex(0x103, -EACCES)} fds=0`, asNobody.stderr);

    const report = JSON.parse(status(['--socket', sock, '--json']).out) as StatusReport;
    assert.equal(report.status.refused, 2);
  });

  it('refuses STATUS flags it does not know', () => {
    const [line] = probe(sock, 'seqpacket', [encodeStatusRequest(1)]);
    assert.equal(line, `reply=${rfcReplyHex(0x103, -EINVAL)} fds=0`);
  });

  it('counts requests refused because a fail-closed audit log cannot be written', async () => {
    const auditSock = join(tmp.path, 'audit.sock');
    const a = await startDaemon(['--socket', auditSock, `--allow=${vm}/:r`, '--audit', '/dev/full']);
    {
      await using client = await connect(auditSock);
      // The log finds out that it cannot write with the first record; later requests are refused.
      let refused = 0;
      for (let i = 0; i < 100 && refused < 3; i++) {
        await client.open(join(vm, 'disk.img')).then(closeSync, (e: NodeJS.ErrnoException) => {
          assert.equal(e.code, 'EIO');
          refused++;
        });
        await sleep(10);
      }
      const report = await client.status();
      assert.equal(refused, 3);
      assert.equal(report.denials.audit, 3);
      assert.equal(report.requests.denied, 3);
    }
    assert.equal(await a.stop(), 0);
  });

  it('finds a SOCK_STREAM broker too, and says clearly when there is none', async () => {
    const streamSock = join(tmp.path, 'status-stream.sock');
    const s = await startDaemon(['--socket', streamSock, '--stream', `--allow=${vm}/:r`]);
    const r = status(['--socket', streamSock]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /\(stream\)/);
    assert.equal(await s.stop(), 0);
    const gone = status(['--socket', streamSock]);
    assert.equal(gone.code, 1);
    assert.match(gone.err, /cannot connect to .*status-stream\.sock: .*ENOENT/);
  });
});

describe('STATUS in a broker library user’s process', () => {
  it('answers a connection it accepted, never one it adopted or derived, though all peers have its uid', async (t) => {
    const broker = new Broker({ policy: new Policy([parseAllowFlag(`${vm}/:r`)]), log: () => {} });
    t.after(() => broker.close()); // also when an assertion fails, or the file would never end
    const path = join(tmp.path, 'inproc.sock');
    broker.listen(path);
    await using accepted = await connect(path);
    assert.equal((await accepted.status()).requests.total, 0);

    // A launched program's hook socket is a socketpair the broker made: its peer credentials are the
    // broker's own. It must not see the broker's counters.
    const [brokerEnd, clientEnd] = native.socketpair(C.SOCK_SEQPACKET, true);
    broker.adopt(brokerEnd, 'seqpacket');
    await using adopted = await connect({ fd: clientEnd });
    await assert.rejects(adopted.status(), { code: 'EACCES', syscall: 'status' });

    // Connections made by CONNECT are socketpairs too, whoever asked: from the adopted hook (what
    // the interposer does) and from an accepted connection alike.
    const [hookEnd, programEnd] = native.socketpair(C.SOCK_SEQPACKET, true);
    broker.adopt(hookEnd, 'seqpacket');
    for (const root of [programEnd, native.connectUnix(Buffer.from(path), C.SOCK_SEQPACKET)]) {
      const frame = encodeConnect();
      assert.equal(native.send(root, frame, 0, frame.length, -1), frame.length);
      const { fds } = await receiveOne(root);
      assert.equal(fds.length, 1, 'CONNECT gives a connection');
      await using derived = await connect({ fd: fds[0]! });
      await assert.rejects(derived.status(), { code: 'EACCES', syscall: 'status' });
      native.close(root);
    }
  });
});

describe('Prometheus metrics', () => {
  it('serves the counters on a UNIX socket and on loopback, and only /metrics', async () => {
    const sock = join(tmp.path, 'prom.sock');
    const metricsSock = join(tmp.path, 'metrics.sock');
    const d = await startDaemon(['--socket', sock, `--allow=${vm}/:r`, '--metrics', `unix:${metricsSock}`]);
    const tcp = await startDaemon(['--socket', join(tmp.path, 'prom-tcp.sock'), `--allow=${vm}/:r`, '--metrics', '127.0.0.1:0']);
    {
      await using client = await connect(sock);
      closeSync(await client.open(join(vm, 'disk.img')));
      await assert.rejects(client.open('/etc/shadow'), { code: 'EACCES' });
      await assert.rejects(client.open(join(vm, 'nothing')), { code: 'ENOENT' });
    }
    const { res, body } = await scrape({ socketPath: metricsSock });
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8');
    assert.match(body, /^# TYPE openhook_requests_total counter$/m);
    assert.match(body, /^openhook_requests_total 3$/m);
    assert.match(body, /^openhook_requests_allowed_total 2$/m);
    assert.match(body, /^openhook_requests_denied_total\{reason="no-rule"\} 1$/m);
    assert.match(body, /^openhook_requests_denied_total\{reason="deny-rule"\} 0$/m);
    assert.match(body, /^openhook_open_errors_total\{errno="ENOENT"\} 1$/m);
    assert.match(body, /^openhook_policy_generation 1$/m);
    assert.match(body, /^openhook_request_duration_seconds_bucket\{le="\+Inf"\} 3$/m);
    assert.match(body, /^openhook_request_duration_seconds_count 3$/m);
    // Histogram buckets are cumulative and never decrease.
    const buckets = [...body.matchAll(/^openhook_request_duration_seconds_bucket\{le="([^"]+)"\} (\d+)$/gm)].map((m) => Number(m[2]));
    assert.equal(buckets.length, 25);
    assert.deepEqual(
      buckets,
      [...buckets].sort((a, b) => a - b),
    );
    assert.equal((await scrape({ socketPath: metricsSock, path: '/' })).res.statusCode, 404);

    const port = Number(/metrics on 127\.0\.0\.1:(\d+)/.exec(tcp.stderr())![1]);
    const overTcp = await scrape({ host: '127.0.0.1', port });
    assert.equal(overTcp.res.statusCode, 200);
    assert.match(overTcp.body, /^openhook_requests_total 0$/m);

    assert.equal(await d.stop(), 0);
    assert.equal(await tcp.stop(), 0);
    await assert.rejects(scrape({ socketPath: metricsSock }), { code: 'ENOENT' }, 'the metrics socket is removed on stop');
  });

  it('refuses to serve metrics on an address that is not loopback', async () => {
    const { code, stderr } = await run(process.execPath, [
      CLI,
      'serve',
      '--socket',
      join(tmp.path, 'x.sock'),
      `--allow=${vm}/:r`,
      '--metrics',
      '0.0.0.0:9464',
    ]).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => e,
    );
    assert.notEqual(code, 0);
    assert.match(stderr, /loopback addresses only/);
  });
});
