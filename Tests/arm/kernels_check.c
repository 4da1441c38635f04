// The C kernels on a non-x86 target (aarch64 under qemu-user, `make test-arm`), against plain
// double-precision loops written here from the definitions; run once per path (NEON, the default
// on aarch64, and BILRP_ISA=portable). Exit status 0 when every check holds; each failure prints
// what differed and by how much.
#include "ckernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0, checks = 0;

static unsigned long long rng = 88172645463325252ULL;
static float uniform(void) {  // xorshift64, in [-1, 1)
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}
static float *randoms(long n) {
    float *v = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (long i = 0; i < n; i++) v[i] = uniform();
    return v;
}

// max |a - b| <= tol * max(1, max |b|)
static void expect_close(const char *what, const float *a, const double *b, long n, double tol) {
    double scale = 1, worst = 0;
    long at = -1;
    for (long i = 0; i < n; i++) scale = fmax(scale, fabs(b[i]));
    for (long i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= worst)) { worst = d; at = i; }
    }
    checks++;
    if (!(worst <= tol * scale)) {
        failures++;
        printf("FAIL %s: max |difference| %.3g at %ld (%.6g against %.6g), allowed %.3g\n", what, worst, at,
               at >= 0 ? a[at] : 0.0, at >= 0 ? b[at] : 0.0, tol * scale);
    }
}

static void check_gemm(int M, int N, int K, int acc) {
    float *A = randoms((long)M * K), *B = randoms((long)K * N), *C = randoms((long)M * N);
    double *ref = malloc(sizeof(double) * (size_t)M * N);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = acc ? C[(long)i * N + j] : 0;
            for (int k = 0; k < K; k++) s += (double)A[(long)i * K + k] * B[(long)k * N + j];
            ref[(long)i * N + j] = s;
        }
    int status = ck_sgemm(M, N, K, A, K, 1, B, N, 1, C, N, acc);
    char what[96];
    snprintf(what, sizeof what, "sgemm %d x %d x %d accumulate=%d (status %d)", M, N, K, acc, status);
    expect_close(what, C, ref, (long)M * N, 1e-5);
    free(A); free(B); free(C); free(ref);
}

typedef struct { int C, H, W, K, kh, kw, sh, sw, ph, pw, groups; } geo;

static int out_size(int n, int k, int s, int p) { return (n + 2 * p - k) / s + 1; }

// y = conv(x, w) + bias, torch's cross-correlation with groups; weight (K, C / groups, kh, kw).
static void naive_forward(geo g, const float *x, const float *w, const float *bias, double *y) {
    int Ho = out_size(g.H, g.kh, g.sh, g.ph), Wo = out_size(g.W, g.kw, g.sw, g.pw);
    int pin = g.C / g.groups, pout = g.K / g.groups;
    for (int k = 0; k < g.K; k++)
        for (int oy = 0; oy < Ho; oy++)
            for (int ox = 0; ox < Wo; ox++) {
                double s = bias ? bias[k] : 0;
                for (int c = 0; c < pin; c++)
                    for (int i = 0; i < g.kh; i++)
                        for (int j = 0; j < g.kw; j++) {
                            int iy = oy * g.sh - g.ph + i, ix = ox * g.sw - g.pw + j;
                            if (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) continue;
                            s += (double)w[(((long)k * pin + c) * g.kh + i) * g.kw + j]
                                 * x[((long)(k / pout * pin + c) * g.H + iy) * g.W + ix];
                        }
                y[((long)k * Ho + oy) * Wo + ox] = s;
            }
}

// c = conv^T(s): every output scatters s w back to the inputs it read (n maps).
static void naive_backward(geo g, int n, const float *s, const float *w, double *c) {
    int Ho = out_size(g.H, g.kh, g.sh, g.ph), Wo = out_size(g.W, g.kw, g.sw, g.pw);
    int pin = g.C / g.groups, pout = g.K / g.groups;
    long inCount = (long)g.C * g.H * g.W, outCount = (long)g.K * Ho * Wo;
    memset(c, 0, sizeof(double) * (size_t)(n * inCount));
    for (int m = 0; m < n; m++)
        for (int k = 0; k < g.K; k++)
            for (int oy = 0; oy < Ho; oy++)
                for (int ox = 0; ox < Wo; ox++) {
                    double v = s[m * outCount + ((long)k * Ho + oy) * Wo + ox];
                    for (int ci = 0; ci < pin; ci++)
                        for (int i = 0; i < g.kh; i++)
                            for (int j = 0; j < g.kw; j++) {
                                int iy = oy * g.sh - g.ph + i, ix = ox * g.sw - g.pw + j;
                                if (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) continue;
                                c[m * inCount + ((long)(k / pout * pin + ci) * g.H + iy) * g.W + ix] +=
                                    v * w[(((long)k * pin + ci) * g.kh + i) * g.kw + j];
                            }
                }
}

