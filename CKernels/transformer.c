// The transformer ops on features-major sequences x (D, T) (feature c of token t at c * T + t), and
// their relevance steps: LayerNorm, GELU, multi-head self-attention (BiLRP.md, the transformer
// rules of Ali et al. 2022 and the true gradients of hp). Every loop runs along the tokens, which
// are contiguous, so the compiler vectorizes it for the ISA the file is built for; the work per
// layer is small next to the linear layers' GEMMs, so there is no per-ISA variant. Tasks own whole
// outputs (a block of tokens, a head, a map), so results never depend on the number of threads.
// Statistics and softmax sums accumulate in double, as the Swift reference does.
#include "internal.h"

#include <math.h>
#include <string.h>

enum { TOKEN_BLOCK = 64 };

static long token_blocks(int T) { return (T + TOKEN_BLOCK - 1) / TOKEN_BLOCK; }

// MARK: - LayerNorm

typedef struct {
    const float *x, *S, *gamma, *beta, *inv_sigma;
    float *y, *out;
    int D, T, exact;
    float eps;
} ln_job;

// Task: a block of tokens. Mean and variance over the D features of each token, then y.
static void ln_forward_block(void *p, long b) {
    ln_job *q = p;
    int t0 = (int)(b * TOKEN_BLOCK), t1 = (int)ck_min(q->T, t0 + TOKEN_BLOCK), nt = t1 - t0, T = q->T;
    double mean[TOKEN_BLOCK], var[TOKEN_BLOCK];
    for (int t = 0; t < nt; t++) mean[t] = var[t] = 0.0;
    for (int c = 0; c < q->D; c++) {
        const float *xr = q->x + (long)c * T + t0;
        for (int t = 0; t < nt; t++) mean[t] += xr[t];
    }
    for (int t = 0; t < nt; t++) mean[t] /= q->D;
    for (int c = 0; c < q->D; c++) {
        const float *xr = q->x + (long)c * T + t0;
        for (int t = 0; t < nt; t++) { double e = xr[t] - mean[t]; var[t] += e * e; }
    }
    float *inv = (float *)q->inv_sigma + t0;
    for (int t = 0; t < nt; t++) var[t] = 1.0 / sqrt(var[t] / q->D + (double)q->eps);
    for (int t = 0; t < nt; t++) inv[t] = (float)var[t];
    for (int c = 0; c < q->D; c++) {
        const float *xr = q->x + (long)c * T + t0;
        float *yr = q->y + (long)c * T + t0;
        float g = q->gamma[c], be = q->beta[c];
        for (int t = 0; t < nt; t++) yr[t] = (float)((xr[t] - mean[t]) * var[t]) * g + be;
    }
}

void ck_layernorm_forward(const float *x, int D, int T, const float *gamma, const float *beta, float eps, float *y,
                          float *inv_sigma) {
    ln_job q = {.x = x, .gamma = gamma, .beta = beta, .inv_sigma = inv_sigma, .y = y, .D = D, .T = T, .eps = eps};
    ck_parallel_for(token_blocks(T), &q, ln_forward_block);
}

// Task (map m, block of tokens). g = gamma S; mean_c g; with exact also mean_c g xh, xh the
// normalized input; then out = x (g - mean - xh mean(g xh)) / sigma.
static void ln_backward_block(void *p, long task) {
    ln_job *q = p;
    long blocks = token_blocks(q->T), m = task / blocks, b = task % blocks;
    int t0 = (int)(b * TOKEN_BLOCK), t1 = (int)ck_min(q->T, t0 + TOKEN_BLOCK), nt = t1 - t0, T = q->T, D = q->D;
    long count = (long)D * T;
    const float *S = q->S + m * count, *inv = q->inv_sigma + t0;
    float *out = q->out + m * count;
    float mu[TOKEN_BLOCK], mean[TOKEN_BLOCK], projected[TOKEN_BLOCK];
    for (int t = 0; t < nt; t++) mu[t] = mean[t] = projected[t] = 0.0f;
    for (int c = 0; c < D; c++) {
        const float *sr = S + (long)c * T + t0;
        float g = q->gamma[c];
        for (int t = 0; t < nt; t++) mean[t] += g * sr[t];
    }
    for (int t = 0; t < nt; t++) mean[t] /= (float)D;
    if (q->exact) {
        for (int c = 0; c < D; c++) {
            const float *xr = q->x + (long)c * T + t0;
            for (int t = 0; t < nt; t++) mu[t] += xr[t];
        }
        for (int t = 0; t < nt; t++) mu[t] /= (float)D;
        for (int c = 0; c < D; c++) {
            const float *xr = q->x + (long)c * T + t0, *sr = S + (long)c * T + t0;
            float g = q->gamma[c];
            for (int t = 0; t < nt; t++) projected[t] += g * sr[t] * ((xr[t] - mu[t]) * inv[t]);
        }
        for (int t = 0; t < nt; t++) projected[t] /= (float)D;
    }
    for (int c = 0; c < D; c++) {
        const float *xr = q->x + (long)c * T + t0, *sr = S + (long)c * T + t0;
        float *o = out + (long)c * T + t0;
        float g = q->gamma[c];
        if (q->exact)
            for (int t = 0; t < nt; t++)
                o[t] = xr[t] * (g * sr[t] - mean[t] - (xr[t] - mu[t]) * inv[t] * projected[t]) * inv[t];
        else
            for (int t = 0; t < nt; t++) o[t] = xr[t] * (g * sr[t] - mean[t]) * inv[t];
    }
}

