/* resize.c: see resize.h. */
#include "resize.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* fl_v8 values only cross always-inline functions: the AVX/SSE argument-passing ABI note does not apply */
#pragma GCC diagnostic ignored "-Wpsabi"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FL_X86 1
#endif

/* 8 floats; GCC lowers the arithmetic to one AVX register (avx2 build of the kernel) or two SSE ones.
 * aligned(4): loads and stores through it may be unaligned.  No fused multiply-add anywhere (ISO C's
 * fp-contract=off), so both builds give the same bits. */
typedef float fl_v8 __attribute__((vector_size(32), aligned(4)));
typedef int32_t fl_v8i __attribute__((vector_size(32), aligned(4)));
typedef int16_t fl_v8s_load __attribute__((vector_size(16), aligned(2)));

/* lanes of a where mask is set, else b */
static inline __attribute__((always_inline)) fl_v8 fl_select(fl_v8i mask, fl_v8 a, fl_v8 b) {
  return (fl_v8)(((fl_v8i)a & mask) | ((fl_v8i)b & ~mask));
}

static inline __attribute__((always_inline)) fl_v8 fl_splat(float value) {
  const fl_v8 first = {value};
  return __builtin_shuffle(first, (fl_v8i){0, 0, 0, 0, 0, 0, 0, 0}); /* one broadcast instruction */
}

/* ---------------------------------------------------------------- plan */

enum { FL_AXIS_DIRECT = 0, FL_AXIS_TRIANGLE = 1, FL_AXIS_REPLICATE = 2 };

/* Resampling weights of one axis of one component, over the component's native pixel plane. */
typedef struct {
  int count;     /* outputs, padded to a multiple of 8 (padding repeats the last valid output) */
  int valid;     /* outputs the box asks for */
  int kmax;      /* stride of weights */
  int first;     /* native pixels [first, last) are read */
  int last;
  int *start;    /* count entries: first native pixel of output i (owns the allocation of taps too) */
  int *taps;     /* count entries: number of taps (start + count) */
  float *weights;/* count * kmax */
  size_t out_capacity, weight_capacity;
} fl_axis;

/* One axis's resampling fused with the forward DCT: output block b's 8 coefficients (u) are
 * sum_k matrix[(b * span + k) * 8 + u] * native[start[b] + k], k < length[b]. */
typedef struct {
  int blocks, span;
  int *start;      /* blocks entries (owns the allocation of length too) */
  int *length;     /* blocks entries */
  float *matrix;   /* blocks * span * 8 */
  size_t index_capacity, matrix_capacity;
} fl_fused;

typedef struct {
  fl_axis y, x;
  fl_fused fy, fx;
  int grid_h, grid_w;   /* output blocks of this component: (count / 8) */
  int half;             /* replicated onto the luma grid: block = resized block / 2 */
} fl_component_plan;

struct fl_resize_scratch {
  fl_component_plan comp[3];
  int num_components;
  int out_h8, out_w8;
  double *taps_scratch;   /* one output's full-plane and native taps, double */
  size_t taps_capacity;
  float *strip;           /* one row of IDCT'd blocks: 8 x (num_cols * 8) */
  size_t strip_capacity;
  float *rows;            /* horizontal pass: (y.last - y.first) x grid_w x 8 (u) */
  size_t rows_capacity;
  float *blocks;          /* vertical pass: grid_h x 8 (v) x grid_w x 8 (u) */
  size_t blocks_capacity;
  int *offsets;           /* store: out_w8 block offsets */
  size_t offsets_capacity;
  float *zero_row;        /* a block row of zeros: 8 x grid_w x 8 */
  size_t zero_capacity;
};

static int fl_grow(void **buffer, size_t *capacity, size_t bytes) {
  if (bytes <= *capacity) return 1;
  void *grown = realloc(*buffer, bytes);
  if (!grown) return 0;
  *buffer = grown;
  *capacity = bytes;
  return 1;
}

fl_resize_scratch *fl_resize_scratch_new(void) {
  return (fl_resize_scratch *)calloc(1, sizeof(fl_resize_scratch));
}

void fl_resize_scratch_free(fl_resize_scratch *scratch) {
  if (!scratch) return;
  for (int c = 0; c < 3; c++) {
    fl_axis *axes[2] = {&scratch->comp[c].y, &scratch->comp[c].x};
    for (int a = 0; a < 2; a++) {
      free(axes[a]->start);
      free(axes[a]->weights);
    }
    free(scratch->comp[c].fy.start);
    free(scratch->comp[c].fy.matrix);
    free(scratch->comp[c].fx.start);
    free(scratch->comp[c].fx.matrix);
  }
  free(scratch->taps_scratch);
  free(scratch->strip);
  free(scratch->rows);
  free(scratch->blocks);
  free(scratch->offsets);
  free(scratch->zero_row);
  free(scratch);
}

