// Max-pool with argmax and its winner-take-all backward; average and adaptive average pooling
// and their adjoints (LRP treats average pooling as a linear layer with constant weights).
#include "internal.h"

#include <math.h>
#include <string.h>

static inline int out_size(int n, int k, int s, int p) { return (n + 2 * p - k) / s + 1; }

typedef struct {
    const float *x;
    float *y;
    int32_t *argmax;
    const int32_t *cargmax;
    int C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw;
} pool_job;

static void maxpool_channel(void *p, long c) {
    pool_job *q = p;
    const float *x = q->x + c * (long)q->H * q->W;
    float *y = q->y + c * (long)q->Ho * q->Wo;
    int32_t *am = q->argmax + c * (long)q->Ho * q->Wo;
    for (int oy = 0; oy < q->Ho; oy++)
        for (int ox = 0; ox < q->Wo; ox++) {
            float best = -INFINITY;
            int32_t arg = -1;
            for (int i = 0; i < q->kh; i++) {
                int iy = oy * q->sh - q->ph + i;
                if (iy < 0 || iy >= q->H) continue;
                for (int j = 0; j < q->kw; j++) {
                    int ix = ox * q->sw - q->pw + j;
                    if (ix < 0 || ix >= q->W) continue;
                    float v = x[iy * q->W + ix];
                    if (arg < 0 || v > best || isnan(v)) { best = v; arg = iy * q->W + ix; }
                }
            }
            y[oy * q->Wo + ox] = best;
            am[oy * q->Wo + ox] = arg;
        }
}

void ck_maxpool_forward(const float *x, int C, int H, int W, int kh, int kw, int sh, int sw, int ph,
                        int pw, float *y, int32_t *argmax) {
    pool_job q = {x, y, argmax, NULL, C, H, W, out_size(H, kh, sh, ph), out_size(W, kw, sw, pw),
                  kh, kw, sh, sw, ph, pw};
    ck_parallel_for(C, &q, maxpool_channel);
}

// Task (m, c): Rin[m, c] = scatter of Rout[m, c] to the winners.
static void maxpool_back_plane(void *p, long t) {
    pool_job *q = p;
    long c = t % q->C;
    long HW = (long)q->H * q->W, O = (long)q->Ho * q->Wo;
    float *rin = q->y + t * HW;
    const float *rout = q->x + t * O;
    const int32_t *am = q->cargmax + c * O;
    memset(rin, 0, (size_t)HW * sizeof(float));
    for (long o = 0; o < O; o++)
        if (am[o] >= 0) rin[am[o]] += rout[o];
}

void ck_maxpool_backward(int n, const float *Rout, int C, int Ho, int Wo, const int32_t *argmax,
                         int H, int W, float *Rin) {
    pool_job q = {Rout, Rin, NULL, argmax, C, H, W, Ho, Wo, 0, 0, 0, 0, 0, 0};
    ck_parallel_for((long)n * C, &q, maxpool_back_plane);
}

static void avgpool_channel(void *p, long c) {
    pool_job *q = p;
    const float *x = q->x + c * (long)q->H * q->W;
    float *y = q->y + c * (long)q->Ho * q->Wo;
    float inv = 1.0f / (float)(q->kh * q->kw);
    for (int oy = 0; oy < q->Ho; oy++)
        for (int ox = 0; ox < q->Wo; ox++) {
            float sum = 0.0f;
            for (int i = 0; i < q->kh; i++) {
                int iy = oy * q->sh - q->ph + i;
                if (iy < 0 || iy >= q->H) continue;
                for (int j = 0; j < q->kw; j++) {
                    int ix = ox * q->sw - q->pw + j;
                    if (ix >= 0 && ix < q->W) sum += x[iy * q->W + ix];
                }
            }
            y[oy * q->Wo + ox] = sum * inv;
        }
}

void ck_avgpool_forward(const float *x, int C, int H, int W, int kh, int kw, int sh, int sw, int ph,
                        int pw, float *y) {
    pool_job q = {x, y, NULL, NULL, C, H, W, out_size(H, kh, sh, ph), out_size(W, kw, sw, pw), kh,
                  kw, sh, sw, ph, pw};
    ck_parallel_for(C, &q, avgpool_channel);
}

