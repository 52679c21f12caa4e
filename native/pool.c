/* Slow opens: a small pool of threads.
 *
 * An open that may block (a network or FUSE filesystem, a FIFO) runs here, off the event loop. Each
 * job is one of the resolver's steps (lookup, create, reopen); the resolver in TypeScript chains
 * them, so the logic stays there. Threads start on demand up to a maximum and block every signal, so
 * that Node's signal handling is undisturbed. Results come back through one uv_async_t, and each one
 * calls callback(id, result, statMode, statNlink). A job that finishes after close() has its fd
 * closed here. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>
#include <uv.h>

#include "files.h"
#include "napi.h"
#include "parts.h"

enum { JOB_LOOKUP = 1, JOB_CREATE = 2, JOB_REOPEN = 3, JOB_STATFS = 4, JOB_CLOSE = 5 };

typedef struct job {
  struct job *next;
  uint32_t id;
  int op, dirfd;
  uint32_t flags, mode, resolve;
  int result;
  double st_mode, st_nlink;
  char path[];
} job_t;

typedef struct {
  napi_env env;
  napi_ref callback_ref;
  napi_async_context async_ctx;
  uv_async_t async;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  job_t *queue, *queue_tail, *done, *done_tail;
  int threads, idle, max_threads, queued, max_queued;
  unsigned pending; /* submitted and not yet delivered; event loop thread only */
  bool closed, handle_closed, finalized; /* freed once no thread, no uv handle and no JS object needs it */
} pool_t;

static void pool_free(pool_t *p) {
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  free(p);
}

static bool job_makes_fd(const job_t *j) {
  return j->op == JOB_LOOKUP || j->op == JOB_CREATE || j->op == JOB_REOPEN;
}

static void job_run(job_t *j) {
  struct stat st;
  switch (j->op) {
    case JOB_LOOKUP:
      j->result = lookup_fd(j->dirfd, j->path, j->flags, j->resolve, &st);
      if (j->result >= 0) j->st_mode = st.st_mode, j->st_nlink = (double)st.st_nlink;
      break;
    case JOB_CREATE:
      j->result = create_fd(j->dirfd, j->path, j->flags, j->mode, j->resolve);
      break;
    case JOB_REOPEN:
      j->result = reopen_fd(j->dirfd, j->flags);
      break;
    case JOB_STATFS: { /* the magic number comes back as statMode (an unsigned value) */
      struct statfs sfs;
      int r;
      do r = fstatfs(j->dirfd, &sfs);
      while (r < 0 && errno == EINTR);
      j->result = r < 0 ? -errno : 0;
      if (r == 0) j->st_mode = (double)(uint32_t)sfs.f_type;
      break;
    }
    case JOB_CLOSE: /* close() may wait: FUSE sends FLUSH, NFS may write back */
      j->result = close(j->dirfd) < 0 ? -errno : 0;
      break;
    default:
      j->result = -EINVAL;
  }
}

static void *pool_thread(void *arg) {
  pool_t *p = arg;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->queue && !p->closed) {
      p->idle++;
      pthread_cond_wait(&p->cv, &p->mu);
      p->idle--;
    }
    if (p->closed) break;
    job_t *j = p->queue;
    p->queue = j->next;
    if (!p->queue) p->queue_tail = NULL;
    p->queued--;
    pthread_mutex_unlock(&p->mu);
    job_run(j);
    pthread_mutex_lock(&p->mu);
    if (p->closed) {
      if (j->result >= 0 && job_makes_fd(j)) close(j->result);
      free(j);
      break;
    }
    j->next = NULL;
    if (p->done_tail) p->done_tail->next = j;
    else p->done = j;
    p->done_tail = j;
    uv_async_send(&p->async); /* only while not closed: close() sets closed before uv_close */
  }
  bool last = --p->threads == 0 && p->handle_closed && p->finalized;
  pthread_mutex_unlock(&p->mu);
  if (last) pool_free(p);
  return NULL;
}

