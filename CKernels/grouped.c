// Grouped convolutions (groups > 1, depthwise when every group has one input channel): each output
// channel reads only the C / groups input channels of its group, so the dense kernels would do
// `groups` times the arithmetic on a weight that is mostly zeros. These run the layer's own
// arithmetic, directly: per output plane (forward) or per input plane of one map (backward), a
// task owns what it writes, so results do not depend on the thread count. Rows are walked with
// the valid range of each tap precomputed, so the inner loops have no bounds tests and vectorize
// at stride 1.
#include "internal.h"

#include <string.h>

static int out_size(int n, int k, int s, int p) { return (n + 2 * p - k) / s + 1; }

/// Output positions o in [lo, hi) whose tap at offset t reads inside [0, n): 0 <= o s - p + t < n.
static void tap_range(int n, int out, int s, int p, int t, int *lo, int *hi) {
    int a = p - t;  // o s >= a
    int l = a <= 0 ? 0 : (a + s - 1) / s;
    int b = n - 1 + p - t;  // o s <= b
    int h = b < 0 ? 0 : b / s + 1;
    *lo = l;
    *hi = h < out ? h : out;
    if (*hi < *lo) *hi = *lo;
}

typedef struct {
    ck_conv_geometry g;
    int Ho, Wo;
    const float *x, *w, *bias, *s;
    float *y;
} grouped_job;

static void forward_plane(void *p, long k) {
    grouped_job *q = p;
    ck_conv_geometry g = q->g;
    int per_in = g.C / g.groups, per_out = g.K / g.groups;
    int c0 = (int)(k / per_out) * per_in;
    float *y = q->y + k * (long)q->Ho * q->Wo;
    float b = q->bias ? q->bias[k] : 0.0f;
    for (long i = 0; i < (long)q->Ho * q->Wo; i++) y[i] = b;
    for (int c = 0; c < per_in; c++) {
        const float *x = q->x + (long)(c0 + c) * g.H * g.W;
        for (int i = 0; i < g.kh; i++) {
            int oy0, oy1;
            tap_range(g.H, q->Ho, g.sh, g.ph, i, &oy0, &oy1);
            for (int j = 0; j < g.kw; j++) {
                int ox0, ox1;
                tap_range(g.W, q->Wo, g.sw, g.pw, j, &ox0, &ox1);
                float wv = q->w[(((long)k * per_in + c) * g.kh + i) * g.kw + j];
                for (int oy = oy0; oy < oy1; oy++) {
                    // Index of input column ox * sw - pw + j of this row, as an offset from x.
                    long at = (long)(oy * g.sh - g.ph + i) * g.W - g.pw + j;
                    float *yr = y + (long)oy * q->Wo;
                    if (g.sw == 1) {
                        for (int ox = ox0; ox < ox1; ox++) yr[ox] += wv * x[at + ox];
                    } else {
                        for (int ox = ox0; ox < ox1; ox++) yr[ox] += wv * x[at + (long)ox * g.sw];
                    }
                }
            }
        }
    }
}

int ck_grouped_conv_forward(const float *x, ck_conv_geometry g, const float *w, const float *bias, float *y) {
    unsigned long before = ck_alloc_failures();
    grouped_job q = {g, out_size(g.H, g.kh, g.sh, g.ph), out_size(g.W, g.kw, g.sw, g.pw), x, w, bias, NULL, y};
    if (q.Ho > 0 && q.Wo > 0) ck_parallel_for(g.K, &q, forward_plane);
    return ck_status_since(before);
}

/// Task t: map t / C, input channel t % C, scattered from the outputs of its group.
static void backward_plane(void *p, long t) {
    grouped_job *q = p;
    ck_conv_geometry g = q->g;
    int per_in = g.C / g.groups, per_out = g.K / g.groups;
    long m = t / g.C;
    int ch = (int)(t % g.C), grp = ch / per_in, c = ch % per_in;
    float *out = q->y + (m * g.C + ch) * (long)g.H * g.W;
    memset(out, 0, sizeof(float) * (size_t)g.H * g.W);
    for (int k = grp * per_out; k < (grp + 1) * per_out; k++) {
        const float *s = q->s + (m * g.K + k) * (long)q->Ho * q->Wo;
        for (int i = 0; i < g.kh; i++) {
            int oy0, oy1;
            tap_range(g.H, q->Ho, g.sh, g.ph, i, &oy0, &oy1);
            for (int j = 0; j < g.kw; j++) {
                int ox0, ox1;
                tap_range(g.W, q->Wo, g.sw, g.pw, j, &ox0, &ox1);
                float wv = q->w[(((long)k * per_in + c) * g.kh + i) * g.kw + j];
                for (int oy = oy0; oy < oy1; oy++) {
                    long at = (long)(oy * g.sh - g.ph + i) * g.W - g.pw + j;
                    const float *sr = s + (long)oy * q->Wo;
                    if (g.sw == 1) {
                        for (int ox = ox0; ox < ox1; ox++) out[at + ox] += wv * sr[ox];
                    } else {
                        for (int ox = ox0; ox < ox1; ox++) out[at + (long)ox * g.sw] += wv * sr[ox];
                    }
                }
            }
        }
    }
}

int ck_grouped_conv_backward(int n, const float *s, ck_conv_geometry g, const float *w, float *c) {
    unsigned long before = ck_alloc_failures();
    grouped_job q = {g, out_size(g.H, g.kh, g.sh, g.ph), out_size(g.W, g.kw, g.sw, g.pw), NULL, w, NULL, s, c};
    if (q.Ho > 0 && q.Wo > 0) ck_parallel_for((long)n * g.C, &q, backward_plane);
    else memset(c, 0, sizeof(float) * (size_t)n * g.C * g.H * g.W);
    return ck_status_since(before);
}
