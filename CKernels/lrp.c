// The element-wise steps of an LRP rule: s = R / stab(z) and R_in = a * c.
//
// Given x, a rule is linear in the relevance: z (the rule's denominators) and a (the layer input,
// or its modified version) are computed once per input and shared by all n maps of a block.
#include "internal.h"

typedef struct {
    long len;
    const float *R, *z, *a, *c;
    float eps, scale;
    float *out;
    int accumulate;
} ew_job;

enum { CHUNK = 1 << 14 };

static void divide_task(void *p, long t) {
    ew_job *e = p;
    long chunks = (e->len + CHUNK - 1) / CHUNK;
    long m = t / chunks, i0 = (t % chunks) * CHUNK, i1 = ck_min(e->len, i0 + CHUNK);
    const float *R = e->R + m * e->len;
    float *s = e->out + m * e->len;
    for (long i = i0; i < i1; i++) {
        float z = e->z[i];
        s[i] = R[i] / (z + (z >= 0.0f ? e->eps : -e->eps));
    }
}

static void reciprocal_task(void *p, long t) {
    ew_job *e = p;
    long i0 = t * CHUNK, i1 = ck_min(e->len, i0 + CHUNK);
    for (long i = i0; i < i1; i++) {
        float z = e->z[i];
        e->out[i] = 1.0f / (z + (z >= 0.0f ? e->eps : -e->eps));
    }
}

void ck_lrp_stab_reciprocal(long len, const float *z, float eps, float *rz) {
    ew_job e = {len, NULL, z, NULL, NULL, eps, 0, rz, 0};
    ck_parallel_for((len + CHUNK - 1) / CHUNK, &e, reciprocal_task);
}

void ck_lrp_divide(int n, long len, const float *R, const float *z, float eps, float *s) {
    ew_job e = {len, R, z, NULL, NULL, eps, 0, s, 0};
    ck_parallel_for((long)n * ((len + CHUNK - 1) / CHUNK), &e, divide_task);
}

static void product_task(void *p, long t) {
    ew_job *e = p;
    long chunks = (e->len + CHUNK - 1) / CHUNK;
    long m = t / chunks, i0 = (t % chunks) * CHUNK, i1 = ck_min(e->len, i0 + CHUNK);
    const float *c = e->c + m * e->len;
    float *R = e->out + m * e->len;
    float k = e->scale;
    if (e->a) {
        if (e->accumulate) for (long i = i0; i < i1; i++) R[i] += k * e->a[i] * c[i];
        else for (long i = i0; i < i1; i++) R[i] = k * e->a[i] * c[i];
    } else {
        if (e->accumulate) for (long i = i0; i < i1; i++) R[i] += k * c[i];
        else for (long i = i0; i < i1; i++) R[i] = k * c[i];
    }
}

void ck_lrp_product(int n, long len, const float *a, const float *c, float scale, float *R,
                    int accumulate) {
    ew_job e = {len, NULL, NULL, a, c, 0, scale, R, accumulate};
    ck_parallel_for((long)n * ((len + CHUNK - 1) / CHUNK), &e, product_task);
}

typedef struct {
    long len;
    const float *R, *z;
    float eps;
    int k;
    const float *const *a;
    float *const *out;
    const int *accumulate;
} shares_job;

// s = R / stab(z) once per element, then every input's share a_j s: R is read once (the separate
// divide and products went over the block of maps k + 1 times). R may be an output: it is read
// before any output is written.
static void shares_task(void *p, long t) {
    const shares_job *e = p;
    long chunks = (e->len + CHUNK - 1) / CHUNK;
    long m = t / chunks, i0 = (t % chunks) * CHUNK, i1 = ck_min(e->len, i0 + CHUNK);
    const float *R = e->R + m * e->len;
    float s[CHUNK];
    for (long i = i0; i < i1; i++) {
        float z = e->z[i];
        s[i - i0] = R[i] / (z + (z >= 0.0f ? e->eps : -e->eps));
    }
    for (int j = 0; j < e->k; j++) {
        const float *a = e->a[j] + i0;
        float *o = e->out[j] + m * e->len + i0;
        long w = i1 - i0;
        if (e->accumulate[j]) for (long i = 0; i < w; i++) o[i] += a[i] * s[i];
        else for (long i = 0; i < w; i++) o[i] = a[i] * s[i];
    }
}

void ck_lrp_shares(int n, long len, const float *R, const float *z, float eps, int k, const float *const *a,
                   float *const *out, const int *accumulate) {
    shares_job e = {len, R, z, eps, k, a, out, accumulate};
    ck_parallel_for((long)n * ((len + CHUNK - 1) / CHUNK), &e, shares_task);
}

void ck_clamp(long len, const float *x, int sign, float *y) {
    if (sign > 0) for (long i = 0; i < len; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
    else for (long i = 0; i < len; i++) y[i] = x[i] < 0.0f ? x[i] : 0.0f;
}
