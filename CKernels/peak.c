// Measures this machine's fp32 FMA peak: independent register-resident FMA chains on every thread,
// so the benchmark reports its figures as fractions of what the cores can do.
#include "internal.h"

#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

enum { CHAINS = 12, ITER = 1 << 22 };

#if CK_X86
__attribute__((target("avx512f"))) static float fma_avx512(long iters) {
    __m512 acc[CHAINS];
    __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < iters; n++)
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    __m512 s = acc[0];
    for (int i = 1; i < CHAINS; i++) s = _mm512_add_ps(s, acc[i]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static float fma_avx2(long iters) {
    __m256 acc[CHAINS];
    __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_set1_ps((float)i);
    for (long n = 0; n < iters; n++)
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    float out[8], s = 0;
    for (int i = 1; i < CHAINS; i++) acc[0] = _mm256_add_ps(acc[0], acc[i]);
    _mm256_storeu_ps(out, acc[0]);
    for (int i = 0; i < 8; i++) s += out[i];
    return s;
}
#endif

typedef struct { int isa; long iters; volatile float sink; } peak_job;

static void peak_task(void *p, long i) {
    (void)i;
    peak_job *j = p;
#if CK_X86
    float r = j->isa == CK_ISA_AVX512 ? fma_avx512(j->iters) : fma_avx2(j->iters);
    j->sink += r;
#else
    (void)j;
#endif
}

/// fp32 GFLOP/s (2 per FMA lane) of `threads` threads running FMA chains with the active ISA
/// (AVX-512 or AVX2; 0 for the portable path).
double ck_fma_peak_gflops(int threads) {
    int isa = ck_isa_active();
    if (isa != CK_ISA_AVX2 && isa != CK_ISA_AVX512) return 0;
    int lanes = isa == CK_ISA_AVX512 ? 16 : 8;
    int saved = ck_get_num_threads();
    ck_set_num_threads(threads);
    // Many small tasks, so that every thread is busy the whole time whichever starts first.
    enum { TASKS = 64 };
    peak_job j = {isa, ITER / 64, 0};
    ck_parallel_for(TASKS, &j, peak_task);  // warm-up (clocks, thread pool)
    j.iters = ITER / TASKS * threads;
    double t0 = now();
    ck_parallel_for(TASKS, &j, peak_task);
    double t = now() - t0;
    ck_set_num_threads(saved);
    return 2.0 * lanes * CHAINS * (double)j.iters * TASKS / t * 1e-9;
}
