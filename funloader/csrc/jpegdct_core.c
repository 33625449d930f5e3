/* jpegdct_core.c: see jpegdct_core.h. */
#define _POSIX_C_SOURCE 200809L
#include "jpegdct_core.h"
#include "huffman.h"
#include "resize.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <unistd.h>

#include <jpeglib.h>
#include <jerror.h>

#define FL_SHRINK_ABOVE ((size_t)64 << 20) /* give back file buffers over 64 MiB after a small file */
#define FL_MAX_FILE_BYTES ((size_t)1 << 31)
/* Float32 layouts write one group of 8 coefficient planes per pass over the component's block
 * rows (8 output streams instead of 64): with an output batch that is not in cache (DALI rotates
 * its batch buffers) this measured 3-8% faster per image; int16 output was 3% slower that way, so
 * it keeps one pass.  The mapped layout expands the component into scratch first when that takes
 * at most this many bytes. */
#define FL_MAPPED_EXPAND_MAX ((size_t)4 << 20)

_Static_assert((int)FL_COLORSPACE_GRAY == (int)JCS_GRAYSCALE && (int)FL_COLORSPACE_YCBCR == (int)JCS_YCbCr,
               "fl_header.colorspace carries libjpeg's J_COLOR_SPACE values");

typedef struct {
  struct jpeg_error_mgr pub; /* must be first */
  jmp_buf jump;
  fl_result *result;
  int strict;
} fl_error_mgr;

struct fl_decoder {
  struct jpeg_decompress_struct cinfo; /* must be first: callbacks cast j_common_ptr back */
  fl_error_mgr err;
  struct jpeg_progress_mgr progress;
  int created;
  int active; /* a header has been read: jpeg_abort_decompress is owed */
  int max_scans;
  uint8_t *file_buffer;
  size_t file_capacity;
  fl_huff *huff;            /* funloader's own baseline entropy decoder (huffman.h) */
  fl_huff_frame frame;      /* its begun image */
  int own;                  /* the begun image is the own decoder's (fl_begin under FL_DECODER_AUTO) */
  const uint8_t *data;      /* the begun image's bytes and options, for a hand-over to libjpeg */
  size_t size;
  fl_options options;
  JCOEF (*row_scratch)[64]; /* scratch: one output row of blocks (float32 mapped layouts: all rows) */
  int *map_scratch;         /* scratch: composed full-resolution row and column maps */
  size_t map_capacity;
  size_t row_capacity;      /* in coefficients */
  fl_resize_scratch *resize;  /* exact resized crop (resize.h): weights, pixel rows, planes */
  int16_t **window_rows;      /* row pointers of the coefficient window the resize reads */
  size_t window_capacity;     /* in pointers */
  int16_t *window_blocks;     /* the own decoder's copy of the window's blocks */
  size_t window_blocks_capacity; /* in int16 */
  int16_t *bands;             /* fl_own_decode: a run of consecutive bands, laid out together */
  size_t bands_capacity;      /* in int16 */
  void *stage;                /* fl_stage: one batch item, laid out in cache before its copy out */
  size_t stage_capacity;      /* in bytes */
};

static void fl_result_reset(fl_result *result) {
  result->status = FL_OK;
  result->os_errno = 0;
  result->num_warnings = 0;
  result->message[0] = '\0';
}

static void fl_fail(fl_result *result, int status, const char *message) {
  result->status = status;
  snprintf(result->message, FL_MESSAGE_LEN, "%s", message);
}

/* Warnings that describe metadata, not the coded image: never fatal. */
static int fl_benign_warning(int code) {
  return code == JWRN_JFIF_MAJOR || code == JWRN_ADOBE_XFORM || code == JWRN_BOGUS_ICC ||
         code == JWRN_TOO_MUCH_DATA;
}

static int fl_classify_error(int code) {
  switch (code) {
    case JERR_BAD_PRECISION:
    case JERR_SOF_UNSUPPORTED:
    case JERR_NOT_COMPILED:
    case JERR_ARITH_NOTIMPL:
      return FL_ERR_UNSUPPORTED;
    case JERR_OUT_OF_MEMORY:
      return FL_ERR_NOMEM;
    case JERR_NO_BACKING_STORE:
      return FL_ERR_TOO_LARGE;
    default:
      return FL_ERR_DECODE;
  }
}

static void fl_error_exit(j_common_ptr cinfo) {
  fl_error_mgr *err = (fl_error_mgr *)cinfo->err;
  char text[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, text);
  fl_fail(err->result, fl_classify_error(cinfo->err->msg_code), text);
  longjmp(err->jump, 1);
}

static void fl_emit_message(j_common_ptr cinfo, int msg_level) {
  fl_error_mgr *err = (fl_error_mgr *)cinfo->err;
  if (msg_level >= 0) return; /* trace messages */
  char text[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, text);
  cinfo->err->num_warnings++;
  fl_result *result = err->result;
  if (err->strict && !fl_benign_warning(cinfo->err->msg_code)) {
    fl_fail(result, FL_ERR_DECODE, text);
    longjmp(err->jump, 1);
  }
  if (result->num_warnings < FL_MAX_WARNINGS)
    snprintf(result->warnings[result->num_warnings], FL_MESSAGE_LEN, "%s", text);
  result->num_warnings++;
}

static void fl_output_message(j_common_ptr cinfo) { (void)cinfo; /* never print to stderr */ }

static void fl_progress_monitor(j_common_ptr cinfo) {
  fl_decoder *decoder = (fl_decoder *)cinfo;
  int scan = decoder->cinfo.input_scan_number;
  if (decoder->max_scans > 0 && scan > decoder->max_scans) {
    char text[FL_MESSAGE_LEN];
    snprintf(text, sizeof text, "too many scans (%d, limit %d): refusing a possible CPU bomb", scan,
             decoder->max_scans);
    fl_fail(decoder->err.result, FL_ERR_DECODE, text);
    longjmp(decoder->err.jump, 1);
  }
}

fl_decoder *fl_decoder_new(void) {
  fl_decoder *decoder = (fl_decoder *)calloc(1, sizeof(fl_decoder));
  if (!decoder) return NULL;
  fl_result scratch;
  fl_result_reset(&scratch);
  decoder->cinfo.err = jpeg_std_error(&decoder->err.pub);
  decoder->err.pub.error_exit = fl_error_exit;
  decoder->err.pub.emit_message = fl_emit_message;
  decoder->err.pub.output_message = fl_output_message;
  decoder->err.result = &scratch;
  if (setjmp(decoder->err.jump)) {
    free(decoder);
    return NULL;
  }
  jpeg_create_decompress(&decoder->cinfo);
  decoder->created = 1;
  decoder->huff = fl_huff_new();
  if (!decoder->huff) {
    jpeg_destroy_decompress(&decoder->cinfo);
    free(decoder);
    return NULL;
  }
  decoder->progress.progress_monitor = fl_progress_monitor;
  decoder->cinfo.progress = &decoder->progress;
  decoder->err.result = NULL;
  return decoder;
}

void fl_decoder_free(fl_decoder *decoder) {
  if (!decoder) return;
  if (decoder->created) jpeg_destroy_decompress(&decoder->cinfo);
  free(decoder->file_buffer);
  fl_huff_free(decoder->huff);
  free(decoder->row_scratch);
  free(decoder->map_scratch);
  fl_resize_scratch_free(decoder->resize);
  free(decoder->window_rows);
  free(decoder->window_blocks);
  free(decoder->stage);
  free(decoder->bands);
  free(decoder);
}

void fl_copy_out(void *dst, const void *src, size_t bytes) {
#if defined(__SSE2__)
  char *d = (char *)dst;
  const char *s = (const char *)src;
  size_t head = (size_t)(-(uintptr_t)d & 63); /* bytes up to d's first 64-byte boundary */
  if (bytes < head + 64) {
    memcpy(d, s, bytes);
    return;
  }
  memcpy(d, s, head);
  d += head;
  s += head;
  bytes -= head;
  size_t body = bytes & ~(size_t)63;
  for (size_t o = 0; o < body; o += 64) {
    __m128i a = _mm_loadu_si128((const __m128i *)(s + o)), b = _mm_loadu_si128((const __m128i *)(s + o + 16));
    __m128i c = _mm_loadu_si128((const __m128i *)(s + o + 32)), e = _mm_loadu_si128((const __m128i *)(s + o + 48));
    _mm_stream_si128((__m128i *)(d + o), a);
    _mm_stream_si128((__m128i *)(d + o + 16), b);
    _mm_stream_si128((__m128i *)(d + o + 32), c);
    _mm_stream_si128((__m128i *)(d + o + 48), e);
  }
  _mm_sfence(); /* the streamed lines are visible to the caller's next reads, on any thread */
  memcpy(d + body, s + body, bytes - body);
#else
  memcpy(dst, src, bytes);
#endif
}