static void avgpool_back_plane(void *p, long t) {
    pool_job *q = p;
    long HW = (long)q->H * q->W, O = (long)q->Ho * q->Wo;
    const float *s = q->x + t * O;
    float *c = q->y + t * HW;
    float inv = 1.0f / (float)(q->kh * q->kw);
    memset(c, 0, (size_t)HW * sizeof(float));
    for (int oy = 0; oy < q->Ho; oy++)
        for (int ox = 0; ox < q->Wo; ox++) {
            float v = s[oy * q->Wo + ox] * inv;
            for (int i = 0; i < q->kh; i++) {
                int iy = oy * q->sh - q->ph + i;
                if (iy < 0 || iy >= q->H) continue;
                for (int j = 0; j < q->kw; j++) {
                    int ix = ox * q->sw - q->pw + j;
                    if (ix >= 0 && ix < q->W) c[iy * q->W + ix] += v;
                }
            }
        }
}

void ck_avgpool_backward(int n, const float *s, int C, int Ho, int Wo, int H, int W, int kh, int kw,
                         int sh, int sw, int ph, int pw, float *c) {
    pool_job q = {s, c, NULL, NULL, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw};
    ck_parallel_for((long)n * C, &q, avgpool_back_plane);
}

static inline int bin_start(int i, int in, int out) { return (int)((long)i * in / out); }
static inline int bin_end(int i, int in, int out) { return (int)(((long)(i + 1) * in + out - 1) / out); }

static void adaptive_channel(void *p, long c) {
    pool_job *q = p;
    const float *x = q->x + c * (long)q->H * q->W;
    float *y = q->y + c * (long)q->Ho * q->Wo;
    for (int oy = 0; oy < q->Ho; oy++) {
        int y0 = bin_start(oy, q->H, q->Ho), y1 = bin_end(oy, q->H, q->Ho);
        for (int ox = 0; ox < q->Wo; ox++) {
            int x0 = bin_start(ox, q->W, q->Wo), x1 = bin_end(ox, q->W, q->Wo);
            float sum = 0.0f;
            for (int iy = y0; iy < y1; iy++)
                for (int ix = x0; ix < x1; ix++) sum += x[iy * q->W + ix];
            y[oy * q->Wo + ox] = sum / (float)((y1 - y0) * (x1 - x0));
        }
    }
}

void ck_adaptive_avgpool_forward(const float *x, int C, int H, int W, int Ho, int Wo, float *y) {
    pool_job q = {x, y, NULL, NULL, C, H, W, Ho, Wo, 0, 0, 0, 0, 0, 0};
    ck_parallel_for(C, &q, adaptive_channel);
}

static void adaptive_back_plane(void *p, long t) {
    pool_job *q = p;
    long HW = (long)q->H * q->W, O = (long)q->Ho * q->Wo;
    const float *s = q->x + t * O;
    float *c = q->y + t * HW;
    memset(c, 0, (size_t)HW * sizeof(float));
    for (int oy = 0; oy < q->Ho; oy++) {
        int y0 = bin_start(oy, q->H, q->Ho), y1 = bin_end(oy, q->H, q->Ho);
        for (int ox = 0; ox < q->Wo; ox++) {
            int x0 = bin_start(ox, q->W, q->Wo), x1 = bin_end(ox, q->W, q->Wo);
            float v = s[oy * q->Wo + ox] / (float)((y1 - y0) * (x1 - x0));
            for (int iy = y0; iy < y1; iy++)
                for (int ix = x0; ix < x1; ix++) c[iy * q->W + ix] += v;
        }
    }
}

void ck_adaptive_avgpool_backward(int n, const float *s, int C, int Ho, int Wo, int H, int W,
                                  float *c) {
    pool_job q = {s, c, NULL, NULL, C, H, W, Ho, Wo, 0, 0, 0, 0, 0, 0};
    ck_parallel_for((long)n * C, &q, adaptive_back_plane);
}
