/* huffman.c: see huffman.h.
 *
 * Entropy decoding (ITU T.81 F.2.2): a 64-bit bit buffer, most significant bit next, refilled 4-7
 * bytes at a time from one unaligned 8-byte load when those bytes hold no 0xFF (one SWAR test),
 * byte by byte otherwise (stuffed zeros, markers).  A DC table gets a FL_LOOKUP_BITS-bit table
 * that resolves the code AND its appended value bits in one step when both fit; an AC table a
 * FL_PAIR_BITS-bit table that resolves up to two symbols (run, size and value of each; EOB and ZRL
 * included) in one step.  Longer codes take the canonical maxcode walk.
 * Blocks are zeroed once per band and only nonzero coefficients are written.
 *
 * Input past a marker, or past the end of data, reads as zero bits ("fake" bits); consuming any of
 * them hands over (libjpeg would warn "premature end of data segment" / "premature end of file").
 */
#include "huffman.h"

#include <stdlib.h>
#include <string.h>

#define FL_LOOKUP_BITS 10
#define FL_LOOKUP_SIZE (1 << FL_LOOKUP_BITS)
#define FL_MAX_DIMENSION 65500 /* libjpeg's JPEG_MAX_DIMENSION */
#define FL_MAX_BLOCKS_IN_MCU 10

/* Zig-zag index -> natural index; positions past 63 (a corrupt run, or the second symbol of a
 * pair entry run past the block) map to 63 and are caught after the block (k > 64), so the fast
 * loop needs no bounds test.  k + run + 1 + run <= 63 + 15 + 1 + 15 = 94. */
static const uint8_t fl_natural[] = {
    0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,  12, 19, 26, 33, 40,
    48, 41, 34, 27, 20, 13, 6,  7,  14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22,
    15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62,
    63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63};
_Static_assert(sizeof fl_natural >= 95, "fl_natural covers k + 15 + 1 + 15 for k <= 63");

/* DC entry (the combined table): bits 0-5 the bits consumed (code and value; 0: not resolved here),
 * 16-31 the difference (int16). */

/* AC pair entry (FL_PAIR_BITS-bit table, uint64): up to two symbols resolved by one lookup, when
 * both codes and their value bits fit in the table's bits.  0: not resolved here.
 *   bits 0-5   bits consumed by the whole entry
 *   bit 6      FL_PAIR_SECOND: a second symbol (coefficient or EOB) follows the first
 *   bit 7      FL_PAIR_EOB: the block ends with this entry
 *   bits 8-11  run of the first coefficient; 12-15 run of the second
 *   bits 16-31 the first coefficient (0 for EOB alone); 32-47 the second (0 when none)
 *   bit 48     FL_PAIR_COEF2: the second symbol is a coefficient
 *   bits 49-54 bits consumed by the first symbol alone (a pair cut short at position 63) */
#define FL_PAIR_BITS 11
#define FL_PAIR_SIZE (1 << FL_PAIR_BITS)
#define FL_PAIR_SECOND 0x40ull
#define FL_PAIR_EOB 0x80ull
#define FL_PAIR_COEF2 (1ull << 48)

typedef struct {
  int defined;                /* defined by the current image */
  int valid;                  /* derived tables below match raw_bits/raw_values */
  uint8_t raw_bits[17];       /* BITS: codes of each length 1..16 */
  uint8_t raw_values[256];    /* HUFFVAL */
  int count;                  /* symbols */
  int32_t maxcode[18];        /* largest code of each length, -1 when none */
  int32_t valoffset[18];      /* symbol index = code + valoffset[length] */
  uint16_t symbol[FL_LOOKUP_SIZE];   /* (length << 8) | symbol for codes <= FL_LOOKUP_BITS; 0: longer */
  union {
    uint32_t combined[FL_LOOKUP_SIZE]; /* DC tables: code + value bits resolved at once (see above) */
    uint64_t pair[FL_PAIR_SIZE];       /* AC tables: up to two symbols at once (see above) */
  };
} fl_htable;

struct fl_huff {
  fl_htable dc[4], ac[4];
  uint16_t qtables[4][64]; /* natural order */
  int qdefined[4];
  /* the begun image */
  const uint8_t *data;
  size_t size, pos;
  int num_components, restart_interval;
  int mcus_per_row, mcu_rows, next_row;
  int blocks_per_mcu;
  int block_component[FL_MAX_BLOCKS_IN_MCU]; /* component of each block of an MCU */
  int block_dy[FL_MAX_BLOCKS_IN_MCU], block_dx[FL_MAX_BLOCKS_IN_MCU];
  int h[FL_HUFF_MAX_COMPONENTS], v[FL_HUFF_MAX_COMPONENTS];
  int dc_table[FL_HUFF_MAX_COMPONENTS], ac_table[FL_HUFF_MAX_COMPONENTS];
  int band_cols[FL_HUFF_MAX_COMPONENTS], band_rows[FL_HUFF_MAX_COMPONENTS];
  int16_t *band[FL_HUFF_MAX_COMPONENTS];
  /* entropy state */
  uint64_t buffer;
  int bits, fake_bits, marker; /* marker: the marker byte reached (0: none, -1: end of data) */
  int restarts_to_go, next_restart;
  int dc_pred[FL_HUFF_MAX_COMPONENTS];
  /* scratch */
  int16_t *scratch;
  size_t scratch_capacity; /* in int16 */
  const char *reason;
};

