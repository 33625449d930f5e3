/*
 * jpegdct_core: read quantized DCT coefficients out of JPEG data and lay them out for FUN models.
 * Baseline files are entropy-decoded by funloader's own decoder (huffman.h), one MCU row at a time
 * straight into the layout; everything else, and any file in which that decoder meets anything it
 * does not fully expect, by libjpeg-turbo's jpeg_read_coefficients (the "hand-over": the whole
 * file is decoded again by libjpeg, so its output, errors and warnings are libjpeg's own).
 *
 * Plain C with no Python dependency, so the CPython module and the DALI operator share it.
 * Every libjpeg error is caught with setjmp/longjmp and turned into a status code plus a message;
 * nothing here calls exit().  Policy (which file, what to crop, what to do on error) belongs to
 * the caller.
 *
 * FUN layout: (192, out_h8, out_w8), channel = 64 * component + 8 * v + u (natural order),
 * components Y, Cb, Cr; every component is mapped onto the full-resolution block grid
 * (ceil(H/8) x ceil(W/8)) by nearest-neighbour block replication:
 *     component block row = floor(row * v_samp / v_max), column likewise.
 */
#ifndef FUNLOADER_JPEGDCT_CORE_H
#define FUNLOADER_JPEGDCT_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FL_MAX_COMPONENTS 4
#define FL_MESSAGE_LEN 256
#define FL_MAX_WARNINGS 4

/* Status codes (the Python side maps them to exception classes). */
enum {
  FL_OK = 0,
  FL_ERR_DECODE = 1,      /* corrupt / truncated / not a JPEG -> JPEGDecodeError */
  FL_ERR_UNSUPPORTED = 2, /* CMYK, YCCK, RGB-coded, 12-bit, lossless -> UnsupportedJPEGError */
  FL_ERR_TOO_LARGE = 3,   /* over max_pixels: decompression-bomb guard -> JPEGDecodeError */
  FL_ERR_IO = 4,          /* file could not be read -> OSError (errno in fl_result.os_errno) */
  FL_ERR_NOMEM = 5,       /* allocation failed -> MemoryError */
  FL_ERR_ARGUMENT = 6,    /* caller error (buffer too small, bad dtype) -> ValueError */
  FL_ERR_BOX = 7          /* resized-crop box outside the image / empty (resize.h) -> ValueError */
};

/* fl_header.colorspace values this core accepts (equal to libjpeg's JCS_GRAYSCALE / JCS_YCbCr). */
enum { FL_COLORSPACE_GRAY = 1, FL_COLORSPACE_YCBCR = 3 };

/* Output element types of fl_decode_fun. */
enum { FL_DTYPE_INT16 = 0, FL_DTYPE_FLOAT32 = 1 };

/* Which entropy decoder runs (fl_options.decoder). */
enum {
  FL_DECODER_AUTO = 0,   /* funloader's own for baseline files, libjpeg for the rest (hand-over) */
  FL_DECODER_LIBJPEG = 1 /* libjpeg-turbo for every file */
};

typedef struct {
  int strict;          /* 1: corrupt-data warnings are errors; 0: collected, decoding goes on */
  uint64_t max_pixels; /* width * height limit checked from the header before any big allocation */
  int max_scans;       /* progressive/multi-scan limit (CPU bomb guard); <= 0: no limit */
  int decoder;         /* FL_DECODER_AUTO (0, the default of a zeroed struct) or FL_DECODER_LIBJPEG */
} fl_options;

/* What the header says about an image, plus the quantization tables (natural order). */
typedef struct {
  int width, height;
  int num_components;
  int colorspace; /* FL_COLORSPACE_GRAY or FL_COLORSPACE_YCBCR (libjpeg's J_COLOR_SPACE value) */
  int progressive, arithmetic;
  int max_h_samp, max_v_samp;
  int h_samp[FL_MAX_COMPONENTS], v_samp[FL_MAX_COMPONENTS];
  int blocks_w[FL_MAX_COMPONENTS], blocks_h[FL_MAX_COMPONENTS]; /* not MCU-padded */
  int grid_h, grid_w; /* full-resolution block grid: ceil(H/8), ceil(W/8) */
  uint16_t qtables[FL_MAX_COMPONENTS][64];
  int own_decoder;      /* 1: the image was entropy-decoded by funloader's own decoder */
  const char *handover; /* why libjpeg decoded it under FL_DECODER_AUTO (static string), or NULL */
} fl_header;

/* Result of one decode: status, message and the recoverable warnings seen. */
typedef struct {
  int status;
  int os_errno;
  int num_warnings;                                 /* all warnings seen */
  char message[FL_MESSAGE_LEN];                     /* error reason when status != FL_OK */
  char warnings[FL_MAX_WARNINGS][FL_MESSAGE_LEN];   /* the first FL_MAX_WARNINGS messages */
} fl_result;

