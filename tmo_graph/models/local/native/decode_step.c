/* One decoding step of a Llama-architecture model with 4-bit weights, in one call.
 *
 * Built on first use by tmo_graph/models/local/native.py (cc -O3 -march=native -fopenmp)
 * and called through ctypes with pointers into the decoder's own tensors. It does what
 * Decoder.forward does for one token, with the same weights and the same key/value cache,
 * but without a Python call and a PyTorch dispatch per operation: for a model this small
 * those took about 4 ms a token beside 6 ms of products (the whole step here: about 6 ms).
 *
 * Weights: each row in groups of 32 inputs, a group being 16 bytes (weight j in the low
 * nibble of byte j, weight j + 16 in the high nibble), its step and its minimum in float16:
 * w = step * q + min (the GGUF's Q4_1 blocks, the same bytes a weight). The gate and up
 * projections are one matrix, gate first. Activations stay float32 (no int8 rounding of the
 * inputs, unlike llama.cpp). Output layer: int8 codes with one scale per row.
 *
 * Also here, at the end: tmo_prompt_attention, the causal attention of a prompt's tokens,
 * called by Decoder.forward between PyTorch's matrix products.
 */
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

#define GROUP 32

typedef struct {
    int64_t rows, cols;
    const uint8_t *nibbles; /* rows * cols / 2 */
    const uint16_t *step;   /* rows * cols / GROUP, float16 (the GGUF's own) */
    const uint16_t *low;    /* rows * cols / GROUP, float16 */
} Q4;

typedef struct {
    const float *attn_norm, *mlp_norm;
    Q4 qkv, out, gate_up, down;
} Layer;

typedef struct {
    int64_t layers, hidden, heads, kv_heads, head_dim, intermediate, vocab;
    float eps;
    const float *embed;      /* vocab * hidden */
    const float *final_norm; /* hidden */
    const int8_t *head_codes;/* vocab * hidden */
    const float *head_scale; /* vocab */
    const Layer *layer;
} Model;

static inline float half(uint16_t h) {
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    float f;
    if (exp == 0) f = ldexpf((float)man, -24);                        /* zero, subnormal */
    else if (exp == 31) f = man ? NAN : INFINITY;
    else f = ldexpf((float)(man | 0x400), (int)exp - 25);
    return sign ? -f : f;
#endif
}

/* one row of a 4-bit matrix times x: per group step * (q . x) + min * sum(x) */
static inline float row_q4(const Q4 *m, int64_t r, const float *x, const float *xsum) {
    const int64_t groups = m->cols / GROUP;
    const uint8_t *b = m->nibbles + r * (m->cols / 2);
    const uint16_t *step = m->step + r * groups, *low = m->low + r * groups;
#ifdef __AVX512F__
    float lows = 0.0f;
    /* two groups a round, each into its own sums: no round waits on the one before */
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    const __m128i mask = _mm_set1_epi8(0x0F);
    int64_t g = 0;
    for (; g + 2 <= groups; g += 2) {
        __m128i b0 = _mm_loadu_si128((const __m128i *)(b + g * 16));
        __m128i b1 = _mm_loadu_si128((const __m128i *)(b + g * 16 + 16));
        __m512 t0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b0, mask))),
                                  _mm512_loadu_ps(x + g * GROUP));
        __m512 t1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b1, mask))),
                                  _mm512_loadu_ps(x + g * GROUP + GROUP));
        t0 = _mm512_fmadd_ps(
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b0, 4), mask))),
            _mm512_loadu_ps(x + g * GROUP + 16), t0);
        t1 = _mm512_fmadd_ps(
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b1, 4), mask))),
            _mm512_loadu_ps(x + g * GROUP + GROUP + 16), t1);
        acc0 = _mm512_fmadd_ps(t0, _mm512_set1_ps(half(step[g])), acc0);
        acc1 = _mm512_fmadd_ps(t1, _mm512_set1_ps(half(step[g + 1])), acc1);
        lows += half(low[g]) * xsum[g] + half(low[g + 1]) * xsum[g + 1];
    }
    for (; g < groups; g++) {
        __m128i b0 = _mm_loadu_si128((const __m128i *)(b + g * 16));
        __m512 t0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b0, mask))),
                                  _mm512_loadu_ps(x + g * GROUP));
        t0 = _mm512_fmadd_ps(
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b0, 4), mask))),
            _mm512_loadu_ps(x + g * GROUP + 16), t0);
        acc0 = _mm512_fmadd_ps(t0, _mm512_set1_ps(half(step[g])), acc0);
        lows += half(low[g]) * xsum[g];
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + lows;
#else
    float total = 0.0f;
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *q = b + g * 16;
        const float *xg = x + g * GROUP;
        float s = 0.0f;
        for (int j = 0; j < 16; j++) s += (q[j] & 15) * xg[j] + (q[j] >> 4) * xg[j + 16];
        total += half(step[g]) * s + half(low[g]) * xsum[g];
    }
    return total;