fl_huff *fl_huff_new(void) { return (fl_huff *)calloc(1, sizeof(fl_huff)); }

void fl_huff_free(fl_huff *huff) {
  if (!huff) return;
  free(huff->scratch);
  free(huff);
}

const char *fl_huff_reason(const fl_huff *huff) { return huff->reason ? huff->reason : ""; }

static int fl_handover(fl_huff *huff, const char *reason) {
  huff->reason = reason;
  return FL_HUFF_HANDOVER;
}

/* T.81 F.12: `size` value bits -> the coefficient (branch-free: the sign is unpredictable). */
static inline int fl_extend(int value, int size) {
  int negative = (value >> (size - 1)) - 1; /* -1 when the top bit is 0 */
  return value + (negative & (1 - (1 << size)));
}

/* Sets table[first, first + count) to entry. */
static inline void fl_fill32(uint32_t *table, int first, int count, uint32_t entry) {
  for (int j = first; j < first + count; j++) table[j] = entry;
}

/* The DC table's combined entries (see "DC entry" above): code and value bits resolved at once
 * where both fit in FL_LOOKUP_BITS, else 0.  lengths/codes: each symbol's canonical code.
 * Files with optimised Huffman tables (per image) rebuild every table for every image, so tables
 * are filled run by run: canonical codes left-aligned to the lookup bits cover consecutive spans
 * from index 0, and within a span each value runs over 2^(bits left) entries. */
static void fl_dc_entries(const fl_htable *t, const uint8_t *lengths, const uint16_t *codes, uint32_t *table) {
  int end = 0; /* entries [0, end) are set */
  for (int i = 0; i < t->count && lengths[i] <= FL_LOOKUP_BITS; i++) {
    int length = lengths[i], size = t->raw_values[i];
    int first = codes[i] << (FL_LOOKUP_BITS - length), span = 1 << (FL_LOOKUP_BITS - length);
    end = first + span;
    if (length + size <= FL_LOOKUP_BITS) {
      int repeat = 1 << (FL_LOOKUP_BITS - length - size); /* entries per value */
      for (int bits = 0; bits < (1 << size); bits++) {
        int value = size ? fl_extend(bits, size) : 0;
        fl_fill32(table, first + bits * repeat, repeat,
                  (uint32_t)(length + size) | ((uint32_t)(uint16_t)value << 16));
      }
    } else { /* value bits beyond the table: the long-code path */
      fl_fill32(table, first, span, 0);
    }
  }
  fl_fill32(table, end, FL_LOOKUP_SIZE - end, 0); /* longer codes, and the unused all-ones code */
}

/* Sets table[first, first + count) to entry. */
static inline void fl_fill64(uint64_t *table, int first, int count, uint64_t entry) {
  for (int j = first; j < first + count; j++) table[j] = entry;
}

/* What a second symbol adds to an AC pair entry (see FL_PAIR_SECOND) when the first leaves w bits:
 * part[i] for the w bits i, holding the second symbol's code and value bits, or 0 when they do not
 * fit.  Filled run by run, as fl_dc_entries. */
static void fl_second_parts(const fl_htable *t, const uint8_t *lengths, const uint16_t *codes, int w,
                            uint64_t *part) {
  int end = 0;
  for (int i = 0; i < t->count && lengths[i] <= w; i++) {
    int length = lengths[i], symbol = t->raw_values[i], size = symbol & 15, run = symbol >> 4;
    int first = codes[i] << (w - length), span = 1 << (w - length);
    end = first + span;
    if (symbol == 0) { /* EOB */
      fl_fill64(part, first, span, (uint64_t)length | FL_PAIR_SECOND | FL_PAIR_EOB);
    } else if (length + size <= w) { /* a coefficient, or ZRL (size 0: a zero 16th) */
      int repeat = 1 << (w - length - size);
      for (int bits = 0; bits < (1 << size); bits++) {
        int value = size ? fl_extend(bits, size) : 0;
        fl_fill64(part, first + bits * repeat, repeat,
                  (uint64_t)(length + size) | FL_PAIR_SECOND | FL_PAIR_COEF2 | ((uint64_t)run << 12) |
                      ((uint64_t)(uint16_t)value << 32));
      }
    } else {
      fl_fill64(part, first, span, 0);
    }
  }
  fl_fill64(part, end, (1 << w) - end, 0);
}

/* The AC pair table (see FL_PAIR_SECOND): the first symbol, and the second too when its code and
 * value bits fit in the bits the first leaves.  Files with optimised Huffman tables rebuild every
 * table for every image, so it is filled span by span from the canonical codes: the entries after
 * a first symbol (and value) that leaves w bits are that symbol's part plus fl_second_parts(w),
 * computed once per w. */
