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

// Tasks 0 .. n - 1 in nr runs (run k: k n / nr .. (k + 1) n / nr - 1), each with its own counter
// on its own cache line. Worker w takes from run w % nr until it is empty, then from the next.
typedef struct {
    _Alignas(64) _Atomic long next;
} pf_run;

typedef struct {
    pf_run *runs;
    long n;
    int nr;
    void *ctx;
    ck_task_fn fn;
} pf_state;

static void pf_worker(void *p, size_t worker) {
    pf_state *st = p;
    for (int r = 0; r < st->nr; r++) {
        long k = ((long)worker + r) % st->nr, end = (k + 1) * st->n / st->nr;
        for (;;) {
            long i = atomic_fetch_add(&st->runs[k].next, 1);
            if (i >= end) break;
            st->fn(st->ctx, i);
        }
    }
}

// One run shared by all threads (ck_parallel_for) or one per thread (ck_parallel_for_ranges).
static void parallel_runs(long n, void *ctx, ck_task_fn fn, int run_per_thread) {
    if (n <= 0) return;
    int nt = ck_get_num_threads();
    if (nt > n) nt = (int)n;
    if (nt <= 1) {
        for (long i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    pf_run one;
    int nr = run_per_thread ? nt : 1;
    pf_run *runs = nr == 1 ? &one : aligned_alloc(64, (size_t)nr * sizeof(pf_run));
    if (!runs) abort();
    for (int k = 0; k < nr; k++) atomic_init(&runs[k].next, k * n / nr);
    pf_state st = {runs, n, nr, ctx, fn};
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
    pf_worker(&st, (size_t)omp_get_thread_num());
#else
    dispatch_apply_f((size_t)nt, NULL, &st, pf_worker);
#endif
    if (runs != &one) free(runs);
}

void ck_parallel_for(long n, void *ctx, ck_task_fn fn) { parallel_runs(n, ctx, fn, 0); }

void ck_parallel_for_ranges(long n, void *ctx, ck_task_fn fn) { parallel_runs(n, ctx, fn, 1); }

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