void *fl_stage(fl_decoder *decoder, size_t bytes) {
  if (bytes > decoder->stage_capacity) {
    void *stage = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!stage) return NULL;
    free(decoder->stage);
    decoder->stage = stage;
    decoder->stage_capacity = bytes;
  }
  return decoder->stage;
}

/* libjpeg keeps DQT/DHT tables in its permanent pool across images (for abbreviated streams), so a
 * file that omits or fails to define a table would silently decode with the previous image's on a
 * reused decoder (and fail on a fresh one): results would depend on decode history.  Every image
 * therefore starts from a decompressor without tables; recreating it is the only way to drop them
 * without leaking the permanent pool. */
static int fl_has_tables(j_decompress_ptr cinfo) {
  for (int i = 0; i < NUM_QUANT_TBLS; i++)
    if (cinfo->quant_tbl_ptrs[i]) return 1;
  for (int i = 0; i < NUM_HUFF_TBLS; i++)
    if (cinfo->dc_huff_tbl_ptrs[i] || cinfo->ac_huff_tbl_ptrs[i]) return 1;
  return 0;
}

void fl_abort(fl_decoder *decoder) {
  decoder->own = 0;
  if (decoder->active) {
    jpeg_abort_decompress(&decoder->cinfo);
    decoder->active = 0;
  }
}

int fl_load_file(fl_decoder *decoder, const char *path, const uint8_t **data, size_t *size,
                 fl_result *result) {
  fl_result_reset(result);
  /* O_NONBLOCK: opening a FIFO (or a device) named like an image must not block forever waiting
   * for a writer; it is refused below as not a regular file. No effect on regular-file reads. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    result->os_errno = errno;
    fl_fail(result, FL_ERR_IO, strerror(errno));
    return result->status;
  }
  struct stat info;
  if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    int code = errno ? errno : EISDIR;
    if (fstat(fd, &info) == 0 && !S_ISREG(info.st_mode)) code = S_ISDIR(info.st_mode) ? EISDIR : EINVAL;
    close(fd);
    result->os_errno = code;
    fl_fail(result, FL_ERR_IO, code == EINVAL ? "not a regular file" : strerror(code));
    return result->status;
  }
  size_t length = (size_t)info.st_size;
  if (length > FL_MAX_FILE_BYTES) {
    close(fd);
    fl_fail(result, FL_ERR_TOO_LARGE, "file is larger than 2 GiB");
    return result->status;
  }
  if (length > decoder->file_capacity ||
      (decoder->file_capacity > FL_SHRINK_ABOVE && length * 4 < decoder->file_capacity)) {
    size_t capacity = length ? length : 1;
    uint8_t *buffer = (uint8_t *)realloc(decoder->file_buffer, capacity);
    if (!buffer) {
      close(fd);
      fl_fail(result, FL_ERR_NOMEM, "out of memory reading the file");
      return result->status;
    }
    decoder->file_buffer = buffer;
    decoder->file_capacity = capacity;
  }
  size_t done = 0;
  while (done < length) {
    ssize_t got = read(fd, decoder->file_buffer + done, length - done);
    if (got < 0) {
      if (errno == EINTR) continue;
      result->os_errno = errno;
      fl_fail(result, FL_ERR_IO, strerror(errno));
      close(fd);
      return result->status;
    }
    if (got == 0) break; /* file shrank while reading: decode what is there */
    done += (size_t)got;
  }
  close(fd);
  *data = decoder->file_buffer;
  *size = done;
  return FL_OK;
}

static void fl_copy_qtables(j_decompress_ptr cinfo, fl_header *header) {
  for (int c = 0; c < header->num_components; c++) {
    jpeg_component_info *comp = &cinfo->comp_info[c];
    JQUANT_TBL *table = comp->quant_table;
    if (!table && comp->quant_tbl_no >= 0 && comp->quant_tbl_no < NUM_QUANT_TBLS)
      table = cinfo->quant_tbl_ptrs[comp->quant_tbl_no];
    for (int k = 0; k < 64; k++) header->qtables[c][k] = table ? (uint16_t)table->quantval[k] : 0;
  }
}

/* The header of an image the own decoder accepted (the same values libjpeg would give). */
static void fl_header_from_frame(const fl_huff_frame *frame, fl_header *header) {
  memset(header, 0, sizeof *header);
  header->width = frame->width;
  header->height = frame->height;
  header->num_components = frame->num_components;
  header->colorspace = frame->num_components == 1 ? FL_COLORSPACE_GRAY : FL_COLORSPACE_YCBCR;
  header->max_h_samp = frame->max_h_samp;
  header->max_v_samp = frame->max_v_samp;
  header->grid_w = (frame->width + 7) / 8;
  header->grid_h = (frame->height + 7) / 8;
  for (int c = 0; c < frame->num_components; c++) {
    header->h_samp[c] = frame->h_samp[c];
    header->v_samp[c] = frame->v_samp[c];
    header->blocks_w[c] = frame->blocks_w[c];
    header->blocks_h[c] = frame->blocks_h[c];
    memcpy(header->qtables[c], frame->qtables[c], sizeof header->qtables[c]);
  }
}

static int fl_begin_libjpeg(fl_decoder *decoder, const uint8_t *data, size_t size, const fl_options *options,
                            fl_header *header, fl_result *result);

int fl_begin(fl_decoder *decoder, const uint8_t *data, size_t size, const fl_options *options,
             fl_header *header, fl_result *result) {
  fl_result_reset(result);
  fl_abort(decoder);
  if (options->decoder != FL_DECODER_LIBJPEG && size > 0) {
    if (fl_huff_begin(decoder->huff, data, size, options->max_pixels, &decoder->frame) == FL_HUFF_OK) {
      fl_header_from_frame(&decoder->frame, header);
      header->own_decoder = 1;
      decoder->own = 1;
      decoder->data = data;
      decoder->size = size;
      decoder->options = *options;
      return FL_OK;
    }
    int status = fl_begin_libjpeg(decoder, data, size, options, header, result);
    header->handover = fl_huff_reason(decoder->huff);
    return status;
  }
  return fl_begin_libjpeg(decoder, data, size, options, header, result);
}

/* Hands a begun image over to libjpeg: its header is read again (the same values). */
static int fl_hand_over(fl_decoder *decoder, fl_header *header, fl_result *result) {
  const uint8_t *data = decoder->data;
  size_t size = decoder->size;
  fl_options options = decoder->options;
  int status = fl_begin_libjpeg(decoder, data, size, &options, header, result);
  header->own_decoder = 0;
  header->handover = fl_huff_reason(decoder->huff);
  return status;
}