static void fl_pair_entries(const fl_htable *t, const uint8_t *lengths, const uint16_t *codes, uint64_t *pair) {
  uint64_t second[FL_PAIR_SIZE]; /* fl_second_parts(w) at second + 2^w - 1, for w < FL_PAIR_BITS */
  int widest = 0; /* the most bits a first symbol (other than EOB) leaves */
  for (int i = 0; i < t->count && lengths[i] <= FL_PAIR_BITS; i++) {
    int used = lengths[i] + (t->raw_values[i] & 15);
    if (t->raw_values[i] != 0 && used <= FL_PAIR_BITS && FL_PAIR_BITS - used > widest)
      widest = FL_PAIR_BITS - used;
  }
  for (int w = 0; w <= widest; w++) fl_second_parts(t, lengths, codes, w, second + (1 << w) - 1);
  int end = 0;
  for (int i = 0; i < t->count && lengths[i] <= FL_PAIR_BITS; i++) {
    int length = lengths[i], symbol = t->raw_values[i], size = symbol & 15, run = symbol >> 4;
    int first = codes[i] << (FL_PAIR_BITS - length), span = 1 << (FL_PAIR_BITS - length);
    end = first + span;
    if (symbol == 0) { /* EOB alone */
      fl_fill64(pair, first, span, (uint64_t)length | FL_PAIR_EOB);
    } else if (length + size <= FL_PAIR_BITS) { /* a coefficient, or ZRL */
      int used = length + size, repeat = 1 << (FL_PAIR_BITS - used);
      const uint64_t *seconds = second + repeat - 1;
      for (int bits = 0; bits < (1 << size); bits++) {
        int value = size ? fl_extend(bits, size) : 0;
        /* the consumed-bits fields add up: used + more <= FL_PAIR_BITS < 64 */
        uint64_t part = (uint64_t)used | ((uint64_t)run << 8) | ((uint64_t)(uint16_t)value << 16) |
                        ((uint64_t)used << 49);
        uint64_t *entries = pair + first + bits * repeat;
        for (int j = 0; j < repeat; j++) entries[j] = part + seconds[j];
      }
    } else { /* value bits beyond the table: the long-code path */
      fl_fill64(pair, first, span, 0);
    }
  }
  fl_fill64(pair, end, FL_PAIR_SIZE - end, 0);
}

/* Builds the derived tables of t from its raw BITS/HUFFVAL; 0 when the table is unusable for us
 * (libjpeg would reject it, or it holds symbols an 8-bit baseline stream never needs). */
static int fl_build_table(fl_htable *t, int is_dc) {
  uint8_t lengths[256];
  uint16_t codes[256];
  int code = 0, p = 0;
  for (int length = 1; length <= 16; length++) {
    t->maxcode[length] = -1;
    if (t->raw_bits[length]) {
      t->valoffset[length] = p - code;
      for (int i = 0; i < t->raw_bits[length]; i++) {
        lengths[p] = (uint8_t)length;
        codes[p++] = (uint16_t)code++;
      }
      t->maxcode[length] = code - 1;
    }
    if (code >= (1 << length)) return 0; /* over-subscribed, or an all-ones code (libjpeg: bad table) */
    code <<= 1;
  }
  t->maxcode[17] = 0x7FFFFFFF;
  for (int i = 0; i < t->count; i++) {
    int symbol = t->raw_values[i];
    if (is_dc ? symbol > 11 : ((symbol & 15) > 10 || ((symbol & 15) == 0 && symbol != 0 && symbol != 0xF0)))
      return 0;
  }
  memset(t->symbol, 0, sizeof t->symbol);
  for (int i = 0; i < t->count && lengths[i] <= FL_LOOKUP_BITS; i++) {
    int first = codes[i] << (FL_LOOKUP_BITS - lengths[i]), span = 1 << (FL_LOOKUP_BITS - lengths[i]);
    for (int j = first; j < first + span; j++) t->symbol[j] = (uint16_t)((lengths[i] << 8) | t->raw_values[i]);
  }
  if (is_dc) {
    fl_dc_entries(t, lengths, codes, t->combined);
  } else { /* AC codes are looked up in the pair table only (longer ones take fl_long_code) */
    fl_pair_entries(t, lengths, codes, t->pair);
  }
  return 1;
}

static inline uint16_t fl_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

/* ------------------------------------------------------------------ markers */

static int fl_parse_dqt(fl_huff *huff, const uint8_t *p, size_t length) {
  while (length > 0) {
    if (length < 65) return fl_handover(huff, "DQT segment of an unexpected length");
    int precision = p[0] >> 4, index = p[0] & 15;
    if (precision != 0) return fl_handover(huff, "16-bit quantization table");
    if (index > 3) return fl_handover(huff, "quantization table index over 3");
    if (huff->qdefined[index]) return fl_handover(huff, "quantization table redefined");
    for (int i = 0; i < 64; i++) {
      if (p[1 + i] == 0) return fl_handover(huff, "zero in a quantization table");
      huff->qtables[index][fl_natural[i]] = p[1 + i];
    }
    huff->qdefined[index] = 1;
    p += 65;
    length -= 65;
  }
  return FL_HUFF_OK;
}