static void pool_deliver(uv_async_t *h) {
  pool_t *p = h->data;
  pthread_mutex_lock(&p->mu);
  job_t *j = p->done;
  p->done = p->done_tail = NULL;
  pthread_mutex_unlock(&p->mu);
  napi_env env = p->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb = NULL, recv, args[4], result;
  if (p->callback_ref) napi_get_reference_value(env, p->callback_ref, &cb);
  napi_get_global(env, &recv);
  while (j) {
    job_t *next = j->next;
    p->pending--;
    if (cb && !p->closed) {
      napi_create_uint32(env, j->id, &args[0]);
      napi_create_int32(env, j->result, &args[1]);
      napi_create_double(env, j->st_mode, &args[2]);
      napi_create_double(env, j->st_nlink, &args[3]);
      napi_status s = napi_make_callback(env, p->async_ctx, recv, cb, 4, args, &result);
      if (s == napi_pending_exception) {
        napi_value exc;
        napi_get_and_clear_last_exception(env, &exc);
        napi_fatal_exception(env, exc);
      }
    } else if (j->result >= 0 && job_makes_fd(j)) {
      close(j->result);
    }
    free(j);
    j = next;
  }
  if (p->pending == 0 && !p->closed) uv_unref((uv_handle_t *)&p->async);
  napi_close_handle_scope(env, scope);
}

static void pool_handle_closed(uv_handle_t *h) {
  pool_t *p = h->data;
  pthread_mutex_lock(&p->mu);
  p->handle_closed = true;
  bool last = p->threads == 0 && p->finalized;
  pthread_mutex_unlock(&p->mu);
  if (last) pool_free(p);
}

static void pool_close(napi_env env, pool_t *p) {
  if (p->closed) return;
  pthread_mutex_lock(&p->mu);
  p->closed = true;
  job_t *q = p->queue, *d = p->done;
  p->queue = p->queue_tail = p->done = p->done_tail = NULL;
  p->queued = 0;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  while (q) { job_t *n = q->next; if (q->op == JOB_CLOSE) close(q->dirfd); free(q); q = n; }
  while (d) { job_t *n = d->next; if (d->result >= 0 && job_makes_fd(d)) close(d->result); free(d); d = n; }
  napi_async_destroy(env, p->async_ctx);
  napi_delete_reference(env, p->callback_ref);
  p->callback_ref = NULL;
  uv_close((uv_handle_t *)&p->async, pool_handle_closed);
}

static void pool_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  pool_t *p = data;
  pool_close(env, p);
  pthread_mutex_lock(&p->mu);
  p->finalized = true;
  bool last = p->threads == 0 && p->handle_closed;
  pthread_mutex_unlock(&p->mu);
  if (last) pool_free(p);
}

static pool_t *unwrap_pool(napi_env env, napi_value self) {
  pool_t *p = NULL;
  napi_unwrap(env, self, (void **)&p);
  if (!p || p->closed) {
    napi_throw_error(env, "ERR_POOL_CLOSED", "pool is closed");
    return NULL;
  }
  return p;
}

/* new OpenPool(maxThreads, maxQueued, callback) */
static napi_value pool_new(napi_env env, napi_callback_info info) {
  ARGS(3);
  INT_ARG(0, max_threads);
  INT_ARG(1, max_queued);
  pool_t *p = calloc(1, sizeof *p);
  if (!p) return throw_errno(env, ENOMEM, "calloc");
  p->env = env;
  p->max_threads = max_threads > 0 ? max_threads : 1;
  p->max_queued = max_queued > 0 ? max_queued : 1;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  int r = uv_async_init(loop, &p->async, pool_deliver);
  if (r < 0) {
    pool_free(p);
    return throw_errno(env, -r, "uv_async_init");
  }
  p->async.data = p;
  uv_unref((uv_handle_t *)&p->async);
  napi_value name;
  napi_create_string_utf8(env, "openhook:pool", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, self, name, &p->async_ctx);
  napi_create_reference(env, argv[2], 1, &p->callback_ref);
  napi_wrap(env, self, p, pool_finalize, NULL, NULL);
  return self;
}