static void check_conv(geo g) {
    int Ho = out_size(g.H, g.kh, g.sh, g.ph), Wo = out_size(g.W, g.kw, g.sw, g.pw);
    long inCount = (long)g.C * g.H * g.W, outCount = (long)g.K * Ho * Wo, wc = (long)g.K * (g.C / g.groups) * g.kh * g.kw;
    float *x = randoms(inCount), *w = randoms(wc), *bias = randoms(g.K), *y = malloc(sizeof(float) * outCount);
    double *ref = malloc(sizeof(double) * outCount);
    char what[160];
    naive_forward(g, x, w, bias, ref);
    ck_conv_geometry cg = {g.C, g.H, g.W, g.K, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.groups};
    int status = g.groups == 1 ? ck_conv2d_forward(x, g.C, g.H, g.W, w, bias, g.K, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, y)
                               : ck_grouped_conv_forward(x, cg, w, bias, y);
    snprintf(what, sizeof what, "conv forward %d->%d at %dx%d, %dx%d s%d,%d p%d,%d g%d (status %d)", g.C, g.K, g.H,
             g.W, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.groups, status);
    expect_close(what, y, ref, outCount, 1e-5);
    if (g.groups == 1) {  // packed once per layer, as the explainer runs it
        float *packed = malloc(sizeof(float) * (size_t)ck_conv_weights_size(g.K, g.C, g.kh, g.kw));
        ck_conv_weights(w, g.K, g.C, g.kh, g.kw, packed);
        status = ck_conv2d_forward_packed(x, g.C, g.H, g.W, packed, bias, g.K, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, y);
        snprintf(what, sizeof what, "conv forward, packed weights, %d->%d at %dx%d (status %d)", g.C, g.K, g.H, g.W, status);
        expect_close(what, y, ref, outCount, 1e-5);
        free(packed);
    }
    for (int n = 1; n <= 3; n += 2) {
        float *s = randoms(n * outCount), *c = malloc(sizeof(float) * n * inCount);
        double *cref = malloc(sizeof(double) * n * inCount);
        naive_backward(g, n, s, w, cref);
        status = g.groups == 1 ? ck_conv2d_backward(n, s, g.K, Ho, Wo, w, g.C, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, c)
                               : ck_grouped_conv_backward(n, s, cg, w, c);
        snprintf(what, sizeof what, "conv backward n=%d %d->%d at %dx%d, %dx%d s%d,%d p%d,%d g%d (status %d)", n, g.C,
                 g.K, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.groups, status);
        expect_close(what, c, cref, n * inCount, 1e-5);
        free(s); free(c); free(cref);
    }
    free(x); free(w); free(bias); free(y); free(ref);
}

// Winograd F(4x4, 3x3), forward and the relevance backward (transposed weights), against direct.
static void check_winograd(int C, int K, int H, int W, int n) {
    geo g = {C, H, W, K, 3, 3, 1, 1, 1, 1, 1};
    long inCount = (long)C * H * W, outCount = (long)K * H * W;
    float *x = randoms(n * inCount), *w = randoms((long)K * C * 9);
    float *U = malloc(sizeof(float) * (size_t)ck_winograd_weights_size(K, C)), *y = malloc(sizeof(float) * n * outCount);
    double *ref = malloc(sizeof(double) * n * outCount);
    char what[128];
    int status = ck_winograd_weights(w, K, C, 0, U);
    for (int m = 0; m < n; m++) naive_forward(g, x + m * inCount, w, NULL, ref + m * outCount);
    status |= ck_winograd_conv3x3(n, x, C, H, W, U, K, y);
    snprintf(what, sizeof what, "Winograd forward n=%d %d->%d at %dx%d (status %d)", n, C, K, H, W, status);
    expect_close(what, y, ref, n * outCount, 1e-5);
    // The backward: U for the adjoint of w, applied to n maps of K channels.
    float *Ub = malloc(sizeof(float) * (size_t)ck_winograd_weights_size(C, K)), *s = randoms(n * outCount);
    float *c = malloc(sizeof(float) * n * inCount);
    double *cref = malloc(sizeof(double) * n * inCount);
    status = ck_winograd_weights(w, C, K, 1, Ub);
    naive_backward(g, n, s, w, cref);
    status |= ck_winograd_conv3x3(n, s, K, H, W, Ub, C, c);
    snprintf(what, sizeof what, "Winograd backward n=%d %d->%d at %dx%d (status %d)", n, C, K, H, W, status);
    expect_close(what, c, cref, n * inCount, 1e-5);
    free(x); free(w); free(U); free(y); free(ref); free(Ub); free(s); free(c); free(cref);
}