static int fl_parse_dht(fl_huff *huff, const uint8_t *p, size_t length) {
  while (length > 0) {
    if (length < 17) return fl_handover(huff, "DHT segment of an unexpected length");
    int table_class = p[0] >> 4, index = p[0] & 15;
    if (table_class > 1 || index > 3) return fl_handover(huff, "Huffman table class/index out of range");
    int count = 0;
    for (int i = 1; i <= 16; i++) count += p[i];
    if (count > 256 || (size_t)(17 + count) > length) return fl_handover(huff, "Huffman table with a bad symbol count");
    fl_htable *t = table_class ? &huff->ac[index] : &huff->dc[index];
    if (t->defined) return fl_handover(huff, "Huffman table redefined");
    uint8_t bits[17] = {0};
    memcpy(bits + 1, p + 1, 16);
    /* the same table as the previous image's (one encoder, one table): keep its derived tables */
    if (!(t->valid && t->count == count && memcmp(t->raw_bits, bits, 17) == 0 &&
          memcmp(t->raw_values, p + 17, (size_t)count) == 0)) {
      memcpy(t->raw_bits, bits, 17);
      memcpy(t->raw_values, p + 17, (size_t)count);
      t->count = count;
      t->valid = fl_build_table(t, table_class == 0);
      if (!t->valid) {
        t->count = -1; /* never matches a later table */
        return fl_handover(huff, "unusual Huffman table");
      }
    }
    t->defined = 1;
    p += 17 + count;
    length -= (size_t)(17 + count);
  }
  return FL_HUFF_OK;
}

static int fl_reserve_band(fl_huff *huff, size_t values) {
  if (values <= huff->scratch_capacity) return 1;
  int16_t *scratch = (int16_t *)realloc(huff->scratch, values * sizeof(int16_t));
  if (!scratch) return 0;
  huff->scratch = scratch;
  huff->scratch_capacity = values;
  return 1;
}

