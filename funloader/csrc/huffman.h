/*
 * huffman: funloader's own entropy decoder for sequential baseline JPEGs (SOF0, and SOF1 with
 * 8-bit samples and Huffman coding), 1 or 3 components, any sampling factors, one interleaved
 * scan, restart markers.  Plain C, no libjpeg.
 *
 * It decodes one MCU row ("band") at a time into a reusable scratch band, so a caller lays the
 * blocks out as they arrive and can stop after the last MCU row it needs.  It never guesses: on
 * anything it does not fully expect (another coding or precision, an Adobe/RGB colour transform,
 * an odd marker or table, a bad Huffman code, a missing or misplaced restart marker, bytes between
 * the entropy data and a marker, premature end of data, a second scan, ...) it returns
 * FL_HUFF_HANDOVER with a reason, and the caller decodes the whole file with libjpeg instead,
 * which then produces libjpeg's own output, errors and warnings.  Whenever it returns FL_HUFF_OK
 * for a whole image, libjpeg-turbo's jpeg_read_coefficients gives the same coefficients and no
 * warning (tested bit for bit, and by differential fuzzing, in tests/test_huffman.py and
 * tests/fuzz/).
 *
 * Reads are bounds-checked against [data, data + size): no segment length or entropy-coded byte
 * makes it read outside the buffer.
 */
#ifndef FUNLOADER_HUFFMAN_H
#define FUNLOADER_HUFFMAN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { FL_HUFF_OK = 0, FL_HUFF_HANDOVER = 1 };

#define FL_HUFF_MAX_COMPONENTS 3

/* The frame of a begun image, as libjpeg would describe it. */
typedef struct {
  int width, height, num_components;
  int max_h_samp, max_v_samp;
  int h_samp[FL_HUFF_MAX_COMPONENTS], v_samp[FL_HUFF_MAX_COMPONENTS];
  int blocks_w[FL_HUFF_MAX_COMPONENTS], blocks_h[FL_HUFF_MAX_COMPONENTS]; /* not MCU-padded */
  uint16_t qtables[FL_HUFF_MAX_COMPONENTS][64];                         /* natural order */
  int mcu_rows;                                   /* bands in the image */
  int band_full_rows;                             /* full-resolution block rows per band */
  int band_rows[FL_HUFF_MAX_COMPONENTS];          /* block rows of a component per band */
  int band_cols[FL_HUFF_MAX_COMPONENTS];          /* blocks per band row (MCU-padded) */
  int16_t *band[FL_HUFF_MAX_COMPONENTS];          /* the scratch band: band_rows x band_cols x 64 */
} fl_huff_frame;

typedef struct fl_huff fl_huff;

/* A reusable decoder (one per thread). NULL on allocation failure. */
fl_huff *fl_huff_new(void);
void fl_huff_free(fl_huff *huff);

/* Parses the markers up to the scan's entropy-coded data and fills frame (its band pointers stay
 * valid until the next fl_huff_begin).  Images over max_pixels (> 0) are handed over, so libjpeg
 * reports them.  FL_HUFF_OK or FL_HUFF_HANDOVER. */
int fl_huff_begin(fl_huff *huff, const uint8_t *data, size_t size, uint64_t max_pixels, fl_huff_frame *frame);

/* Decodes the next MCU row into frame->band (zeroed first; blocks in natural order, quantized).
 * FL_HUFF_OK or FL_HUFF_HANDOVER. */
int fl_huff_decode_band(fl_huff *huff, fl_huff_frame *frame);

/* The same into the caller's band: band[c] holds band_rows[c] x band_cols[c] blocks of 64 int16
 * (zeroed first), e.g. one band of a run of consecutive bands laid out together. */
int fl_huff_decode_band_into(fl_huff *huff, int16_t *const *band);

/* After the last band: checks the scan ends cleanly at EOI. FL_HUFF_OK or FL_HUFF_HANDOVER. */
int fl_huff_finish(fl_huff *huff);

/* Why the last call handed over (a static string), or "" after FL_HUFF_OK. */
const char *fl_huff_reason(const fl_huff *huff);

#ifdef __cplusplus
}
#endif

#endif
