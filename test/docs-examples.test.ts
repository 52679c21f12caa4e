/**
 * The examples of README.md and docs/*.md, run for real, so that the docs cannot drift from the code.
 *
 * How to mark an example (the info string of its fence; renderers still see the language):
 *
 *   ```sh test              run with bash -euo pipefail; it fails the test if it fails
 *   ```sh test=NAME         the same, and its output is kept for the checks in EXPECT below
 *   ```console test         a transcript: each `$ CMD` line runs; the lines under it must appear in its
 *                           output, in order (a `...` line stands for any lines; exit status ignored)
 *   ```toml test            a policy file: it must load (`openhook check --policy` exits 0 or 1)
 *   ```toml test=FILE       the same, and it is written to FILE for the examples after it
 *   ```ts test              run with tsx from a directory where `import 'openhook'` resolves
 *   ```LANG no-test: WHY    not run, and why (a systemd unit, a fragment, run by another test)
 *
 * Every sh, bash, console, toml, ts and js block must say one or the other: an unmarked example fails
 * this test, with its place. Blocks in other languages (ini, yaml, json) and plain fences (output) are
 * not examples.
 *
 * Where they run: each document's examples run in order, in one fresh mount namespace (unshare) where
 * /srv, /home, /tmp, /run and /var/log are empty tmpfs, populated by SETUP below: the paths the docs
 * use (/srv/vm/...) are real there, and the host's are never touched. `openhook` and `npx openhook`
 * run this checkout's CLI; `openhook serve` goes to the background once it serves (as if in another
 * terminal; a later serve replaces it), and everything ends with the namespace. `my-program` is a
 * program written for the hook: it reads /srv/vm/disk.img through OPENHOOK_FD.
 *
 * OPENHOOK_KEEP_DOCS=1 keeps the scripts and each example's output, under build/docs-examples-*.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { CLI, fixture, ROOT } from './helpers.js';

export interface Example {
  file: string;
  line: number;
  lang: string;
  /** 'test', 'no-test', or null when unmarked */
  mark: 'test' | 'no-test' | null;
  /** test=NAME */
  name?: string;
  /** no-test: WHY */
  why?: string;
  text: string;
}

const EXAMPLE_LANGS = new Set(['sh', 'bash', 'console', 'toml', 'ts', 'js']);

/** The fenced blocks of a markdown text (``` fences, indented or not). */
export function examples(file: string, markdown: string): Example[] {
  const out: Example[] = [];
  const lines = markdown.split('\n');
  for (let i = 0; i < lines.length; i++) {
    // A fence may be indented (inside a list item): its lines lose that indentation.
    const open = /^( *)```(\S*)\s*(.*)$/.exec(lines[i]!);
    if (!open) continue;
    const [, indent = '', lang = '', info = ''] = open;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && !/^ *```\s*$/.test(lines[i]!); i++)
      body.push(lines[i]!.startsWith(indent) ? lines[i]!.slice(indent.length) : lines[i]!);
    const test = /^test(?:=(\S+))?$/.exec(info);
    const skip = /^no-test:\s*(\S.*)$/.exec(info);
    out.push({
      file,
      line: start + 1,
      lang,
      mark: test ? 'test' : skip ? 'no-test' : null,
      ...(test?.[1] !== undefined ? { name: test[1] } : {}),
      ...(skip ? { why: skip[1]! } : {}),
      text: body.join('\n') + '\n',
    });
  }
  return out;
}