int fl_huff_begin(fl_huff *huff, const uint8_t *data, size_t size, uint64_t max_pixels, fl_huff_frame *frame) {
  huff->reason = NULL;
  huff->next_row = 0;
  huff->mcu_rows = 0;
  for (int i = 0; i < 4; i++) {
    huff->dc[i].defined = huff->ac[i].defined = 0;
    huff->qdefined[i] = 0;
  }
  memset(frame, 0, sizeof *frame);
  if (size < 4 || data[0] != 0xFF || data[1] != 0xD8) return fl_handover(huff, "does not start with SOI");
  int saw_sof = 0, saw_jfif = 0, ids[FL_HUFF_MAX_COMPONENTS] = {0}, qindex[FL_HUFF_MAX_COMPONENTS] = {0};
  int restart_interval = 0, adobe_transform = -1;
  size_t pos = 2;
  for (;;) {
    if (pos >= size || data[pos] != 0xFF) return fl_handover(huff, "bytes before a marker, or no marker");
    while (pos < size && data[pos] == 0xFF) pos++;
    if (pos >= size) return fl_handover(huff, "end of data in the header");
    int marker = data[pos++];
    if (marker == 0xDA || marker == 0xDB || marker == 0xC4 || marker == 0xC0 || marker == 0xC1 || marker == 0xDD ||
        marker == 0xFE || (marker >= 0xE0 && marker <= 0xEF)) {
      if (pos + 2 > size) return fl_handover(huff, "end of data in a segment length");
      size_t length = fl_be16(data + pos);
      if (length < 2 || length > size - pos) return fl_handover(huff, "segment length out of range");
      const uint8_t *p = data + pos + 2;
      size_t body = length - 2;
      pos += length;
      int status = FL_HUFF_OK;
      switch (marker) {
        case 0xDB:
          status = fl_parse_dqt(huff, p, body);
          break;
        case 0xC4:
          status = fl_parse_dht(huff, p, body);
          break;
        case 0xDD:
          if (body != 2) return fl_handover(huff, "DRI of an unexpected length");
          restart_interval = fl_be16(p);
          break;
        case 0xE0:
          if (body >= 14 && memcmp(p, "JFIF", 5) == 0) {
            if (p[5] != 1) return fl_handover(huff, "JFIF major version is not 1");
            saw_jfif = 1;
          }
          break;
        case 0xEE: /* libjpeg keeps the last Adobe marker's transform flag */
          if (body >= 12 && memcmp(p, "Adobe", 5) == 0) adobe_transform = p[11];
          break;
        case 0xC0:
        case 0xC1: {
          if (saw_sof) return fl_handover(huff, "second SOF");
          if (body < 6) return fl_handover(huff, "short SOF");
          int n = p[5];
          if (p[0] != 8) return fl_handover(huff, "not 8-bit");
          if (n != 1 && n != 3) return fl_handover(huff, "not 1 or 3 components");
          if (body != (size_t)(6 + 3 * n)) return fl_handover(huff, "SOF of an unexpected length");
          frame->height = fl_be16(p + 1);
          frame->width = fl_be16(p + 3);
          if (frame->width == 0 || frame->height == 0 || frame->width > FL_MAX_DIMENSION ||
              frame->height > FL_MAX_DIMENSION)
            return fl_handover(huff, "empty or oversized image");
          frame->num_components = n;
          for (int c = 0; c < n; c++) {
            ids[c] = p[6 + 3 * c];
            frame->h_samp[c] = p[7 + 3 * c] >> 4;
            frame->v_samp[c] = p[7 + 3 * c] & 15;
            qindex[c] = p[8 + 3 * c];
            if (frame->h_samp[c] < 1 || frame->h_samp[c] > 4 || frame->v_samp[c] < 1 || frame->v_samp[c] > 4)
              return fl_handover(huff, "sampling factor out of range");
            if (qindex[c] > 3) return fl_handover(huff, "quantization table index over 3");
            for (int d = 0; d < c; d++)
              if (ids[d] == ids[c]) return fl_handover(huff, "duplicate component id");
          }
          saw_sof = 1;
          break;
        }
        case 0xDA: {
          if (!saw_sof) return fl_handover(huff, "SOS before SOF");
          int n = body ? p[0] : 0;
          if (n != frame->num_components || body != (size_t)(4 + 2 * n))
            return fl_handover(huff, "a scan that is not all components interleaved (multiple scans)");
          for (int c = 0; c < n; c++) {
            if (p[1 + 2 * c] != ids[c]) return fl_handover(huff, "scan components out of frame order");
            huff->dc_table[c] = p[2 + 2 * c] >> 4;
            huff->ac_table[c] = p[2 + 2 * c] & 15;
            if (huff->dc_table[c] > 3 || huff->ac_table[c] > 3 || !huff->dc[huff->dc_table[c]].defined ||
                !huff->ac[huff->ac_table[c]].defined)
              return fl_handover(huff, "scan uses an undefined Huffman table");
            if (!huff->qdefined[qindex[c]]) return fl_handover(huff, "component uses an undefined quantization table");
          }
          if (p[1 + 2 * n] != 0 || p[2 + 2 * n] != 63 || p[3 + 2 * n] != 0)
            return fl_handover(huff, "scan parameters Ss/Se/Ah/Al are not sequential 0/63/0/0");
          /* libjpeg's colour space rule for 3 components: JFIF means YCbCr; else an Adobe marker's
           * transform (1: YCbCr; 0: RGB; others: a warning); else RGB component ids mean RGB */
          if (n == 3 && !saw_jfif && adobe_transform >= 0 && adobe_transform != 1)
            return fl_handover(huff, "Adobe marker without the YCbCr transform");
          if (n == 3 && !saw_jfif && adobe_transform < 0 && ids[0] == 'R' && ids[1] == 'G' && ids[2] == 'B')
            return fl_handover(huff, "RGB component ids");
          goto scan;
        }
        default:
          break; /* other APPn, COM: skipped */
      }
      if (status != FL_HUFF_OK) return status;
    } else {
      return fl_handover(huff, marker == 0xC2 || marker == 0xC6 || marker == 0xCA || marker == 0xCE
                                   ? "progressive JPEG"
                                   : (marker >= 0xC9 && marker <= 0xCF && marker != 0xCC) ? "arithmetic-coded JPEG"
                                   : (marker == 0xC3 || marker == 0xC7 || marker == 0xCB || marker == 0xCF)
                                       ? "lossless JPEG"
                                       : "a marker the fast decoder does not take");
    }
  }
scan:;
  int n = frame->num_components;
  int hmax = 1, vmax = 1;
  for (int c = 0; c < n; c++) {
    if (frame->h_samp[c] > hmax) hmax = frame->h_samp[c];
    if (frame->v_samp[c] > vmax) vmax = frame->v_samp[c];
  }
  uint64_t pixels = (uint64_t)frame->width * (uint64_t)frame->height;
  if (max_pixels > 0 && pixels > max_pixels) return fl_handover(huff, "over max_pixels");
  frame->max_h_samp = hmax;
  frame->max_v_samp = vmax;
  int blocks = 0;
  size_t values = 0;
  for (int c = 0; c < n; c++) {
    int h = frame->h_samp[c], v = frame->v_samp[c];
    frame->blocks_w[c] = (int)(((long long)frame->width * h + 8LL * hmax - 1) / (8LL * hmax));
    frame->blocks_h[c] = (int)(((long long)frame->height * v + 8LL * vmax - 1) / (8LL * vmax));
    memcpy(frame->qtables[c], huff->qtables[qindex[c]], sizeof frame->qtables[c]);
    huff->h[c] = h;
    huff->v[c] = v;
  }
  if (n == 1) { /* a non-interleaved scan: one block per MCU, raster order */
    huff->mcus_per_row = frame->blocks_w[0];
    huff->mcu_rows = frame->blocks_h[0];
    huff->band_cols[0] = frame->blocks_w[0];
    huff->band_rows[0] = 1;
    huff->blocks_per_mcu = 1;
    huff->h[0] = huff->v[0] = 1; /* block positions: one block per MCU */
    huff->block_component[0] = 0;
    huff->block_dy[0] = huff->block_dx[0] = 0;
    frame->band_full_rows = 1;
    values = (size_t)frame->blocks_w[0] * 64;
  } else {
    huff->mcus_per_row = (frame->width + 8 * hmax - 1) / (8 * hmax);
    huff->mcu_rows = (frame->height + 8 * vmax - 1) / (8 * vmax);
    for (int c = 0; c < n; c++) {
      int h = frame->h_samp[c], v = frame->v_samp[c];
      if (blocks + h * v > FL_MAX_BLOCKS_IN_MCU) return fl_handover(huff, "more than 10 blocks in an MCU");
      for (int y = 0; y < v; y++)
        for (int x = 0; x < h; x++) {
          huff->block_component[blocks] = c;
          huff->block_dy[blocks] = y;
          huff->block_dx[blocks++] = x;
        }
      huff->band_cols[c] = huff->mcus_per_row * h;
      huff->band_rows[c] = v;
      values += (size_t)huff->band_cols[c] * (size_t)v * 64;
    }
    huff->blocks_per_mcu = blocks;
    frame->band_full_rows = vmax;
  }
  if (!fl_reserve_band(huff, values)) return fl_handover(huff, "out of memory for the band");
  int16_t *next = huff->scratch;
  for (int c = 0; c < n; c++) {
    huff->band[c] = frame->band[c] = next;
    frame->band_rows[c] = huff->band_rows[c];
    frame->band_cols[c] = huff->band_cols[c];
    next += (size_t)huff->band_cols[c] * (size_t)huff->band_rows[c] * 64;
  }
  frame->mcu_rows = huff->mcu_rows;
  huff->num_components = n;
  huff->restart_interval = restart_interval;
  huff->restarts_to_go = restart_interval;
  huff->next_restart = 0;
  huff->data = data;
  huff->size = size;
  huff->pos = pos;
  huff->buffer = 0;
  huff->bits = huff->fake_bits = huff->marker = 0;
  for (int c = 0; c < FL_HUFF_MAX_COMPONENTS; c++) huff->dc_pred[c] = 0;
  return FL_HUFF_OK;
}