static int fl_begin_libjpeg(fl_decoder *decoder, const uint8_t *data, size_t size, const fl_options *options,
                            fl_header *header, fl_result *result) {
  j_decompress_ptr cinfo = &decoder->cinfo;
  fl_result_reset(result);
  fl_abort(decoder);
  memset(header, 0, sizeof *header);
  decoder->err.result = result;
  decoder->err.strict = options->strict;
  decoder->err.pub.num_warnings = 0;
  decoder->max_scans = options->max_scans;
  if (size == 0) {
    fl_fail(result, FL_ERR_DECODE, "empty file (0 bytes)");
    return result->status;
  }
  if (setjmp(decoder->err.jump)) {
    fl_abort(decoder);
    return result->status;
  }
  if (!decoder->created || fl_has_tables(cinfo)) { /* no stale tables (see fl_has_tables) */
    if (decoder->created) jpeg_destroy_decompress(cinfo);
    decoder->created = 0;
    jpeg_create_decompress(cinfo); /* keeps cinfo->err; errors only on out-of-memory */
    decoder->created = 1;
    cinfo->progress = &decoder->progress;
  }
  decoder->active = 1;
  jpeg_mem_src(cinfo, (const unsigned char *)data, (unsigned long)size);
  jpeg_read_header(cinfo, TRUE);

  uint64_t pixels = (uint64_t)cinfo->image_width * (uint64_t)cinfo->image_height;
  if (options->max_pixels > 0 && pixels > options->max_pixels) {
    char text[FL_MESSAGE_LEN];
    snprintf(text, sizeof text,
             "image is %ux%u = %llu pixels, over the limit of %llu (max_pixels; a possible "
             "decompression bomb)",
             (unsigned)cinfo->image_width, (unsigned)cinfo->image_height,
             (unsigned long long)pixels, (unsigned long long)options->max_pixels);
    fl_fail(result, FL_ERR_TOO_LARGE, text);
    fl_abort(decoder);
    return result->status;
  }
  const char *unsupported = NULL;
  switch (cinfo->jpeg_color_space) {
    case JCS_GRAYSCALE:
    case JCS_YCbCr:
      break;
    case JCS_CMYK:
      unsupported = "CMYK JPEG (4 components): FUN models take Y/Cb/Cr";
      break;
    case JCS_YCCK:
      unsupported = "YCCK JPEG (4 components): FUN models take Y/Cb/Cr";
      break;
    case JCS_RGB:
      unsupported = "RGB-coded JPEG (no YCbCr transform): its DCT planes are R/G/B, not Y/Cb/Cr";
      break;
    default:
      unsupported = "JPEG with an unknown colour space / component count";
      break;
  }
  if (!unsupported && cinfo->num_components != 1 && cinfo->num_components != 3)
    unsupported = "JPEG with an unusual number of components";
  if (unsupported) {
    char text[FL_MESSAGE_LEN];
    snprintf(text, sizeof text, "%s (%d components)", unsupported, cinfo->num_components);
    fl_fail(result, FL_ERR_UNSUPPORTED, text);
    fl_abort(decoder);
    return result->status;
  }

  header->width = (int)cinfo->image_width;
  header->height = (int)cinfo->image_height;
  header->num_components = cinfo->num_components;
  header->colorspace = (int)cinfo->jpeg_color_space;
  header->progressive = cinfo->progressive_mode ? 1 : 0;
  header->arithmetic = cinfo->arith_code ? 1 : 0;
  header->max_h_samp = cinfo->max_h_samp_factor;
  header->max_v_samp = cinfo->max_v_samp_factor;
  header->grid_w = (int)((cinfo->image_width + 7) / 8);
  header->grid_h = (int)((cinfo->image_height + 7) / 8);
  for (int c = 0; c < cinfo->num_components; c++) {
    jpeg_component_info *comp = &cinfo->comp_info[c];
    header->h_samp[c] = comp->h_samp_factor;
    header->v_samp[c] = comp->v_samp_factor;
    header->blocks_w[c] = (int)comp->width_in_blocks;
    header->blocks_h[c] = (int)comp->height_in_blocks;
  }
  fl_copy_qtables(cinfo, header);
  return FL_OK;
}

size_t fl_dtype_size(int dtype) {
  return dtype == FL_DTYPE_FLOAT32 ? 4 : dtype == FL_DTYPE_INT16 ? 2 : 0;
}

#if defined(__SSE2__)
/* In: r[i] = 8 consecutive coefficients of block i. Out: r[j] = coefficient j of blocks 0..7 (per
 * 128-bit lane: the AVX2 instance transposes two groups of 8 blocks side by side).  V is the vector
 * type, P the intrinsics' prefix (_mm or _mm256). */
#define FL_TRANSPOSE8X8(V, P, r)                                                                    \
  do {                                                                                              \
    V a0 = P##_unpacklo_epi16(r[0], r[1]), a1 = P##_unpackhi_epi16(r[0], r[1]);                     \
    V a2 = P##_unpacklo_epi16(r[2], r[3]), a3 = P##_unpackhi_epi16(r[2], r[3]);                     \
    V a4 = P##_unpacklo_epi16(r[4], r[5]), a5 = P##_unpackhi_epi16(r[4], r[5]);                     \
    V a6 = P##_unpacklo_epi16(r[6], r[7]), a7 = P##_unpackhi_epi16(r[6], r[7]);                     \
    V b0 = P##_unpacklo_epi32(a0, a2), b1 = P##_unpackhi_epi32(a0, a2);                             \
    V b2 = P##_unpacklo_epi32(a1, a3), b3 = P##_unpackhi_epi32(a1, a3);                             \
    V b4 = P##_unpacklo_epi32(a4, a6), b5 = P##_unpackhi_epi32(a4, a6);                             \
    V b6 = P##_unpacklo_epi32(a5, a7), b7 = P##_unpackhi_epi32(a5, a7);                             \
    r[0] = P##_unpacklo_epi64(b0, b4), r[1] = P##_unpackhi_epi64(b0, b4);                           \
    r[2] = P##_unpacklo_epi64(b1, b5), r[3] = P##_unpackhi_epi64(b1, b5);                           \
    r[4] = P##_unpacklo_epi64(b2, b6), r[5] = P##_unpackhi_epi64(b2, b6);                           \
    r[6] = P##_unpacklo_epi64(b3, b7), r[7] = P##_unpackhi_epi64(b3, b7);                           \
  } while (0)

static inline __attribute__((always_inline)) void fl_transpose8x8(__m128i r[8]) { FL_TRANSPOSE8X8(__m128i, _mm, r); }
#endif

/* Stores 8 int16 values (one coefficient of 8 output columns) to `rows` output rows. */
#if defined(__SSE2__)
static inline __attribute__((always_inline)) void fl_store8(void *dst, size_t index, size_t row_stride, int rows, int dtype, __m128i values,
                             float scale, const float *gain, const float *bias, size_t k) {
  if (dtype == FL_DTYPE_INT16) {
    for (int r = 0; r < rows; r++) _mm_storeu_si128((__m128i *)((int16_t *)dst + index + r * row_stride), values);
  } else {
    __m128 s = _mm_set1_ps(scale);
    __m128 low = _mm_mul_ps(_mm_cvtepi32_ps(_mm_srai_epi32(_mm_unpacklo_epi16(values, values), 16)), s);
    __m128 high = _mm_mul_ps(_mm_cvtepi32_ps(_mm_srai_epi32(_mm_unpackhi_epi16(values, values), 16)), s);
    if (gain) { /* (x * scale) * gain + bias, in this order: bit-exact with the loader's torch ops */
      __m128 g = _mm_set1_ps(gain[k]), b = _mm_set1_ps(bias[k]);
      low = _mm_add_ps(_mm_mul_ps(low, g), b);
      high = _mm_add_ps(_mm_mul_ps(high, g), b);
    }
    for (int r = 0; r < rows; r++) {
      float *target = (float *)dst + index + r * row_stride;
      _mm_storeu_ps(target, low);
      _mm_storeu_ps(target + 4, high);
    }
  }
}
#endif

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define FL_LAYOUT_AVX2 1
/* fl_transpose_row for a full-width component, one output row, cols >= 16, with AVX2: 16 source
 * blocks per step (two 8x8 transposes side by side in the register's lanes), the last step
 * overlapping the previous one.  The same values, computed by the same float operations. */
