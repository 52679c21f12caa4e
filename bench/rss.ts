/**
 * Broker memory with 1,000 idle connections: the resident set (VmRSS) of `openhook serve`
 * (realistic policy, audit log on) once 1,000 clients have connected and made one request each,
 * against the C reference broker holding as many. The bound is absolute: at most 80 MB.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { C, native } from '../src/native.js';
import { encodeOpen } from '../src/protocol/frames.js';
import { startOpenhook, startRef, workspace, type Row, type Running } from './lib.js';
import { realisticPolicy } from './realistic.js';

const CONNECTIONS = 1000;

function rssMb(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) / 1024;
}

/** Connects CONNECTIONS clients, each making one request (so that each connection is fully set up); returns their fds. */
async function connectMany(b: Running, name: string): Promise<number[]> {
  const fds: number[] = [];
  const frame = encodeOpen(name, C.O_RDONLY, 0);
  for (let i = 0; i < CONNECTIONS; i++) {
    const fd = native.connectUnix(Buffer.from(b.socket), C.SOCK_SEQPACKET);
    native.send(fd, frame, 0, frame.length, -1);
    fds.push(fd);
    if (i % 100 === 99) await sleep(10); // within the listen backlog
  }
  await sleep(500); // served and settled (replies are left unread: the fds they carry go with them)
  return fds;
}

export async function benchRss(): Promise<Row[]> {
  const ws = workspace();
  const policy = join(ws.dir, 'policy.toml');
  writeFileSync(policy, realisticPolicy(ws.dir));
  const oh = await startOpenhook(join(ws.dir, 'oh.sock'), ['--policy', policy, '--audit', join(ws.dir, 'audit.jsonl')]);
  const ref = await startRef(join(ws.dir, 'ref.sock'), ws.dir);
  const rows: Row[] = [];
  try {
    const idle = { oh: rssMb(oh.child.pid!), ref: rssMb(ref.child.pid!) };
    const ohFds = await connectMany(oh, ws.file);
    const refFds = await connectMany(ref, ws.file.slice(ws.dir.length + 1));
    const busy = { oh: rssMb(oh.child.pid!), ref: rssMb(ref.child.pid!) };
    for (const fd of [...ohFds, ...refFds]) native.close(fd);
    rows.push({
      case: 'broker RSS, no connections',
      metric: 'MB',
      openhook: idle.oh,
      reference: idle.ref,
      ratio: 80 / idle.oh,
      target: '(info)',
      unit: 'MB',
    });
    rows.push({
      case: `broker RSS, ${CONNECTIONS.toLocaleString('en')} idle connections`,
      metric: 'MB',
      openhook: busy.oh,
      reference: busy.ref,
      ratio: 80 / busy.oh,
      target: '≤ 80 MB (ratio: 80 MB / openhook)',
      unit: 'MB',
    });
  } finally {
    await oh.stop();
    await ref.stop();
    ws.cleanup();
  }
  return rows;
}