/* ------------------------------------------------------------------ entropy-coded data */

/* The bit reader: buffer holds `bits` (<= 63) valid bits from bit 63 down; pos is the next byte to
 * read.  Below the valid bits there may be the first bits of byte pos (the fast refill's), else
 * zeros.  The decoding loop keeps it in local variables (registers) and passes it by value
 * to the slow paths, which store nothing else. */
typedef struct {
  uint64_t buffer;
  int bits;
  size_t pos;
} fl_reader;

/* Byte-wise refill up to 49-56 bits: stuffed zeros, markers and the end of data. */
static fl_reader fl_fill_slow(fl_huff *huff, fl_reader r) {
  const uint8_t *data = huff->data;
  while (r.bits <= 48) {
    if (huff->marker) { /* past a marker or the end: zero bits that must never be consumed */
      r.bits += 8;
      huff->fake_bits += 8;
      continue;
    }
    if (r.pos >= huff->size) {
      huff->marker = -1;
      continue;
    }
    int byte = data[r.pos];
    if (byte == 0xFF) {
      if (r.pos + 1 >= huff->size) {
        huff->marker = -1;
        continue;
      }
      int next = data[r.pos + 1];
      if (next != 0) {
        huff->marker = next; /* pos stays at the marker's 0xFF */
        continue;
      }
      r.pos += 2;
    } else {
      r.pos++;
    }
    r.buffer |= (uint64_t)byte << (56 - r.bits);
    r.bits += 8;
  }
  return r;
}

static inline uint64_t fl_load_be64(const uint8_t *p) {
  uint64_t x;
  memcpy(&x, p, 8);
#if defined(__GNUC__)
  return __builtin_bswap64(x);
#else
  return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) | ((uint64_t)p[3] << 32) |
         ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) | ((uint64_t)p[6] << 8) | (uint64_t)p[7];
#endif
}

/* A code the combined table did not resolve (longer than FL_LOOKUP_BITS, or with too many value
 * bits): its symbol and *length, or -1 for a bad code. */
static int fl_long_code(const fl_htable *t, uint64_t buffer, int *length) {
  uint32_t entry = t->symbol[buffer >> (64 - FL_LOOKUP_BITS)];
  if (entry) {
    *length = (int)(entry >> 8);
    return (int)(entry & 0xFF);
  }
  uint32_t peek = (uint32_t)(buffer >> 48);
  for (int l = FL_LOOKUP_BITS + 1; l <= 16; l++) {
    int32_t code = (int32_t)(peek >> (16 - l));
    if (code <= t->maxcode[l]) {
      *length = l;
      return t->raw_values[code + t->valoffset[l]];
    }
  }
  return -1;
}

/* At a restart point or the end of the scan: only the padding bits of the last byte may remain
 * before the marker (libjpeg counts whole bytes as "extraneous data"), and the marker must be
 * `expected`.  Then the bit reader restarts after it. */
static int fl_take_marker(fl_huff *huff, fl_reader *r, int expected) {
  if (r->bits - huff->fake_bits >= 8) return fl_handover(huff, "bytes between the entropy-coded data and a marker");
  int marker = huff->marker;
  size_t pos = r->pos;
  if (!marker) { /* not read up to it yet */
    if (pos >= huff->size || huff->data[pos] != 0xFF)
      return fl_handover(huff, "bytes between the entropy-coded data and a marker");
    while (pos < huff->size && huff->data[pos] == 0xFF) pos++;
    if (pos >= huff->size) return fl_handover(huff, "premature end of data");
    marker = huff->data[pos];
    pos--;
  }
  if (marker != expected)
    return fl_handover(huff, expected == 0xD9 ? "the scan does not end with EOI" : "missing or misplaced restart marker");
  r->pos = pos + 2;
  r->buffer = 0;
  r->bits = 0;
  huff->marker = 0;
  huff->fake_bits = 0;
  return FL_HUFF_OK;
}

