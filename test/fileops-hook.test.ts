/**
 * The trapped file operations' corners, through `openhook run`: O_TMPFILE then a name for it (by
 * linkat AT_EMPTY_PATH, which the broker does with pidfd_getfd, and by /proc/self/fd with
 * AT_SYMLINK_FOLLOW), mknod of anything but a FIFO, access(2) answered by the policy in the tree and
 * by the kernel beneath the system grants (W_OK there: EACCES), futimens left to the kernel, and the
 * program's umask applied to what it makes.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { CLI } from './helpers.js';

const dir = realpathSync(mkdtempSync(join(tmpdir(), 'openhook-hookops-')));
after(() => {
  rmSync(dir, { recursive: true, force: true });
  rmSync(`${dir}.toml`, { force: true });
});

function python(access: string, code: string): { status: number | null; stdout: string; stderr: string } {
  const policy = join(dir, '..', `${dir.split('/').pop()}.toml`);
  writeFileSync(policy, `[[rule]]\nallow = "${dir}/"\naccess = "${access}"\nfifos = true\n`);
  const r = spawnSync(process.execPath, [CLI, 'run', '--policy', policy, '--', '/usr/bin/python3', '-c', code], {
    cwd: dir,
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const PRELUDE = `
import ctypes, os, errno
libc = ctypes.CDLL(None, use_errno=True)
def err(r):
    return 'ok' if r == 0 else errno.errorcode[ctypes.get_errno()]
`;

describe(
  'trapped file operations, corners',
  { skip: !existsSync('/usr/bin/python3') && 'needs /usr/bin/python3', timeout: 120_000 },
  () => {
    it('O_TMPFILE, then linkat(fd, "", AT_EMPTY_PATH) and linkat("/proc/self/fd/N", AT_SYMLINK_FOLLOW) name it', () => {
      const r = python(
        'all',
        `${PRELUDE}
fd = os.open('.', os.O_TMPFILE | os.O_WRONLY, 0o640)
os.write(fd, b'by fd')
print(err(libc.linkat(fd, b'', -100, b'named-by-fd', 0x1000)))
fd2 = os.open('.', os.O_TMPFILE | os.O_RDWR, 0o600)
os.write(fd2, b'by proc')
print(err(libc.linkat(-100, f'/proc/self/fd/{fd2}'.encode(), -100, b'named-by-proc', 0x400)))
`,
      );
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout, 'ok\nok\n');
      assert.equal(readFileSync(join(dir, 'named-by-fd'), 'utf8'), 'by fd');
      assert.equal(statSync(join(dir, 'named-by-fd')).mode & 0o777, 0o640);
      assert.equal(readFileSync(join(dir, 'named-by-proc'), 'utf8'), 'by proc');
    });

    it('a named file cannot be linked by fd into the tree, and O_TMPFILE needs c', () => {
      writeFileSync(join(dir, 'named'), 'x');
      const r = python(
        'all',
        `${PRELUDE}
fd = os.open('named', os.O_RDONLY)
print(err(libc.linkat(fd, b'', -100, b'again', 0x1000)))
`,
      );
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout, 'EACCES\n');
      assert.ok(!existsSync(join(dir, 'again')));
      const ro = python(
        'r',
        `import os
try:
    os.open('.', os.O_TMPFILE | os.O_WRONLY, 0o600); print('made')
except OSError as e: print(e.strerror)
`,
      );
      assert.equal(ro.stdout, 'Permission denied\n', ro.stderr);
    });

    it('mknod: FIFOs where the rule allows them; anything else EPERM', () => {
      const r = python(
        'all',
        `import os, stat
try:
    os.mknod('reg', stat.S_IFREG | 0o600); print('made')
except OSError as e: print(e.strerror)
try:
    os.mknod('chr', stat.S_IFCHR | 0o600, os.makedev(1, 3)); print('made')
except OSError as e: print(e.strerror)
`,
      );
      assert.equal(r.stdout, 'Operation not permitted\nOperation not permitted\n', r.stderr);
      assert.ok(!existsSync(join(dir, 'reg')) && !existsSync(join(dir, 'chr')));
    });

    it('access(2): the policy in the tree (test -w tells the truth), the kernel beneath the grants, W_OK there EACCES', () => {
      writeFileSync(join(dir, 'f'), 'x');
      const code = `import os
for p, m in (('f', os.W_OK), ('f', os.R_OK), ('/usr/bin/env', os.X_OK), ('/usr/bin/env', os.R_OK), ('/usr/bin', os.W_OK), ('/usr/nonexistent', os.F_OK)):
    print(p, m, os.access(p, m))
`;
      const ro = python('r', code);
      assert.equal(ro.status, 0, ro.stderr);
      assert.equal(
        ro.stdout,
        'f 2 False\nf 4 True\n/usr/bin/env 1 True\n/usr/bin/env 4 True\n/usr/bin 2 False\n/usr/nonexistent 0 False\n',
      );
      const rw = python('all', code);
      assert.match(rw.stdout, /^f 2 True\n/);
    });

    it('futimens (utimensat with no path) is left to the kernel; chmod by path is decided, not refused by the deny filter', () => {
      writeFileSync(join(dir, 't'), 'x');
      const r = python(
        'all',
        `import os
fd = os.open('t', os.O_WRONLY)
os.utime(fd, (1000000000, 1000000000))
os.chmod('t', 0o600)
print(os.stat('t').st_mtime)
`,
      );
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout, '1000000000.0\n');
      assert.equal(statSync(join(dir, 't')).mode & 0o777, 0o600);
    });

    it('unlink("name/") removes nothing: EISDIR for a directory, ENOTDIR for a file, as unconfined', () => {
      const code = `import os
os.makedirs('slash-dir', exist_ok=True)
open('slash-file', 'w').close()
for p in ('slash-dir/', 'slash-file/', 'slash-none/'):
    try:
        os.unlink(p); print('removed')
    except OSError as e: print(e.strerror)
`;
      const r = python('all', code);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout, 'Is a directory\nNot a directory\nNo such file or directory\n');
      assert.ok(existsSync(join(dir, 'slash-file')) && existsSync(join(dir, 'slash-dir')));
      const free = spawnSync('/usr/bin/python3', ['-c', code], { cwd: dir, encoding: 'utf8' });
      assert.equal(free.stdout, r.stdout, 'as unconfined');
    });

    it("the program's umask decides the mode of what it makes", () => {
      const r = python(
        'all',
        `import os
os.umask(0o077)
os.mkdir('um-dir', 0o777)
os.mkfifo('um-fifo', 0o666)
`,
      );
      assert.equal(r.status, 0, r.stderr);
      assert.equal(statSync(join(dir, 'um-dir')).mode & 0o777, 0o700);
      assert.equal(statSync(join(dir, 'um-fifo')).mode & 0o777, 0o600);
    });
  },
);