__attribute__((target("avx2"))) static void fl_transpose_row_avx2(const JCOEF (*blocks)[64], int cols, void *dst,
                                                                 size_t plane, int dtype, const float *scale,
                                                                 const float *gain, const float *bias,
                                                                 int group_first, int group_last) {
  for (int done = 0; done < cols;) {
    const int start = done + 16 <= cols ? done : cols - 16;
    for (int group = group_first; group < group_last; group++) {
      __m256i r[8];
      for (int i = 0; i < 8; i++)
        r[i] = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)&blocks[start + i][8 * group])),
            _mm_loadu_si128((const __m128i *)&blocks[start + 8 + i][8 * group]), 1);
      FL_TRANSPOSE8X8(__m256i, _mm256, r);
      for (int j = 0; j < 8; j++) { /* r[j]: coefficient k of the 16 blocks = 16 output columns */
        const size_t k = (size_t)(8 * group + j);
        if (dtype == FL_DTYPE_INT16) {
          _mm256_storeu_si256((__m256i *)((int16_t *)dst + k * plane + start), r[j]);
          continue;
        }
        const __m256 s = _mm256_set1_ps(scale[k]);
        __m256 low = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(r[j]))), s);
        __m256 high = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(r[j], 1))), s);
        if (gain) { /* (x * scale) * gain + bias, in this order, as fl_store8 */
          const __m256 g = _mm256_set1_ps(gain[k]), b = _mm256_set1_ps(bias[k]);
          low = _mm256_add_ps(_mm256_mul_ps(low, g), b);
          high = _mm256_add_ps(_mm256_mul_ps(high, g), b);
        }
        _mm256_storeu_ps((float *)dst + k * plane + start, low);
        _mm256_storeu_ps((float *)dst + k * plane + start + 8, high);
      }
    }
    done = start + 16;
  }
}
#endif

/* Transposes one row of source blocks (block-major, 64 coefficients each) into 64 planes:
 * plane k, output column x = blocks[x / dup][k], for x in [0, cols), written to `rows` identical
 * output rows (row_stride elements apart).  dup is 1 (full-width component) or 2 (horizontally
 * half-sampled chroma, duplicated on the fly).  dst points at element 0 of plane 0's first row. */
static inline __attribute__((always_inline)) void fl_transpose_row(const JCOEF (*blocks)[64], int cols, int dup, int rows, size_t row_stride, void *dst,
                             size_t plane, int dtype, const float *scale, const float *gain, const float *bias,
                             int group_first, int group_last) {
  int source = 0; /* next source block */
#if defined(__SSE2__)
  const int whole = cols / dup; /* source blocks whose every output column lies in [0, cols) */
  for (int done = 0; whole >= 8 && done < whole;) {
    /* 8 source blocks at a time; the last group overlaps the previous one rather than falling
     * back to scalar code (the overlapping columns are written twice with the same values). */
    int start = done + 8 <= whole ? done : whole - 8;
    size_t x = (size_t)start * dup;
    for (int group = group_first; group < group_last; group++) {
      __m128i r[8];
      for (int i = 0; i < 8; i++) r[i] = _mm_loadu_si128((const __m128i *)&blocks[start + i][8 * group]);
      fl_transpose8x8(r);
      for (int j = 0; j < 8; j++) {
        size_t k = (size_t)(8 * group + j);
        if (dup == 1) {
          fl_store8(dst, k * plane + x, row_stride, rows, dtype, r[j], scale[k], gain, bias, k);
        } else {
          fl_store8(dst, k * plane + x, row_stride, rows, dtype, _mm_unpacklo_epi16(r[j], r[j]), scale[k], gain, bias, k);
          fl_store8(dst, k * plane + x + 8, row_stride, rows, dtype, _mm_unpackhi_epi16(r[j], r[j]), scale[k], gain,
                    bias, k);
        }
      }
    }
    done = start + 8;
    source = done;
  }
#endif
  for (int x = source * dup; x < cols; x++) {
    const JCOEF *block = blocks[x / dup];
    for (size_t k = 8 * (size_t)group_first; k < 8 * (size_t)group_last; k++) {
      for (int r = 0; r < rows; r++) {
        size_t index = k * plane + (size_t)x + (size_t)r * row_stride;
        if (dtype == FL_DTYPE_INT16) {
          ((int16_t *)dst)[index] = block[k];
        } else {
          float value = (float)block[k] * scale[k];
          if (gain) value = value * gain[k] + bias[k];
          ((float *)dst)[index] = value;
        }
      }
    }
  }
}

/* Grows the decoder's scratch to `blocks` blocks; FL_OK or FL_ERR_NOMEM. */
static int fl_reserve_row(fl_decoder *decoder, size_t blocks) {
  if (blocks * 64 <= decoder->row_capacity) return FL_OK;
  JCOEF(*row)[64] = (JCOEF(*)[64])realloc(decoder->row_scratch, blocks * 64 * sizeof(JCOEF));
  if (!row) return FL_ERR_NOMEM;
  decoder->row_scratch = row;
  decoder->row_capacity = blocks * 64;
  return FL_OK;
}

/* Where the layout reads blocks from: libjpeg's whole-image arrays, or one band of the own
 * decoder (the component rows of one MCU row).  Only output rows whose full-resolution block row
 * lies in [full_begin, full_end) are laid out by a call; the source row of any such row is in the
 * band (source row = floor(full row * v / v_max), clamped to the last row, which is in the last
 * band). */
typedef struct {
  jvirt_barray_ptr *arrays;
  int16_t *band[FL_MAX_COMPONENTS];
  int band_first[FL_MAX_COMPONENTS]; /* first block row of the band, per component */
  int band_cols[FL_MAX_COMPONENTS];
  int full_begin, full_end;
  int zero_rows; /* mapped layouts: this call also writes the rows mapped to -1 */
} fl_rows;

static inline JCOEF (*fl_block_row(fl_decoder *decoder, const fl_rows *source, int c, int row))[64] {
  if (source->arrays)
    return (*decoder->cinfo.mem->access_virt_barray)((j_common_ptr)&decoder->cinfo, source->arrays[c],
                                                       (JDIMENSION)row, 1, FALSE)[0];
  return (JCOEF(*)[64])(source->band[c] + (size_t)(row - source->band_first[c]) * (size_t)source->band_cols[c] * 64);
}

/* What both layouts need to know about component c of the output. */
typedef struct {
  size_t plane, element;
  int h, v, hmax, vmax, last_col, last_row;
  float scale[64];
  char *base; /* the component's first plane */
} fl_geometry;

static void fl_geometry_init(fl_geometry *g, const fl_header *header, int c, void *out, int dtype, int dequantize,
                             int out_h8, int out_w8) {
  g->plane = (size_t)out_h8 * (size_t)out_w8;
  g->element = fl_dtype_size(dtype);
  g->h = header->h_samp[c];
  g->v = header->v_samp[c];
  g->hmax = header->max_h_samp;
  g->vmax = header->max_v_samp;
  g->last_col = header->blocks_w[c] - 1;
  g->last_row = header->blocks_h[c] - 1;
  for (int k = 0; k < 64; k++) g->scale[k] = dequantize ? (float)header->qtables[c][k] : 1.0f;
  g->base = (char *)out + ((size_t)64 * c * g->plane) * g->element;
}

static inline int fl_source_row(const fl_geometry *g, int full_row) {
  int row = (int)(((long long)full_row * g->v) / g->vmax);
  return row > g->last_row ? g->last_row : row;
}

/* The output geometry of one image: centre crop/pad and, for mapped layouts, the caller's maps
 * composed with it (indices of full-resolution block rows/columns, -1 for a zero block). */
typedef struct {
  int out_h8, out_w8, dtype, dequantize;
  int src_y0, src_x0, dst_y0, dst_x0, rows, cols;
  int mapped, whole;
  const int *row_full, *col_full;
  const float *gain, *bias; /* 192 each, or NULL */
  int first_full_row, last_full_row; /* the full-resolution block rows the output uses (last -1: none) */
} fl_plan;

/* Lays one component out as 64 planes of (out_h8, out_w8), for output rows [dst_y0, dst_y0+rows)
 * and columns [dst_x0, dst_x0+cols) taken from full-resolution block rows/columns starting at
 * src_y0/src_x0 (source block = floor(full-resolution block * samp / max_samp)).  Every run of
 * output rows that maps to one source row is written by one SIMD transpose; full-width and
 * half-width components are read in place, other factors through a row of replicated blocks. */