const DOCS = [
  'README.md',
  ...readdirSync(join(ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
];
const all = DOCS.flatMap((file) => examples(file, readFileSync(join(ROOT, file), 'utf8')));

/** Checks on the output of examples marked test=NAME, beyond their exit status. */
const EXPECT: Record<string, (out: string) => void> = {
  // docs/operations.md: the audit log's denials, read back with jq (the log has one allow, one deny)
  'audit-denials': (out) => {
    const records = out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { decision: string; path: string });
    assert.deepEqual(
      records.map((r) => `${r.decision} ${r.path}`),
      ['deny /srv/vm/private/key'],
    );
  },
};

/**
 * Run as root in the namespace before a document's examples. An audit log with one allowed and one
 * denied request is there for the examples that read one.
 */
const SETUP = `
mkdir -p /srv/vm/guest1 /srv/vm/private /srv/vm/vm1 /srv/vm/vm2 /srv/base /srv/data /srv/images /srv/src /srv/out \\
  /home/me/project /tmp/agent-scratch /var/log/openhook
echo disk > /srv/vm/disk.img
echo guest1 > /srv/vm/guest1/disk.qcow2
echo secret > /srv/vm/private/key
echo notes > /home/me/project/notes.md
echo SECRET=1 > /home/me/project/.env
printf '[[rule]]\\nallow = "/srv/vm/"\\naccess = "rw"\\n' > vm.toml
echo notes > /srv/vm/notes.txt
echo base > /srv/vm/base.img
mkdir -p /srv/vm/out /run/openhook
openhook serve --socket /run/openhook/openhook.sock --allow /srv/vm/:rwc > /dev/null
openhook run --audit /var/log/openhook/audit.jsonl --allow /srv/vm/:r --deny /srv/vm/private/ -- \\
  my-program-probe hook /srv/vm/disk.img hook /srv/vm/private/key > /dev/null
`;

/** `openhook` for the examples: this checkout's CLI; serve in the background once it serves. */
function openhookShim(): string {
  return `#!/bin/bash
if [ "\${1-}" = serve ]; then
  if [ -e /tmp/.docs-serve.pid ]; then
    kill "$(cat /tmp/.docs-serve.pid)" 2>/dev/null || true
    for _ in $(seq 200); do grep -q stopped /tmp/.docs-serve.log && break; sleep 0.05; done
  fi
  '${process.execPath}' '${CLI}' "$@" > /tmp/.docs-serve.log 2>&1 &
  echo $! > /tmp/.docs-serve.pid
  for _ in $(seq 400); do
    if grep -q serving /tmp/.docs-serve.log; then cat /tmp/.docs-serve.log; exit 0; fi
    kill -0 $! 2>/dev/null || break
    sleep 0.05
  done
  cat /tmp/.docs-serve.log >&2
  exit 1
fi
exec '${process.execPath}' '${CLI}' "$@"
`;
}

/** The bash script that runs a document's examples in order; outputs go to out/N. */
function script(list: Example[], dir: string): string {
  const steps: string[] = [];
  list.forEach((ex, n) => {
    const block = join(dir, `block-${n}`);
    const out = join(dir, 'out', String(n));
    const where = `${ex.file}:${ex.line}`;
    const fail = `{ echo "### the example at ${where} failed:"; cat '${out}'; exit 1; }`;
    if (ex.lang === 'toml') {
      const target = ex.name ?? `.example-${n}.toml`;
      writeFileSync(block, ex.text);
      steps.push(`cp '${block}' '${target}'`, `openhook check --policy '${target}' / r > '${out}' 2>&1 || [ $? -eq 1 ] || ${fail}`);
    } else if (ex.lang === 'ts' || ex.lang === 'js') {
      writeFileSync(`${block}.mts`, ex.text);
      steps.push(`'${process.execPath}' --import '${import.meta.resolve('tsx')}' '${block}.mts' > '${out}' 2>&1 || ${fail}`);
    } else if (ex.lang === 'console') {
      const commands = ex.text
        .split('\n')
        .filter((l) => l.startsWith('$ '))
        .map((l) => l.slice(2));
      commands.forEach((cmd, k) => {
        writeFileSync(`${block}.${k}`, cmd + '\n');
        steps.push(`bash '${block}.${k}' > '${out}.${k}' 2>&1 || true`);
      });
    } else {
      writeFileSync(block, ex.text);
      steps.push(`bash -euo pipefail '${block}' > '${out}' 2>&1 || ${fail}`);
    }
  });
  return steps.join('\n');
}

/** Whether want's lines appear in got's, in order; a `...` line skips any number. */
function transcriptMatches(want: string[], got: string[]): boolean {
  let at = 0;
  for (const line of want) {
    if (line.trim() === '...') continue;
    while (at < got.length && got[at]!.trimEnd() !== line.trimEnd()) at++;
    if (at === got.length) return false;
    at++;
  }
  return true;
}

/** The expected output under each `$ CMD` of a console block. */
function transcript(ex: Example): string[][] {
  const parts: string[][] = [];
  for (const line of ex.text.trimEnd().split('\n')) {
    if (line.startsWith('$ ')) parts.push([]);
    else parts[parts.length - 1]?.push(line);
  }
  return parts;
}

const asRoot = process.getuid!() === 0;
const unshare = spawnSync('unshare', [...(asRoot ? [] : ['-U', '-r']), '-m', '--propagation', 'private', 'true']);
const noNamespace =
  unshare.status !== 0 && `unshare cannot make a mount namespace here: ${(unshare.stderr ?? '').toString().trim() || unshare.error}`;

const work = (() => {
  mkdirSync(join(ROOT, 'build'), { recursive: true });
  return mkdtempSync(join(ROOT, 'build', 'docs-examples-'));
})();
// OPENHOOK_KEEP_DOCS=1 keeps each document's scripts and outputs (build/docs-examples-*/) to look at.
after(() => process.env.OPENHOOK_KEEP_DOCS || rmSync(work, { recursive: true, force: true }));

/** Runs a document's marked examples in a fresh namespace; returns the run and the output dir. */
function runDocument(file: string, list: Example[]): { status: number | null; output: string; dir: string } {
  const dir = join(work, file.replace(/\W/g, '_'));
  mkdirSync(join(dir, 'out'), { recursive: true });
  mkdirSync(join(dir, 'bin'));
  writeFileSync(join(dir, 'bin', 'openhook'), openhookShim(), { mode: 0o755 });
  writeFileSync(
    join(dir, 'bin', 'npx'),
    '#!/bin/sh\n[ "$1" = openhook ] || { echo "npx: only openhook here" >&2; exit 127; }\nshift\nexec openhook "$@"\n',
    { mode: 0o755 },
  );
  copyFileSync(fixture('confined-probe'), join(dir, 'bin', 'my-program-probe'));
  copyFileSync(join(ROOT, 'build', 'Release', 'openhook-exec'), join(dir, 'bin', 'openhook-exec'));
  writeFileSync(join(dir, 'bin', 'my-program'), '#!/bin/sh\nexec my-program-probe hook /srv/vm/disk.img\n', { mode: 0o755 });
  writeFileSync(join(dir, 'run.sh'), script(list, dir));
  // /usr/local/games: under /usr, so that a confined program may run what is there.
  const init = `
set -euo pipefail
# The checkout may itself lie beneath one of the tmpfs below (a clone in /tmp): hold it by an fd and
# bind it back at its own path, so that the tests never depend on where the checkout lives (mount
# must not canonicalize /proc/self/fd/9 to the path, which the tmpfs hides by then).
exec 9< '${ROOT}'
for d in /srv /home /tmp /run /var/log /usr/local/games; do mount -t tmpfs -o mode=0755 docs "$d"; done
case '${ROOT}/' in
  /srv/*|/home/*|/tmp/*|/run/*|/var/log/*|/usr/local/games/*) mkdir -p '${ROOT}' && mount --no-canonicalize --bind /proc/self/fd/9 '${ROOT}' ;;
esac
exec 9<&-
chmod 1777 /tmp
cp -a '${join(dir, 'bin')}'/. /usr/local/games/
export PATH=/usr/local/games:$PATH
mkdir /tmp/work && cd /tmp/work
${SETUP}
bash '${join(dir, 'run.sh')}'
`;
  const args = [...(asRoot ? [] : ['-U', '-r']), '-m', '--propagation', 'private', '--fork', '--pid', '--mount-proc', 'bash', '-c', init];
  const r = spawnSync('unshare', args, { encoding: 'utf8', timeout: 240_000, cwd: dir });
  return { status: r.status, output: `${r.stdout}${r.stderr}${r.error ? String(r.error) : ''}`, dir };
}

describe('docs examples', () => {
  it('every example is marked test or no-test: WHY', () => {
    const unmarked = all.filter((ex) => EXAMPLE_LANGS.has(ex.lang) && ex.mark === null);
    assert.deepEqual(
      unmarked.map((ex) => `${ex.file}:${ex.line}: \`\`\`${ex.lang}`),
      [],
      'mark each: ```LANG test (it runs here; see test/docs-examples.test.ts) or ```LANG no-test: WHY',
    );
    for (const ex of all)
      if (ex.mark === 'test') assert.ok(EXAMPLE_LANGS.has(ex.lang), `${ex.file}:${ex.line}: cannot run a \`\`\`${ex.lang} block`);
    for (const name of Object.keys(EXPECT))
      assert.ok(
        all.some((ex) => ex.name === name),
        `no example is marked test=${name}`,
      );
  });

  it('the extractor reads marks, names and reasons', () => {
    const got = examples(
      'x.md',
      '```sh test=a\necho 1\n```\n\n```toml no-test: a fragment\nx = 1\n```\n```ts\nf()\n```\n```\nout\n```\n- item\n\n  ```console test\n  $ true\n  ```\n',
    );
    assert.deepEqual(
      got.map((e) => [e.line, e.lang, e.mark, e.name, e.why, e.text]),
      [
        [1, 'sh', 'test', 'a', undefined, 'echo 1\n'],
        [5, 'toml', 'no-test', undefined, 'a fragment', 'x = 1\n'],
        [8, 'ts', null, undefined, undefined, 'f()\n'],
        [11, '', null, undefined, undefined, 'out\n'],
        [16, 'console', 'test', undefined, undefined, '$ true\n'],
      ],
    );
  });

  for (const file of DOCS) {
    const list = all.filter((ex) => ex.file === file && ex.mark === 'test');
    if (list.length === 0) continue;
    it(`${file}: its ${list.length} marked examples run as written`, { skip: noNamespace }, () => {
      const { status, output, dir } = runDocument(file, list);
      assert.equal(status, 0, output);
      list.forEach((ex, n) => {
        if (ex.lang === 'console') {
          transcript(ex).forEach((want, k) => {
            const got = readFileSync(join(dir, 'out', `${n}.${k}`), 'utf8');
            assert.ok(
              transcriptMatches(want, got.split('\n')),
              `${ex.file}:${ex.line}: command ${k + 1} printed:\n${got}\nwhich lacks, in order:\n${want.join('\n')}`,
            );
          });
        }
        const check = ex.name !== undefined ? EXPECT[ex.name] : undefined;
        if (check) check(readFileSync(join(dir, 'out', String(n)), 'utf8'));
      });
    });
  }
});