int fl_resize_check(const fl_header *header, const fl_resize_spec *spec, int out_h8, int out_w8, char *message,
                    size_t message_len) {
  if (out_h8 <= 0 || out_w8 <= 0 || out_h8 > (1 << 16) || out_w8 > (1 << 16)) {
    snprintf(message, message_len, "output grid %dx%d blocks is not positive (or over 65536)", out_h8, out_w8);
    return FL_ERR_ARGUMENT;
  }
  if ((spec->support != FL_SUPPORT_BOX && spec->support != FL_SUPPORT_IMAGE) ||
      (spec->chroma != FL_CHROMA_420 && spec->chroma != FL_CHROMA_444)) {
    snprintf(message, message_len, "unknown support or chroma code");
    return FL_ERR_ARGUMENT;
  }
  double top = spec->top, left = spec->left, height = spec->height, width = spec->width;
  const char *why = NULL;
  if (!isfinite(top) || !isfinite(left) || !isfinite(height) || !isfinite(width)) why = "is not finite";
  else if (height <= 0 || width <= 0) why = "has a zero or negative size";
  else if (top < 0 || left < 0 || top + height > header->height || left + width > header->width)
    why = "is not inside the image";
  else if (height * 65536.0 < 1.0 || width * 65536.0 < 1.0) why = "is smaller than 1/65536 pixel";
  if (why) {
    snprintf(message, message_len, "box (top=%g, left=%g, height=%g, width=%g) %s of %dx%d (height x width)", top, left,
             height, width, why, header->height, header->width);
    return FL_ERR_BOX;
  }
  return FL_OK;
}