void ck_layernorm_backward(int n, const float *S, const float *x, int D, int T, const float *gamma,
                           const float *inv_sigma, int exact, float *Rin) {
    ln_job q = {.x = x, .S = S, .gamma = gamma, .inv_sigma = inv_sigma, .out = Rin, .D = D, .T = T, .exact = exact};
    ck_parallel_for((long)n * token_blocks(T), &q, ln_backward_block);
}

// Task (functional m, block of tokens): w <- gamma (w - mean_c w) / sigma, in place.
static void ln_transposed_block(void *p, long task) {
    ln_job *q = p;
    long blocks = token_blocks(q->T), m = task / blocks, b = task % blocks;
    int t0 = (int)(b * TOKEN_BLOCK), t1 = (int)ck_min(q->T, t0 + TOKEN_BLOCK), nt = t1 - t0, T = q->T, D = q->D;
    float *w = q->out + m * (long)D * T;
    const float *inv = q->inv_sigma + t0;
    float mean[TOKEN_BLOCK];
    for (int t = 0; t < nt; t++) mean[t] = 0.0f;
    for (int c = 0; c < D; c++) {
        const float *wr = w + (long)c * T + t0;
        for (int t = 0; t < nt; t++) mean[t] += wr[t];
    }
    for (int t = 0; t < nt; t++) mean[t] /= (float)D;
    for (int c = 0; c < D; c++) {
        float *wr = w + (long)c * T + t0;
        float g = q->gamma[c];
        for (int t = 0; t < nt; t++) wr[t] = g * (wr[t] - mean[t]) * inv[t];
    }
}

void ck_layernorm_transposed(int n, float *w, int D, int T, const float *gamma, const float *inv_sigma) {
    ln_job q = {.gamma = gamma, .inv_sigma = inv_sigma, .out = w, .D = D, .T = T};
    ck_parallel_for((long)n * token_blocks(T), &q, ln_transposed_block);
}

// MARK: - GELU

enum { GELU_CHUNK = 4096 };

typedef struct {
    const float *x;
    float *y;
    long count;
    int slope;
} gelu_job;

// gelu(x) = x Phi(x) (erf, as BERT's "gelu"); with slope: x gelu'(x) = x (Phi(x) + x phi(x)).
static void gelu_chunk(void *p, long b) {
    gelu_job *q = p;
    long i0 = b * GELU_CHUNK, i1 = ck_min(q->count, i0 + GELU_CHUNK);
    const double r2 = 0.70710678118654752440, rpi = 0.39894228040143267794;  // 1/sqrt(2), 1/sqrt(2 pi)
    for (long i = i0; i < i1; i++) {
        double v = q->x[i], phi = 0.5 * (1.0 + erf(v * r2));
        q->y[i] = (float)(q->slope ? v * (phi + v * exp(-0.5 * v * v) * rpi) : v * phi);
    }
}

void ck_gelu_forward(long count, const float *x, float *y) {
    gelu_job q = {x, y, count, 0};
    ck_parallel_for((count + GELU_CHUNK - 1) / GELU_CHUNK, &q, gelu_chunk);
}

void ck_gelu_input_slope(long count, const float *x, float *out) {
    gelu_job q = {x, out, count, 1};
    ck_parallel_for((count + GELU_CHUNK - 1) / GELU_CHUNK, &q, gelu_chunk);
}

// MARK: - Self-attention

typedef struct {
    const float *q, *k, *v, *S, *A;
    float *o, *W, *Rq, *Rk;
    int D, T, heads;
} attn_job;

// Task: head h, a query row i. Scores against every key (the head's dh features), softmax, o.
static void attn_forward_row(void *p, long task) {
    attn_job *j = p;
    int T = j->T, dh = j->D / j->heads, h = (int)(task / T), i = (int)(task % T), c0 = h * dh;
    float *a = j->W + ((long)h * T + i) * T;
    double scale = 1.0 / sqrt((double)dh), top = -INFINITY, total = 0.0;
    double stack[1024];  // the scores in double, as the reference keeps them
    double *z = T <= 1024 ? stack : (double *)ck_malloc((size_t)T * sizeof(double));
    if (!z) return;
    for (int t = 0; t < T; t++) z[t] = 0.0;
    for (int c = c0; c < c0 + dh; c++) {
        double qc = j->q[(long)c * T + i];
        const float *kr = j->k + (long)c * T;
        for (int t = 0; t < T; t++) z[t] += qc * kr[t];
    }
    for (int t = 0; t < T; t++) { z[t] *= scale; if (z[t] > top) top = z[t]; }
    for (int t = 0; t < T; t++) { z[t] = exp(z[t] - top); total += z[t]; }
    for (int t = 0; t < T; t++) a[t] = (float)(z[t] / total);
    if (z != stack) free(z);
    for (int c = c0; c < c0 + dh; c++) {
        const float *vr = j->v + (long)c * T;
        float acc = 0.0f;
        for (int t = 0; t < T; t++) acc += a[t] * vr[t];
        j->o[(long)c * T + i] = acc;
    }
}

