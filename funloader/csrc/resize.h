/*
 * resize: the exact resized crop of a JPEG, computed from its coefficient blocks.
 *
 * For one image and a box (top, left, height, width) in ORIGINAL pixel coordinates (floats allowed),
 * each YCbCr component of the decoded image is resized with Pillow's BILINEAR filter (antialiased:
 * support scaled by the downscale factor, normalised weights, centre = box_left + (i + 0.5) * scale)
 * to 8*H8 x 8*W8 pixels ("444"), or chroma to 4*H8 x 4*W8 ("420", then replicated onto the luma
 * block grid as read_fun does for a 4:2:0 file), block-DCT'd (orthonormal JPEG DCT of level-shifted
 * samples: the units of dequantized JPEG coefficients) and laid out as FUN (192, H8, W8).
 *
 * Pipeline per component: inverse DCT (AAN, 8 columns per vector) of the needed blocks only, clamped to
 * [0, 255] as a decoder does; then each axis's resampling fused with that axis's forward DCT (per output
 * block, an 8 x span matrix = DCT x Pillow weights, applied to the native pixels it covers): a row pass over
 * the needed pixel rows, a column pass per output block row; then the caller's block maps and per-channel
 * affine (fl_mapping) while transposing to the FUN layout.  AVX2 when the CPU has it (run-time check), SSE2
 * otherwise: the same operations in the same order (no fused multiply-add), hence the same bits.
 *
 * Source chroma: the full-resolution plane a libjpeg decode produces (the native plane upsampled by libjpeg's
 * rule: h2v1/h1v2/h2v2 "fancy" triangle filter, else replication), for "444" and "420" alike, folded into the
 * resampling weights (no upsampled plane is materialised; the blocks read are the same).  A fractional
 * sampling ratio (which libjpeg cannot decode) resamples the native plane with the box scaled to it.
 *
 * Support: FL_SUPPORT_BOX is torchvision's resized_crop (crop, then resize): the filter reads only
 * the pixels of the box (for a non-integer box, the whole pixels it touches, [floor, ceil)); edge
 * taps are dropped and the weights renormalised, as Pillow does at an image edge.
 * FL_SUPPORT_IMAGE is Pillow's resize(size, box=...): the filter support extends outside the box,
 * inside the image (Resize(256) + CenterCrop(224) is one such box).
 *
 * Plain C, no Python; not thread-safe per scratch (one scratch per decoder / thread).
 */
#ifndef FUNLOADER_RESIZE_H
#define FUNLOADER_RESIZE_H

#include <stddef.h>
#include <stdint.h>

#include "jpegdct_core.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { FL_SUPPORT_BOX = 0, FL_SUPPORT_IMAGE = 1 };
enum { FL_CHROMA_420 = 0, FL_CHROMA_444 = 1 };

/* A window of decoded coefficient blocks, per component. */
typedef struct {
  int first_row[FL_MAX_COMPONENTS], num_rows[FL_MAX_COMPONENTS];
  int first_col[FL_MAX_COMPONENTS], num_cols[FL_MAX_COMPONENTS];
  int16_t **rows[FL_MAX_COMPONENTS]; /* rows[c][r] -> num_cols[c] blocks x 64 int16 (natural order, quantized),
                                        block row first_row[c]+r starting at block column first_col[c] */
} fl_coef_window;

/* What to resize: a box in original pixel coordinates, the support rule and the chroma output. */
typedef struct {
  double top, left, height, width;
  int support; /* FL_SUPPORT_BOX or FL_SUPPORT_IMAGE */
  int chroma;  /* FL_CHROMA_420 or FL_CHROMA_444 */
} fl_resize_spec;

typedef struct fl_resize_scratch fl_resize_scratch;

/* Per-decoder reusable scratch (weights, pixel rows, coefficient planes); grows, never shrinks below
 * what the largest image needed.  NULL on allocation failure. */
fl_resize_scratch *fl_resize_scratch_new(void);
void fl_resize_scratch_free(fl_resize_scratch *scratch);

/* FL_OK, or FL_ERR_BOX with a message naming the box and the image size when the box is not finite,
 * has a zero/negative size, or does not lie inside the image; FL_ERR_ARGUMENT for a bad spec or grid. */
int fl_resize_check(const fl_header *header, const fl_resize_spec *spec, int out_h8, int out_w8, char *message,
                    size_t message_len);

/* Plans one resized crop (the spec must have passed fl_resize_check): computes the per-axis weights
 * into the scratch and fills window->first_row/num_rows/first_col/num_cols with the blocks each
 * component needs (filter margin and chroma upsampling context included; num_rows = 0 for a
 * component that is not read).  A decoder then fills window->rows (only those blocks are read) and
 * calls fl_resize_run with the same scratch.  FL_OK or FL_ERR_NOMEM. */
int fl_resize_plan(fl_resize_scratch *scratch, const fl_header *header, const fl_resize_spec *spec, int out_h8,
                   int out_w8, fl_coef_window *window);

/* Runs the planned crop into out: (192, out_h8, out_w8) float32 (dequantized units; with mapping->gain
 * the value is x * gain[ch] + bias[ch]) or int16 (x rounded to nearest, ties to even, saturated: the
 * coefficients of a quality-100 re-encode, whose quantization table is all ones).  mapping (optional):
 * output block row y takes row rows[y] of the resized grid (-1 or out of range: a zero block), columns
 * likewise; header->qtables dequantize.  FL_OK or FL_ERR_NOMEM. */
int fl_resize_run(fl_resize_scratch *scratch, const fl_header *header, const fl_coef_window *window, void *out,
                  int dtype, const fl_mapping *mapping);

/* Implemented in jpegdct_core.c (they need the decoder): */

/* One-shot exact resized crop of `spec`'s box into out (192, out_h8, out_w8), as fl_resize_run describes,
 * coefficients read with libjpeg's jpeg_read_coefficients; on any error out is zero-filled.  A bad box gives
 * FL_ERR_BOX with a message naming it. */
int fl_decode_fun_resized(fl_decoder *decoder, const uint8_t *data, size_t size, const fl_options *options, void *out,
                          size_t out_bytes, int dtype, int out_h8, int out_w8, const fl_resize_spec *spec,
                          const fl_mapping *mapping, fl_header *header, fl_result *result);

/* Header only (size, sampling, validity as fl_begin checks it); always ends the image. */
int fl_read_size(fl_decoder *decoder, const uint8_t *data, size_t size, const fl_options *options, fl_header *header,
                 fl_result *result);

/* Which SIMD path the kernel takes on this CPU: "avx2" or "sse2" or "scalar". */
const char *fl_resize_simd(void);

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
/* 1 when the CPU has AVX2 and FUNLOADER_SIMD does not say "sse2" (the one SIMD switch of the C core:
 * the resize kernel and the FUN layout both follow it, and give the same bits either way). */
int fl_has_avx2(void);
#endif

#ifdef __cplusplus
}
#endif

#endif
