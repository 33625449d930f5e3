/*
 * The libjpeg floor: the least work any coefficient reader can do.  Reads every file given into
 * memory, then for each repeat runs jpeg_read_header + jpeg_read_coefficients +
 * jpeg_abort_decompress on each image with one reused decompressor (no layout, no copy), and
 * prints the microseconds per image of each repeat, one line per repeat.
 *
 *   cc -O2 -o floor benchmarks/floor.c -ljpeg && ./floor REPEATS FILE...
 *   (full RGB decode instead: ./floor --rgb REPEATS FILE...)
 *
 * Run it with the default allocator settings, and with e.g.
 * GLIBC_TUNABLES=glibc.malloc.trim_threshold=268435456:glibc.malloc.mmap_threshold=67108864
 * to see the cost of glibc returning libjpeg's per-image arrays to the kernel.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jpeglib.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  int rgb = 0, first = 1;
  if (argc > 1 && strcmp(argv[1], "--rgb") == 0) { rgb = 1; first = 2; }
  if (argc < first + 2) {
    fprintf(stderr, "usage: %s [--rgb] REPEATS FILE...\n", argv[0]);
    return 2;
  }
  int repeats = atoi(argv[first]);
  int count = argc - first - 1;
  unsigned char **data = calloc(count, sizeof *data);
  unsigned long *size = calloc(count, sizeof *size);
  for (int i = 0; i < count; i++) {
    FILE *f = fopen(argv[first + 1 + i], "rb");
    if (!f) { perror(argv[first + 1 + i]); return 1; }
    fseek(f, 0, SEEK_END);
    size[i] = (unsigned long)ftell(f);
    fseek(f, 0, SEEK_SET);
    data[i] = malloc(size[i]);
    if (fread(data[i], 1, size[i], f) != size[i]) { perror("read"); return 1; }
    fclose(f);
  }
  struct jpeg_decompress_struct cinfo;
  struct jpeg_error_mgr jerr;
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_decompress(&cinfo);
  JSAMPARRAY row = NULL;
  size_t row_capacity = 0;
  for (int r = 0; r < repeats; r++) {
    double start = now();
    for (int i = 0; i < count; i++) {
      jpeg_mem_src(&cinfo, data[i], size[i]);
      jpeg_read_header(&cinfo, TRUE);
      if (rgb) {
        cinfo.out_color_space = JCS_RGB;
        jpeg_start_decompress(&cinfo);
        size_t stride = (size_t)cinfo.output_width * 3;
        if (stride > row_capacity) {
          free(row ? row[0] : NULL);
          free(row);
          row = malloc(sizeof(JSAMPROW));
          row[0] = malloc(stride);
          row_capacity = stride;
        }
        while (cinfo.output_scanline < cinfo.output_height) jpeg_read_scanlines(&cinfo, row, 1);
        jpeg_finish_decompress(&cinfo);
      } else {
        jpeg_read_coefficients(&cinfo);
        jpeg_abort_decompress(&cinfo);
      }
    }
    printf("%.3f\n", (now() - start) * 1e6 / count);
  }
  jpeg_destroy_decompress(&cinfo);
  return 0;
}
