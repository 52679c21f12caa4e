/**
 * Byte strings: JS strings in which every char is one byte (latin1). Paths travel as byte strings from
 * the wire to the policy and to the openat2 call, so that a name which is not UTF-8 is compared and
 * opened as its exact bytes and is never decoded lossily into another name. V8 stores such strings
 * one byte per char, so they cost no more than Buffers and work as Map keys.
 */
export type ByteString = string;

/** The byte string of user text (a CLI argument, a TOML value), which is UTF-8. */
export function fromText(text: string): ByteString {
  return Buffer.from(text, 'utf8').toString('latin1');
}

export function fromBytes(buf: Buffer, start = 0, end = buf.length): ByteString {
  return buf.toString('latin1', start, end);
}

export function toBytes(s: ByteString): Buffer {
  return Buffer.from(s, 'latin1');
}

/** Text for people (logs, messages): UTF-8 where valid, and \xNN escapes for every other byte. */
export function display(s: ByteString): string {
  const bytes = Buffer.from(s, 'latin1');
  const text = bytes.toString('utf8');
  if (!text.includes('\ufffd') || Buffer.from(text, 'utf8').equals(bytes)) return text;
  let out = '';
  for (let i = 0; i < bytes.length;) {
    const n = utf8SequenceLength(bytes, i);
    if (n > 0) {
      out += bytes.toString('utf8', i, i + n);
      i += n;
    } else {
      out += `\\x${bytes[i]!.toString(16).padStart(2, '0')}`;
      i++;
    }
  }
  return out;
}

function utf8SequenceLength(b: Buffer, i: number): number {
  const c = b[i]!;
  const n = c < 0x80 ? 1 : c >= 0xc2 && c < 0xe0 ? 2 : c >= 0xe0 && c < 0xf0 ? 3 : c >= 0xf0 && c < 0xf5 ? 4 : 0;
  if (n === 0 || i + n > b.length) return 0;
  for (let k = 1; k < n; k++) if ((b[i + k]! & 0xc0) !== 0x80) return 0;
  return Buffer.from(b.toString('utf8', i, i + n), 'utf8').equals(b.subarray(i, i + n)) ? n : 0;
}
