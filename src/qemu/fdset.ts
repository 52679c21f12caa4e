/**
 * Fd-set mode: for orchestrators that start QEMU themselves and give it images over QMP, the way
 * QEMU merged instead of the open hook. The policy still decides: every image is opened through an
 * ImageOpener (the broker's request path, or a broker over its socket), then pushed to QEMU with
 * add-fd, and used by QEMU as /dev/fdset/N.
 *
 * What this module takes care of, because QEMU does not (docs/qemu.md, "Pitfalls"):
 * - QEMU picks an fd from a set by access mode, and reopens images read-only or read-write as their
 *   use changes; a read-write image is pushed as a pair (O_RDONLY and O_RDWR) so both reopens work.
 * - QEMU writes the name it knows an image by into the headers it creates, which for a pushed image
 *   is "/dev/fdset/N". Overlays are therefore formatted with blockdev-create naming the real backing
 *   path, and commits that rewrite a header are given the real path as backing-file.
 * - A format node opened without `backing: null` opens the backing file named in its header by
 *   itself, outside the policy. Every format node added here gets `backing: null`, or the node the
 *   caller names.
 */
import { C, native } from '../native.js';
import { runJob } from './jobs.js';
import type { ImageOpener } from './opener.js';
import type { QmpClient } from './qmp.js';

export type ImageAccess = 'r' | 'rw';

export interface PushedFd {
  /** QEMU's number for its copy */
  fd: number;
  access: ImageAccess;
}

export interface FdSet {
  id: number;
  /** what QEMU opens: "/dev/fdset/N" */
  path: string;
  /** the file the fds are open on, as the policy decided on it */
  realPath: string;
  fds: PushedFd[];
}

export interface PushOptions {
  /** 'r' pushes one O_RDONLY fd; 'rw' (default) pushes O_RDWR and, unless pair is false, O_RDONLY too */
  access?: ImageAccess;
  /** for 'rw': also push a read-only fd, for QEMU's read-only reopens; default true */
  pair?: boolean;
  /** create the file (O_CREAT|O_EXCL) with this mode: the broker creates it; it must not exist */
  create?: number;
  /** add to this fd set instead of a new one */
  fdsetId?: number;
}

export interface AddImageOptions {
  /** the format node's name */
  nodeName: string;
  /** format driver; default 'qcow2' */
  format?: string;
  /** default 'rw' */
  access?: ImageAccess;
  /** default `${nodeName}-file` */
  fileNodeName?: string;
  /** for formats with backing files: the node (already added) to use as backing; default null, meaning none */
  backing?: string | null;
  /** more options for the format node (cache, discard, ...) */
  options?: Record<string, unknown>;
  /** more options for the file node (aio, locking, ...) */
  fileOptions?: Record<string, unknown>;
  /** for an existing fd set (from push) instead of opening path */
  fdset?: FdSet;
}

export interface ImageNode {
  nodeName: string;
  fileNodeName: string;
  format: string;
  realPath: string;
  access: ImageAccess;
  fdset: FdSet;
}

export interface SnapshotOptions {
  /** the overlay's format node name */
  nodeName: string;
  /** default `${nodeName}-file` */
  fileNodeName?: string;
  /** mode of the new overlay file; default 0o600 */
  mode?: number;
  /** the backing path written into the overlay's header; default: the base's real path */
  backingFile?: string;
  /** ms for the blockdev-create job; default 30 000 */
  timeout?: number;
  /** more options for the overlay's file node (aio, locking, ...) */
  fileOptions?: Record<string, unknown>;
}

export interface CommitOptions {
  /** default `commit-${top}` */
  jobId?: string;
  /** the root node of the chain; default: top (an active commit) */
  device?: string;
  /** ms for the job; default 60 000 */
  timeout?: number;
}

/** Formats whose nodes have a `backing` option. */
const BACKING_FORMATS = new Set(['qcow2', 'qed', 'vmdk']);

interface NodeInfo {
  'node-name': string;
  drv: string;
  file: string;
  image: { 'virtual-size': number };
}

export class FdSetImages {
  readonly qmp: QmpClient;
  readonly opener: ImageOpener;
  /** the images added through this helper, by format node name */
  readonly nodes = new Map<string, ImageNode>();