static int fl_layout_component(fl_decoder *decoder, const fl_rows *source, const fl_header *header, int c,
                               void *out, const fl_plan *plan, const float *gain, const float *bias) {
  fl_geometry g;
  fl_geometry_init(&g, header, c, out, plan->dtype, plan->dequantize, plan->out_h8, plan->out_w8);
  const int dtype = plan->dtype, out_w8 = plan->out_w8, cols = plan->cols;
  const int src_y0 = plan->src_y0, src_x0 = plan->src_x0, dst_y0 = plan->dst_y0, dst_x0 = plan->dst_x0;
  const size_t plane = g.plane, element = g.element;
  int y_begin = source->full_begin - src_y0, y_end = source->full_end - src_y0;
  if (y_begin < 0) y_begin = 0;
  if (y_end > plan->rows) y_end = plan->rows;
  if (y_begin >= y_end) return FL_OK;
  int dup = 0, first = 0; /* in-place read: output column x takes source block first + x / dup */
  if (g.h == g.hmax && src_x0 + cols - 1 <= g.last_col) {
    dup = 1;
    first = src_x0;
  } else if (2 * g.h == g.hmax && src_x0 % 2 == 0 && (src_x0 + cols - 1) / 2 <= g.last_col) {
    dup = 2;
    first = src_x0 / 2;
  }
  if (!dup && fl_reserve_row(decoder, (size_t)cols) != FL_OK) return FL_ERR_NOMEM;
  const float *scale = g.scale;
  char *base = g.base;
  const int groups_per_pass = (dup && dtype == FL_DTYPE_FLOAT32) ? 1 : 8; /* see FL_MAPPED_EXPAND_MAX */
  for (int group_first = 0; group_first < 8; group_first += groups_per_pass) {
    const int group_last = group_first + groups_per_pass;
    for (int y = y_begin; y < y_end;) {
      int source_row = fl_source_row(&g, src_y0 + y);
      int run = 1; /* following output rows with the same source row */
      while (y + run < y_end && fl_source_row(&g, src_y0 + y + run) == source_row) run++;
      JBLOCKROW blocks = fl_block_row(decoder, source, c, source_row);
      size_t offset = (size_t)(dst_y0 + y) * (size_t)out_w8 + (size_t)dst_x0;
      if (dup) {
        const JCOEF(*row)[64] = (const JCOEF(*)[64])blocks[first];
        void *target = base + offset * element;
        /* constant dtype/dup/run arguments let the compiler specialise the inlined transpose */
#if defined(FL_LAYOUT_AVX2)
        if (dup == 1 && run == 1 && cols >= 16 && fl_has_avx2())
          fl_transpose_row_avx2(row, cols, target, plane, dtype, scale, gain, bias, group_first, group_last);
        else
#endif
        if (dtype == FL_DTYPE_INT16 && dup == 1 && run == 1)
          fl_transpose_row(row, cols, 1, 1, (size_t)out_w8, target, plane, FL_DTYPE_INT16, scale, NULL, NULL, group_first, group_last);
        else if (dtype == FL_DTYPE_INT16 && dup == 2 && run == 2)
          fl_transpose_row(row, cols, 2, 2, (size_t)out_w8, target, plane, FL_DTYPE_INT16, scale, NULL, NULL, group_first, group_last);
        else if (dtype == FL_DTYPE_FLOAT32 && dup == 1 && run == 1 && !gain)
          fl_transpose_row(row, cols, 1, 1, (size_t)out_w8, target, plane, FL_DTYPE_FLOAT32, scale, NULL, NULL, group_first, group_last);
        else if (dtype == FL_DTYPE_FLOAT32 && dup == 2 && run == 2 && !gain)
          fl_transpose_row(row, cols, 2, 2, (size_t)out_w8, target, plane, FL_DTYPE_FLOAT32, scale, NULL, NULL, group_first, group_last);
        else if (dtype == FL_DTYPE_FLOAT32 && dup == 1 && run == 1)
          fl_transpose_row(row, cols, 1, 1, (size_t)out_w8, target, plane, FL_DTYPE_FLOAT32, scale, gain, bias, group_first, group_last);
        else if (dtype == FL_DTYPE_FLOAT32 && dup == 2 && run == 2)
          fl_transpose_row(row, cols, 2, 2, (size_t)out_w8, target, plane, FL_DTYPE_FLOAT32, scale, gain, bias, group_first, group_last);
        else
          fl_transpose_row(row, cols, dup, run, (size_t)out_w8, target, plane, dtype, scale, gain, bias, group_first,
                           group_last);
      } else {
        JCOEF(*expanded)[64] = decoder->row_scratch;
        for (int x = 0; x < cols; x++) {
          int column = (int)(((long long)(src_x0 + x) * g.h) / g.hmax);
          memcpy(expanded[x], blocks[column > g.last_col ? g.last_col : column], 64 * sizeof(JCOEF));
        }
        fl_transpose_row((const JCOEF(*)[64])expanded, cols, 1, run, (size_t)out_w8, base + offset * element, plane,
                         dtype, scale, gain, bias, 0, 8);
      }
      y += run;
    }
  }
  return FL_OK;
}

/* Mapped layout (fl_decode_fun_mapped): output block (y, x) of component c takes the block at
 * full-resolution row row_full[y], column col_full[x] (-1: a zero block), then out = (x * q) *
 * gain + bias per channel when gain is given (float32 only).  In `whole` mode (float32) rows are
 * expanded into the decoder's scratch (component c at block c * plane) and written by
 * fl_layout_mapped_planes afterwards, 8 planes per pass; otherwise each row is written at once. */
static void fl_layout_mapped(fl_decoder *decoder, const fl_rows *source, const fl_header *header, int c, void *out,
                             const fl_plan *plan, const float *gain, const float *bias) {
  static const JCOEF zero_block[64];
  fl_geometry g;
  fl_geometry_init(&g, header, c, out, plan->dtype, plan->dequantize, plan->out_h8, plan->out_w8);
  const int out_w8 = plan->out_w8;
  for (int y = 0; y < plan->out_h8; y++) {
    int full_row = plan->row_full[y];
    if (full_row < 0 ? !source->zero_rows : (full_row < source->full_begin || full_row >= source->full_end)) continue;
    JBLOCKROW blocks = full_row >= 0 ? fl_block_row(decoder, source, c, fl_source_row(&g, full_row)) : NULL;
    JCOEF(*expanded)[64] = decoder->row_scratch + (plan->whole ? (size_t)c * g.plane + (size_t)y * (size_t)out_w8 : 0);
    for (int x = 0; x < out_w8; x++) {
      const JCOEF *block = zero_block;
      if (blocks && plan->col_full[x] >= 0) {
        int column = (int)(((long long)plan->col_full[x] * g.h) / g.hmax);
        block = blocks[column > g.last_col ? g.last_col : column];
      }
      memcpy(expanded[x], block, 64 * sizeof(JCOEF));
    }
    if (!plan->whole)
      fl_transpose_row((const JCOEF(*)[64])expanded, out_w8, 1, 1, (size_t)out_w8,
                       g.base + (size_t)y * (size_t)out_w8 * g.element, g.plane, plan->dtype, g.scale, gain, bias, 0, 8);
  }
}

static void fl_layout_mapped_planes(fl_decoder *decoder, const fl_header *header, int c, void *out,
                                    const fl_plan *plan, const float *gain, const float *bias) {
  fl_geometry g;
  fl_geometry_init(&g, header, c, out, plan->dtype, plan->dequantize, plan->out_h8, plan->out_w8);
  const int out_w8 = plan->out_w8;
  for (int group = 0; group < 8; group++)
    for (int y = 0; y < plan->out_h8; y++)
      fl_transpose_row((const JCOEF(*)[64])(decoder->row_scratch + (size_t)c * g.plane + (size_t)y * (size_t)out_w8),
                       out_w8, 1, 1, (size_t)out_w8, g.base + (size_t)y * (size_t)out_w8 * g.element, g.plane,
                       FL_DTYPE_FLOAT32, g.scale, gain, bias, group, group + 1);
}

/* Fills the planes of an absent component (grayscale chroma) with zeros, or bias when given. */
void fl_fill_component(void *out, int c, int dtype, size_t plane, const float *bias) {
  const size_t element = fl_dtype_size(dtype);
  if (dtype == FL_DTYPE_INT16 || !bias) {
    memset((char *)out + (size_t)64 * c * plane * element, 0, (size_t)64 * plane * element);
    return;
  }
  float *base = (float *)out + (size_t)64 * c * plane;
  for (size_t k = 0; k < 64; k++)
    for (size_t i = 0; i < plane; i++) base[k * plane + i] = bias[k];
}

