{
  "targets": [
    {
      "target_name": "openhook",
      "sources": ["native/binding.c"],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
    }
  ]
}