/* The band decoder's body, compiled twice (see fl_huff_decode_band). */
static inline __attribute__((always_inline)) int fl_decode_band_body(fl_huff *huff, int16_t *const *band) {
  if (huff->next_row >= huff->mcu_rows) return fl_handover(huff, "no band left");
  const int n = huff->num_components;
  for (int c = 0; c < n; c++)
    memset(band[c], 0, (size_t)huff->band_cols[c] * (size_t)huff->band_rows[c] * 64 * sizeof(int16_t));
  const uint8_t *const data = huff->data;
  const size_t fast_end = huff->size >= 8 ? huff->size - 7 : 0; /* pos < fast_end: 8 bytes readable */
  uint64_t buffer = huff->buffer;
  int bits = huff->bits;
  size_t pos = huff->pos;
  size_t fast_limit = huff->marker ? 0 : fast_end;
  int16_t *blocks[FL_MAX_BLOCKS_IN_MCU]; /* each block of the first MCU; MCU m adds m * step */
  size_t step[FL_MAX_BLOCKS_IN_MCU];
  const fl_htable *dc_of[FL_MAX_BLOCKS_IN_MCU], *ac_of[FL_MAX_BLOCKS_IN_MCU];
  int *pred_of[FL_MAX_BLOCKS_IN_MCU];
  for (int i = 0; i < huff->blocks_per_mcu; i++) {
    int c = huff->block_component[i];
    blocks[i] = band[c] + ((size_t)huff->block_dy[i] * (size_t)huff->band_cols[c] + (size_t)huff->block_dx[i]) * 64;
    step[i] = (size_t)huff->h[c] * 64;
    dc_of[i] = &huff->dc[huff->dc_table[c]];
    ac_of[i] = &huff->ac[huff->ac_table[c]];
    pred_of[i] = &huff->dc_pred[c];
  }
  const char *reason = NULL;

/* At least 40 valid bits afterwards: any code (<= 16 bits) plus its value bits (<= 11), and 13 left
 * for the next symbol's table lookup.  Where 8
 * bytes without 0xFF follow, the refill is branch-free and runs before every symbol (a "bits < 32"
 * test mispredicted every few symbols: half of all mispredictions); the 8 bytes are shifted in
 * after the valid bits, whole bytes counted, the partial one left to be read again. */
#define FL_FILL()                                                                           \
  do {                                                                                      \
    if (pos < fast_limit) {                                                                 \
      uint64_t x_ = fl_load_be64(data + pos);                                               \
      if (!((~x_ - 0x0101010101010101ull) & x_ & 0x8080808080808080ull)) {                  \
        buffer |= x_ >> bits;                                                               \
        pos += (size_t)((63 - bits) >> 3);                                                  \
        bits |= 56;                                                                         \
        break;                                                                              \
      }                                                                                     \
    }                                                                                       \
    if (bits < 40) {                                                                        \
      fl_reader r_ = {buffer, bits, pos};                                                   \
      r_ = fl_fill_slow(huff, r_);                                                          \
      buffer = r_.buffer;                                                                   \
      bits = r_.bits;                                                                       \
      pos = r_.pos;                                                                         \
      fast_limit = huff->marker ? 0 : fast_end;                                             \
    }                                                                                       \
  } while (0)
/* count < 64; "& 63" lets x86 shift by the table entry itself (its low 6 bits are the length) */
#define FL_DROP(count) (buffer <<= ((count) & 63), bits -= (int)((count) & 63))

  for (int mcu = 0; mcu < huff->mcus_per_row && !reason; mcu++) {
    if (huff->restart_interval) {
      if (huff->restarts_to_go == 0) {
        fl_reader r = {buffer, bits, pos};
        if (fl_take_marker(huff, &r, 0xD0 + huff->next_restart) != FL_HUFF_OK) {
          reason = huff->reason;
          break;
        }
        buffer = r.buffer;
        bits = r.bits;
        pos = r.pos;
        fast_limit = fast_end;
        huff->next_restart = (huff->next_restart + 1) & 7;
        huff->restarts_to_go = huff->restart_interval;
        for (int c = 0; c < n; c++) huff->dc_pred[c] = 0;
      }
      huff->restarts_to_go--;
    }
    for (int i = 0; i < huff->blocks_per_mcu; i++) {
      int16_t *block = blocks[i] + (size_t)mcu * step[i];
      const fl_htable *dc = dc_of[i], *ac = ac_of[i];
      /* DC: the difference from the previous block of the component */
      FL_FILL();
      uint32_t entry = dc->combined[buffer >> (64 - FL_LOOKUP_BITS)];
      int diff;
      if (entry) {
        FL_DROP(entry);
        diff = (int16_t)(entry >> 16);
      } else {
        int length, size = fl_long_code(dc, buffer, &length);
        if (size < 0) {
          reason = "bad Huffman code";
          break;
        }
        FL_DROP(length);
        diff = size ? fl_extend((int)(buffer >> (64 - size)), size) : 0;
        FL_DROP(size);
      }
      int value = *pred_of[i] + diff;
      if (value < -32768 || value > 32767) { /* libjpeg would wrap it: not ours to guess */
        reason = "DC coefficient out of range";
        break;
      }
      *pred_of[i] = value;
      block[0] = (int16_t)value;
      /* AC: up to two (run, size, value) at once from the pair table; only nonzero values are written */
      int k = 1;
/* One pair entry (see FL_PAIR_SECOND): breaks out of the block's loop at its end. */
#define FL_PAIR_STEP(pair)                                                                      \
  do {                                                                                          \
    int at_ = k + (int)(((pair) >> 8) & 15); /* the first coefficient's position */             \
    if (__builtin_expect(at_ >= 63, 0) && ((pair) & FL_PAIR_SECOND)) {                          \
      /* the first symbol fills position 63 (or runs past it): what follows belongs to the      \
       * next block, so take the first symbol alone, as a one-symbol decoder would */           \
      FL_DROP((pair) >> 49);                                                                    \
      block[fl_natural[at_]] = (int16_t)((pair) >> 16);                                         \
      k = at_ + 1;                                                                              \
      goto block_done;                                                                          \
    }                                                                                           \
    FL_DROP(pair);                                                                              \
    /* the second coefficient first: when there is none, its zero lands on a position not yet  \
     * written (or on 63 just before the first coefficient overwrites it) */                    \
    int next_ = at_ + 1 + (int)(((pair) >> 12) & 15);                                           \
    block[fl_natural[next_]] = (int16_t)((pair) >> 32);                                         \
    block[fl_natural[at_]] = (int16_t)((pair) >> 16);                                           \
    if ((pair) & FL_PAIR_EOB) goto block_done;                                                  \
    k = next_ + (int)(((pair) >> 48) & 1);                                                      \
  } while (0)
      while (k < 64) {
        /* The lookup needs only the top FL_PAIR_BITS bits, valid before the refill, so the table
         * load and the refill overlap.  After a refill (>= 40 bits) two entries (<= FL_PAIR_BITS
         * bits each) leave enough for the next lookup, so every other entry skips the refill. */
        uint64_t pair = ac->pair[buffer >> (64 - FL_PAIR_BITS)];
        FL_FILL();
        if (__builtin_expect(pair != 0, 1)) {
          FL_PAIR_STEP(pair);
          if (k >= 64) break;
          pair = ac->pair[buffer >> (64 - FL_PAIR_BITS)];
          if (__builtin_expect(pair != 0, 1)) {
            FL_PAIR_STEP(pair);
            continue;
          }
          FL_FILL(); /* the long code below needs up to 26 bits */
        }
        /* a code longer than the table, or with too many value bits: one symbol the slow way
         * (leaves >= 14 bits for the next lookup) */
        int length, symbol = fl_long_code(ac, buffer, &length);
        if (symbol < 0) {
          k = 99;
          break;
        }
        FL_DROP(length);
        int run = symbol >> 4, size = symbol & 15;
        if (size) {
          k += run;
          block[fl_natural[k]] = (int16_t)fl_extend((int)(buffer >> (64 - size)), size);
          FL_DROP(size);
          k++;
        } else if (run == 15) {
          k += 16;
        } else {
          break;
        }
      }
    block_done:
#undef FL_PAIR_STEP
      if (k > 64) { /* a bad code, or a run past coefficient 63 (libjpeg silently clamps it) */
        reason = "bad Huffman code or coefficient run";
        break;
      }
    }
    if (!reason && huff->marker && bits < huff->fake_bits)
      reason = huff->marker < 0 ? "premature end of data" : "premature end of data segment (a marker)";
  }
#undef FL_FILL
#undef FL_DROP
  huff->buffer = buffer;
  huff->bits = bits;
  huff->pos = pos;
  if (reason) {
    huff->next_row = huff->mcu_rows; /* no more bands after a hand-over */
    return fl_handover(huff, reason);
  }
  huff->next_row++;
  return FL_HUFF_OK;
}

