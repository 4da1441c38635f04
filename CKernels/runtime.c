// ISA selection, thread count, the parallel-for and scratch memory.
#include "internal.h"

#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#ifdef _OPENMP
// omp.h is not on the toolchain clang's include path; these are the two calls we need.
int omp_get_thread_num(void);
#else
// From libdispatch, which ships with Swift on Linux. DISPATCH_APPLY_AUTO is a NULL queue.
void dispatch_apply_f(size_t iterations, void *queue, void *context, void (*work)(void *, size_t));
#endif

// MARK: ISA

static int isa_from_name(const char *s) {
    if (!s || !*s) return -1;
    if (!strcmp(s, "avx512")) return CK_ISA_AVX512;
    if (!strcmp(s, "avx2")) return CK_ISA_AVX2;
    if (!strcmp(s, "portable")) return CK_ISA_PORTABLE;
    return -1;
}

int ck_isa_supported(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) cached = CK_ISA_AVX512;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) cached = CK_ISA_AVX2;
        else cached = CK_ISA_PORTABLE;
    }
    return cached;
}

static _Atomic int env_cap = -2;   // -2: not read yet; -1: no cap
static _Thread_local int thread_cap = -1;

int ck_reload_env(void) {
    atomic_store(&env_cap, isa_from_name(getenv("BILRP_ISA")));
    return ck_isa_active();
}

int ck_isa_active(void) {
    int isa = ck_isa_supported();
    int e = atomic_load(&env_cap);
    if (e == -2) { ck_reload_env(); e = atomic_load(&env_cap); }
    if (e >= 0 && e < isa) isa = e;
    if (thread_cap >= 0 && thread_cap < isa) isa = thread_cap;
    return isa;
}

int ck_set_thread_isa(int isa) {
    thread_cap = isa;
    return ck_isa_active();
}

const char *ck_isa_name(int isa) {
    switch (isa) {
    case CK_ISA_AVX512: return "avx512";
    case CK_ISA_AVX2: return "avx2";
    default: return "portable";
    }
}

// MARK: Threads

static _Atomic int num_threads = 0;

void ck_set_num_threads(int n) { atomic_store(&num_threads, n < 1 ? 1 : n); }

int ck_get_num_threads(void) {
    int n = atomic_load(&num_threads);
    if (n > 0) return n;
    const char *s = getenv("BILRP_THREADS");
    if (!s || !*s) s = getenv("OMP_NUM_THREADS");
    n = s ? atoi(s) : 0;
    if (n < 1) n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    atomic_store(&num_threads, n);
    return n;
}

int ck_openmp_enabled(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

// MARK: Parallel for

typedef struct {
    _Atomic long next;
    long n;
    void *ctx;
    ck_task_fn fn;
} pf_state;

static void pf_worker(void *p, size_t worker) {
    (void)worker;
    pf_state *st = p;
    for (;;) {
        long i = atomic_fetch_add(&st->next, 1);
        if (i >= st->n) break;
        st->fn(st->ctx, i);
    }
}

void ck_parallel_for(long n, void *ctx, ck_task_fn fn) {
    if (n <= 0) return;
    int nt = ck_get_num_threads();
    if (nt > n) nt = (int)n;
    if (nt <= 1) {
        for (long i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    pf_state st = {0};
    atomic_store(&st.next, 0);
    st.n = n; st.ctx = ctx; st.fn = fn;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
    pf_worker(&st, (size_t)omp_get_thread_num());
#else
    dispatch_apply_f((size_t)nt, NULL, &st, pf_worker);
#endif
}

typedef struct {
    _Alignas(64) _Atomic long next;
} pr_range;

typedef struct {
    pr_range *ranges;
    long n;
    int nt;
    void *ctx;
    ck_task_fn fn;
} pr_state;

static void pr_worker(void *p, size_t worker) {
    pr_state *st = p;
    for (int r = 0; r < st->nt; r++) {
        long k = ((long)worker + r) % st->nt, end = (k + 1) * st->n / st->nt;
        for (;;) {
            long i = atomic_fetch_add(&st->ranges[k].next, 1);
            if (i >= end) break;
            st->fn(st->ctx, i);
        }
    }
}

void ck_parallel_for_ranges(long n, void *ctx, ck_task_fn fn) {
    if (n <= 0) return;
    int nt = ck_get_num_threads();
    if (nt > n) nt = (int)n;
    if (nt <= 1) {
        for (long i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    pr_range *ranges = aligned_alloc(64, (size_t)nt * sizeof(pr_range));
    if (!ranges) abort();
    for (int k = 0; k < nt; k++) atomic_init(&ranges[k].next, k * n / nt);
    pr_state st = {ranges, n, nt, ctx, fn};
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
    pr_worker(&st, (size_t)omp_get_thread_num());
#else
    dispatch_apply_f((size_t)nt, NULL, &st, pr_worker);
#endif
    free(ranges);
}

// MARK: Scratch

static _Thread_local float *scratch_ptr[8];
static _Thread_local size_t scratch_len[8];

float *ck_scratch(int slot, size_t floats) {
    if (floats > scratch_len[slot]) {
        free(scratch_ptr[slot]);
        size_t bytes = ((floats * sizeof(float) + 63) / 64) * 64;
        scratch_ptr[slot] = aligned_alloc(64, bytes);
        if (!scratch_ptr[slot]) { scratch_len[slot] = 0; abort(); }
        scratch_len[slot] = floats;
    }
    return scratch_ptr[slot];
}
