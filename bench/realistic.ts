/**
 * The policy the broker benchmarks run under: what a VM host might write, not a single --allow. A few
 * dozen rules: trees per guest, deny carve-outs, globs, and client sections tried in order before the
 * one that applies to the benchmark's client (root, as ref-client runs here).
 *
 * The request every case sends, DIR/data/disk.img, is decided by a partial glob (`data/*.img`) that
 * beats the tree above it, with a `**` deny and a carve-out beside it: the trie walks literal, glob
 * and wide edges on the way, and the client's section is found after three that do not match.
 */
export function realisticPolicy(dir: string): string {
  const guests = Array.from({ length: 8 }, (_, i) => `guest${i}`);
  let s = `# openhook bench: a realistic policy (bench/realistic.ts)\nunmatched = "default"\n\n`;
  // The default section: per-guest trees with carve-outs, shared read-only images, keys denied.
  s += `[[rule]]\nallow = "${dir}/images/"\naccess = "r"\n\n`;
  s += `[[rule]]\ndeny = "${dir}/images/staging/"\n\n`;
  for (const g of guests) {
    s += `[[rule]]\nallow = "${dir}/vm/${g}/"\naccess = "rwc"\n\n`;
    s += `[[rule]]\ndeny = "${dir}/vm/${g}/private/"\ndeny_errno = "ENOENT"\n\n`;
  }
  s += `[[rule]]\ndeny = "${dir}/**/*.key"\n\n`;
  s += `[[rule]]\ndeny = "${dir}/**/*.pem"\n\n`;
  s += `[[rule]]\nallow = "${dir}/iso/*.iso"\naccess = "r"\n\n`;
  // Sections tried first, which the benchmark's client does not match.
  s += `[[client]]\nname = "qemu"\nuid = 107\n`;
  for (const g of guests.slice(0, 4)) s += `[[client.rule]]\nallow = "${dir}/vm/${g}/"\naccess = "rw"\n`;
  s += `[[client.rule]]\ndeny = "${dir}/vm/*/private/"\n\n`;
  s += `[[client]]\nname = "vm1"\nsession = "vm1"\n[[client.rule]]\nallow = "${dir}/vm/guest1/"\naccess = "rwc"\n\n`;
  s += `[[client]]\nname = "builders"\ngid = [2000, 2001]\ninclude_default = true\n[[client.rule]]\nallow = "${dir}/builds/"\naccess = "rwc"\n\n`;
  // The benchmark's client: root, with the default rules below its own.
  s += `[[client]]\nname = "operators"\nuid = 0\ninclude_default = true\n`;
  s += `[[client.rule]]\nallow = "${dir}/data/"\naccess = "rw"\n`;
  s += `[[client.rule]]\nallow = "${dir}/data/*.img"\naccess = "r"\n`;
  s += `[[client.rule]]\ndeny = "${dir}/data/private/"\n`;
  s += `[[client.rule]]\ndeny = "${dir}/data/**/*.tmp"\n`;
  s += `[[client.rule]]\nallow = "${dir}/logs/"\naccess = "rwc"\n`;
  return s;
}
