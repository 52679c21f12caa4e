{
  "targets": [
    {
      "target_name": "openhook",
      "sources": ["native/module.c", "native/napi.c", "native/sockets.c", "native/replies.c", "native/poller.c", "native/files.c", "native/pool.c", "native/notify.c", "native/fileops.c", "native/hooksockets.c"],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
    },
    {
      "target_name": "openhook-launch",
      "type": "executable",
      "sources": ["native/launch.c"],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]
    },
    {
      "target_name": "openhook-exec",
      "type": "executable",
      "sources": ["native/exec.c"],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]
    },
    {
      "target_name": "openhook-preload",
      "type": "shared_library",
      "product_prefix": "lib",
      "sources": ["native/preload.c"],
      "cflags": ["-std=gnu11", "-O2", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
      "ldflags": ["-Wl,-z,now", "-Wl,-z,relro"],
      "libraries": ["-ldl"]
    }
  ]
}
