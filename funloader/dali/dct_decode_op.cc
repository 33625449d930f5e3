// funloader DALI plugin: CPU operator `fn.funloader.dct_decode` (see dct_decode_op.h).
//
// Input 0: encoded JPEG bytes, one uint8 1-D tensor per sample (fn.readers.file,
// fn.readers.webdataset, fn.external_source, ...).
// Input 1 (optional): per sample a float64 (4,) box (top, left, height, width) in pixels of the
// original image: the exact resized crop of that window (resize.h, as funloader.read_batch(boxes=));
// a NaN box reads the sample's blocks as they are. Python draws the boxes (funloader.transforms).
// Output 0: (C, crop_h, crop_w) layout "CHW", C = 192 or len(channels); int16 raw quantized
// coefficients, or float32 (raw, or multiplied by the quantization tables with dequantize=True).
// channel = 64 * component + 8 * v + u; chroma replicated onto the luma block grid; each image
// centre-cropped or zero-padded by whole blocks to the crop grid exactly as funloader.read_batch.
#include "dct_decode_op.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <utility>

namespace funloader_dali {

DecoderSlot::DecoderSlot() : decoder(fl_decoder_new()) {
  if (!decoder) throw std::bad_alloc();
}

DecoderSlot::~DecoderSlot() {
  fl_decoder_free(decoder);
}

namespace {

const char *ErrorKind(int status) {
  switch (status) {
    case FL_ERR_UNSUPPORTED: return "UnsupportedJPEGError";
    case FL_ERR_IO: return "OSError";
    case FL_ERR_NOMEM: return "MemoryError";
    case FL_ERR_ARGUMENT: return "ValueError";
    case FL_ERR_BOX: return "ValueError";
    default: return "JPEGDecodeError";
  }
}

}  // namespace

DctDecode::DctDecode(const ::dali::OpSpec &spec) : ::dali::Operator<::dali::CPUBackend>(spec) {
  std::vector<int> crop = spec.GetRepeatedArgument<int>("crop");
  DALI_ENFORCE(crop.size() == 2 && crop[0] > 0 && crop[1] > 0,
               "funloader.dct_decode: `crop` must be two positive block counts (H8, W8)");
  out_h8_ = crop[0];
  out_w8_ = crop[1];
  dequantize_ = spec.GetArgument<bool>("dequantize");
  strict_ = spec.GetArgument<bool>("strict");
  max_pixels_ = spec.GetArgument<int64_t>("max_pixels");
  max_scans_ = spec.GetArgument<int>("max_scans");
  std::string on_error = spec.GetArgument<std::string>("on_error");
  DALI_ENFORCE(on_error == "raise" || on_error == "zero",
               "funloader.dct_decode: `on_error` must be \"raise\" or \"zero\", got \"" + on_error + "\"");
  replace_on_error_ = on_error == "zero";
  dtype_ = spec.GetArgument<::dali::DALIDataType>("dtype");
  if (dequantize_ && !spec.HasArgument("dtype")) dtype_ = DALI_FLOAT;
  if (dtype_ == DALI_INT16) {
    DALI_ENFORCE(!dequantize_, "funloader.dct_decode: dequantize=True needs dtype FLOAT "
                               "(dequantized coefficients overflow int16)");
    fl_dtype_ = FL_DTYPE_INT16;
    elem_size_ = sizeof(int16_t);
  } else if (dtype_ == DALI_FLOAT) {
    fl_dtype_ = FL_DTYPE_FLOAT32;
    elem_size_ = sizeof(float);
  } else {
    DALI_FAIL("funloader.dct_decode: `dtype` must be INT16 or FLOAT");
  }
  channels_ = spec.GetRepeatedArgument<int>("channels");
  for (size_t i = 0; i < channels_.size(); i++) {
    DALI_ENFORCE(channels_[i] >= 0 && channels_[i] < 192,
                 "funloader.dct_decode: `channels` entries must be in 0..191");
  }
  if (channels_.empty()) {
    for (int c = 0; c < 192; c++) out_channels_.push_back(c);
  } else {
    out_channels_ = channels_;
  }
  std::vector<float> scale = spec.GetRepeatedArgument<float>("scale");
  std::vector<float> shift = spec.GetRepeatedArgument<float>("shift");
  DALI_ENFORCE(scale.size() == shift.size(),
               "funloader.dct_decode: `scale` and `shift` must have the same length");
  normalize_ = !scale.empty();
  if (normalize_) {
    DALI_ENFORCE(scale.size() == out_channels_.size(),
                 "funloader.dct_decode: `scale`/`shift` need one value per output channel");
    DALI_ENFORCE(dtype_ == DALI_FLOAT, "funloader.dct_decode: normalisation needs dtype FLOAT");
  }
  // Per decoded channel (all 192; channels not selected keep gain 1, bias 0).
  std::vector<int> seen(192, 0);
  gain_[0].assign(192, 1.0f);
  bias_.assign(192, 0.0f);
  for (size_t i = 0; i < out_channels_.size(); i++) {
    int channel = out_channels_[i];
    DALI_ENFORCE(!seen[channel]++, "funloader.dct_decode: `channels` must not repeat a channel");
    if (normalize_) {
      gain_[0][channel] = scale[i];
      bias_[channel] = shift[i];
    }
  }
  // The flip signs come from Python (funloader.channels.flip_signs): this operator does not restate
  // the rule. The flipped gain folds them into the scale (exact: the signs are +-1).
  std::vector<float> signs = spec.GetRepeatedArgument<float>("flip_signs");
  DALI_ENFORCE(signs.empty() || signs.size() == 192,
               "funloader.dct_decode: `flip_signs` needs one sign per FUN channel (192)");
  for (float sign : signs)
    DALI_ENFORCE(sign == 1.0f || sign == -1.0f, "funloader.dct_decode: `flip_signs` entries must be +1 or -1");
  flip_signs_ = signs;
  gain_[1] = gain_[0];
  for (size_t channel = 0; channel < flip_signs_.size(); channel++) gain_[1][channel] *= flip_signs_[channel];
  for (int x = 0; x < out_w8_; x++) reversed_cols_.push_back(out_w8_ - 1 - x);
  std::string support = spec.GetArgument<std::string>("support");
  DALI_ENFORCE(support == "box" || support == "image",
               "funloader.dct_decode: `support` must be \"box\" or \"image\", got \"" + support + "\"");
  support_ = support == "box" ? FL_SUPPORT_BOX : FL_SUPPORT_IMAGE;
  std::string subsampling = spec.GetArgument<std::string>("subsampling");
  DALI_ENFORCE(subsampling == "420" || subsampling == "444",
               "funloader.dct_decode: `subsampling` must be \"420\" or \"444\", got \"" + subsampling + "\"");
  chroma_ = subsampling == "420" ? FL_CHROMA_420 : FL_CHROMA_444;
}

std::unique_ptr<DecoderSlot> DctDecode::Acquire() {
  {
    std::lock_guard<std::mutex> guard(pool_mutex_);
    if (!pool_.empty()) {
      std::unique_ptr<DecoderSlot> slot = std::move(pool_.back());
      pool_.pop_back();
      return slot;
    }
  }
  return std::make_unique<DecoderSlot>();
}

void DctDecode::Release(std::unique_ptr<DecoderSlot> slot) {
  std::lock_guard<std::mutex> guard(pool_mutex_);
  pool_.push_back(std::move(slot));
}

bool DctDecode::SetupImpl(std::vector<::dali::OutputDesc> &output_desc,
                          const ::dali::Workspace &ws) {
  const auto &input = ws.Input<::dali::CPUBackend>(0);
  DALI_ENFORCE(input.type() == DALI_UINT8,
               "funloader.dct_decode: the input must be encoded JPEG bytes (uint8)");
  int batch_size = input.num_samples();
  if (ws.NumInput() > 1) {
    const auto &boxes = ws.Input<::dali::CPUBackend>(1);
    DALI_ENFORCE(boxes.type() == DALI_FLOAT64 && boxes.num_samples() == batch_size,
                 "funloader.dct_decode: input 1 must hold one float64 box per sample");
    for (int i = 0; i < batch_size; i++)
      DALI_ENFORCE(boxes[i].shape().num_elements() == 4,
                   "funloader.dct_decode: each box must be 4 float64 (top, left, height, width)");
  }
  int64_t channels = channels_.empty() ? 192 : static_cast<int64_t>(channels_.size());
  output_desc.resize(1);
  output_desc[0].type = dtype_;
  output_desc[0].shape = ::dali::uniform_list_shape(
      batch_size, ::dali::TensorShape<3>{channels, out_h8_, out_w8_});
  return true;
}

std::string DctDecode::DecodeSample(const uint8_t *data, size_t size, void *out, bool flip, const double *box) {
  const size_t plane = static_cast<size_t>(out_h8_) * out_w8_ * elem_size_;
  std::unique_ptr<DecoderSlot> slot = Acquire();
  void *target = out;
  size_t target_bytes = 192 * plane;
  if (!channels_.empty()) {
    slot->scratch.resize(target_bytes);
    target = slot->scratch.data();
  }
  fl_options options;
  std::memset(&options, 0, sizeof(options));
  options.strict = strict_ ? 1 : 0;
  options.max_pixels = max_pixels_ > 0 ? static_cast<uint64_t>(max_pixels_) : 0;
  options.max_scans = max_scans_;
  fl_mapping mapping = {nullptr, nullptr, nullptr, nullptr};
  if (flip) mapping.cols = reversed_cols_.data();
  if (fl_dtype_ == FL_DTYPE_FLOAT32 && (flip || normalize_)) {
    mapping.gain = gain_[flip ? 1 : 0].data();
    mapping.bias = bias_.data();
  }
  const bool mapped = mapping.cols || mapping.gain;
  fl_header header;
  fl_result result;
  int status;
  if (box != nullptr && !std::isnan(box[0])) {  // the exact resized crop of the box (dequantized units)
    fl_resize_spec resize = {box[0], box[1], box[2], box[3], support_, chroma_};
    status = fl_decode_fun_resized(slot->decoder, data, size, &options, target, target_bytes, fl_dtype_, out_h8_,
                                   out_w8_, &resize, mapped ? &mapping : nullptr, &header, &result);
  } else {
    status = fl_decode_fun_mapped(slot->decoder, data, size, &options, target, target_bytes, fl_dtype_,
                                  dequantize_ ? 1 : 0, out_h8_, out_w8_, mapped ? &mapping : nullptr, &header,
                                  &result);
  }
  if (status != FL_OK && normalize_) {
    // A replaced sample is all-zero coefficients, normalised like the others (as when the
    // normalisation runs as a separate step): the core zero-filled the output, the shift is added.
    const size_t count = static_cast<size_t>(out_h8_) * out_w8_;
    float *planes = static_cast<float *>(target);
    for (int channel = 0; channel < 192; channel++)
      std::fill(planes + channel * count, planes + (channel + 1) * count, bias_[channel]);
  }
  if (!channels_.empty()) {
    // On error the core zero-filled the scratch plane, so the selection is zero as well.
    uint8_t *dst = static_cast<uint8_t *>(out);
    for (size_t i = 0; i < channels_.size(); i++)
      std::memcpy(dst + i * plane, slot->scratch.data() + channels_[i] * plane, plane);
  }
  Release(std::move(slot));
  if (flip && fl_dtype_ == FL_DTYPE_INT16) {  // the sign half of the flip (float folds it into the gain)
    const size_t count = static_cast<size_t>(out_h8_) * out_w8_;
    for (size_t i = 0; i < out_channels_.size(); i++) {
      if (flip_signs_[out_channels_[i]] > 0) continue;
      int16_t *channel = static_cast<int16_t *>(out) + i * count;
      for (size_t k = 0; k < count; k++) channel[k] = static_cast<int16_t>(-channel[k]);
    }
  }
  if (status == FL_OK) return std::string();
  std::string message = result.message[0] ? std::string(result.message) : std::string("decoding failed");
  return std::string(ErrorKind(status)) + "|" + message;
}

void DctDecode::RunImpl(::dali::Workspace &ws) {
  const auto &input = ws.Input<::dali::CPUBackend>(0);
  auto &output = ws.Output<::dali::CPUBackend>(0);
  output.SetLayout("CHW");
  int batch_size = input.num_samples();
  std::vector<std::string> errors(batch_size);
  GetPerSampleArgument<int>(flip_, "flip", ws, batch_size);
  if (flip_signs_.empty()) {
    for (int i = 0; i < batch_size; i++)
      DALI_ENFORCE(flip_[i] == 0, "funloader.dct_decode: `flip` needs `flip_signs` (funloader.channels.flip_signs(\"h\"))");
  }
  auto &thread_pool = ws.GetThreadPool();
  const ::dali::TensorList<::dali::CPUBackend> *boxes =
      ws.NumInput() > 1 ? &ws.Input<::dali::CPUBackend>(1) : nullptr;
  for (int i = 0; i < batch_size; i++) {
    thread_pool.AddWork([this, &input, &output, &errors, boxes, i](int) {
      const auto &sample = input[i];
      const uint8_t *data = sample.data<uint8_t>();
      size_t size = static_cast<size_t>(sample.shape().num_elements());
      const double *box = boxes ? (*boxes)[i].data<double>() : nullptr;
      errors[i] = DecodeSample(data, size, output.raw_mutable_tensor(i), flip_[i] != 0, box);
    }, -i);  // FIFO: earlier samples first
  }
  thread_pool.RunAll();
  if (replace_on_error_) return;
  for (int i = 0; i < batch_size; i++) {
    if (errors[i].empty()) continue;
    std::string source = input.GetMeta(i).GetSourceInfo();
    size_t bar = errors[i].find('|');
    // Parsed by funloader.dali.translate_error (into DALIDecodeError): keep the
    // "funloader: <Kind> in '<source>': <reason> [sample" layout stable.
    DALI_FAIL("funloader: " + errors[i].substr(0, bar) + " in '" +
              (source.empty() ? std::string("<sample ") + std::to_string(i) + ">" : source) +
              "': " + errors[i].substr(bar + 1) + " [sample " + std::to_string(i) +
              " of the batch; pass on_error=\"zero\" to replace bad samples with zeros]");
  }
}

// The one output of a per-sample operator on uint8 bytes: `elements` values of `type` per sample.
static void BytesToUniformOutput(std::vector<::dali::OutputDesc> &output_desc, const ::dali::Workspace &ws,
                                 ::dali::DALIDataType type, int64_t elements, const char *wrong_input) {
  const auto &input = ws.Input<::dali::CPUBackend>(0);
  DALI_ENFORCE(input.type() == DALI_UINT8, wrong_input);
  output_desc.resize(1);
  output_desc[0].type = type;
  output_desc[0].shape = ::dali::uniform_list_shape(input.num_samples(), ::dali::TensorShape<1>{elements});
}

bool ParseLabel::SetupImpl(std::vector<::dali::OutputDesc> &output_desc,
                           const ::dali::Workspace &ws) {
  BytesToUniformOutput(output_desc, ws, DALI_INT32, 1, "funloader.parse_label: the input must be uint8 bytes");
  return true;
}

void ParseLabel::RunImpl(::dali::Workspace &ws) {
  const auto &input = ws.Input<::dali::CPUBackend>(0);
  auto &output = ws.Output<::dali::CPUBackend>(0);
  for (int i = 0; i < input.num_samples(); i++) {
    const auto &sample = input[i];
    const char *text = reinterpret_cast<const char *>(sample.data<uint8_t>());
    int64_t size = sample.shape().num_elements();
    int64_t begin = 0, end = size;
    while (begin < end && std::isspace(static_cast<unsigned char>(text[begin]))) begin++;
    while (end > begin && std::isspace(static_cast<unsigned char>(text[end - 1]))) end--;
    int64_t value = -1;
    if (begin < end) {
      value = 0;
      for (int64_t k = begin; k < end; k++) {
        char c = text[k];
        DALI_ENFORCE(c >= '0' && c <= '9' && value < (1LL << 31) / 10,
                     "funloader.parse_label: '" + input.GetMeta(i).GetSourceInfo() +
                     "' does not hold a class index (ASCII decimal): '" +
                     std::string(text + begin, static_cast<size_t>(std::min<int64_t>(end - begin, 20))) + "'");
        value = value * 10 + (c - '0');
      }
    }
    output.mutable_tensor<int32_t>(i)[0] = static_cast<int32_t>(value);
  }
}

ImageSize::ImageSize(const ::dali::OpSpec &spec)
    : ::dali::Operator<::dali::CPUBackend>(spec), max_pixels_(spec.GetArgument<int64_t>("max_pixels")) {}

bool ImageSize::SetupImpl(std::vector<::dali::OutputDesc> &output_desc, const ::dali::Workspace &ws) {
  BytesToUniformOutput(output_desc, ws, DALI_INT64, 2,
                       "funloader.image_size: the input must be encoded JPEG bytes (uint8)");
  return true;
}

void ImageSize::RunImpl(::dali::Workspace &ws) {
  const auto &input = ws.Input<::dali::CPUBackend>(0);
  auto &output = ws.Output<::dali::CPUBackend>(0);
  fl_options options;
  std::memset(&options, 0, sizeof(options));
  options.strict = 1;
  options.max_pixels = max_pixels_ > 0 ? static_cast<uint64_t>(max_pixels_) : 0;
  options.max_scans = 0;
  for (int i = 0; i < input.num_samples(); i++) {
    const auto &sample = input[i];
    fl_header header;
    fl_result result;
    int status = fl_read_size(slot_.decoder, sample.data<uint8_t>(),
                              static_cast<size_t>(sample.shape().num_elements()), &options, &header, &result);
    int64_t *size = output.mutable_tensor<int64_t>(i);
    size[0] = status == FL_OK ? header.height : 0;
    size[1] = status == FL_OK ? header.width : 0;
  }
}

}  // namespace funloader_dali

