// Page-level memory helpers for the buffer recycler (Sources/BiLRP/Buffer.swift).
#define _GNU_SOURCE
#include <stddef.h>
#include <sys/mman.h>

#include "ckernels.h"

void *ck_remap(void *p, size_t old_bytes, size_t new_bytes) {
#ifdef __linux__
    void *q = mremap(p, old_bytes, new_bytes, MREMAP_MAYMOVE);
    return q == MAP_FAILED ? NULL : q;
#else
    (void)p; (void)old_bytes; (void)new_bytes;
    return NULL;
#endif
}
