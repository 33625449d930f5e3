/* resize.c: see resize.h. */
#include "resize.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FL_X86 1
#endif

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

typedef struct {
  fl_axis y, x;
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
  float *vertical;        /* vertical pass: y.count x (x.last - x.first) */
  size_t vertical_capacity;
  float *pixels;          /* resized component: y.count x x.count */
  size_t pixels_capacity;
  float *planes;          /* forward DCT, plane-major: 64 x grid_h x grid_w */
  size_t planes_capacity;
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
  }
  free(scratch->taps_scratch);
  free(scratch->strip);
  free(scratch->vertical);
  free(scratch->pixels);
  free(scratch->planes);
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
    for (int k = 0; k < nspan; k++) native_w[k] = 0.0;
    for (int x = 0; x < xmax; x++) {
      int p = p0 + x;
      double w = plane_w[x];
      if (mode == FL_AXIS_DIRECT) {
        native_w[p - nfirst] += w;
      } else if (mode == FL_AXIS_TRIANGLE) {
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
    while (begin < end && native_w[begin] == 0.0) begin++;
    while (end > begin && native_w[end - 1] == 0.0) end--;
    if (begin == end) { /* all-zero weights (cannot happen for a valid box): read one pixel with weight 0 */
      end = begin + 1;
    }
    int first = nfirst + begin;
    if (first < 0) first = 0; /* only zero taps can lie below 0 (trimmed) */
    if (first + (end - begin) > native_size) first = native_size - (end - begin);
    axis->start[i] = first;
    axis->taps[i] = end - begin;
    float *weights = axis->weights + (size_t)i * kmax;
    for (int k = 0; k < kmax; k++) weights[k] = k < end - begin ? (float)native_w[begin + k] : 0.0f;
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

/* Ceil of a / b for positive ints. */
static int fl_ceil_div(long long a, long long b) { return (int)((a + b - 1) / b); }

int fl_resize_plan(fl_resize_scratch *scratch, const fl_header *header, const fl_resize_spec *spec, int out_h8,
                   int out_w8, fl_coef_window *window) {
  const int components = header->num_components < 3 ? header->num_components : 3;
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
    if (full_res && (h != hmax || v != vmax)) {
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

static float fl_dct[8][8]; /* fl_dct[u][x] = c(u) cos((2x + 1) u pi / 16), orthonormal */
static int fl_dct_ready;

static void fl_dct_init(void) {
  if (fl_dct_ready) return;
  for (int u = 0; u < 8; u++)
    for (int x = 0; x < 8; x++)
      fl_dct[u][x] = (float)((u == 0 ? sqrt(0.125) : 0.5) * cos((2 * x + 1) * u * 3.14159265358979323846 / 16.0));
  __atomic_store_n(&fl_dct_ready, 1, __ATOMIC_RELEASE);
}

/* Inverse DCT of one dequantized block into 8 rows of `stride` floats, clamped to [-128, 127]
 * (a decoder's [0, 255] less the level shift). */
static inline __attribute__((always_inline)) void fl_idct_block(const int16_t *coef, const float *qtable, float *dst,
                                                                size_t stride) {
  float f[64], g[64];
  for (int k = 0; k < 64; k++) f[k] = (float)coef[k] * qtable[k];
  /* g[y][u] = sum_v D[v][y] f[v][u] */
  for (int y = 0; y < 8; y++) {
    float row[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int v = 0; v < 8; v++) {
      const float d = fl_dct[v][y];
      for (int u = 0; u < 8; u++) row[u] += d * f[8 * v + u];
    }
    for (int u = 0; u < 8; u++) g[8 * y + u] = row[u];
  }
  /* p[y][x] = sum_u g[y][u] D[u][x] */
  for (int y = 0; y < 8; y++) {
    float row[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int u = 0; u < 8; u++) {
      const float gv = g[8 * y + u];
      for (int x = 0; x < 8; x++) row[x] += gv * fl_dct[u][x];
    }
    float *out = dst + (size_t)y * stride;
    for (int x = 0; x < 8; x++) {
      float value = row[x];
      value = value < -128.0f ? -128.0f : value;
      value = value > 127.0f ? 127.0f : value;
      out[x] = value;
    }
  }
}

/* Forward DCT of the 8x8 pixels at src (row stride `stride`) into 64 coefficients (natural order). */
static inline __attribute__((always_inline)) void fl_fdct_block(const float *src, size_t stride, float *coef) {
  float h[64];
  /* h[y][u] = sum_x p[y][x] D[u][x] */
  for (int y = 0; y < 8; y++) {
    const float *in = src + (size_t)y * stride;
    float row[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int x = 0; x < 8; x++) {
      const float p = in[x];
      for (int u = 0; u < 8; u++) row[u] += p * fl_dct[u][x];
    }
    for (int u = 0; u < 8; u++) h[8 * y + u] = row[u];
  }
  /* F[v][u] = sum_y D[v][y] h[y][u] */
  for (int v = 0; v < 8; v++) {
    float row[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int y = 0; y < 8; y++) {
      const float d = fl_dct[v][y];
      for (int u = 0; u < 8; u++) row[u] += d * h[8 * y + u];
    }
    for (int u = 0; u < 8; u++) coef[8 * v + u] = row[u];
  }
}

/* target[0..n) += w * source[0..n) */
static inline __attribute__((always_inline)) void fl_axpy(float *target, const float *source, float w, int n) {
  for (int i = 0; i < n; i++) target[i] += w * source[i];
}

/* Resamples one component into scratch->pixels (y.count x x.count, level-shifted). */
static int fl_resample_component(fl_resize_scratch *scratch, const fl_component_plan *plan, const fl_coef_window *window,
                                 int c, const float *qtable) {
  const fl_axis *ay = &plan->y, *ax = &plan->x;
  const int row0 = window->first_row[c], rows = window->num_rows[c];
  const int col0 = window->first_col[c], cols = window->num_cols[c];
  const size_t strip_stride = (size_t)cols * 8;
  const int span = ax->last - ax->first;               /* native columns the horizontal pass reads */
  const int strip_offset = ax->first - 8 * col0;       /* column of ax->first in the strip */
  if (!fl_grow((void **)&scratch->strip, &scratch->strip_capacity, 8 * strip_stride * sizeof(float)) ||
      !fl_grow((void **)&scratch->vertical, &scratch->vertical_capacity, (size_t)ay->valid * span * sizeof(float)) ||
      !fl_grow((void **)&scratch->pixels, &scratch->pixels_capacity, (size_t)ay->count * ax->count * sizeof(float)))
    return FL_ERR_NOMEM;
  float *strip = scratch->strip, *vertical = scratch->vertical, *pixels = scratch->pixels;
  memset(vertical, 0, (size_t)ay->valid * span * sizeof(float));
  int j_begin = 0; /* first output row whose taps end below the current block row's start */
  for (int r = 0; r < rows; r++) {
    const int block_row = row0 + r;
    const int y0 = 8 * block_row, y1 = y0 + 8;
    while (j_begin < ay->valid && ay->start[j_begin] + ay->taps[j_begin] <= y0) j_begin++;
    if (j_begin >= ay->valid || ay->start[j_begin] >= y1) continue; /* no output reads this block row */
    const int16_t *blocks = window->rows[c][r];
    for (int b = 0; b < cols; b++) fl_idct_block(blocks + (size_t)b * 64, qtable, strip + (size_t)b * 8, strip_stride);
    for (int j = j_begin; j < ay->valid && ay->start[j] < y1; j++) {
      const int start = ay->start[j], end = start + ay->taps[j];
      const int from = start > y0 ? start : y0, to = end < y1 ? end : y1;
      const float *weights = ay->weights + (size_t)j * ay->kmax;
      float *target = vertical + (size_t)j * span;
      for (int y = from; y < to; y++)
        fl_axpy(target, strip + (size_t)(y - y0) * strip_stride + strip_offset, weights[y - start], span);
    }
  }
  /* horizontal pass */
  for (int j = 0; j < ay->valid; j++) {
    const float *source = vertical + (size_t)j * span;
    float *out = pixels + (size_t)j * ax->count;
    for (int i = 0; i < ax->valid; i++) {
      const float *weights = ax->weights + (size_t)i * ax->kmax;
      const float *in = source + (ax->start[i] - ax->first);
      float sum = 0.0f;
      for (int k = 0; k < ax->taps[i]; k++) sum += weights[k] * in[k];
      out[i] = sum;
    }
    for (int i = ax->valid; i < ax->count; i++) out[i] = out[ax->valid - 1];
  }
  for (int j = ay->valid; j < ay->count; j++)
    memcpy(pixels + (size_t)j * ax->count, pixels + (size_t)(ay->valid - 1) * ax->count, (size_t)ax->count * sizeof(float));
  return FL_OK;
}

/* Forward DCT of every output block of scratch->pixels into scratch->planes (64 x grid_h x grid_w). */
static int fl_transform_component(fl_resize_scratch *scratch, const fl_component_plan *plan) {
  const size_t grid = (size_t)plan->grid_h * plan->grid_w;
  if (!fl_grow((void **)&scratch->planes, &scratch->planes_capacity, 64 * grid * sizeof(float))) return FL_ERR_NOMEM;
  const size_t stride = (size_t)plan->x.count;
  for (int by = 0; by < plan->grid_h; by++)
    for (int bx = 0; bx < plan->grid_w; bx++) {
      float coef[64];
      fl_fdct_block(scratch->pixels + (size_t)by * 8 * stride + (size_t)bx * 8, stride, coef);
      const size_t index = (size_t)by * plan->grid_w + bx;
      for (int k = 0; k < 64; k++) scratch->planes[(size_t)k * grid + index] = coef[k];
    }
  return FL_OK;
}

static inline int16_t fl_saturate16(float value) {
  float rounded = nearbyintf(value);
  if (rounded > 32767.0f) return 32767;
  if (rounded < -32768.0f) return -32768;
  return (int16_t)rounded;
}

/* Stores component c's 64 planes into out with the block maps and the affine. */
static void fl_store_component(const fl_resize_scratch *scratch, const fl_component_plan *plan, int c, void *out,
                               int dtype, const fl_mapping *mapping) {
  const int out_h8 = scratch->out_h8, out_w8 = scratch->out_w8;
  const size_t plane = (size_t)out_h8 * out_w8;
  const size_t grid = (size_t)plan->grid_h * plan->grid_w;
  const float *gain = mapping && mapping->gain ? mapping->gain + 64 * c : NULL;
  const float *bias = mapping && mapping->gain ? mapping->bias + 64 * c : NULL;
  const int32_t *rows = mapping ? mapping->rows : NULL, *cols = mapping ? mapping->cols : NULL;
  const int shift = plan->half ? 1 : 0;
  for (int k = 0; k < 64; k++) {
    const float *source = scratch->planes + (size_t)k * grid;
    const float g = gain ? gain[k] : 1.0f, b = gain ? bias[k] : 0.0f;
    for (int y = 0; y < out_h8; y++) {
      int row = rows ? rows[y] : y;
      const float *line = (row >= 0 && row < out_h8) ? source + (size_t)(row >> shift) * plan->grid_w : NULL;
      const size_t base = (size_t)(64 * c + k) * plane + (size_t)y * out_w8;
      if (dtype == FL_DTYPE_FLOAT32) {
        float *target = (float *)out + base;
        for (int x = 0; x < out_w8; x++) {
          int col = cols ? cols[x] : x;
          float value = (line && col >= 0 && col < out_w8) ? line[col >> shift] : 0.0f;
          target[x] = gain ? value * g + b : value;
        }
      } else {
        int16_t *target = (int16_t *)out + base;
        for (int x = 0; x < out_w8; x++) {
          int col = cols ? cols[x] : x;
          target[x] = (line && col >= 0 && col < out_w8) ? fl_saturate16(line[col >> shift]) : 0;
        }
      }
    }
  }
}

static void fl_fill_planes(void *out, int c, int dtype, size_t plane, const float *bias) {
  const size_t element = fl_dtype_size(dtype);
  if (dtype != FL_DTYPE_FLOAT32 || !bias) {
    memset((char *)out + (size_t)64 * c * plane * element, 0, 64 * plane * element);
    return;
  }
  float *base = (float *)out + (size_t)64 * c * plane;
  for (size_t k = 0; k < 64; k++)
    for (size_t i = 0; i < plane; i++) base[k * plane + i] = bias[k];
}

int fl_resize_run(fl_resize_scratch *scratch, const fl_header *header, const fl_coef_window *window, void *out,
                  int dtype, const fl_mapping *mapping) {
  fl_dct_init();
  const size_t plane = (size_t)scratch->out_h8 * scratch->out_w8;
  for (int c = 0; c < 3; c++) {
    if (c >= scratch->num_components) {
      fl_fill_planes(out, c, dtype, plane, mapping && mapping->gain ? mapping->bias + 64 * c : NULL);
      continue;
    }
    float qtable[64];
    for (int k = 0; k < 64; k++) qtable[k] = (float)header->qtables[c][k];
    const fl_component_plan *plan = &scratch->comp[c];
    int status = fl_resample_component(scratch, plan, window, c, qtable);
    if (status == FL_OK) status = fl_transform_component(scratch, plan);
    if (status != FL_OK) return status;
    fl_store_component(scratch, plan, c, out, dtype, mapping);
  }
  return FL_OK;
}

const char *fl_resize_simd(void) { return "scalar"; }