namespace dali {

DALI_REGISTER_OPERATOR(funloader__DctDecode, ::funloader_dali::DctDecode, CPU);

DALI_SCHEMA(funloader__DctDecode)
    .DocStr(R"code(Reads the quantized DCT coefficients of JPEG images (entropy decoding only: no IDCT,
colour conversion or resize) and lays them out as the FUN input ``(C, crop_h, crop_w)``, layout CHW:
``channel = 64 * component + 8 * v + u`` (Y, Cb, Cr; chroma replicated onto the luma block grid;
grayscale gives zero chroma). Each image is centre-cropped or zero-padded by whole 8x8 blocks to
``crop``, exactly as ``funloader.read_batch``. The decoding is funloader's C core.)code")
    .NumInput(1, 2)
    .NumOutput(1)
    .InputDox(0, "data", "TensorList", "Encoded JPEG bytes, one 1-D uint8 tensor per sample.")
    .InputDox(1, "boxes", "TensorList", "Optional: per sample a float64 (4,) window (top, left, height, width) in "
              "pixels of the original image, resized exactly (decoded YCbCr, bilinear antialias, block DCT) to "
              "`crop` blocks, as funloader.read_batch(boxes=); a NaN box reads the blocks as they are.")
    .AddOptionalArg("support", "With boxes: \"box\" (crop then resize, torchvision resized_crop) or \"image\" "
                    "(the filter reads around the box: Pillow resize(box=), Resize + CenterCrop).",
                    std::string("box"))
    .AddOptionalArg("subsampling", "With boxes: \"420\" (chroma resized at half resolution, replicated) or "
                    "\"444\" (chroma at full resolution).", std::string("420"))
    .AddOptionalArg<int>("crop", "Output block grid (H8, W8); 28x28 blocks = 224x224 pixels.",
                         std::vector<int>{28, 28})
    .AddOptionalArg("dequantize", "Multiply by the quantization tables (float32 output).", false)
    .AddOptionalTypeArg("dtype", "Output type: INT16 (raw coefficients) or FLOAT.", DALI_INT16)
    .AddOptionalArg("strict", "Treat recoverable corruption (truncation, bad Huffman codes) as an error.",
                    true)
    .AddOptionalArg<int64_t>("max_pixels",
                             "Decompression-bomb limit (width*height from the header); 0: no limit.",
                             static_cast<int64_t>(178956970))
    .AddOptionalArg("max_scans", "Refuse progressive files with more scans than this; <= 0: no limit.",
                    1000)
    .AddOptionalArg("on_error",
                    "\"raise\": a bad sample stops the pipeline with an error naming its file; "
                    "\"zero\": the bad sample becomes all-zero coefficients (then normalised like the "
                    "others when scale/shift are given) and the pipeline goes on.",
                    std::string("raise"))
    .AddOptionalArg<int>("channels",
                         "Indices (0..191) of the channels to output, in this order; empty: all 192.",
                         std::vector<int>{})
    .AddOptionalArg("flip",
                    "Per sample: nonzero flips the output horizontally in the DCT domain (block columns "
                    "reversed, each channel multiplied by its `flip_signs` entry), before normalisation.",
                    0, true)
    .AddOptionalArg<float>("flip_signs", "Per FUN channel (192): the sign a mirrored block gives it, "
                           "+1 or -1 (funloader.channels.flip_signs(\"h\")); needed with `flip`.",
                           std::vector<float>{})
    .AddOptionalArg<float>("scale", "Per output channel: normalisation x * scale + shift (float32, multiply "
                           "then add) after decoding and flipping, e.g. scale = 1/std, shift = -mean/std; "
                           "needs dtype FLOAT. Empty: no normalisation.", std::vector<float>{})
    .AddOptionalArg<float>("shift", "Per output channel: added after `scale`; same length as scale.",
                           std::vector<float>{});

DALI_REGISTER_OPERATOR(funloader__ImageSize, ::funloader_dali::ImageSize, CPU);

DALI_SCHEMA(funloader__ImageSize)
    .DocStr("(height, width) int64 of each JPEG from its header (funloader's parser); (0, 0) when the header "
            "cannot be read, so that the decode reports the file's error.")
    .NumInput(1)
    .NumOutput(1)
    .InputDox(0, "data", "TensorList", "Encoded JPEG bytes, one 1-D uint8 tensor per sample.")
    .AddOptionalArg<int64_t>("max_pixels", "Decompression-bomb limit (width*height); 0: no limit.",
                             static_cast<int64_t>(178956970));

DALI_REGISTER_OPERATOR(funloader__ParseLabel, ::funloader_dali::ParseLabel, CPU);

DALI_SCHEMA(funloader__ParseLabel)
    .DocStr("Parses the ASCII decimal class index of a WebDataset ``<key>.cls`` member into an int32 "
            "tensor of shape (1,); an empty input (missing member) gives -1.")
    .NumInput(1)
    .NumOutput(1)
    .InputDox(0, "data", "TensorList", "The member's bytes, one 1-D uint8 tensor per sample.");

}  // namespace dali
