// The package's install step: builds the native addon, the launch helper and the interposer with
// node-gyp, quietly. node-gyp's output (about fifty lines of `gyp info`) is shown only if the build
// fails, or with `npm install --loglevel verbose`.
//
// - Node's headers: unless npm was told where they are (npm_config_nodedir, as the repository's
//   .npmrc does), the headers installed with the running node are used, so that an install from the
//   packed tarball in any directory builds offline too; only if there are none does node-gyp fetch them.
// - A tree that was built before is rebuilt incrementally (make knows what changed, and regenerates
//   its Makefile when binding.gyp changes); if that fails, from scratch.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

const nodeGyp = process.env.npm_config_node_gyp ? [process.execPath, process.env.npm_config_node_gyp] : ['node-gyp'];
const verbose = ['verbose', 'silly'].includes(process.env.npm_config_loglevel ?? '');

// node-gyp lets npm_config_* variables override its command line, so the headers go in by variable.
const env = { ...process.env };
const ownPrefix = dirname(dirname(process.execPath));
if (!env.npm_config_nodedir && existsSync(join(ownPrefix, 'include', 'node', 'node_api.h'))) env.npm_config_nodedir = ownPrefix;

function gyp(command) {
  const r = spawnSync(nodeGyp[0], [...nodeGyp.slice(1), command], {
    env,
    stdio: verbose ? 'inherit' : 'pipe',
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  return { ok: r.status === 0, output: `${r.error ? `${r.error.message}\n` : ''}${r.stdout ?? ''}${r.stderr ?? ''}` };
}

let r = existsSync(join('build', 'Makefile')) ? gyp('build') : { ok: false, output: '' };
if (!r.ok) r = gyp('rebuild');
if (!r.ok) {
  process.stderr.write(r.output);
  const headers = env.npm_config_nodedir ? `, with Node's headers from ${env.npm_config_nodedir}` : '';
  process.stderr.write(
    `\nopenhook: building the native code failed (${nodeGyp.join(' ')} rebuild${headers}).\n` +
      "It needs g++, make and python3 (Debian: apt-get install build-essential python3), and Node's headers.\n",
  );
  process.exit(1);
}
