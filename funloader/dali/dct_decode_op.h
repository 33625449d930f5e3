// funloader DALI plugin: a CPU operator that turns encoded JPEG bytes into the FUN input.
//
// Schema name "funloader__DctDecode" -> Python `fn.funloader.dct_decode` / `ops.funloader.DctDecode`.
// The decoding itself is funloader's C core (funloader/csrc/jpegdct_core.c), compiled into the
// plugin library, so outputs equal funloader.read_batch bit for bit.
#ifndef FUNLOADER_DALI_DCT_DECODE_OP_H_
#define FUNLOADER_DALI_DCT_DECODE_OP_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dali/pipeline/operator/operator.h"

extern "C" {
#include "jpegdct_core.h"
#include "resize.h"
}

namespace funloader_dali {

// One libjpeg decoder plus a (192, H8, W8) scratch plane for channel selection; used by one
// thread at a time (checked out of DctDecode's pool for each sample).
struct DecoderSlot {
  fl_decoder *decoder = nullptr;
  std::vector<uint8_t> scratch;
  DecoderSlot();
  ~DecoderSlot();
  DecoderSlot(const DecoderSlot &) = delete;
  DecoderSlot &operator=(const DecoderSlot &) = delete;
};

class DctDecode : public ::dali::Operator<::dali::CPUBackend> {
 public:
  explicit DctDecode(const ::dali::OpSpec &spec);
  ~DctDecode() override = default;

 protected:
  bool SetupImpl(std::vector<::dali::OutputDesc> &output_desc,
                 const ::dali::Workspace &ws) override;
  void RunImpl(::dali::Workspace &ws) override;

 private:
  std::unique_ptr<DecoderSlot> Acquire();
  void Release(std::unique_ptr<DecoderSlot> slot);
  // Decodes sample `index` into `out`; returns "" on success or the error text.
  // A flip is done by the core while laying out (reversed block columns; for float output the
  // `flip_signs` given by Python folded into the per-channel gain, for int16 a negation pass over the
  // output planes whose sign is -1);
  // normalisation x * scale + shift likewise (float32, multiply then add, each rounded: the same
  // bits as funloader.DCTLoader).
  // `box` (top, left, height, width in original pixels), or nullptr / a NaN box: read the blocks as
  // they are (centre crop / zero padding); else the exact resized crop of the box (resize.h).
  std::string DecodeSample(const uint8_t *data, size_t size, void *out, bool flip, const double *box);

  int out_h8_, out_w8_;
  bool dequantize_;
  bool strict_;
  bool replace_on_error_;
  int64_t max_pixels_;
  int max_scans_;
  ::dali::DALIDataType dtype_;
  int fl_dtype_;
  size_t elem_size_;
  std::vector<int> channels_;  // empty: all 192 in order
  std::vector<int> out_channels_;  // FUN channel index of every output channel
  bool normalize_;                     // `scale`/`shift` given
  std::vector<float> flip_signs_;      // per FUN channel (192), from Python; empty: no flip allowed
  std::vector<float> gain_[2];         // per decoded channel (192): [0] scale (or 1), [1] with flip signs
  std::vector<float> bias_;            // per decoded channel (192): shift (or 0)
  std::vector<int32_t> reversed_cols_; // block map of a horizontal flip: out_w8 - 1 - x
  std::vector<int> flip_;  // per sample of the current batch
  int support_;            // FL_SUPPORT_BOX or FL_SUPPORT_IMAGE (resized crops)
  int chroma_;             // FL_CHROMA_420 or FL_CHROMA_444 (resized crops)
  std::mutex pool_mutex_;
  std::vector<std::unique_ptr<DecoderSlot>> pool_;
};

// "funloader__ParseLabel" -> `fn.funloader.parse_label`: the ASCII decimal class index of a
// WebDataset `<key>.cls` member (uint8 bytes) -> int32 tensor of shape (1,), like fn.readers.file's
// labels; an empty input (no .cls member) gives -1.
class ParseLabel : public ::dali::Operator<::dali::CPUBackend> {
 public:
  explicit ParseLabel(const ::dali::OpSpec &spec) : ::dali::Operator<::dali::CPUBackend>(spec) {}

 protected:
  bool SetupImpl(std::vector<::dali::OutputDesc> &output_desc,
                 const ::dali::Workspace &ws) override;
  void RunImpl(::dali::Workspace &ws) override;
};

// "funloader__ImageSize" -> `fn.funloader.image_size`: (height, width) int64 of each JPEG from its
// header (funloader's own parser, fl_read_size); (0, 0) when the header cannot be read (the decode
// then reports the file's error, so on_error keeps working). Feeds the Python window drawing.
class ImageSize : public ::dali::Operator<::dali::CPUBackend> {
 public:
  explicit ImageSize(const ::dali::OpSpec &spec);

 protected:
  bool SetupImpl(std::vector<::dali::OutputDesc> &output_desc,
                 const ::dali::Workspace &ws) override;
  void RunImpl(::dali::Workspace &ws) override;

 private:
  DecoderSlot slot_;
  int64_t max_pixels_;
};

}  // namespace funloader_dali

#endif  // FUNLOADER_DALI_DCT_DECODE_OP_H_
