/**
 * Client identities with real connections: processes running as other uids and gids (root drops
 * them in the child), supplementary groups through SO_PEERGROUPS, launcher sessions, and clients
 * the policy refuses at connect time.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, closeSync, copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Broker } from '../src/broker/broker.js';
import { connect } from '../src/client/client.js';
import { C, native } from '../src/native.js';
import { parsePolicyText, compilePolicy } from '../src/policy/file.js';
import { fixture, rfcOpenFrame, startServe, tempDir, type ServeProcess } from './helpers.js';

const asRoot = process.getuid?.() === 0;
const tmp = tempDir();
after(tmp.cleanup);
const T = tmp.path;
chmodSync(T, 0o755);
for (const d of ['nobody', 'group', 'root', 'vm1']) {
  mkdirSync(join(T, d));
  writeFileSync(join(T, d, 'f'), d);
}

const policyText = `
unmatched = "refuse"

[[client]]
uid = 65534
[[client.rule]]
allow = "${T}/nobody/"
access = "r"

[[client]]
gid = 4242
[[client.rule]]
allow = "${T}/group/"
access = "r"

[[client]]
uid = 0
[[client.rule]]
allow = "${T}/root/"
access = "r"

[[client]]
session = "vm1"
[[client.rule]]
allow = "${T}/vm1/"
access = "r"
`;

describe('client identities over real connections', { skip: !asRoot && 'needs root to run clients as other users' }, () => {
  let serve: ServeProcess;
  let probe: string;
  const socket = join(T, 'id.sock');
  before(async () => {
    writeFileSync(join(T, 'id.toml'), policyText);
    // The probe must be runnable by the unprivileged users.
    probe = join(T, 'rfc-probe');
    copyFileSync(fixture('rfc-probe'), probe);
    chmodSync(probe, 0o755);
    serve = await startServe(socket, ['--policy', join(T, 'id.toml'), '--mode', '0666']);
  });
  after(async () => {
    await serve.stop();
  });

  /** Which of the directories a client with these credentials may open: "nobody,group" or "closed". */
  function reach(cred: { uid: number; gid: number; groups?: number[] }): string {
    const frames = ['nobody', 'group', 'root', 'vm1'].map((d) => rfcOpenFrame(join(T, d, 'f'), C.O_RDONLY).toString('hex'));
    // setpriv sets exactly the supplementary groups we ask for; spawn's uid/gid options drop them all.
    const out = cred.groups
      ? execFileSync(
          'setpriv',
          [`--reuid=${cred.uid}`, `--regid=${cred.gid}`, `--groups=${cred.groups.join(',')}`, probe, socket, 'seqpacket', ...frames],
          { encoding: 'utf8' },
        )
      : execFileSync(probe, [socket, 'seqpacket', ...frames], { encoding: 'utf8', uid: cred.uid, gid: cred.gid });
    const lines = out.trim().split('\n');
    if (lines[0] === 'closed') return 'closed';
    return ['nobody', 'group', 'root', 'vm1'].filter((_, i) => / fds=1 /.test(lines[i] + ' ')).join(',');
  }

  it('matches a section by uid', () => {
    assert.equal(reach({ uid: 65534, gid: 65534 }), 'nobody');
    assert.equal(reach({ uid: 0, gid: 0 }), 'root');
  });

  it('matches a section by primary gid', () => {
    assert.equal(reach({ uid: 1234, gid: 4242 }), 'group');
  });

  it('matches a section by a supplementary group (SO_PEERGROUPS)', () => {
    assert.equal(reach({ uid: 1234, gid: 1234, groups: [17, 4242] }), 'group');
    assert.equal(reach({ uid: 1234, gid: 1234, groups: [17] }), 'closed');
  });

  it('takes the first section that matches: uid 65534 in group 4242 is served as uid 65534', () => {
    assert.equal(reach({ uid: 65534, gid: 65534, groups: [4242] }), 'nobody');
  });

  it('refuses the connection of a client that matches no section (unmatched = "refuse")', () => {
    assert.equal(reach({ uid: 1235, gid: 1235 }), 'closed');
    assert.match(serve.stderr(), /serving/);
  });
});

describe('launcher sessions', () => {
  it('serves an adopted connection under its session’s section, and others under theirs', async () => {
    const broker = new Broker({
      policy: compilePolicy(parsePolicyText(policyText.replace('unmatched = "refuse"', ''), 'id.toml')),
      log: () => {},
    });
    try {
      const open = async (session?: string): Promise<string> => {
        const [near, far] = native.socketpair(C.SOCK_SEQPACKET, true);
        broker.adopt(far, 'seqpacket', session !== undefined ? { session } : {});
        const client = await connect({ fd: near, protocol: 'rfc' });
        const got: string[] = [];
        for (const d of ['root', 'vm1']) {
          try {
            closeSync(await client.open(join(T, d, 'f'), 'r'));
            got.push(d);
          } catch {
            /* denied */
          }
        }
        client.close();
        return got.join(',');
      };
      // This process runs as root: uid 0 matches before the session section, as written.
      assert.equal(await open(), process.getuid?.() === 0 ? 'root' : '');
      assert.equal(await open('vm1'), process.getuid?.() === 0 ? 'root' : 'vm1');
      // A policy that lists the session first serves the session's section.
      broker.setPolicy(
        compilePolicy(
          parsePolicyText(
            `[[client]]\nsession = "vm1"\n[[client.rule]]\nallow = "${T}/vm1/"\naccess = "r"\n[[rule]]\nallow = "${T}/root/"\naccess = "r"\n`,
            's.toml',
          ),
        ),
      );
      assert.equal(await open('vm1'), 'vm1');
      assert.equal(await open('other'), 'root');
      assert.equal(await open(), 'root');
    } finally {
      broker.close();
    }
  });
});