/* Lays out the rows `source` holds, every component. */
static int fl_lay_out(fl_decoder *decoder, const fl_rows *source, const fl_header *header, void *out,
                      const fl_plan *plan) {
  int components = header->num_components < 3 ? header->num_components : 3;
  for (int c = 0; c < components; c++) {
    const float *gain = plan->gain ? plan->gain + 64 * c : NULL;
    const float *bias = plan->gain ? plan->bias + 64 * c : NULL;
    if (plan->mapped) {
      fl_layout_mapped(decoder, source, header, c, out, plan, gain, bias);
    } else if (fl_layout_component(decoder, source, header, c, out, plan, gain, bias) != FL_OK) {
      return FL_ERR_NOMEM;
    }
  }
  return FL_OK;
}

/* After the last rows: the whole-mode planes, and the planes of absent components. */
static void fl_lay_out_finish(fl_decoder *decoder, const fl_header *header, void *out, const fl_plan *plan) {
  for (int c = 0; c < 3; c++) {
    const float *gain = plan->gain ? plan->gain + 64 * c : NULL;
    const float *bias = plan->gain ? plan->bias + 64 * c : NULL;
    if (c >= header->num_components) {
      if (plan->mapped) fl_fill_component(out, c, plan->dtype, (size_t)plan->out_h8 * (size_t)plan->out_w8, bias);
    } else if (plan->mapped && plan->whole) {
      fl_layout_mapped_planes(decoder, header, c, out, plan, gain, bias);
    }
  }
}

/* Bands decoded before a layout pass: as many as fit in this many bytes of coefficients (at least
 * one).  Decoding a run of bands keeps the Huffman tables in L1 (a layout after every band evicted
 * them: 12% per 224x224 image). */
#define FL_BAND_RUN_BYTES ((size_t)256 << 10)

/* Decodes the begun image with the own decoder, a run of bands at a time, laying each run out as it
 * arrives (bands before first_band are decoded and dropped), and stops after band last_band.  read_dct
 * (components) takes each band's rows instead.  FL_OK, FL_ERR_NOMEM, or -1: hand the file over to
 * libjpeg. */
static int fl_own_decode(fl_decoder *decoder, const fl_header *header, void *out, const fl_plan *plan,
                         int16_t *const *components, int first_band, int last_band) {
  fl_huff_frame *frame = &decoder->frame;
  const int n = frame->num_components;
  if (last_band >= frame->mcu_rows) last_band = frame->mcu_rows - 1;
  if (last_band < 0) last_band = 0;
  if (first_band > last_band || first_band < 0 || components) first_band = 0;
  size_t band_values = 0; /* int16 per band, all components */
  for (int c = 0; c < n; c++) band_values += (size_t)frame->band_rows[c] * (size_t)frame->band_cols[c] * 64;
  int run = out && !components ? (int)(FL_BAND_RUN_BYTES / (band_values * sizeof(int16_t))) : 1;
  if (run < 1) run = 1;
  if (run > last_band - first_band + 1) run = last_band - first_band + 1;
  if (run > 1 && band_values * (size_t)run > decoder->bands_capacity) {
    int16_t *bands = (int16_t *)realloc(decoder->bands, band_values * (size_t)run * sizeof(int16_t));
    if (!bands) return FL_ERR_NOMEM;
    decoder->bands = bands;
    decoder->bands_capacity = band_values * (size_t)run;
  }
  fl_rows source;
  memset(&source, 0, sizeof source);
  int laid = 0; /* layout passes so far (the first also writes the rows mapped to -1) */
  for (int band = 0; band <= last_band;) {
    int count = band < first_band ? 1 : run;
    if (band + count > last_band + 1) count = last_band + 1 - band;
    /* where the run's bands go: the frame's own band, or consecutive bands of decoder->bands */
    int16_t *base[FL_MAX_COMPONENTS] = {0};
    int16_t *next = decoder->bands;
    for (int c = 0; c < n; c++) {
      size_t values = (size_t)frame->band_rows[c] * (size_t)frame->band_cols[c] * 64;
      base[c] = run > 1 && band >= first_band ? next : frame->band[c];
      next += values * (size_t)run;
    }
    for (int i = 0; i < count; i++) {
      int16_t *target[FL_MAX_COMPONENTS] = {0};
      for (int c = 0; c < n; c++)
        target[c] = base[c] + (size_t)i * (size_t)frame->band_rows[c] * (size_t)frame->band_cols[c] * 64;
      if (fl_huff_decode_band_into(decoder->huff, target) != FL_HUFF_OK) return -1;
    }
    source.full_begin = band * frame->band_full_rows;
    source.full_end = (band + count) * frame->band_full_rows;
    source.zero_rows = !laid;
    for (int c = 0; c < n; c++) {
      source.band[c] = base[c];
      source.band_first[c] = band * frame->band_rows[c];
      source.band_cols[c] = frame->band_cols[c];
      if (components) { /* read_dct: the component's rows of this band, unpadded */
        int rows = header->blocks_h[c] - source.band_first[c];
        if (rows > frame->band_rows[c]) rows = frame->band_rows[c];
        for (int r = 0; r < rows; r++)
          memcpy(components[c] + ((size_t)(source.band_first[c] + r) * (size_t)header->blocks_w[c]) * 64,
                 base[c] + (size_t)r * (size_t)frame->band_cols[c] * 64,
                 (size_t)header->blocks_w[c] * 64 * sizeof(int16_t));
      }
    }
    if (out && band >= first_band && source.full_end > 0) {
      if (fl_lay_out(decoder, &source, header, out, plan) != FL_OK) return FL_ERR_NOMEM;
      laid++;
    }
    band += count;
  }
  if (last_band == frame->mcu_rows - 1 && fl_huff_finish(decoder->huff) != FL_HUFF_OK) return -1;
  if (out) fl_lay_out_finish(decoder, header, out, plan);
  return FL_OK;
}

/* Runs jpeg_read_coefficients on a begun image; returns the coefficient arrays. */
static jvirt_barray_ptr *fl_read_coefficients(fl_decoder *decoder, fl_header *header) {
  jvirt_barray_ptr *arrays = jpeg_read_coefficients(&decoder->cinfo);
  fl_copy_qtables(&decoder->cinfo, header);
  return arrays;
}

int fl_read_components(fl_decoder *decoder, fl_header *header, int16_t *const *components,
                       fl_result *result) {
  j_decompress_ptr cinfo = &decoder->cinfo;
  if (!decoder->active && !decoder->own) {
    fl_fail(result, FL_ERR_ARGUMENT, "fl_read_components without a successful fl_begin");
    return result->status;
  }
  if (decoder->own) {
    int status = fl_own_decode(decoder, header, NULL, NULL, components, 0, decoder->frame.mcu_rows - 1);
    if (status == FL_OK) {
      fl_abort(decoder);
      return FL_OK;
    }
    if (fl_hand_over(decoder, header, result) != FL_OK) return result->status;
  }
  if (setjmp(decoder->err.jump)) {
    fl_abort(decoder);
    return result->status;
  }
  jvirt_barray_ptr *arrays = fl_read_coefficients(decoder, header);
  for (int c = 0; c < header->num_components; c++) {
    size_t row_values = (size_t)header->blocks_w[c] * 64;
    for (int row = 0; row < header->blocks_h[c]; row++) {
      JBLOCKARRAY rows = (*cinfo->mem->access_virt_barray)((j_common_ptr)cinfo, arrays[c],
                                                          (JDIMENSION)row, 1, FALSE);
      memcpy(components[c] + (size_t)row * row_values, rows[0], row_values * sizeof(int16_t));
    }
  }
  fl_abort(decoder);
  return FL_OK;
}

/* zero_on_error: fl_decode_fun's contract (batch slots must not keep a previous image). fl_read_fun
 * (read_fun's fresh or caller-owned buffer) does not: libjpeg fails before out is written, and
 * zero-filling a fresh buffer sized from a hostile header (a 600-byte file claiming 13000x13000)
 * would touch 1-2 GB only to throw it away.  (The own decoder may have written some rows of out
 * before handing over; libjpeg then writes them again, or fails.)
 * stop_early: with block maps, entropy decoding stops after the last MCU row the maps use. */
