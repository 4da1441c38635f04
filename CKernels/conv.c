// Convolution forward (GEMM with im2col panels packed from the image) and its adjoint, the
// relevance backward (GEMM + col2im).
//
// The backward of LRP through a convolution is c = W^T s: the input gradient of a convolution whose
// output gradient is s. As a matrix product that is cols (C kh kw, Ho Wo) = W^T (C kh kw, K) x s (K,
// Ho Wo), then col2im sums the overlapping windows back into (C, H, W). It handles any stride and
// padding; the GEMM reads W transposed through strides, so no transposed copy of W is kept.
#include "internal.h"

#include <string.h>

static inline int out_size(int n, int k, int s, int p) { return (n + 2 * p - k) / s + 1; }

static inline int is_pointwise(int kh, int kw, int sh, int sw, int ph, int pw) {
    return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
}

typedef struct {
    const float *x;
    float *cols;
    int C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo;
} cols_job;

// The adjoint of im2col: x[c, iy, ix] = sum of the cols entries that read it.
static void col2im_channel(void *p, long c) {
    cols_job *q = p;
    long N = (long)q->Ho * q->Wo;
    float *xc = (float *)q->x + c * (long)q->H * q->W;
    memset(xc, 0, (size_t)q->H * q->W * sizeof(float));
    for (int i = 0; i < q->kh; i++)
        for (int j = 0; j < q->kw; j++) {
            const float *row = q->cols + ((c * q->kh + i) * q->kw + j) * N;
            for (int oy = 0; oy < q->Ho; oy++) {
                int iy = oy * q->sh - q->ph + i;
                if (iy < 0 || iy >= q->H) continue;
                const float *r = row + (long)oy * q->Wo;
                float *xr = xc + (long)iy * q->W;
                int ox0 = 0, ox1 = q->Wo;   // ox with 0 <= ox sw - pw + j < W
                while (ox0 < ox1 && ox0 * q->sw - q->pw + j < 0) ox0++;
                while (ox1 > ox0 && (ox1 - 1) * q->sw - q->pw + j >= q->W) ox1--;
                if (q->sw == 1) {
                    float *d = xr + (ox0 - q->pw + j);
                    for (int ox = ox0; ox < ox1; ox++) d[ox - ox0] += r[ox];
                } else {
                    for (int ox = ox0; ox < ox1; ox++) xr[ox * q->sw - q->pw + j] += r[ox];
                }
            }
        }
}

// The im2col matrix packed straight into the GEMM's panels, never stored: row k = (c kh + i) kw + j
// of column o = oy Wo + ox is x[c, oy sh - ph + i, ox sw - pw + j] (0 outside). The image rows it
// reads stay in cache across the kh kw rows that share them; a stored im2col matrix is kh kw times
// the image and went through memory twice (64 channels at 224 x 224: 115 MB per forward).
static void pack_im2col(const void *p, int nr, long k0, long kc, long j0, long nc, float *dst) {
    const cols_job *q = p;
    for (long jr = 0; jr < nc; jr += nr) {
        long cols = ck_min(nr, nc - jr), jstart = j0 + jr;
        int oy0 = (int)(jstart / q->Wo), ox0 = (int)(jstart % q->Wo);
        for (long k = k0; k < k0 + kc; k++) {
            int j = (int)(k % q->kw), i = (int)((k / q->kw) % q->kh);
            long c = k / ((long)q->kw * q->kh);
            const float *xc = q->x + c * (long)q->H * q->W;
            float *d = dst;
            int oy = oy0, ox = ox0;
            for (long t = 0; t < cols;) {
                long run = ck_min(cols - t, q->Wo - ox);
                int iy = oy * q->sh - q->ph + i;
                if (iy < 0 || iy >= q->H) {
                    for (long r = 0; r < run; r++) d[t + r] = 0.0f;
                } else {
                    const float *xr = xc + (long)iy * q->W;
                    if (q->sw == 1) {
                        long ix0 = ox - q->pw + j;  // ix = ix0 + r; inside the image for lo <= r < hi
                        long lo = ck_min(run, ck_max(0, -ix0)), hi = ck_max(lo, ck_min(run, q->W - ix0));
                        for (long r = 0; r < lo; r++) d[t + r] = 0.0f;
                        for (long r = lo; r < hi; r++) d[t + r] = xr[ix0 + r];
                        for (long r = hi; r < run; r++) d[t + r] = 0.0f;
                    } else {
                        for (long r = 0; r < run; r++) {
                            int ix = (ox + (int)r) * q->sw - q->pw + j;
                            d[t + r] = (ix >= 0 && ix < q->W) ? xr[ix] : 0.0f;
                        }
                    }
                }
                t += run;
                ox = 0;
                oy++;
            }
            for (long t = cols; t < nr; t++) d[t] = 0.0f;
            dst += nr;
        }
    }
}