// One fused LRP term through a 3x3 layer C -> K by Winograd (s = R / stab(z) on loading, Rin = [Rin
// +] scale * a * conv^T(s) on storing), its relevance R given at the layer's output or, with pool,
// at the output of a 2 x 2 max-pool above it (unpooled to each window's winner on loading).
static void check_winograd_lrp(int C, int K, int H, int W, int n, int pool, int accumulate) {
    geo g = {C, H, W, K, 3, 3, 1, 1, 1, 1, 1};
    long inCount = (long)C * H * W, outCount = (long)K * H * W;
    int Ho = H / 2, Wo = W / 2;
    float *w = randoms((long)K * C * 9), *z = randoms(outCount), *a = randoms(inCount);
    float *R = randoms(n * outCount), *Rp = randoms((long)n * K * Ho * Wo), *Rin = randoms(n * inCount);
    int32_t *argmax = malloc(sizeof(int32_t) * (size_t)(K * Ho * Wo));
    double *s = malloc(sizeof(double) * n * outCount), *cref = malloc(sizeof(double) * n * inCount);
    double *ref = malloc(sizeof(double) * n * inCount);
    float *sf = malloc(sizeof(float) * n * outCount);
    const float eps = 1e-3f, scale = 0.75f;
    z[1] = 0;  // stab(0) = eps
    if (pool) {  // each window's winner at random; R zero off the winners
        for (long i = 0; i < (long)K * Ho * Wo; i++) {
            long py = i / Wo % Ho, px = i % Wo;
            int dy = uniform() > 0, dx = uniform() > 0;
            argmax[i] = (int32_t)((2 * py + dy) * W + 2 * px + dx);
        }
        for (int m = 0; m < n; m++)
            for (long k = 0; k < K; k++)
                for (long q = 0; q < (long)H * W; q++) {
                    long py = q / W / 2, px = q % W / 2;
                    float v = 0;
                    if (py < Ho && px < Wo && argmax[(k * Ho + py) * Wo + px] == q) v = Rp[((m * K + k) * Ho + py) * Wo + px];
                    R[(m * K + k) * H * W + q] = v;
                }
    }
    for (long i = 0; i < n * outCount; i++) {
        double zi = z[i % outCount];
        s[i] = R[i] / (zi + (zi >= 0 ? eps : -eps));
        sf[i] = (float)s[i];
    }
    // naive_backward takes float s: the division rounded to float, as the kernel's is.
    naive_backward(g, n, sf, w, cref);
    for (long i = 0; i < n * inCount; i++) ref[i] = (accumulate ? Rin[i] : 0) + scale * a[i % inCount] * cref[i];
    float *Ub = malloc(sizeof(float) * (size_t)ck_winograd_weights_size(C, K));
    int status = ck_winograd_weights(w, C, K, 1, Ub);
    status |= pool ? ck_winograd_lrp_unpool(n, Rp, argmax, Ho, Wo, 2, 2, z, eps, K, H, W, Ub, C, a, scale, accumulate, Rin)
                   : ck_winograd_lrp(n, R, z, eps, K, H, W, Ub, C, a, scale, accumulate, Rin);
    char what[128];
    snprintf(what, sizeof what, "Winograd LRP term n=%d %d->%d at %dx%d pool=%d accumulate=%d (status %d)", n, C, K, H, W,
             pool, accumulate, status);
    expect_close(what, Rin, ref, n * inCount, 1e-5);
    free(w); free(z); free(a); free(R); free(Rp); free(Rin); free(argmax); free(s); free(cref); free(ref); free(sf); free(Ub);
}

int main(void) {
    printf("C kernels on %s, ISA %s, %d threads\n",
#if defined(__aarch64__)
           "aarch64",
#else
           "this machine",
#endif
           ck_isa_name(ck_isa_active()), ck_get_num_threads());
    check_gemm(37, 300, 129, 0);
    check_gemm(6, 16, 1, 1);
    check_gemm(100, 70, 600, 1);
    geo convs[] = {
        {3, 9, 7, 5, 3, 3, 1, 1, 1, 1, 1},     {7, 11, 13, 17, 3, 3, 2, 2, 0, 0, 1}, {16, 8, 8, 70, 1, 1, 1, 1, 0, 0, 1},
        {5, 10, 9, 13, 5, 3, 2, 1, 2, 1, 1},   {40, 7, 45, 13, 3, 3, 1, 1, 1, 0, 1}, {24, 5, 32, 13, 3, 3, 1, 1, 1, 1, 1},
        {12, 11, 13, 12, 3, 3, 2, 2, 1, 1, 12}, {8, 7, 21, 6, 3, 3, 1, 1, 1, 1, 2},  {16, 6, 6, 32, 1, 1, 1, 1, 0, 0, 4},
    };
    for (size_t i = 0; i < sizeof convs / sizeof convs[0]; i++) check_conv(convs[i]);
    check_winograd(16, 24, 12, 12, 1);
    check_winograd(32, 20, 9, 14, 3);
    check_winograd(64, 64, 8, 8, 5);
    check_winograd(16, 20, 10, 37, 2);  // rows of 10 tiles: runs of 4, 4, 2, and runs cut at panel edges
    check_winograd_lrp(16, 20, 12, 37, 2, 0, 0);
    check_winograd_lrp(17, 24, 13, 30, 3, 0, 1);
    check_winograd_lrp(16, 20, 12, 37, 2, 1, 0);
    check_winograd_lrp(20, 18, 15, 22, 3, 1, 1);
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
