/**
 * The daemon's own messages (not the audit log): one line each on stderr. Under journald (stderr is
 * the stream named by JOURNAL_STREAM) each line starts with its syslog priority, `<4>`, which journald
 * strips and records as PRIORITY=, so `journalctl -p warning` and `-o json` see real levels.
 * Elsewhere each line starts with "openhook: ".
 */
import { fstatSync } from 'node:fs';

export interface Log {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

const PRIORITY = { error: 3, warn: 4, info: 6 } as const;

export function daemonLog(stream: NodeJS.WriteStream = process.stderr, fd = 2): Log {
  const journal = underJournald(fd);
  const line =
    (level: keyof typeof PRIORITY) =>
    (message: string): void => {
      const text = message.replace(/\n/g, '\n  ');
      stream.write(journal ? `<${PRIORITY[level]}>${text}\n` : `openhook: ${text}\n`);
    };
  return { info: line('info'), warn: line('warn'), error: line('error') };
}

/** Whether fd is the journal stream systemd connected it to (JOURNAL_STREAM=DEV:INODE). */
export function underJournald(fd: number, env: NodeJS.ProcessEnv = process.env): boolean {
  const m = /^(\d+):(\d+)$/.exec(env.JOURNAL_STREAM ?? '');
  if (!m) return false;
  try {
    const st = fstatSync(fd, { bigint: true });
    return st.dev === BigInt(m[1]!) && st.ino === BigInt(m[2]!);
  } catch {
    return false;
  }
}
