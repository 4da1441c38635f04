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
    if (!strcmp(s, "portable")) return CK_ISA_PORTABLE;
#if CK_X86
    if (!strcmp(s, "avx512")) return CK_ISA_AVX512;
    if (!strcmp(s, "avx2")) return CK_ISA_AVX2;
#elif defined(__aarch64__)
    if (!strcmp(s, "neon")) return CK_ISA_NEON;
#endif
    return -1;
}

int ck_isa_supported(void) {
    static int cached = -1;
    if (cached < 0) {
#if CK_X86
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) cached = CK_ISA_AVX512;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) cached = CK_ISA_AVX2;
        else cached = CK_ISA_PORTABLE;
#elif defined(__aarch64__)
        cached = CK_ISA_NEON;  // Advanced SIMD is part of every ARMv8-A core
#else
        cached = CK_ISA_PORTABLE;
#endif
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
    case CK_ISA_NEON: return "neon";
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
    _Atomic int failed;   // a task's allocation failed
    size_t limit;         // the caller's allocation limit, for the workers
} pf_state;

// MARK: Allocation failures

// Failed allocations (ck_malloc, ck_scratch) of calls made from this thread, counted so an entry
// point can tell whether any happened during it (nested calls do not reset anything). A worker
// thread running a parallel region's tasks reports into the region instead, and the region into
// its caller when it ends.
static _Thread_local unsigned long failures;
static _Thread_local _Atomic int *region_failed;
static _Thread_local size_t alloc_limit;  // bytes; 0: none (ck_set_thread_alloc_limit)

static void ck_note_alloc_failure(void) {
    failures++;
    if (region_failed) atomic_store(region_failed, 1);
}

unsigned long ck_alloc_failures(void) { return failures; }

int ck_status_since(unsigned long before) { return failures != before ? CK_ERROR_MEMORY : CK_OK; }

size_t ck_set_thread_alloc_limit(size_t bytes) {
    size_t previous = alloc_limit;
    alloc_limit = bytes;
    return previous;
}

static int over_limit(size_t bytes) { return alloc_limit && bytes > alloc_limit; }

void *ck_malloc(size_t bytes) {
    void *p = over_limit(bytes) ? NULL : malloc(bytes ? bytes : 1);
    if (!p) ck_note_alloc_failure();
    return p;
}

static void pf_worker(void *p, size_t worker) {
    pf_state *st = p;
    _Atomic int *outer = region_failed;
    size_t outer_limit = alloc_limit;
    region_failed = &st->failed;
    alloc_limit = st->limit;
    for (int r = 0; r < st->nr; r++) {
        long k = ((long)worker + r) % st->nr, end = (k + 1) * st->n / st->nr;
        for (;;) {
            long i = atomic_fetch_add(&st->runs[k].next, 1);
            if (i >= end) break;
            st->fn(st->ctx, i);
        }
    }
    region_failed = outer;
    alloc_limit = outer_limit;
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
    if (!runs) {  // a few cache lines: without them, the same tasks in order on this thread
        for (long i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    for (int k = 0; k < nr; k++) atomic_init(&runs[k].next, k * n / nr);
    pf_state st = {runs, n, nr, ctx, fn, 0, alloc_limit};
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
    pf_worker(&st, (size_t)omp_get_thread_num());
#else
    dispatch_apply_f((size_t)nt, NULL, &st, pf_worker);
#endif
    if (runs != &one) free(runs);
    if (atomic_load(&st.failed)) ck_note_alloc_failure();
}

void ck_parallel_for(long n, void *ctx, ck_task_fn fn) { parallel_runs(n, ctx, fn, 0); }

void ck_parallel_for_ranges(long n, void *ctx, ck_task_fn fn) { parallel_runs(n, ctx, fn, 1); }

// MARK: Scratch

static _Thread_local float *scratch_ptr[8];
static _Thread_local size_t scratch_len[8];

float *ck_scratch(int slot, size_t floats) {
    size_t bytes = ((floats * sizeof(float) + 63) / 64) * 64;
    if (over_limit(bytes)) {  // as if it were allocated now, whatever the slot holds
        ck_note_alloc_failure();
        return NULL;
    }
    if (floats > scratch_len[slot]) {
        free(scratch_ptr[slot]);
        scratch_ptr[slot] = aligned_alloc(64, bytes);
        scratch_len[slot] = scratch_ptr[slot] ? floats : 0;
        if (!scratch_ptr[slot]) ck_note_alloc_failure();
    }
    return scratch_ptr[slot];
}