#if defined(__GNUC__) && defined(__x86_64__)
/* BMI2's shlx/shrx shift by a register in one cycle (plain shl by cl takes 2-3 uops on Intel): the
 * bit buffer's shifts are the decoding loop's critical path, so a BMI2 copy is picked at run time. */
__attribute__((target("bmi2"))) static int fl_decode_band_bmi2(fl_huff *huff, int16_t *const *band) {
  return fl_decode_band_body(huff, band);
}
#endif
static int fl_decode_band_plain(fl_huff *huff, int16_t *const *band) { return fl_decode_band_body(huff, band); }

int fl_huff_decode_band_into(fl_huff *huff, int16_t *const *band) {
#if defined(__GNUC__) && defined(__x86_64__)
  if (__builtin_cpu_supports("bmi2")) return fl_decode_band_bmi2(huff, band);
#endif
  return fl_decode_band_plain(huff, band);
}

int fl_huff_decode_band(fl_huff *huff, fl_huff_frame *frame) { return fl_huff_decode_band_into(huff, frame->band); }

int fl_huff_finish(fl_huff *huff) {
  if (huff->next_row != huff->mcu_rows || huff->reason) return fl_handover(huff, huff->reason ? huff->reason : "bands left");
  fl_reader r = {huff->buffer, huff->bits, huff->pos};
  return fl_take_marker(huff, &r, 0xD9);
}