static int fl_read_fun_begun(fl_decoder *decoder, fl_header *header, void *out, size_t out_bytes,
                             int dtype, int dequantize, int out_h8, int out_w8, int zero_on_error,
                             const fl_mapping *mapping, fl_result *result) {
  if (out_h8 <= 0 || out_w8 <= 0) {
    out_h8 = header->grid_h;
    out_w8 = header->grid_w;
  }
  size_t needed = (size_t)192 * (size_t)out_h8 * (size_t)out_w8 * fl_dtype_size(dtype);
  if (out_bytes < needed) {
    fl_fail(result, FL_ERR_ARGUMENT, "output buffer too small for (192, H8, W8)");
    fl_abort(decoder);
    return result->status;
  }
  fl_plan plan;
  memset(&plan, 0, sizeof plan);
  plan.out_h8 = out_h8;
  plan.out_w8 = out_w8;
  plan.dtype = dtype;
  plan.dequantize = dequantize;
  plan.gain = mapping ? mapping->gain : NULL;
  plan.bias = mapping ? mapping->bias : NULL;
  /* Centre crop or centre pad, independently per axis. */
  plan.rows = header->grid_h;
  plan.cols = header->grid_w;
  if (header->grid_h >= out_h8) { plan.src_y0 = (header->grid_h - out_h8) / 2; plan.rows = out_h8; }
  else plan.dst_y0 = (out_h8 - header->grid_h) / 2;
  if (header->grid_w >= out_w8) { plan.src_x0 = (header->grid_w - out_w8) / 2; plan.cols = out_w8; }
  else plan.dst_x0 = (out_w8 - header->grid_w) / 2;
  int padded = plan.rows < out_h8 || plan.cols < out_w8 || header->num_components < 3;
  plan.mapped = mapping && (mapping->rows || mapping->cols || padded);
  plan.first_full_row = plan.src_y0;
  plan.last_full_row = header->grid_h - 1;
  if (plan.mapped) {
    /* Compose the caller's maps (indices into the centre-cropped/padded grid) with that geometry. */
    int *row_full = decoder->map_scratch, *col_full = decoder->map_scratch + out_h8;
    plan.first_full_row = header->grid_h;
    plan.last_full_row = -1;
    for (int y = 0; y < out_h8; y++) {
      int index = mapping->rows ? mapping->rows[y] : y;
      row_full[y] = (index >= plan.dst_y0 && index < plan.dst_y0 + plan.rows) ? plan.src_y0 + index - plan.dst_y0 : -1;
      if (row_full[y] > plan.last_full_row) plan.last_full_row = row_full[y];
      if (row_full[y] >= 0 && row_full[y] < plan.first_full_row) plan.first_full_row = row_full[y];
    }
    if (plan.first_full_row > plan.last_full_row) plan.first_full_row = 0; /* no row used */
    for (int x = 0; x < out_w8; x++) {
      int index = mapping->cols ? mapping->cols[x] : x;
      col_full[x] = (index >= plan.dst_x0 && index < plan.dst_x0 + plan.cols) ? plan.src_x0 + index - plan.dst_x0 : -1;
    }
    plan.row_full = row_full;
    plan.col_full = col_full;
    size_t plane = (size_t)out_h8 * (size_t)out_w8;
    plan.whole = dtype == FL_DTYPE_FLOAT32 && plane * 64 * sizeof(JCOEF) <= FL_MAPPED_EXPAND_MAX;
    if (fl_reserve_row(decoder, plan.whole ? plane * 3 : (size_t)out_w8) != FL_OK) {
      fl_fail(result, FL_ERR_NOMEM, "out of memory");
      fl_abort(decoder);
      if (zero_on_error) memset(out, 0, needed);
      return result->status;
    }
  } else if (padded) {
    memset(out, 0, needed);
  }

  int status = FL_OK;
  if (decoder->own) {
    /* crop-aware: with block maps, stop after the last band the maps use */
    int last_band = decoder->frame.mcu_rows - 1;
    if (mapping && (mapping->rows || mapping->cols) && plan.last_full_row >= 0)
      last_band = plan.last_full_row / decoder->frame.band_full_rows;
    int first_band = plan.first_full_row / decoder->frame.band_full_rows;
    status = fl_own_decode(decoder, header, out, &plan, NULL, first_band, last_band);
    if (status != -1) {
      fl_abort(decoder);
      if (status != FL_OK) {
        fl_fail(result, FL_ERR_NOMEM, "out of memory");
        memset(out, 0, needed);
        return result->status;
      }
      return FL_OK;
    }
    status = FL_OK;
    if (fl_hand_over(decoder, header, result) != FL_OK) {
      if (zero_on_error) memset(out, 0, needed);
      return result->status;
    }
  }

  if (setjmp(decoder->err.jump)) {
    fl_abort(decoder);
    if (zero_on_error) memset(out, 0, needed);
    return result->status;
  }
  fl_rows source;
  memset(&source, 0, sizeof source);
  source.arrays = fl_read_coefficients(decoder, header);
  source.full_begin = 0;
  source.full_end = header->grid_h;
  source.zero_rows = 1;
  status = fl_lay_out(decoder, &source, header, out, &plan);
  if (status == FL_OK) fl_lay_out_finish(decoder, header, out, &plan);
  fl_abort(decoder);
  if (status != FL_OK) { /* the only layout failure is a scratch allocation */
    fl_fail(result, FL_ERR_NOMEM, "out of memory");
    memset(out, 0, needed);
    return result->status;
  }
  return FL_OK;
}

int fl_read_fun(fl_decoder *decoder, fl_header *header, void *out, size_t out_bytes, int dtype,
                int dequantize, int out_h8, int out_w8, fl_result *result) {
  if (!decoder->active && !decoder->own) {
    fl_fail(result, FL_ERR_ARGUMENT, "fl_read_fun without a successful fl_begin");
    return result->status;
  }
  return fl_read_fun_begun(decoder, header, out, out_bytes, dtype, dequantize, out_h8, out_w8, 0, NULL, result);
}

int fl_decode_fun(fl_decoder *decoder, const uint8_t *data, size_t size, const fl_options *options,
                  void *out, size_t out_bytes, int dtype, int dequantize, int out_h8, int out_w8,
                  fl_header *header, fl_result *result) {
  return fl_decode_fun_mapped(decoder, data, size, options, out, out_bytes, dtype, dequantize, out_h8, out_w8,
                              NULL, header, result);
}

int fl_decode_fun_mapped(fl_decoder *decoder, const uint8_t *data, size_t size, const fl_options *options,
                         void *out, size_t out_bytes, int dtype, int dequantize, int out_h8, int out_w8,
                         const fl_mapping *mapping, fl_header *header, fl_result *result) {
  const char *invalid = NULL;
  if (dtype != FL_DTYPE_INT16 && dtype != FL_DTYPE_FLOAT32) invalid = "unknown output dtype";
  else if (mapping && (out_h8 <= 0 || out_w8 <= 0)) invalid = "a block mapping needs a fixed output grid";
  else if (mapping && mapping->gain && (dtype != FL_DTYPE_FLOAT32 || !mapping->bias))
    invalid = "gain/bias need float32 output and both arrays";
  if (invalid) {
    fl_result_reset(result);
    fl_fail(result, FL_ERR_ARGUMENT, invalid);
    return result->status;
  }
  if (mapping && (size_t)(out_h8 + out_w8) > decoder->map_capacity) {
    int *maps = (int *)realloc(decoder->map_scratch, (size_t)(out_h8 + out_w8) * sizeof(int));
    if (!maps) {
      fl_result_reset(result);
      fl_fail(result, FL_ERR_NOMEM, "out of memory");
      return result->status;
    }
    decoder->map_scratch = maps;
    decoder->map_capacity = (size_t)(out_h8 + out_w8);
  }
  if (fl_begin(decoder, data, size, options, header, result) != FL_OK) {
    if (out_h8 > 0 && out_w8 > 0) {
      size_t needed = (size_t)192 * (size_t)out_h8 * (size_t)out_w8 * fl_dtype_size(dtype);
      if (needed <= out_bytes) memset(out, 0, needed);
    }
    return result->status;
  }
  return fl_read_fun_begun(decoder, header, out, out_bytes, dtype, dequantize, out_h8, out_w8, 1, mapping, result);
}