/* submit(id, op, dirfd, path, flags, mode, resolve) -> 0, or -EAGAIN when the queue is full, or
 * another -errno (a bad path, no thread could start). */
static napi_value pool_submit(napi_env env, napi_callback_info info) {
  ARGS(7);
  UINT_ARG(0, id);
  INT_ARG(1, op);
  INT_ARG(2, dirfd);
  UINT_ARG(4, flags);
  UINT_ARG(5, mode);
  UINT_ARG(6, resolve);
  pool_t *p = unwrap_pool(env, self);
  if (!p) return NULL;
  char path[PATH_MAX];
  size_t len = 0;
  path[0] = 0;
  if (op == JOB_LOOKUP || op == JOB_CREATE) {
    int r = arg_path(env, argv[3], path, sizeof path, &len);
    if (r) return make_int(env, r);
  } else if (op == JOB_REOPEN) {
    int r = proc_fd_dir_get();
    if (r < 0) return make_int(env, r);
  }
  pthread_mutex_lock(&p->mu);
  bool full = p->queued >= p->max_queued && op != JOB_CLOSE; /* a close is never refused: it would leak */
  pthread_mutex_unlock(&p->mu);
  if (full) return make_int(env, -EAGAIN);
  job_t *j = malloc(sizeof *j + len + 1);
  if (!j) return make_int(env, -ENOMEM);
  *j = (job_t){.id = id, .op = op, .dirfd = dirfd, .flags = flags, .mode = mode, .resolve = resolve, .result = -EINVAL};
  memcpy(j->path, path, len + 1);
  pthread_mutex_lock(&p->mu);
  if (p->idle == 0 && p->threads < p->max_threads) {
    pthread_t t;
    pthread_attr_t attr;
    sigset_t all, old;
    sigfillset(&all);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the new thread inherits a mask that blocks all */
    int r = pthread_create(&t, &attr, pool_thread, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (r == 0) p->threads++;
    else if (p->threads == 0) {
      pthread_mutex_unlock(&p->mu);
      free(j);
      return make_int(env, -r);
    }
  }
  if (p->queue_tail) p->queue_tail->next = j;
  else p->queue = j;
  p->queue_tail = j;
  p->queued++;
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
  if (p->pending++ == 0) uv_ref((uv_handle_t *)&p->async);
  return make_int(env, 0);
}

/* stats() -> [threads, idle, queued, pending] */
static napi_value pool_stats(napi_env env, napi_callback_info info) {
  napi_value self;
  CHECK(napi_get_cb_info(env, info, NULL, NULL, &self, NULL));
  pool_t *p = unwrap_pool(env, self);
  if (!p) return NULL;
  pthread_mutex_lock(&p->mu);
  int v[4] = {p->threads, p->idle, p->queued, (int)p->pending};
  pthread_mutex_unlock(&p->mu);
  napi_value out;
  napi_create_array_with_length(env, 4, &out);
  for (int i = 0; i < 4; i++) napi_set_element(env, out, i, make_int(env, v[i]));
  return out;
}

static napi_value pool_close_js(napi_env env, napi_callback_info info) {
  napi_value self;
  CHECK(napi_get_cb_info(env, info, NULL, NULL, &self, NULL));
  pool_t *p = NULL;
  napi_unwrap(env, self, (void **)&p);
  if (p) pool_close(env, p);
  return NULL;
}

napi_status pool_register(napi_env env, napi_value exports) {
  static const export_fn methods[] = {
    {"submit", pool_submit},
    {"stats", pool_stats},
    {"close", pool_close_js},
  };
  EXPORT_CONSTANT(exports, JOB_LOOKUP);
  EXPORT_CONSTANT(exports, JOB_CREATE);
  EXPORT_CONSTANT(exports, JOB_REOPEN);
  EXPORT_CONSTANT(exports, JOB_STATFS);
  EXPORT_CONSTANT(exports, JOB_CLOSE);
  return export_class(env, exports, "OpenPool", pool_new, methods, COUNT(methods));
}