void ck_conv2d_forward(const float *x, int C, int H, int W, const float *w, const float *bias, int K,
                       int kh, int kw, int sh, int sw, int ph, int pw, float *y) {
    int Ho = out_size(H, kh, sh, ph), Wo = out_size(W, kw, sw, pw);
    long N = (long)Ho * Wo, CKK = (long)C * kh * kw;
    if (bias)
        for (int k = 0; k < K; k++)
            for (long i = 0; i < N; i++) y[k * N + i] = bias[k];
    if (is_pointwise(kh, kw, sh, sw, ph, pw)) {
        ck_sgemm(K, (int)N, (int)CKK, w, CKK, 1, x, N, 1, y, N, bias != NULL);
        return;
    }
    cols_job q = {x, NULL, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo};
    ck_sgemm_packer(K, (int)N, (int)CKK, w, CKK, 1, NULL, 0, 0, pack_im2col, &q, y, N, bias != NULL);
}

typedef struct {
    int isa;
    const float *s, *w;
    float *c;
    int K, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo;
} back_job;

// One map, serial: used when there are enough maps to give every thread its own.
static void backward_map(void *p, long m) {
    back_job *b = p;
    long N = (long)b->Ho * b->Wo, CKK = (long)b->C * b->kh * b->kw, HW = (long)b->H * b->W;
    const float *sm = b->s + m * b->K * N;
    float *cm = b->c + m * b->C * HW;
    if (is_pointwise(b->kh, b->kw, b->sh, b->sw, b->ph, b->pw)) {
        ck_sgemm_serial(b->isa, (int)CKK, (int)N, b->K, b->w, 1, CKK, sm, N, 1, cm, N, 0);
        return;
    }
    float *cols = ck_scratch(2, (size_t)CKK * N);
    ck_sgemm_serial(b->isa, (int)CKK, (int)N, b->K, b->w, 1, CKK, sm, N, 1, cols, N, 0);
    cols_job q = {cm, cols, b->C, b->H, b->W, b->kh, b->kw, b->sh, b->sw, b->ph, b->pw, b->Ho, b->Wo};
    for (long ch = 0; ch < b->C; ch++) col2im_channel(&q, ch);
}

void ck_conv2d_backward(int n, const float *s, int K, int Ho, int Wo, const float *w, int C, int H,
                        int W, int kh, int kw, int sh, int sw, int ph, int pw, float *c) {
    if (n <= 0) return;
    long N = (long)Ho * Wo, CKK = (long)C * kh * kw, HW = (long)H * W;
    // A linear layer (everything 1 x 1): all maps in one product, c (n, C) = s (n, K) W (K, C).
    if (N == 1 && HW == 1 && kh == 1 && kw == 1) {
        ck_sgemm(n, C, K, s, K, 1, w, C, 1, c, C, 0);
        return;
    }
    back_job b = {ck_isa_active(), s, w, c, K, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo};
    if (n >= ck_get_num_threads() && n > 1) {
        ck_parallel_for(n, &b, backward_map);
        return;
    }
    // Few maps: parallelize inside each product instead.
    int pointwise = is_pointwise(kh, kw, sh, sw, ph, pw);
    float *cols = pointwise ? NULL : malloc((size_t)CKK * N * sizeof(float));
    if (!pointwise && !cols) abort();
    for (int m = 0; m < n; m++) {
        const float *sm = s + (long)m * K * N;
        float *cm = c + (long)m * C * HW;
        if (pointwise) { ck_sgemm((int)CKK, (int)N, K, w, 1, CKK, sm, N, 1, cm, N, 0); continue; }
        ck_sgemm((int)CKK, (int)N, K, w, 1, CKK, sm, N, 1, cols, N, 0);
        cols_job q = {cm, cols, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo};
        ck_parallel_for(C, &q, col2im_channel);
    }
    free(cols);
}