int fl_decoder_path(fl_decoder *decoder, const uint8_t *data, size_t size, uint64_t max_pixels, char *reason,
                    size_t reason_size) {
  fl_abort(decoder);
  int own = 0;
  if (fl_huff_begin(decoder->huff, data, size, max_pixels, &decoder->frame) == FL_HUFF_OK) {
    own = 1;
    for (int band = 0; own && band < decoder->frame.mcu_rows; band++)
      own = fl_huff_decode_band(decoder->huff, &decoder->frame) == FL_HUFF_OK;
    if (own) own = fl_huff_finish(decoder->huff) == FL_HUFF_OK;
  }
  snprintf(reason, reason_size, "%s", own ? "" : fl_huff_reason(decoder->huff));
  return own;
}

int fl_libjpeg_version(void) {
#ifdef LIBJPEG_TURBO_VERSION_NUMBER
  return LIBJPEG_TURBO_VERSION_NUMBER;
#else
  return JPEG_LIB_VERSION;
#endif
}


/* ---------------------------------------------------------------- exact resized crop (resize.h) */

int fl_read_size(fl_decoder *decoder, const uint8_t *data, size_t size, const fl_options *options, fl_header *header,
                 fl_result *result) {
  int status = fl_begin(decoder, data, size, options, header, result);
  fl_abort(decoder);
  return status;
}

/* Fills `window` from the own decoder (crop-aware): the bands are decoded up to the last one the
 * window uses, only the window's blocks are kept (copied into the decoder's window_blocks), and
 * the rest of the file is not read.  FL_OK, FL_ERR_NOMEM, or -1: hand the file over to libjpeg. */
static int fl_own_window(fl_decoder *decoder, fl_coef_window *window) {
  fl_huff_frame *frame = &decoder->frame;
  size_t values = 0, used = 0;
  int last_band = 0;
  for (int c = 0; c < frame->num_components; c++) {
    if (window->num_rows[c] <= 0) continue;
    int last_row = window->first_row[c] + window->num_rows[c] - 1;
    if (window->first_row[c] < 0 || window->first_col[c] < 0 ||
        window->first_col[c] + window->num_cols[c] > frame->band_cols[c] ||
        last_row >= frame->mcu_rows * frame->band_rows[c])
      return -1; /* outside the coded blocks: libjpeg's arrays decide */
    if (last_row / frame->band_rows[c] > last_band) last_band = last_row / frame->band_rows[c];
    values += (size_t)window->num_rows[c] * (size_t)window->num_cols[c] * 64;
  }
  if (values > decoder->window_blocks_capacity) {
    int16_t *blocks = (int16_t *)realloc(decoder->window_blocks, values * sizeof(int16_t));
    if (!blocks) return FL_ERR_NOMEM;
    decoder->window_blocks = blocks;
    decoder->window_blocks_capacity = values;
  }
  for (int c = 0; c < FL_MAX_COMPONENTS; c++) {
    window->rows[c] = decoder->window_rows + used;
    used += (size_t)window->num_rows[c];
  }
  int16_t *next = decoder->window_blocks;
  for (int band = 0; band <= last_band; band++) {
    if (fl_huff_decode_band(decoder->huff, frame) != FL_HUFF_OK) return -1;
    for (int c = 0; c < frame->num_components; c++) {
      int band_first = band * frame->band_rows[c];
      for (int r = 0; r < window->num_rows[c]; r++) {
        int row = window->first_row[c] + r;
        if (row < band_first || row >= band_first + frame->band_rows[c]) continue;
        const int16_t *source = frame->band[c] + ((size_t)(row - band_first) * (size_t)frame->band_cols[c] +
                                                  (size_t)window->first_col[c]) * 64;
        memcpy(next, source, (size_t)window->num_cols[c] * 64 * sizeof(int16_t));
        window->rows[c][r] = next;
        next += (size_t)window->num_cols[c] * 64;
      }
    }
  }
  if (last_band == frame->mcu_rows - 1 && fl_huff_finish(decoder->huff) != FL_HUFF_OK) return -1;
  return FL_OK;
}

int fl_decode_fun_resized(fl_decoder *decoder, const uint8_t *data, size_t size, const fl_options *options, void *out,
                          size_t out_bytes, int dtype, int out_h8, int out_w8, const fl_resize_spec *spec,
                          const fl_mapping *mapping, fl_header *header, fl_result *result) {
  const char *invalid = NULL;
  size_t needed = 0;
  if (dtype != FL_DTYPE_INT16 && dtype != FL_DTYPE_FLOAT32) invalid = "unknown output dtype";
  else if (out_h8 <= 0 || out_w8 <= 0) invalid = "a resized crop needs a positive output grid";
  else if (mapping && mapping->gain && (dtype != FL_DTYPE_FLOAT32 || !mapping->bias))
    invalid = "gain/bias need float32 output and both arrays";
  else if (out_bytes < (needed = (size_t)192 * (size_t)out_h8 * (size_t)out_w8 * fl_dtype_size(dtype)))
    invalid = "output buffer too small for (192, H8, W8)";
  if (invalid) {
    fl_result_reset(result);
    fl_fail(result, FL_ERR_ARGUMENT, invalid);
    return result->status;
  }
  if (!decoder->resize && !(decoder->resize = fl_resize_scratch_new())) {
    fl_result_reset(result);
    fl_fail(result, FL_ERR_NOMEM, "out of memory");
    memset(out, 0, needed);
    return result->status;
  }
  if (fl_begin(decoder, data, size, options, header, result) != FL_OK) {
    memset(out, 0, needed);
    return result->status;
  }
  int status = fl_resize_check(header, spec, out_h8, out_w8, result->message, FL_MESSAGE_LEN);
  fl_coef_window window;
  if (status == FL_OK) status = fl_resize_plan(decoder->resize, header, spec, out_h8, out_w8, &window);
  size_t pointers = 0;
  for (int c = 0; status == FL_OK && c < FL_MAX_COMPONENTS; c++) pointers += (size_t)window.num_rows[c];
  if (status == FL_OK && pointers > decoder->window_capacity) {
    int16_t **rows = (int16_t **)realloc(decoder->window_rows, pointers * sizeof(int16_t *));
    if (!rows) status = FL_ERR_NOMEM;
    else {
      decoder->window_rows = rows;
      decoder->window_capacity = pointers;
    }
  }
  if (status != FL_OK) {
    if (status == FL_ERR_NOMEM) fl_fail(result, FL_ERR_NOMEM, "out of memory");
    result->status = status;
    fl_abort(decoder);
    memset(out, 0, needed);
    return result->status;
  }
  int own_window = 0; /* the own decoder filled the window (else libjpeg's arrays do) */
  if (decoder->own) {
    status = fl_own_window(decoder, &window);
    own_window = status == FL_OK;
    if (status == -1 && fl_hand_over(decoder, header, result) != FL_OK) {
      memset(out, 0, needed);
      return result->status;
    }
  }
  if (!own_window && status != FL_ERR_NOMEM) {
    if (setjmp(decoder->err.jump)) {
      fl_abort(decoder);
      memset(out, 0, needed);
      return result->status;
    }
    j_decompress_ptr cinfo = &decoder->cinfo;
    jvirt_barray_ptr *arrays = fl_read_coefficients(decoder, header);
    size_t used = 0;
    for (int c = 0; c < FL_MAX_COMPONENTS; c++) {
      window.rows[c] = decoder->window_rows + used;
      for (int r = 0; r < window.num_rows[c]; r++) {
        JBLOCKROW blocks = (*cinfo->mem->access_virt_barray)((j_common_ptr)cinfo, arrays[c],
                                                             (JDIMENSION)(window.first_row[c] + r), 1, FALSE)[0];
        window.rows[c][r] = (int16_t *)blocks[window.first_col[c]];
      }
      used += (size_t)window.num_rows[c];
    }
  }
  if (status != FL_ERR_NOMEM) status = FL_OK;
  if (status == FL_OK) status = fl_resize_run(decoder->resize, header, &window, out, dtype, mapping);
  fl_abort(decoder);
  if (status != FL_OK) { /* the only failures left are allocations */
    fl_fail(result, FL_ERR_NOMEM, "out of memory");
    memset(out, 0, needed);
    return result->status;
  }
  return FL_OK;
}