#endif
}

/* per group of 32 inputs, their sum (the minimum's share of each row's product) */
static void group_sums(const float *x, int64_t n, float *sums) {
    for (int64_t g = 0; g < n / GROUP; g++) {
        float s = 0.0f;
        for (int j = 0; j < GROUP; j++) s += x[g * GROUP + j];
        sums[g] = s;
    }
}

static void rms_norm(const float *x, const float *w, float *out, int64_t n, float eps) {
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    const float k = 1.0f / sqrtf(ss / n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * k * w[i];
}

static inline float dot(const float *a, const float *b, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Reads `token` at position `pos` (the cache holds positions 0..pos-1; this one is written)
 * and writes the logits of the int8 output layer (before refinement) and the final normed
 * hidden state. rotation: (cos, sin) pairs for this position, head_dim / 2 of them.
 * shared: (heads + 2 * kv_heads) * head_dim + heads * head_dim + hidden + intermediate
 * floats. Every thread keeps its own copy of the residual stream and of the normed inputs,
 * so threads meet only after each product (five times a layer). Returns 0. */
int tmo_decode_step(const Model *m, int64_t token, int64_t pos, const float *rotation,
                    float *keys, float *values, int64_t capacity, float *logits,
                    float *final_hidden, float *shared) {
    const int64_t H = m->hidden, nh = m->heads, nkv = m->kv_heads, d = m->head_dim;
    const int64_t q_size = nh * d, k_size = nkv * d, inter = m->intermediate;
    const int64_t width = inter > H ? inter : H, per_group = nh / nkv;
    float *qkv = shared;          /* the qkv product */
    float *att = qkv + q_size + 2 * k_size;
    float *y = att + q_size;      /* the out and down products */
    float *act = y + H;           /* silu(gate) * up */
#pragma omp parallel
    {
        float x[H], h[width], qk[q_size + k_size], sums[width / GROUP + 1], p[pos + 1];
        memcpy(x, m->embed + token * H, H * sizeof(float));
        for (int64_t l = 0; l < m->layers; l++) {
            const Layer *L = m->layer + l;
            float *K = keys + l * nkv * capacity * d, *V = values + l * nkv * capacity * d;
            rms_norm(x, L->attn_norm, h, H, m->eps);
            group_sums(h, H, sums);
#pragma omp for schedule(static)
            for (int64_t r = 0; r < L->qkv.rows; r++) qkv[r] = row_q4(&L->qkv, r, h, sums);
            for (int64_t i = 0; i < (q_size + k_size) / 2; i++) { /* rotary, in pairs */
                const float c = rotation[2 * (i % (d / 2))], s = rotation[2 * (i % (d / 2)) + 1];
                const float a = qkv[2 * i], b = qkv[2 * i + 1];
                qk[2 * i] = a * c - b * s;
                qk[2 * i + 1] = a * s + b * c;
            }
            const float *v_new = qkv + q_size + k_size;
#pragma omp single nowait
            for (int64_t g = 0; g < nkv; g++) { /* read by the next steps, not this one */
                memcpy(K + (g * capacity + pos) * d, qk + q_size + g * d, d * sizeof(float));
                memcpy(V + (g * capacity + pos) * d, v_new + g * d, d * sizeof(float));
            }
#pragma omp for schedule(static)
            for (int64_t head = 0; head < nh; head++) {
                const int64_t g = head / per_group;
                const float *q = qk + head * d;
                const float *Kg = K + g * capacity * d, *Vg = V + g * capacity * d;
                const float scale = 1.0f / sqrtf((float)d);
                float top = -INFINITY, total = 0.0f;
                for (int64_t t = 0; t < pos; t++) {
                    p[t] = dot(q, Kg + t * d, d) * scale;
                    if (p[t] > top) top = p[t];
                }
                p[pos] = dot(q, qk + q_size + g * d, d) * scale; /* this token's own key */
                if (p[pos] > top) top = p[pos];
                for (int64_t t = 0; t <= pos; t++) total += (p[t] = expf(p[t] - top));
                float *o = att + head * d;
                for (int64_t i = 0; i < d; i++) o[i] = 0.0f;
                for (int64_t t = 0; t <= pos; t++) {
                    const float w = p[t] / total, *v = t < pos ? Vg + t * d : v_new + g * d;
                    for (int64_t i = 0; i < d; i++) o[i] += w * v[i];
                }
            }
            group_sums(att, q_size, sums);
#pragma omp for schedule(static)
            for (int64_t r = 0; r < H; r++) y[r] = row_q4(&L->out, r, att, sums);
            for (int64_t i = 0; i < H; i++) x[i] += y[i];
            rms_norm(x, L->mlp_norm, h, H, m->eps);
            group_sums(h, H, sums);
#pragma omp for schedule(static)
            for (int64_t i = 0; i < inter; i++) { /* gate row i and up row inter + i */
                const float g = row_q4(&L->gate_up, i, h, sums);
                act[i] = g / (1.0f + expf(-g)) * row_q4(&L->gate_up, inter + i, h, sums);
            }
            group_sums(act, inter, sums);
#pragma omp for schedule(static)
            for (int64_t r = 0; r < H; r++) y[r] = row_q4(&L->down, r, act, sums);
            for (int64_t i = 0; i < H; i++) x[i] += y[i];
        }
        rms_norm(x, m->final_norm, h, H, m->eps);
#pragma omp single nowait
        memcpy(final_hidden, h, H * sizeof(float));
#pragma omp for schedule(static)
        for (int64_t r = 0; r < m->vocab; r++) {
            const int8_t *c = m->head_codes + r * H;
#ifdef __AVX512F__
            __m512 acc = _mm512_setzero_ps();
            int64_t i = 0;
            for (; i + 16 <= H; i += 16) {
                __m512 w = _mm512_cvtepi32_ps(
                    _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(c + i))));
                acc = _mm512_fmadd_ps(w, _mm512_loadu_ps(h + i), acc);
            }
            float s = _mm512_reduce_add_ps(acc);
            for (; i < H; i++) s += c[i] * h[i];
#else
            float s = 0.0f;
            for (int64_t i = 0; i < H; i++) s += c[i] * h[i];
#endif
            logits[r] = s * m->head_scale[r];
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- prompt attention
 *
 * Attention of n prompt tokens (positions start..start+n-1) over one layer's cache, which
 * already holds their keys and values: query i sees keys 0..start+i. PyTorch's fused
 * attention kernel read a 300-token prompt at about a third of these cores' float32 peak;
 * this one blocks the work so that each key and value, once loaded, serves several queries.
 *
 * q: query i, head h at q[i * q_stride + h * d]; keys, values: (kv_heads, capacity, d);
 * out: (n, heads * d). A task is a block of QUERY_BLOCK queries times the heads sharing a
 * key/value head: its rows are (query, head) pairs, query-major, so that neighbouring rows
 * see nearly the same keys. Float32 throughout, exp to within a few ulp. Returns 0, or 1 if
 * a buffer could not be allocated. */
#define QUERY_BLOCK 8

#ifdef __AVX512F__
static inline __m512 exp_ps(__m512 x) { /* Cephes' expf: range reduction and a polynomial */
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}
#endif

/* softmax of row[0..seen), in place; row[seen..width) set to 0 */
static void softmax_row(float *row, int64_t seen, int64_t width) {
    float top = -INFINITY, total = 0.0f;
    int64_t j = 0;
#ifdef __AVX512F__
    __m512 vtop = _mm512_set1_ps(-INFINITY), vtotal = _mm512_setzero_ps();
    for (; j + 16 <= seen; j += 16) vtop = _mm512_max_ps(vtop, _mm512_loadu_ps(row + j));
    top = _mm512_reduce_max_ps(vtop);
    for (int64_t k = j; k < seen; k++) top = row[k] > top ? row[k] : top;
    const __m512 shift = _mm512_set1_ps(top);
    for (j = 0; j + 16 <= seen; j += 16) {
        const __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(row + j), shift));
        _mm512_storeu_ps(row + j, e);
        vtotal = _mm512_add_ps(vtotal, e);
    }
    total = _mm512_reduce_add_ps(vtotal);
#else
    for (int64_t k = 0; k < seen; k++) top = row[k] > top ? row[k] : top;
#endif
    for (; j < seen; j++) total += (row[j] = expf(row[j] - top));
    const float inverse = 1.0f / total;
    for (j = 0; j < seen; j++) row[j] *= inverse;
    for (; j < width; j++) row[j] = 0.0f;
}

int tmo_prompt_attention(const float *q, int64_t q_stride, const float *keys,
                         const float *values, int64_t capacity, int64_t n, int64_t start,
                         int64_t heads, int64_t kv_heads, int64_t d, float *out) {
    const int64_t group = heads / kv_heads, blocks = (n + QUERY_BLOCK - 1) / QUERY_BLOCK;
    const int64_t tasks = kv_heads * blocks, width = (start + n + 15) / 16 * 16;
    const int64_t max_rows = (QUERY_BLOCK * group + 3) / 4 * 4;
    const float scale = 1.0f / sqrtf((float)d);
    int failed = 0;
#pragma omp parallel
    {
        float *scores = malloc(max_rows * width * sizeof(float)); /* rows x keys */
        float *kt = malloc(d * 16 * sizeof(float));              /* 16 keys, transposed */
        if (!scores || !kt) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) {
            if (!scores || !kt) continue; /* reported: the caller reads the prompt again */
            const int64_t task = tasks - 1 - t; /* the latest queries (the most keys) first */
            const int64_t g = task % kv_heads, i0 = task / kv_heads * QUERY_BLOCK;
            const int64_t i1 = i0 + QUERY_BLOCK < n ? i0 + QUERY_BLOCK : n;
            const int64_t rows = (i1 - i0) * group, seen_all = start + i1;
            const float *K = keys + g * capacity * d, *V = values + g * capacity * d;
            const float *qrow[max_rows];
            int64_t seen[max_rows];
            for (int64_t r = 0; r < max_rows; r++) { /* rows past the last repeat it */
                const int64_t rr = r < rows ? r : rows - 1, i = i0 + rr / group;
                qrow[r] = q + i * q_stride + (g * group + rr % group) * d;
                seen[r] = start + i + 1;
            }
            for (int64_t j0 = 0; j0 < seen_all; j0 += 16) { /* scores, 16 keys at a time */
                const int64_t nk = seen_all - j0 < 16 ? seen_all - j0 : 16;
                for (int64_t c = 0; c < d; c++)
                    for (int64_t jj = 0; jj < 16; jj++)
                        kt[c * 16 + jj] = jj < nk ? K[(j0 + jj) * d + c] * scale : 0.0f;
                for (int64_t r0 = 0; r0 < rows; r0 += 4) {
                    if (seen[r0 + 3] <= j0) continue; /* none of these four sees these keys */
#ifdef __AVX512F__
                    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                    for (int64_t c = 0; c < d; c++) {
                        const __m512 k = _mm512_loadu_ps(kt + c * 16);
                        a0 = _mm512_fmadd_ps(_mm512_set1_ps(qrow[r0][c]), k, a0);
                        a1 = _mm512_fmadd_ps(_mm512_set1_ps(qrow[r0 + 1][c]), k, a1);
                        a2 = _mm512_fmadd_ps(_mm512_set1_ps(qrow[r0 + 2][c]), k, a2);
                        a3 = _mm512_fmadd_ps(_mm512_set1_ps(qrow[r0 + 3][c]), k, a3);
                    }
                    _mm512_storeu_ps(scores + r0 * width + j0, a0);
                    _mm512_storeu_ps(scores + (r0 + 1) * width + j0, a1);
                    _mm512_storeu_ps(scores + (r0 + 2) * width + j0, a2);
                    _mm512_storeu_ps(scores + (r0 + 3) * width + j0, a3);
#else
                    for (int64_t r = r0; r < r0 + 4; r++)
                        for (int64_t jj = 0; jj < 16; jj++) {
                            float s = 0.0f;
                            for (int64_t c = 0; c < d; c++) s += qrow[r][c] * kt[c * 16 + jj];
                            scores[r * width + j0 + jj] = s;
                        }
#endif
                }
            }
            for (int64_t r = 0; r < rows; r++) softmax_row(scores + r * width, seen[r], seen_all);
            for (int64_t r0 = 0; r0 < rows; r0 += 4) { /* weighted values, 4 rows at a time */
                const int64_t last = r0 + 3 < rows ? r0 + 3 : rows - 1, seen4 = seen[last];
                const float *p0 = scores + r0 * width, *p1 = p0 + width, *p2 = p1 + width;
                const float *p3 = p2 + width;
                float o[4][d];
                int64_t c0 = 0;
#ifdef __AVX512F__
                for (; c0 + 64 <= d; c0 += 64) { /* 64 columns: 16 accumulators */
                    __m512 a[4][4];
                    for (int64_t r = 0; r < 4; r++)
                        for (int64_t m = 0; m < 4; m++) a[r][m] = _mm512_setzero_ps();
                    for (int64_t j = 0; j < seen4; j++) {
                        const float *v = V + j * d + c0;
                        const __m512 w0 = _mm512_set1_ps(p0[j]), w1 = _mm512_set1_ps(p1[j]);
                        const __m512 w2 = _mm512_set1_ps(p2[j]), w3 = _mm512_set1_ps(p3[j]);
                        for (int64_t m = 0; m < 4; m++) {
                            const __m512 x = _mm512_loadu_ps(v + 16 * m);
                            a[0][m] = _mm512_fmadd_ps(w0, x, a[0][m]);
                            a[1][m] = _mm512_fmadd_ps(w1, x, a[1][m]);
                            a[2][m] = _mm512_fmadd_ps(w2, x, a[2][m]);
                            a[3][m] = _mm512_fmadd_ps(w3, x, a[3][m]);
                        }
                    }
                    for (int64_t r = 0; r < 4; r++)
                        for (int64_t m = 0; m < 4; m++)
                            _mm512_storeu_ps(o[r] + c0 + 16 * m, a[r][m]);
                }
#endif
                for (; c0 < d; c0++) { /* the rest (every column without AVX-512) */
                    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
                    for (int64_t j = 0; j < seen4; j++) {
                        const float x = V[j * d + c0];
                        a0 += p0[j] * x, a1 += p1[j] * x, a2 += p2[j] * x, a3 += p3[j] * x;
                    }
                    o[0][c0] = a0, o[1][c0] = a1, o[2][c0] = a2, o[3][c0] = a3;
                }
                for (int64_t r = r0; r <= last; r++) {
                    const int64_t i = i0 + r / group, h = g * group + r % group;
                    memcpy(out + i * heads * d + h * d, o[r - r0], d * sizeof(float));
                }
            }
        }
        free(scores);
        free(kt);
    }
    return failed;
}
