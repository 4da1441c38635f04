// The ops of general graphs that move, select or sum values: Pad and Slice (a box copy), element-
// wise Min / Max with their winners, and ReduceSum / ReduceMean over any of C, H, W. All are
// memory-bound; tasks are planes (one channel of one map), so results never depend on threads.
#include "internal.h"

#include <math.h>
#include <string.h>

typedef struct {
    const float *src;
    float *dst;
    ck_shape3 ss, ds, box;
    ck_at3 sa, da;
    int accumulate;
} box_job;

static void box_plane(void *p, long t) {
    box_job *q = p;
    long m = t / q->box.C, c = t % q->box.C;
    long sc = (long)q->ss.C * q->ss.H * q->ss.W, dc = (long)q->ds.C * q->ds.H * q->ds.W;
    const float *s = q->src + m * sc + ((c + q->sa.c) * (long)q->ss.H + q->sa.h) * q->ss.W + q->sa.w;
    float *d = q->dst + m * dc + ((c + q->da.c) * (long)q->ds.H + q->da.h) * q->ds.W + q->da.w;
    for (int y = 0; y < q->box.H; y++) {
        const float *sr = s + (long)y * q->ss.W;
        float *dr = d + (long)y * q->ds.W;
        if (q->accumulate) for (int x = 0; x < q->box.W; x++) dr[x] += sr[x];
        else memcpy(dr, sr, (size_t)q->box.W * sizeof(float));
    }
}

void ck_copy_box(int n, const float *src, ck_shape3 src_shape, ck_at3 src_at, float *dst, ck_shape3 dst_shape,
                 ck_at3 dst_at, ck_shape3 box, int accumulate) {
    if (box.C <= 0 || box.H <= 0 || box.W <= 0) return;
    box_job q = {src, dst, src_shape, dst_shape, box, src_at, dst_at, accumulate};
    ck_parallel_for((long)n * box.C, &q, box_plane);
}

enum { CHUNK = 1 << 14 };

typedef struct {
    int k, is_max, j;
    const float *const *x;
    const float *R;
    long len;
    float *y;
    int32_t *winner;
    const int32_t *cwinner;
} ext_job;

static void extremum_chunk(void *p, long t) {
    ext_job *q = p;
    long i0 = t * CHUNK, i1 = ck_min(q->len, i0 + CHUNK);
    for (long i = i0; i < i1; i++) {
        float best = q->x[0][i];
        int32_t w = 0;
        for (int j = 1; j < q->k && !isnan(best); j++) {
            float v = q->x[j][i];
            if (isnan(v) || (q->is_max ? v > best : v < best)) { best = v; w = j; }
        }
        q->y[i] = best;
        q->winner[i] = w;
    }
}

void ck_extremum_forward(int k, const float *const *x, long len, int is_max, float *y, int32_t *winner) {
    ext_job q = {k, is_max, 0, x, NULL, len, y, winner, NULL};
    ck_parallel_for((len + CHUNK - 1) / CHUNK, &q, extremum_chunk);
}

static void extremum_back_chunk(void *p, long t) {
    ext_job *q = p;
    long chunks = (q->len + CHUNK - 1) / CHUNK;
    long m = t / chunks, i0 = (t % chunks) * CHUNK, i1 = ck_min(q->len, i0 + CHUNK);
    const float *R = q->R + m * q->len;
    float *Rin = q->y + m * q->len;
    for (long i = i0; i < i1; i++) Rin[i] = q->cwinner[i] == q->j ? R[i] : 0.0f;
}

void ck_extremum_backward(int n, long len, const float *R, const int32_t *winner, int j, float *Rin) {
    ext_job q = {0, 0, j, NULL, R, len, Rin, NULL, winner};
    ck_parallel_for((long)n * ((len + CHUNK - 1) / CHUNK), &q, extremum_back_chunk);
}

typedef struct {
    const float *x, *a;
    float *y;
    ck_shape3 s, r;  // input and reduced shapes
    int axes;
    float scale;
} reduce_job;

static ck_shape3 reduced(ck_shape3 s, int axes) {
    ck_shape3 r = {axes & CK_AXIS_C ? 1 : s.C, axes & CK_AXIS_H ? 1 : s.H, axes & CK_AXIS_W ? 1 : s.W};
    return r;
}

// Task: one output channel (all of it when C is reduced). Sums in the input's order per output.
static void reduce_task(void *p, long oc) {
    reduce_job *q = p;
    long plane = (long)q->r.H * q->r.W;
    float *y = q->y + oc * plane;
    memset(y, 0, (size_t)plane * sizeof(float));
    int c0 = q->axes & CK_AXIS_C ? 0 : (int)oc, c1 = q->axes & CK_AXIS_C ? q->s.C : (int)oc + 1;
    for (int c = c0; c < c1; c++)
        for (int h = 0; h < q->s.H; h++) {
            const float *row = q->x + ((long)c * q->s.H + h) * q->s.W;
            float *out = y + (long)(q->axes & CK_AXIS_H ? 0 : h) * q->r.W;
            if (q->axes & CK_AXIS_W) {
                float sum = 0.0f;
                for (int w = 0; w < q->s.W; w++) sum += row[w];
                out[0] += sum;
            } else {
                for (int w = 0; w < q->s.W; w++) out[w] += row[w];
            }
        }
    for (long i = 0; i < plane; i++) y[i] *= q->scale;
}

void ck_reduce_forward(const float *x, ck_shape3 s, int axes, float scale, float *y) {
    reduce_job q = {x, NULL, y, s, reduced(s, axes), axes, scale};
    ck_parallel_for(q.r.C, &q, reduce_task);
}

// Task (m, c): one input plane of one map.
static void reduce_back_plane(void *p, long t) {
    reduce_job *q = p;
    long c = t % q->s.C, m = t / q->s.C;
    long rc = q->axes & CK_AXIS_C ? 0 : c;
    const float *S = q->x + m * (long)q->r.C * q->r.H * q->r.W + rc * (long)q->r.H * q->r.W;
    const float *a = q->a + c * (long)q->s.H * q->s.W;
    float *Rin = q->y + (m * q->s.C + c) * (long)q->s.H * q->s.W;
    for (int h = 0; h < q->s.H; h++) {
        const float *srow = S + (long)(q->axes & CK_AXIS_H ? 0 : h) * q->r.W;
        for (int w = 0; w < q->s.W; w++) {
            long i = (long)h * q->s.W + w;
            Rin[i] = q->scale * a[i] * srow[q->axes & CK_AXIS_W ? 0 : w];
        }
    }
}

void ck_reduce_backward(int n, const float *S, const float *a, ck_shape3 s, int axes, float scale, float *Rin) {
    reduce_job q = {S, a, Rin, s, reduced(s, axes), axes, scale};
    ck_parallel_for((long)n * s.C, &q, reduce_back_plane);
}
