/* openhook native addon: the syscalls Node lacks, and nothing else.
 *
 * No policy lives here. Calls on the request path return a result or -errno, because building and
 * throwing an Error costs microseconds; set-up calls throw Node-style errors (code, errno, syscall),
 * which src/native.ts builds (see throw_errno in napi.c). src/native.ts gives every function a typed
 * signature.
 *
 * The addon is made of parts, one concern each: napi.c (helpers shared by all, napi.h), sockets.c,
 * replies.c (the reply batch), poller.c (the poller, the receive arena, busy polling), files.c
 * (opens and lookups beneath a directory fd), pool.c (slow opens on threads), notify.c (seccomp
 * user notification, for the syscall hook) and fileops.c (the other file operations: mkdir,
 * unlink, rename, link, symlink, chmod, ...). Each part has one register function that defines its
 * functions, classes and constants on the exports; init() below calls them in order.
 *
 * To add a part, say native/notify.c:
 *   1. write `napi_status notify_register(napi_env env, napi_value exports)` in it, defining its
 *      exports with export_functions() / export_class() / EXPORT_CONSTANT() from napi.h;
 *   2. declare it in native/parts.h (one line);
 *   3. add one line `notify_register,` to the parts[] table below;
 *   4. add "native/notify.c" to the sources of the `openhook` target in binding.gyp;
 *   5. give its functions typed signatures in src/native.ts (NativeBinding).
 * A part that needs another's C functions includes that part's header (files.h, sockets.h), never
 * its .c file. Names must not clash across parts: keep everything not in a header `static`.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <uv.h>

#include "napi.h"
#include "parts.h"

static napi_status (*const parts[])(napi_env, napi_value) = {
  helpers_register,
  sockets_register,
  replies_register,
  poller_register,
  files_register,
  pool_register,
  fileops_register,
  notify_register,
};

static napi_value init(napi_env env, napi_value exports) {
  /* The receive arena, the reply batch and the busy poll are one per process and serve the main
   * thread's loop: a worker thread that loaded the addon would take them from the broker. Only the
   * main thread runs the default loop; this check costs nothing, where node:worker_threads' own
   * isMainThread costs a few milliseconds of start-up to load. */
  uv_loop_t *loop = NULL;
  napi_get_uv_event_loop(env, &loop);
  if (loop != uv_default_loop()) {
    napi_throw_error(env, "ERR_OPENHOOK_THREAD", "the openhook addon must not be loaded in a worker thread: it serves the main thread only");
    return NULL;
  }
  for (size_t i = 0; i < COUNT(parts); i++)
    if (parts[i](env, exports) != napi_ok) return throw_last(env);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
