/* The parts of the addon: each .c file that exports something to JS has one register function,
 * declared here and called once from init() in module.c (which says how to add a part). A register
 * function defines its functions, classes and constants on exports and returns napi_ok, or the
 * status of the N-API call that failed (having thrown, or left the error for throw_last). */
#ifndef OPENHOOK_PARTS_H
#define OPENHOOK_PARTS_H

#include <node_api.h>

napi_status helpers_register(napi_env env, napi_value exports); /* napi.c: setErrorFactory */
napi_status sockets_register(napi_env env, napi_value exports); /* sockets.c */
napi_status replies_register(napi_env env, napi_value exports); /* replies.c: the reply batch */
napi_status poller_register(napi_env env, napi_value exports);  /* poller.c: poller, receive arena, busy poll */
napi_status files_register(napi_env env, napi_value exports);   /* files.c */
napi_status pool_register(napi_env env, napi_value exports);    /* pool.c: slow opens */
napi_status fileops_register(napi_env env, napi_value exports); /* fileops.c: mkdir, unlink, rename, link, ... */
napi_status notify_register(napi_env env, napi_value exports);  /* notify.c: seccomp user notification */

#endif
