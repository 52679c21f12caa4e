/** The audit options shared by serve and run: --audit FILE|-, --audit-format, --audit-failure. */
import { Option, type Command } from './commander.js';
import type { AuditFailure, AuditFormat, AuditLog } from '../broker/audit-log.js';

export interface AuditFlags {
  audit?: string;
  auditFormat: AuditFormat;
  auditFailure: AuditFailure;
}

export function addAuditOptions(cmd: Command): Command {
  return cmd
    .option('--audit <FILE|->', 'write one audit line per decision to FILE (appended), or - for stderr')
    .addOption(
      new Option('--audit-format <FORMAT>', 'audit lines as JSON, or pretty for a terminal').choices(['json', 'pretty']).default('json'),
    )
    .addOption(
      new Option('--audit-failure <MODE>', 'when the audit log cannot be written: closed refuses requests with EIO, open serves on')
        .choices(['closed', 'open'])
        .default('closed'),
    );
}

/**
 * The audit log the flags ask for, or null. Throws if the file cannot be opened. The writer is
 * loaded only when asked for: `openhook run` without --audit starts without it.
 */
export async function auditFromOptions(opts: AuditFlags, warn: (message: string) => void): Promise<AuditLog | null> {
  if (opts.audit === undefined) return null;
  const { AuditLog } = await import('../broker/audit-log.js');
  return new AuditLog({ target: opts.audit, format: opts.auditFormat, failure: opts.auditFailure, warn });
}
