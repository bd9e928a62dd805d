#pragma once
// safetensors reading (memory-mapped, validated) and writing.
// Format: u64 little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32"|"BF16"|"F16"|..., "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}},
// then the data region; offsets are relative to the start of the data region.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace lora {

enum class DType { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL };
const char* dtype_name(DType t);   // "F32", "BF16", ...
size_t dtype_size(DType t);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets within the data region
  int64_t numel() const;
};

// One memory-mapped .safetensors file. Opening validates the whole header: header length
// within the file, JSON well formed, every dtype known, every shape * dtype size equal to
// its byte range, ranges inside the file and not overlapping. Any problem throws
// InputError naming the file and the tensor, with code "file_read" (cannot open/map),
// "safetensors_truncated" (file shorter than the header or the data it announces),
// "safetensors_header" (length above 100 MB, bad JSON, missing fields), "safetensors_dtype",
// "safetensors_shape" (negative dims, shape * dtype size != byte range) or
// "safetensors_offsets" (reversed or overlapping ranges).
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Raw bytes of a tensor inside the mapping (valid while this object lives).
  const uint8_t* data(const TensorInfo& t) const;

 private:
  std::string path_;
  int fd_ = -1;
  const uint8_t* map_ = nullptr;
  size_t map_size_ = 0;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A model's weights: model.safetensors, or the shards listed in
// model.safetensors.index.json ("weight_map": {tensor: file}). Tensor lookup across shards.
// Errors: "model_missing" (no such folder), "safetensors_missing" (no weights in it),
// "safetensors_index" (index without weight_map, a listed shard missing, a tensor not in
// the shard the index names), plus SafetensorsFile's codes; lookups: "tensor_missing",
// "tensor_shape", "safetensors_dtype".
class WeightStore {
 public:
  explicit WeightStore(const std::string& model_dir);  // throws InputError
  const TensorInfo* find(const std::string& name) const;
  const SafetensorsFile& file_of(const std::string& name) const;
  std::vector<std::string> names() const;
  // Copies a tensor converted to fp32 into `out` (numel floats). Throws InputError if the
  // tensor is missing, its shape differs from `expect_shape`, or its dtype is not F32/F16/BF16.
  void read_f32(const std::string& name, const std::vector<int64_t>& expect_shape, float* out) const;
  std::vector<float> read_f32(const std::string& name, const std::vector<int64_t>& expect_shape) const;
  // Total bytes of all tensors as stored on disk.
  uint64_t total_bytes() const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

struct TensorToWrite {
  std::string name;
  DType dtype;                    // F32, BF16 or F16 (converted from `data` on write)
  std::vector<int64_t> shape;
  const float* data = nullptr;    // numel floats
};

// Writes a .safetensors file atomically (to `path`.tmp, fsync, rename). Tensors are written
// in the order given; metadata goes to "__metadata__". Throws InputError
// (code "write_failed", with the path and a hint about disk space/permissions) on failure.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// bf16/fp16 <-> fp32 conversions (round-to-nearest-even for fp32 -> bf16).
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace lora