  constructor(qmp: QmpClient, opener: ImageOpener) {
    this.qmp = qmp;
    this.opener = opener;
  }

  /**
   * Opens path through the opener (the policy decides) and pushes the fds into an fd set. Nothing
   * is pushed unless every open is allowed. Our copies of the fds are closed once QEMU has its own.
   */
  async push(path: string, options: PushOptions = {}): Promise<FdSet> {
    const access = options.access ?? 'rw';
    const wanted: Array<{ flags: number; access: ImageAccess }> = [];
    // The read-write fd first: with `create`, it is the open that creates the file.
    if (access === 'rw') wanted.push({ flags: C.O_RDWR | (options.create !== undefined ? C.O_CREAT | C.O_EXCL : 0), access: 'rw' });
    if (access === 'r' || options.pair !== false) wanted.push({ flags: C.O_RDONLY, access: 'r' });
    if (access === 'r' && options.create !== undefined) throw new TypeError('push: create needs access rw');

    const opened: Array<{ fd: number; access: ImageAccess }> = [];
    try {
      for (const w of wanted) opened.push({ fd: await this.opener.open(path, w.flags, options.create ?? 0o600), access: w.access });
    } catch (err) {
      for (const o of opened) native.close(o.fd);
      throw err;
    }

    let id = options.fdsetId;
    const fds: PushedFd[] = [];
    try {
      for (const o of opened) {
        const args: Record<string, unknown> = { opaque: `openhook ${o.access} ${path}` };
        if (id !== undefined) args['fdset-id'] = id;
        const r = await this.qmp.execute<{ 'fdset-id': number; fd: number }>('add-fd', args, { fds: [o.fd] });
        id = r['fdset-id'];
        fds.push({ fd: r.fd, access: o.access });
      }
    } catch (err) {
      if (id !== undefined) for (const f of fds) await this.qmp.execute('remove-fd', { 'fdset-id': id, fd: f.fd }).catch(() => {});
      throw err;
    } finally {
      for (const o of opened) native.close(o.fd);
    }
    return { id: id!, path: `/dev/fdset/${id}`, realPath: path, fds };
  }

  /**
   * Adds an image as a file node on /dev/fdset/N and a format node on top: push, then two
   * blockdev-add. The format node never opens a backing file by itself (see `backing`).
   */
  async addImage(path: string, options: AddImageOptions): Promise<ImageNode> {
    const access = options.access ?? 'rw';
    const format = options.format ?? 'qcow2';
    const fileNodeName = options.fileNodeName ?? `${options.nodeName}-file`;
    const fdset = options.fdset ?? (await this.push(path, { access }));
    const added: string[] = [];
    try {
      await this.qmp.execute('blockdev-add', {
        driver: 'file',
        'node-name': fileNodeName,
        filename: fdset.path,
        'read-only': access === 'r',
        ...options.fileOptions,
      });
      added.push(fileNodeName);
      const formatArgs: Record<string, unknown> = {
        driver: format,
        'node-name': options.nodeName,
        file: fileNodeName,
        'read-only': access === 'r',
        ...options.options,
      };
      if (BACKING_FORMATS.has(format)) formatArgs.backing = options.backing ?? null;
      await this.qmp.execute('blockdev-add', formatArgs);
    } catch (err) {
      await this.#undo(added, options.fdset ? null : fdset);
      throw err;
    }
    const node: ImageNode = { nodeName: options.nodeName, fileNodeName, format, realPath: path, access, fdset };
    this.nodes.set(node.nodeName, node);
    return node;
  }