typedef struct fl_decoder fl_decoder;

/* A reusable decoder (one per thread; not thread-safe itself). NULL on allocation failure. */
fl_decoder *fl_decoder_new(void);
void fl_decoder_free(fl_decoder *decoder);

/* A reusable, 64-byte aligned scratch of at least `bytes` bytes owned by the decoder (NULL when it
 * cannot grow).  Batches lay an item out there, where it stays in cache, and copy it to its slot
 * in one sequential pass: the layout's scattered plane writes straight into a batch far larger than
 * the cache cost more than the whole entropy decode. */
void *fl_stage(fl_decoder *decoder, size_t bytes);

/* Copies a staged item to its slot with streaming (non-temporal) stores: no read of the slot's old
 * lines, which a batch far larger than the cache would otherwise fetch from memory first. */
void fl_copy_out(void *dst, const void *src, size_t bytes);

/* Reads a whole file into the decoder's reusable buffer; data and size then point into it. */
int fl_load_file(fl_decoder *decoder, const char *path, const uint8_t **data, size_t *size,
                 fl_result *result);

/* Two-phase per-component read (for read_dct): fl_begin parses the header and validates it,
 * the caller allocates component arrays of blocks_h*blocks_w*64 int16 each, fl_read_components
 * decodes into them (and refreshes header->qtables with the tables actually used).
 * fl_abort releases the image whenever fl_read_components is not reached. */
int fl_begin(fl_decoder *decoder, const uint8_t *data, size_t size, const fl_options *options,
             fl_header *header, fl_result *result);
int fl_read_components(fl_decoder *decoder, fl_header *header, int16_t *const *components,
                       fl_result *result);
/* FUN layout of a begun image (see fl_decode_fun); always ends the image. Unlike fl_decode_fun it
 * does not zero-fill out on a decode error (out is left as it was). */
int fl_read_fun(fl_decoder *decoder, fl_header *header, void *out, size_t out_bytes, int dtype,
                int dequantize, int out_h8, int out_w8, fl_result *result);
void fl_abort(fl_decoder *decoder);

/* One-shot FUN decode into out: (192, out_h8, out_w8) of dtype (int16 raw, or float32 raw or
 * dequantized).  When the image grid differs from (out_h8, out_w8) it is centre-cropped (start
 * (grid - out) / 2) or zero-padded (image placed at (out - grid) / 2) by whole blocks.
 * out_h8/out_w8 <= 0 means "the image's own grid" (caller must have sized out from the header).
 * On error out is zero-filled. */
int fl_decode_fun(fl_decoder *decoder, const uint8_t *data, size_t size, const fl_options *options,
                  void *out, size_t out_bytes, int dtype, int dequantize, int out_h8, int out_w8,
                  fl_header *header, fl_result *result);

/* A per-image block mapping and affine for fl_decode_fun_mapped (the loader's augmentations done
 * while laying out): output block row y takes row rows[y] of the grid fl_decode_fun would have
 * produced (centre crop/pad to out_h8 x out_w8), column x takes column cols[x]; -1 is a zero block;
 * NULL maps mean identity.  With maps, the own decoder stops entropy decoding after the last MCU
 * row the maps use (crop-aware decoding): damage after that row is then not seen, in either mode.  With gain (192 floats) the float32 output is (x * q) * gain[ch] +
 * bias[ch] per channel (x * gain + bias without dequantize), evaluated in that order. */
typedef struct {
  const int32_t *rows;
  const int32_t *cols;
  const float *gain;
  const float *bias;
} fl_mapping;

int fl_decode_fun_mapped(fl_decoder *decoder, const uint8_t *data, size_t size, const fl_options *options,
                         void *out, size_t out_bytes, int dtype, int dequantize, int out_h8, int out_w8,
                         const fl_mapping *mapping, fl_header *header, fl_result *result);

/* Bytes per output element of an FL_DTYPE_* (0 for an unknown code). */
size_t fl_dtype_size(int dtype);

/* Fills component c's 64 planes of `plane` elements in a (192, ...) output with an absent component's
 * value: bias[k] per channel for float32 with a bias, else zeros. */
void fl_fill_component(void *out, int c, int dtype, size_t plane, const float *bias);

/* Which decoder a file takes under FL_DECODER_AUTO: 1 funloader's own (the whole scan decodes with
 * it), 0 libjpeg, with the hand-over reason copied to reason. Decodes the file's entropy data. */
int fl_decoder_path(fl_decoder *decoder, const uint8_t *data, size_t size, uint64_t max_pixels, char *reason,
                    size_t reason_size);

/* libjpeg-turbo version number (e.g. 2001005). */
int fl_libjpeg_version(void);

#ifdef __cplusplus
}
#endif

#endif