int ck_attention_forward(const float *q, const float *k, const float *v, int D, int T, int heads, float *o, float *A) {
    unsigned long before = ck_alloc_failures();
    attn_job j = {.q = q, .k = k, .v = v, .o = o, .W = A, .D = D, .T = T, .heads = heads};
    ck_parallel_for((long)heads * T, &j, attn_forward_row);
    return ck_status_since(before);
}

// Task (map m, feature c): Rv[c, j] = v[c, j] sum_i A_h[i, j] S[c, i], h the head of c.
static void attn_value_row(void *p, long task) {
    attn_job *j = p;
    int T = j->T, D = j->D, dh = D / j->heads;
    long m = task / D;
    int c = (int)(task % D);
    const float *S = j->S + (m * D + c) * (long)T, *A = j->A + (long)(c / dh) * T * T, *vr = j->v + (long)c * T;
    float *out = j->o + (m * D + c) * (long)T;
    for (int t = 0; t < T; t++) out[t] = 0.0f;
    for (int i = 0; i < T; i++) {
        float s = S[i];
        const float *Ar = A + (long)i * T;
        for (int t = 0; t < T; t++) out[t] += Ar[t] * s;
    }
    for (int t = 0; t < T; t++) out[t] *= vr[t];
}

void ck_attention_value_backward(int n, const float *S, const float *v, int D, int T, int heads, const float *A,
                                 float *Rv) {
    attn_job j = {.v = v, .S = S, .A = A, .o = Rv, .D = D, .T = T, .heads = heads};
    ck_parallel_for((long)n * D, &j, attn_value_row);
}

// Task (map m, head h): dA[i, j] = sum_c G[c, i] v[c, j]; dZ = A (dA - rowsum(A dA)) / sqrt(dh);
// Rq[c, i] = q[c, i] sum_j dZ[i, j] k[c, j]; Rk[c, j] = k[c, j] sum_i dZ[i, j] q[c, i].
static void attn_score_head(void *p, long task) {
    attn_job *j = p;
    int T = j->T, D = j->D, heads = j->heads, dh = D / heads;
    long m = task / heads;
    int h = (int)(task % heads), c0 = h * dh;
    const float *G = j->S + m * (long)D * T, *A = j->A + (long)h * T * T;
    float *Rq = j->Rq + m * (long)D * T, *Rk = j->Rk + m * (long)D * T;
    float *dZ = (float *)ck_malloc((size_t)T * T * sizeof(float));
    if (!dZ) return;
    memset(dZ, 0, (size_t)T * T * sizeof(float));
    for (int c = c0; c < c0 + dh; c++) {
        const float *gr = G + (long)c * T, *vr = j->v + (long)c * T;
        for (int i = 0; i < T; i++) {
            float g = gr[i];
            float *row = dZ + (long)i * T;
            for (int t = 0; t < T; t++) row[t] += g * vr[t];
        }
    }
    float scale = 1.0f / sqrtf((float)dh);
    for (int i = 0; i < T; i++) {
        float *row = dZ + (long)i * T;
        const float *Ar = A + (long)i * T;
        float rowsum = 0.0f;
        for (int t = 0; t < T; t++) rowsum += Ar[t] * row[t];
        for (int t = 0; t < T; t++) row[t] = Ar[t] * (row[t] - rowsum) * scale;
    }
    for (int c = c0; c < c0 + dh; c++) {
        const float *qr = j->q + (long)c * T, *kr = j->k + (long)c * T;
        float *rq = Rq + (long)c * T, *rk = Rk + (long)c * T;
        for (int t = 0; t < T; t++) rk[t] = 0.0f;
        for (int i = 0; i < T; i++) {
            const float *row = dZ + (long)i * T;
            float gq = 0.0f, qi = qr[i];
            for (int t = 0; t < T; t++) { gq += row[t] * kr[t]; rk[t] += row[t] * qi; }
            rq[i] = qi * gq;
        }
        for (int t = 0; t < T; t++) rk[t] *= kr[t];
    }
    free(dZ);
}

int ck_attention_score_backward(int n, const float *G, const float *q, const float *k, const float *v, int D, int T,
                                int heads, const float *A, float *Rq, float *Rk) {
    unsigned long before = ck_alloc_failures();
    attn_job j = {.q = q, .k = k, .v = v, .S = G, .A = A, .Rq = Rq, .Rk = Rk, .D = D, .T = T, .heads = heads};
    ck_parallel_for((long)n * heads, &j, attn_score_head);
    return ck_status_since(before);
}