  /**
   * An external snapshot of `baseNode` (the node a device uses, or the top of its chain) into a new
   * qcow2 overlay at overlayPath:
   * 1. the opener creates the overlay file (the policy must allow creating it) and opens it twice;
   * 2. the fds go into a new fd set, and a file node is added on it;
   * 3. blockdev-create formats it, naming the base's real path as backing file, never /dev/fdset/N;
   * 4. a qcow2 node is added with `backing: null`, so QEMU opens no backing file by path;
   * 5. blockdev-snapshot puts it on top of baseNode, which becomes its backing.
   * After it, guest writes land in the overlay.
   */
  async snapshot(baseNode: string, overlayPath: string, options: SnapshotOptions): Promise<ImageNode> {
    const info = await this.#nodeInfo(baseNode);
    const backingFile = options.backingFile ?? this.#realPath(baseNode, info);
    const fileNodeName = options.fileNodeName ?? `${options.nodeName}-file`;
    const fdset = await this.push(overlayPath, { access: 'rw', create: options.mode ?? 0o600 });
    const added: string[] = [];
    try {
      await this.qmp.execute('blockdev-add', { driver: 'file', 'node-name': fileNodeName, filename: fdset.path, ...options.fileOptions });
      added.push(fileNodeName);
      await runJob(
        this.qmp,
        'blockdev-create',
        {
          'job-id': `create-${options.nodeName}`,
          options: {
            driver: 'qcow2',
            file: fileNodeName,
            size: info.image['virtual-size'],
            'backing-file': backingFile,
            'backing-fmt': info.drv,
          },
        },
        { timeout: options.timeout ?? 30_000 },
      );
      await this.qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': options.nodeName, file: fileNodeName, backing: null });
      added.push(options.nodeName);
      await this.qmp.execute('blockdev-snapshot', { node: baseNode, overlay: options.nodeName });
    } catch (err) {
      // The file the broker created stays: the opener can create, not remove. Say where it is.
      await this.#undo(added.reverse(), fdset);
      throw Object.assign(err as Error, { overlayPath });
    }
    const node: ImageNode = { nodeName: options.nodeName, fileNodeName, format: 'qcow2', realPath: overlayPath, access: 'rw', fdset };
    this.nodes.set(node.nodeName, node);
    return node;
  }

  /**
   * Commits `top` into `base` (block-commit), waiting for the job and completing it. Committing the
   * active layer pivots the device to base. Committing an intermediate layer rewrites the header of
   * the layer above it: its backing file is then set to base's real path, not /dev/fdset/N.
   */
  async commit(top: string, base: string, options: CommitOptions = {}): Promise<void> {
    const device = options.device ?? top;
    const args: Record<string, unknown> & { 'job-id': string } = {
      'job-id': options.jobId ?? `commit-${top}`,
      device,
      'top-node': top,
      'base-node': base,
      'auto-dismiss': false,
    };
    if (device !== top) args['backing-file'] = this.#realPath(base, await this.#nodeInfo(base));
    await runJob(this.qmp, 'block-commit', args, { complete: device === top, timeout: options.timeout ?? 60_000 });
  }

  /** Removes a format node added here, its file node and its fd set (QEMU closes the fds once unused). */
  async release(nodeName: string): Promise<void> {
    const node = this.nodes.get(nodeName);
    if (!node) throw new TypeError(`release: ${nodeName} was not added through this helper`);
    await this.qmp.execute('blockdev-del', { 'node-name': node.nodeName });
    await this.qmp.execute('blockdev-del', { 'node-name': node.fileNodeName });
    await this.qmp.execute('remove-fd', { 'fdset-id': node.fdset.id });
    this.nodes.delete(nodeName);
  }

  /** The path to write into headers for a node: the real path of an image added here, or the filename QEMU opened itself. */
  #realPath(nodeName: string, info: NodeInfo): string {
    const known = this.nodes.get(nodeName);
    if (known) return known.realPath;
    if (info.file.startsWith('/dev/fdset/') || info.file.startsWith('json:') || !info.file.startsWith('/')) {
      throw new TypeError(`node ${nodeName} is ${info.file}, whose real path is unknown here: give backingFile, or add it with addImage()`);
    }
    return info.file;
  }

  async #nodeInfo(nodeName: string): Promise<NodeInfo> {
    const nodes = await this.qmp.execute<NodeInfo[]>('query-named-block-nodes', { flat: true });
    const info = nodes.find((n) => n['node-name'] === nodeName);
    if (!info) throw new TypeError(`no block node named ${nodeName}`);
    return info;
  }

  async #undo(nodes: string[], fdset: FdSet | null): Promise<void> {
    for (const n of nodes) await this.qmp.execute('blockdev-del', { 'node-name': n }).catch(() => {});
    if (fdset) await this.qmp.execute('remove-fd', { 'fdset-id': fdset.id }).catch(() => {});
  }
}
