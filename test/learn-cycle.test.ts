/**
 * Learn, then enforce, as a user does it: `openhook run --preload --learn FILE -- CMD`, then the
 * command the learned file's header gives, run by sh as written.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { CLI, tempDir } from './helpers.js';

const tmp = tempDir('openhook-learn-cycle-');
after(() => tmp.cleanup());

/** A directory on PATH with an `openhook` that runs this checkout's CLI, as an installed one would. */
const bin = join(tmp.path, 'bin');
mkdirSync(bin);
writeFileSync(join(bin, 'openhook'), `#!/bin/sh\nexec '${process.execPath}' '${CLI}' "$@"\n`);
chmodSync(join(bin, 'openhook'), 0o755);
const env = { ...process.env, PATH: `${bin}:${process.env.PATH}` };

function openhook(args: string[], cwd: string): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8', env });
  return { status: r.status, out: r.stdout + r.stderr };
}

/** The header line that starts with label, without it. */
function headerCommand(policy: string, label: string): string {
  const line = policy.split('\n').find((l) => l.startsWith(`# ${label}`));
  assert.ok(line, `no '${label}' line in:\n${policy}`);
  return line.slice(`# ${label}`.length).trim();
}

describe('learn, then enforce', () => {
  it('tar cf out.tar many: the learned tree rule lets tar open the directory itself (d)', () => {
    const cwd = join(tmp.path, 'tar');
    mkdirSync(join(cwd, 'many'), { recursive: true });
    for (let i = 0; i < 5; i++) writeFileSync(join(cwd, 'many', `f${i}`), `${i}\n`);
    // Something tar never touches, so that the tree rule is for many/ and not for cwd.
    writeFileSync(join(cwd, 'unrelated'), '');
    const policy = join(tmp.path, 'tar.toml');
    const learn = openhook(['run', '--preload', '--learn', policy, '--', 'tar', 'cf', 'out.tar', 'many'], cwd);
    assert.equal(learn.status, 0, learn.out);
    const text = readFileSync(policy, 'utf8');
    assert.match(text, new RegExp(`allow = "${cwd}/many/"\naccess = "rd"`), text);

    rmSync(join(cwd, 'out.tar'));
    const enforce = openhook(['run', '--preload', '--policy', policy, '--', 'tar', 'cf', 'out.tar', 'many'], cwd);
    assert.equal(enforce.status, 0, enforce.out);
    const list = spawnSync('tar', ['tf', join(cwd, 'out.tar')], { encoding: 'utf8' });
    assert.deepEqual(list.stdout.trim().split('\n').sort(), ['many/', 'many/f0', 'many/f1', 'many/f2', 'many/f3', 'many/f4']);
  });

  it("the header names the learn run's options and quotes the command, so sh re-runs it verbatim", () => {
    const cwd = join(tmp.path, 'quote');
    mkdirSync(cwd);
    const arg = `it's "a b"  $HOME`;
    const policy = join(tmp.path, 'quote.toml');
    const script = 'printf "%s\\n" "$1" > "$2"';
    const learn = openhook(
      ['run', '--preload', '--ro', tmp.path, '--learn', policy, '--', 'sh', '-c', script, 'sh', arg, join(cwd, 'out')],
      cwd,
    );
    assert.equal(learn.status, 0, learn.out);
    assert.equal(readFileSync(join(cwd, 'out'), 'utf8'), `${arg}\n`);
    const text = readFileSync(policy, 'utf8');
    const learned = headerCommand(text, 'openhook policy learned by:');
    assert.match(learned, /^openhook run --learn \S+ --preload --ro \S+ -- sh -c /, learned);

    // Re-run each header command in sh, as a user would paste it.
    rmSync(join(cwd, 'out'));
    const again = spawnSync('sh', ['-c', learned], { cwd, encoding: 'utf8', env });
    assert.equal(again.status, 0, again.stdout + again.stderr);
    assert.equal(readFileSync(join(cwd, 'out'), 'utf8'), `${arg}\n`);

    const enforceLine = headerCommand(readFileSync(policy, 'utf8'), 'Review it, then enforce it:');
    assert.match(enforceLine, /^openhook run --policy \S+ --preload --ro \S+ -- sh -c /, enforceLine);
    rmSync(join(cwd, 'out'));
    const enforce = spawnSync('sh', ['-c', enforceLine], { cwd, encoding: 'utf8', env });
    assert.equal(enforce.status, 0, enforce.stdout + enforce.stderr);
    assert.equal(readFileSync(join(cwd, 'out'), 'utf8'), `${arg}\n`);
  });
});