static double fl_bilinear(double x) {
  if (x < 0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

/* Pillow's precompute_coeffs (Resample.c) for BILINEAR over the plane pixels [lo, hi), box [in0, in1) in plane
 * coordinates, then each plane pixel expressed in native pixels (mode: direct, libjpeg's triangle "fancy"
 * upsampling, or replication by `ratio`), zero taps trimmed.  native_size: pixels of the native plane. */
static int fl_axis_build(fl_resize_scratch *scratch, fl_axis *axis, int mode, int ratio, int native_size, double lo,
                         double hi, double in0, double in1, int valid, int count) {
  const double scale = (in1 - in0) / valid;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 1.0 * filterscale;
  const double ss = 1.0 / filterscale;
  const int ksize = (int)ceil(support) * 2 + 1;
  const int kmax = ksize + 3; /* triangle / replication spread a tap over at most 2 more native pixels */
  const int in_size = (int)(hi - lo);
  const int offset = (int)lo;
  if (!fl_grow((void **)&axis->start, &axis->out_capacity, (size_t)count * 2 * sizeof(int))) return FL_ERR_NOMEM;
  axis->taps = axis->start + count;
  if (!fl_grow((void **)&axis->weights, &axis->weight_capacity, (size_t)count * kmax * sizeof(float))) return FL_ERR_NOMEM;
  if (!fl_grow((void **)&scratch->taps_scratch, &scratch->taps_capacity, (size_t)(ksize + kmax + 8) * sizeof(double)))
    return FL_ERR_NOMEM;
  double *plane_w = scratch->taps_scratch;       /* ksize */
  double *native_w = scratch->taps_scratch + ksize; /* kmax + ... */
  axis->kmax = kmax;
  axis->valid = valid;
  axis->count = count;
  axis->first = native_size;
  axis->last = 0;
  for (int i = 0; i < valid; i++) {
    const double center = (in0 - lo) + (i + 0.5) * scale;
    double total = 0.0;
    int xmin = (int)(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = (int)(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    if (xmax > ksize) xmax = ksize; /* cannot happen; keeps the scratch bound obvious */
    for (int x = 0; x < xmax; x++) {
      double w = fl_bilinear((x + xmin - center + 0.5) * ss);
      plane_w[x] = w;
      total += w;
    }
    for (int x = 0; x < xmax; x++)
      if (total != 0.0) plane_w[x] /= total;
    /* plane pixel p = offset + xmin + x -> native taps */
    int p0 = offset + xmin;
    int nfirst, nspan;
    if (mode == FL_AXIS_DIRECT) {
      nfirst = p0;
      nspan = xmax;
    } else if (mode == FL_AXIS_TRIANGLE) {
      nfirst = (p0 >> 1) - 1;
      nspan = ((p0 + xmax - 1) >> 1) + 2 - nfirst;
    } else {
      nfirst = p0 / ratio;
      nspan = (p0 + xmax - 1) / ratio + 1 - nfirst;
    }
    double *composed = plane_w; /* DIRECT: the plane is the native plane */
    if (mode != FL_AXIS_DIRECT) {
      composed = native_w;
      for (int k = 0; k < nspan; k++) native_w[k] = 0.0;
    }
    for (int x = 0; x < xmax && mode != FL_AXIS_DIRECT; x++) {
      int p = p0 + x;
      double w = plane_w[x];
      if (mode == FL_AXIS_TRIANGLE) {
        int near = p >> 1;
        int far = (p & 1) ? near + 1 : near - 1;
        if (far < 0) far = 0;
        if (far > native_size - 1) far = native_size - 1;
        if (near > native_size - 1) near = native_size - 1;
        native_w[near - nfirst] += 0.75 * w;
        native_w[far - nfirst] += 0.25 * w;
      } else {
        int near = p / ratio;
        if (near > native_size - 1) near = native_size - 1;
        native_w[near - nfirst] += w;
      }
    }
    int begin = 0, end = nspan;
    while (begin < end && composed[begin] == 0.0) begin++;
    while (end > begin && composed[end - 1] == 0.0) end--;
    if (begin == end) { /* all-zero weights (cannot happen for a valid box): read one pixel with weight 0 */
      end = begin + 1;
    }
    int first = nfirst + begin;
    if (first < 0) first = 0; /* only zero taps can lie below 0 (trimmed) */
    if (first + (end - begin) > native_size) first = native_size - (end - begin);
    axis->start[i] = first;
    axis->taps[i] = end - begin;
    float *weights = axis->weights + (size_t)i * kmax;
    for (int k = 0; k < end - begin; k++) weights[k] = (float)composed[begin + k]; /* taps beyond are not read */
    if (first < axis->first) axis->first = first;
    if (first + end - begin > axis->last) axis->last = first + end - begin;
  }
  for (int i = valid; i < count; i++) {
    axis->start[i] = axis->start[valid - 1];
    axis->taps[i] = axis->taps[valid - 1];
    memcpy(axis->weights + (size_t)i * kmax, axis->weights + (size_t)(valid - 1) * kmax, (size_t)kmax * sizeof(float));
  }
  return FL_OK;
}

static double fl_dct_table[8][8]; /* [u][x] = c(u) cos((2x + 1) u pi / 16): the orthonormal 8-point DCT */
static float fl_dct[8][8];
static float fl_dct_columns[8][8]; /* [x][u] = fl_dct[u][x] */
static double fl_aan_scale[64];    /* [8v + u] = aan(v) aan(u) / 8, aan(0) = 1, aan(k) = sqrt 2 cos(k pi / 16) */
static int fl_dct_ready;

static void fl_dct_init(void) {
  if (__atomic_load_n(&fl_dct_ready, __ATOMIC_ACQUIRE)) return;
  for (int u = 0; u < 8; u++)
    for (int x = 0; x < 8; x++) {
      fl_dct_table[u][x] = (u == 0 ? sqrt(0.125) : 0.5) * cos((2 * x + 1) * u * 3.14159265358979323846 / 16.0);
      fl_dct[u][x] = (float)fl_dct_table[u][x];
      fl_dct_columns[x][u] = fl_dct[u][x];
    }
  for (int k = 0; k < 64; k++) {
    const int v = k / 8, u = k % 8;
    const double scale_v = v ? sqrt(2.0) * cos(v * 3.14159265358979323846 / 16.0) : 1.0;
    const double scale_u = u ? sqrt(2.0) * cos(u * 3.14159265358979323846 / 16.0) : 1.0;
    fl_aan_scale[k] = scale_v * scale_u / 8.0;
  }
  __atomic_store_n(&fl_dct_ready, 1, __ATOMIC_RELEASE);
}

/* The input samples [*first, *last) that output block b (outputs 8b..8b+7) of an axis reads. */
static void fl_block_extent(const fl_axis *axis, int b, int *first, int *last) {
  *first = axis->start[8 * b];
  *last = 0;
  for (int x = 0; x < 8; x++) {
    const int i = 8 * b + x;
    if (axis->start[i] < *first) *first = axis->start[i];
    if (axis->start[i] + axis->taps[i] > *last) *last = axis->start[i] + axis->taps[i];
  }
}

/* Fuses an axis's per-output weights with the DCT of each group of 8 outputs (see fl_fused). */
static int fl_fuse(fl_fused *fused, const fl_axis *axis) {
  const int blocks = axis->count / 8;
  int span = 1;
  for (int b = 0; b < blocks; b++) {
    int first, last;
    fl_block_extent(axis, b, &first, &last);
    if (last - first > span) span = last - first;
  }
  if (!fl_grow((void **)&fused->start, &fused->index_capacity, (size_t)blocks * 2 * sizeof(int)) ||
      !fl_grow((void **)&fused->matrix, &fused->matrix_capacity, (size_t)blocks * span * 8 * sizeof(float)))
    return FL_ERR_NOMEM;
  fused->blocks = blocks;
  fused->span = span;
  fused->length = fused->start + blocks;
  for (int b = 0; b < blocks; b++) {
    int first, last;
    fl_block_extent(axis, b, &first, &last);
    fused->start[b] = first;
    fused->length[b] = last - first;
    float *matrix = fused->matrix + (size_t)b * span * 8;
    memset(matrix, 0, (size_t)span * 8 * sizeof(float));
    for (int x = 0; x < 8; x++) {
      const int i = 8 * b + x;
      const float *weights = axis->weights + (size_t)i * axis->kmax;
      for (int tap = 0; tap < axis->taps[i]; tap++) {
        fl_v8 *column = (fl_v8 *)(matrix + (size_t)(axis->start[i] + tap - first) * 8);
        *column += *(const fl_v8 *)fl_dct_columns[x] * fl_splat(weights[tap]);
      }
    }
  }
  return FL_OK;
}

/* Ceil of a / b for positive ints. */
static int fl_ceil_div(long long a, long long b) { return (int)((a + b - 1) / b); }

int fl_resize_plan(fl_resize_scratch *scratch, const fl_header *header, const fl_resize_spec *spec, int out_h8,
                   int out_w8, fl_coef_window *window) {
  const int components = header->num_components < 3 ? header->num_components : 3;
  fl_dct_init();
  scratch->num_components = components;
  scratch->out_h8 = out_h8;
  scratch->out_w8 = out_w8;
  for (int c = 0; c < FL_MAX_COMPONENTS; c++) {
    window->first_row[c] = window->num_rows[c] = window->first_col[c] = window->num_cols[c] = 0;
  }
  for (int c = 0; c < components; c++) {
    fl_component_plan *plan = &scratch->comp[c];
    const int full_res = c == 0 || spec->chroma == FL_CHROMA_444 || header->num_components == 1;
    plan->half = !full_res;
    const int out_h = full_res ? 8 * out_h8 : 4 * out_h8;
    const int out_w = full_res ? 8 * out_w8 : 4 * out_w8;
    plan->grid_h = fl_ceil_div(out_h, 8);
    plan->grid_w = fl_ceil_div(out_w, 8);
    const int h = header->h_samp[c], v = header->v_samp[c];
    const int hmax = header->max_h_samp, vmax = header->max_v_samp;
    const int native_w = fl_ceil_div((long long)header->width * h, hmax);
    const int native_h = fl_ceil_div((long long)header->height * v, vmax);
    /* libjpeg's upsampler choice (jdsample.c jinit_upsampler) for a full-resolution target */
    int mode_x = FL_AXIS_DIRECT, mode_y = FL_AXIS_DIRECT, ratio_x = 1, ratio_y = 1;
    /* the source is always the full-resolution plane a decoder produces (the native plane upsampled as libjpeg
     * does), also for "420" output: the result is then the resize of what Pillow decodes */
    if (h != hmax || v != vmax) {
      const int rh = hmax % h == 0 ? hmax / h : 0, rv = vmax % v == 0 ? vmax / v : 0;
      if (rh == 2 && rv == 1 && native_w > 2) mode_x = FL_AXIS_TRIANGLE;
      else if (rh == 1 && rv == 2) mode_y = FL_AXIS_TRIANGLE;
      else if (rh == 2 && rv == 2 && native_w > 2) mode_x = mode_y = FL_AXIS_TRIANGLE;
      else if (rh && rv) {
        if (rh > 1) { mode_x = FL_AXIS_REPLICATE; ratio_x = rh; }
        if (rv > 1) { mode_y = FL_AXIS_REPLICATE; ratio_y = rv; }
      }
      /* else: a fractional ratio libjpeg cannot decode: resample the native plane with the scaled box */
    }
    fl_axis *axes[2] = {&plan->y, &plan->x};
    const double box0[2] = {spec->top, spec->left}, boxlen[2] = {spec->height, spec->width};
    const int modes[2] = {mode_y, mode_x}, ratios[2] = {ratio_y, ratio_x};
    const int natives[2] = {native_h, native_w}, fulls[2] = {header->height, header->width};
    const int samp[2] = {v, h}, sampmax[2] = {vmax, hmax};
    const int valid[2] = {out_h, out_w}, count[2] = {8 * plan->grid_h, 8 * plan->grid_w};
    for (int a = 0; a < 2; a++) {
      double in0 = box0[a], in1 = box0[a] + boxlen[a];
      int plane_size = fulls[a];
      if (modes[a] == FL_AXIS_DIRECT) { /* the native plane, box scaled to it (1 on a full-resolution axis) */
        const double f = (double)samp[a] / sampmax[a];
        in0 *= f;
        in1 *= f;
        plane_size = natives[a];
      }
      double lo = 0.0, hi = plane_size;
      if (spec->support == FL_SUPPORT_BOX) {
        lo = floor(in0);
        hi = ceil(in1);
        if (lo < 0) lo = 0;
        if (hi > plane_size) hi = plane_size;
        if (hi <= lo) { /* a sliver of a pixel at the plane's end */
          hi = lo + 1 <= plane_size ? lo + 1 : plane_size;
          lo = hi - 1;
        }
      }
      int status = fl_axis_build(scratch, axes[a], modes[a], ratios[a], natives[a], lo, hi, in0, in1, valid[a], count[a]);
      if (status == FL_OK) status = fl_fuse(a == 0 ? &plan->fy : &plan->fx, axes[a]);
      if (status != FL_OK) return status;
    }
    const int blocks_h = header->blocks_h[c], blocks_w = header->blocks_w[c];
    int row0 = plan->y.first / 8, row1 = (plan->y.last - 1) / 8;
    int col0 = plan->x.first / 8, col1 = (plan->x.last - 1) / 8;
    if (row1 > blocks_h - 1) row1 = blocks_h - 1;
    if (col1 > blocks_w - 1) col1 = blocks_w - 1;
    window->first_row[c] = row0;
    window->num_rows[c] = row1 - row0 + 1;
    window->first_col[c] = col0;
    window->num_cols[c] = col1 - col0 + 1;
  }
  return FL_OK;
}

/* ---------------------------------------------------------------- kernels */

/* 8x8 transpose in registers (GCC emits unpack / shuffle / lane-swap instructions for these masks). */
static inline __attribute__((always_inline)) void fl_transpose8(fl_v8 r[8]) {
  const fl_v8i lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
  const fl_v8i even = {0, 1, 8, 9, 4, 5, 12, 13}, odd = {2, 3, 10, 11, 6, 7, 14, 15};
  const fl_v8i low_lanes = {0, 1, 2, 3, 8, 9, 10, 11}, high_lanes = {4, 5, 6, 7, 12, 13, 14, 15};
  fl_v8 t[8], u[8];
  for (int i = 0; i < 4; i++) {
    t[2 * i] = __builtin_shuffle(r[2 * i], r[2 * i + 1], lo);
    t[2 * i + 1] = __builtin_shuffle(r[2 * i], r[2 * i + 1], hi);
  }
  for (int half = 0; half < 2; half++) { /* rows 0-3, rows 4-7 */
    const int base = 4 * half;
    u[base + 0] = __builtin_shuffle(t[base + 0], t[base + 2], even);
    u[base + 1] = __builtin_shuffle(t[base + 0], t[base + 2], odd);
    u[base + 2] = __builtin_shuffle(t[base + 1], t[base + 3], even);
    u[base + 3] = __builtin_shuffle(t[base + 1], t[base + 3], odd);
  }
  for (int j = 0; j < 4; j++) {
    r[j] = __builtin_shuffle(u[j], u[j + 4], low_lanes);
    r[j + 4] = __builtin_shuffle(u[j], u[j + 4], high_lanes);
  }
}

/* One 8-point inverse DCT (Arai-Agui-Nakajima factorisation) applied to 8 vectors at once: in[k] holds
 * frequency k (pre-scaled by aan(k), see fl_resize_run), out[n] sample n (times 2 sqrt 2). */
static inline __attribute__((always_inline)) void fl_idct8(const fl_v8 in[8], fl_v8 out[8]) {
  const fl_v8 r2 = fl_splat(1.414213562f), a = fl_splat(1.847759065f), b = fl_splat(1.082392200f),
              c = fl_splat(2.613125930f);
  fl_v8 t10 = in[0] + in[4], t11 = in[0] - in[4];
  fl_v8 t13 = in[2] + in[6], t12 = (in[2] - in[6]) * r2 - t13;
  const fl_v8 e0 = t10 + t13, e3 = t10 - t13, e1 = t11 + t12, e2 = t11 - t12;
  const fl_v8 z13 = in[5] + in[3], z10 = in[5] - in[3], z11 = in[1] + in[7], z12 = in[1] - in[7];
  const fl_v8 o7 = z11 + z13;
  const fl_v8 o11 = (z11 - z13) * r2;
  const fl_v8 z5 = (z10 + z12) * a;
  const fl_v8 o10 = z5 - z12 * b, o12 = z5 - z10 * c;
  const fl_v8 o6 = o12 - o7, o5 = o11 - o6, o4 = o10 - o5;
  out[0] = e0 + o7;
  out[7] = e0 - o7;
  out[1] = e1 + o6;
  out[6] = e1 - o6;
  out[2] = e2 + o5;
  out[5] = e2 - o5;
  out[3] = e3 + o4;
  out[4] = e3 - o4;
}

/* Inverse DCT of one block into 8 rows of `stride` floats, clamped to [-128, 127] (a decoder's [0, 255] less the
 * level shift).  qrows: the quantization table times aan(v) aan(u) / 8, by rows.  A DC-only block is a constant. */
static inline __attribute__((always_inline)) void fl_idct_block(const int16_t *coef, const fl_v8 *qrows, float *dst,
                                                                size_t stride) {
  uint64_t ac = 0;
  for (int v = 0; v < 8; v++) {
    uint64_t a, b;
    memcpy(&a, coef + 8 * v, 8);
    memcpy(&b, coef + 8 * v + 4, 8);
    ac |= (v == 0 ? a & ~(uint64_t)0xffff : a) | b;
  }
  const fl_v8 low = fl_splat(-128.0f), high = fl_splat(127.0f);
  if (!ac) {
    fl_v8 fill = fl_splat((float)coef[0] * qrows[0][0]);
    fill = fl_select(fill < low, low, fill);
    fill = fl_select(fill > high, high, fill);
    for (int y = 0; y < 8; y++) *(fl_v8 *)(dst + (size_t)y * stride) = fill;
    return;
  }
  fl_v8 f[8], g[8];
  for (int v = 0; v < 8; v++) {
    fl_v8s_load row;
    memcpy(&row, coef + 8 * v, sizeof row);
    f[v] = __builtin_convertvector(row, fl_v8) * qrows[v];
  }
  fl_idct8(f, g);   /* g[y]: vectors over u */
  fl_transpose8(g); /* g[u]: vectors over y */
  fl_idct8(g, f);   /* f[x]: vectors over y */
  fl_transpose8(f);
  for (int y = 0; y < 8; y++) {
    fl_v8 value = fl_select(f[y] < low, low, f[y]);
    value = fl_select(value > high, high, value);
    *(fl_v8 *)(dst + (size_t)y * stride) = value;
  }
}

/* Output block row `by` from the horizontal pass: blocks[v][bx][u] = sum_k My[k][v] * rows[start + k][bx][u]. */
static inline __attribute__((always_inline)) void fl_vertical_block_row(const fl_fused *fy, int by, const float *rows,
                                                                        int row_first, int grid_w, float *out) {
  const int vectors = grid_w; /* one fl_v8 (u) per block column */
  fl_v8 *target = (fl_v8 *)out;
  const float *matrix = fy->matrix + (size_t)by * fy->span * 8;
  const fl_v8 *source = (const fl_v8 *)(rows + (size_t)(fy->start[by] - row_first) * vectors * 8);
  const int length = fy->length[by];
  for (int v = 0; v < 8; v++) {
    fl_v8 *line = target + v * vectors;
    int i = 0;
    for (; i + 4 <= vectors; i += 4) {
      fl_v8 sum[4] = {fl_splat(0.0f), fl_splat(0.0f), fl_splat(0.0f), fl_splat(0.0f)};
      for (int k = 0; k < length; k++) {
        const fl_v8 weight = fl_splat(matrix[k * 8 + v]);
        const fl_v8 *in = source + (size_t)k * vectors + i;
        for (int j = 0; j < 4; j++) sum[j] += weight * in[j];
      }
      for (int j = 0; j < 4; j++) line[i + j] = sum[j];
    }
    for (; i < vectors; i++) {
      fl_v8 sum = fl_splat(0.0f);
      for (int k = 0; k < length; k++) sum += fl_splat(matrix[k * 8 + v]) * source[(size_t)k * vectors + i];
      line[i] = sum;
    }
  }
}

/* Horizontal pass of one native pixel row (pixels[0] is native column pixels_first):
 * out[bx][u] = sum_k Mx[bx][k][u] * native[start[bx] + k]. */
static inline __attribute__((always_inline)) void fl_horizontal_row(const fl_fused *fx, const float *pixels,
                                                                    int pixels_first, float *out) {
  /* every block reads fx->span pixels (the matrices are zero past a block's length; the strip is padded with
   * zeros), four blocks at a time on independent accumulation chains */
  const int span = fx->span;
  int bx = 0;
  for (; bx + 4 <= fx->blocks; bx += 4) {
    const float *in0 = pixels + (fx->start[bx] - pixels_first), *in1 = pixels + (fx->start[bx + 1] - pixels_first);
    const float *in2 = pixels + (fx->start[bx + 2] - pixels_first), *in3 = pixels + (fx->start[bx + 3] - pixels_first);
    const fl_v8 *matrix = (const fl_v8 *)(fx->matrix + (size_t)bx * span * 8);
    fl_v8 sum0 = fl_splat(0.0f), sum1 = sum0, sum2 = sum0, sum3 = sum0;
    for (int k = 0; k < span; k++) {
      sum0 += fl_splat(in0[k]) * matrix[k];
      sum1 += fl_splat(in1[k]) * matrix[span + k];
      sum2 += fl_splat(in2[k]) * matrix[2 * span + k];
      sum3 += fl_splat(in3[k]) * matrix[3 * span + k];
    }
    fl_v8 *target = (fl_v8 *)(out + (size_t)bx * 8);
    target[0] = sum0;
    target[1] = sum1;
    target[2] = sum2;
    target[3] = sum3;
  }
  for (; bx < fx->blocks; bx++) {
    const float *in = pixels + (fx->start[bx] - pixels_first);
    const fl_v8 *matrix = (const fl_v8 *)(fx->matrix + (size_t)bx * span * 8);
    fl_v8 sum = fl_splat(0.0f);
    for (int k = 0; k < span; k++) sum += fl_splat(in[k]) * matrix[k];
    *(fl_v8 *)(out + (size_t)bx * 8) = sum;
  }
}

static inline int16_t fl_saturate16(float value) {
  float rounded = nearbyintf(value);
  if (rounded > 32767.0f) return 32767;
  if (rounded < -32768.0f) return -32768;
  return (int16_t)rounded;
}

/* Stores output row y of component c's 64 planes from the resized block row `source` ([v][bx][u]; NULL: zero
 * blocks): output column x takes block offset[x] (floats from the row start; -1: a zero block, read from
 * zero_row, a block row of zeros). */
static inline __attribute__((always_inline)) void fl_store_row(const float *source, const float *zero_row, int grid_w,
                                                               const int *offset, int out_w8, size_t plane, char *base,
                                                               int dtype, const float *gain, const float *bias) {
  const size_t element = dtype == FL_DTYPE_FLOAT32 ? 4 : 2;
  const size_t v_stride = (size_t)grid_w * 8;
  for (int x0 = 0; x0 < out_w8; x0 += 8) {
    int start = x0, count = 8;
    if (x0 + 8 > out_w8) {
      if (out_w8 >= 8) start = out_w8 - 8; /* overlap the previous group: the same values written twice */
      else count = out_w8;
    }
    const float *blocks[8];
    for (int i = 0; i < 8; i++) {
      const int x = start + (i < count ? i : 0);
      blocks[i] = (source && offset[x] >= 0) ? source + offset[x] : zero_row;
    }
    for (int v = 0; v < 8; v++) {
      fl_v8 r[8];
      for (int i = 0; i < 8; i++) r[i] = *(const fl_v8 *)(blocks[i] + v * v_stride);
      fl_transpose8(r); /* r[u][i]: coefficient (v, u) of output column start + i */
      for (int u = 0; u < 8; u++) {
        const size_t k = (size_t)(8 * v + u);
        char *target = base + (k * plane + (size_t)start) * element;
        fl_v8 value = r[u];
        if (gain) value = value * fl_splat(gain[k]) + fl_splat(bias[k]);
        if (dtype == FL_DTYPE_FLOAT32) {
          if (count == 8) *(fl_v8 *)target = value;
          else memcpy(target, &value, (size_t)count * 4);
        } else {
          int16_t packed[8];
          for (int i = 0; i < count; i++) packed[i] = fl_saturate16(value[i]);
          memcpy(target, packed, (size_t)count * 2);
        }
      }
    }
  }
}

typedef struct {
  fl_resize_scratch *scratch;
  const fl_component_plan *plan;
  const fl_coef_window *window;
  int c;
  const float *qtable;
  void *out;
  int dtype;
  const fl_mapping *mapping;
} fl_component_job;

/* IDCT of the window's blocks row by row -> horizontal pass of the needed pixel rows -> vertical pass per
 * output block row -> store (maps, affine).  The scratch buffers are sized by the caller. */
static inline __attribute__((always_inline)) void fl_component_body(const fl_component_job *job) {
  fl_resize_scratch *scratch = job->scratch;
  const fl_component_plan *plan = job->plan;
  const fl_coef_window *window = job->window;
  const int c = job->c;
  const int row0 = window->first_row[c], rows = window->num_rows[c];
  const int col0 = window->first_col[c], cols = window->num_cols[c];
  const size_t strip_stride = (size_t)cols * 8 + (size_t)plan->fx.span; /* zero padding: see fl_horizontal_row */
  const int grid_w = plan->grid_w, vectors = grid_w * 8;
  fl_v8 qrows[8];
  for (int v = 0; v < 8; v++) memcpy(&qrows[v], job->qtable + 8 * v, sizeof qrows[v]);
  for (int r = 0; r < rows; r++) {
    const int y0 = 8 * (row0 + r);
    int from = plan->y.first > y0 ? plan->y.first : y0, to = plan->y.last < y0 + 8 ? plan->y.last : y0 + 8;
    if (from >= to) continue;
    const int16_t *blocks = window->rows[c][r];
    for (int b = 0; b < cols; b++)
      fl_idct_block(blocks + (size_t)b * 64, qrows, scratch->strip + (size_t)b * 8, strip_stride);
    for (int y = from; y < to; y++)
      fl_horizontal_row(&plan->fx, scratch->strip + (size_t)(y - y0) * strip_stride, 8 * col0,
                        scratch->rows + (size_t)(y - plan->y.first) * vectors);
  }
  for (int by = 0; by < plan->grid_h; by++)
    fl_vertical_block_row(&plan->fy, by, scratch->rows, plan->y.first, grid_w,
                          scratch->blocks + (size_t)by * 8 * vectors);
  const int out_h8 = scratch->out_h8, out_w8 = scratch->out_w8;
  const size_t plane = (size_t)out_h8 * out_w8;
  const size_t element = job->dtype == FL_DTYPE_FLOAT32 ? 4 : 2;
  const fl_mapping *mapping = job->mapping;
  const float *gain = mapping && mapping->gain ? mapping->gain + 64 * c : NULL;
  const float *bias = mapping && mapping->gain ? mapping->bias + 64 * c : NULL;
  const int32_t *row_map = mapping ? mapping->rows : NULL, *col_map = mapping ? mapping->cols : NULL;
  const int shift = plan->half ? 1 : 0;
  int *offset = scratch->offsets; /* column x -> float offset of its block in a block row, -1: zero block */
  for (int x = 0; x < out_w8; x++) {
    const int col = col_map ? col_map[x] : x;
    offset[x] = (col >= 0 && col < out_w8) ? (col >> shift) * 8 : -1;
  }
  for (int y = 0; y < out_h8; y++) {
    const int row = row_map ? row_map[y] : y;
    const float *source = (row >= 0 && row < out_h8) ? scratch->blocks + (size_t)(row >> shift) * 8 * vectors : NULL;
    char *base = (char *)job->out + ((size_t)64 * c * plane + (size_t)y * out_w8) * element;
    /* constant dtype / affine arguments: one specialised copy each */
    if (job->dtype == FL_DTYPE_FLOAT32 && gain)
      fl_store_row(source, scratch->zero_row, grid_w, offset, out_w8, plane, base, FL_DTYPE_FLOAT32, gain, bias);
    else if (job->dtype == FL_DTYPE_FLOAT32)
      fl_store_row(source, scratch->zero_row, grid_w, offset, out_w8, plane, base, FL_DTYPE_FLOAT32, NULL, NULL);
    else
      fl_store_row(source, scratch->zero_row, grid_w, offset, out_w8, plane, base, FL_DTYPE_INT16, NULL, NULL);
  }
}

static void fl_component_generic(const fl_component_job *job) { fl_component_body(job); }

#if defined(FL_X86) && defined(__GNUC__)
__attribute__((target("avx2"))) static void fl_component_avx2(const fl_component_job *job) { fl_component_body(job); }

int fl_has_avx2(void) {
  static int known = -1;
  int value = __atomic_load_n(&known, __ATOMIC_RELAXED);
  if (value < 0) {
    __builtin_cpu_init();
    const char *force = getenv("FUNLOADER_SIMD"); /* "sse2": the baseline path even on an AVX2 CPU (tests) */
    value = __builtin_cpu_supports("avx2") && !(force && strcmp(force, "sse2") == 0) ? 1 : 0;
    __atomic_store_n(&known, value, __ATOMIC_RELAXED);
  }
  return value;
}
#endif

const char *fl_resize_simd(void) {
#if defined(FL_X86) && defined(__GNUC__)
  if (fl_has_avx2()) return "avx2";
#endif
#if defined(__SSE2__)
  return "sse2";
#else
  return "scalar";
#endif
}

int fl_resize_run(fl_resize_scratch *scratch, const fl_header *header, const fl_coef_window *window, void *out,
                  int dtype, const fl_mapping *mapping) {
  const size_t plane = (size_t)scratch->out_h8 * scratch->out_w8;
  for (int c = 0; c < 3; c++) {
    if (c >= scratch->num_components) {
      fl_fill_component(out, c, dtype, plane, mapping && mapping->gain ? mapping->bias + 64 * c : NULL);
      continue;
    }
    const fl_component_plan *plan = &scratch->comp[c];
    const size_t vectors = (size_t)plan->grid_w * 8;
    const size_t strip_stride = (size_t)window->num_cols[c] * 8 + (size_t)plan->fx.span;
    if (!fl_grow((void **)&scratch->strip, &scratch->strip_capacity, 8 * strip_stride * sizeof(float)) ||
        !fl_grow((void **)&scratch->rows, &scratch->rows_capacity,
                 (size_t)(plan->y.last - plan->y.first) * vectors * sizeof(float)) ||
        !fl_grow((void **)&scratch->blocks, &scratch->blocks_capacity,
                 (size_t)plan->grid_h * 8 * vectors * sizeof(float)) ||
        !fl_grow((void **)&scratch->offsets, &scratch->offsets_capacity, (size_t)scratch->out_w8 * sizeof(int)))
      return FL_ERR_NOMEM;
    if (8 * vectors * sizeof(float) > scratch->zero_capacity) {
      free(scratch->zero_row);
      scratch->zero_capacity = 0;
      if (!(scratch->zero_row = (float *)calloc(8 * vectors, sizeof(float)))) return FL_ERR_NOMEM;
      scratch->zero_capacity = 8 * vectors * sizeof(float);
    }
    for (int y = 0; y < 8; y++) /* the padding columns of the strip read as zeros */
      memset(scratch->strip + (size_t)y * strip_stride + (size_t)window->num_cols[c] * 8, 0,
             (size_t)plan->fx.span * sizeof(float));
    float qtable[64]; /* dequantization and the AAN inverse DCT's input scaling (fl_aan_scale) */
    for (int k = 0; k < 64; k++) qtable[k] = (float)(header->qtables[c][k] * fl_aan_scale[k]);
    fl_component_job job = {scratch, plan, window, c, qtable, out, dtype, mapping};
#if defined(FL_X86) && defined(__GNUC__)
    if (fl_has_avx2()) {
      fl_component_avx2(&job);
      continue;
    }
#endif
    fl_component_generic(&job);
  }
  return FL_OK;
}
