// Minimal, strict reader/writer for NumPy .npy files holding float32 arrays in C order.
// Supports format versions 1.0, 2.0 and 3.0, both byte orders ('<f4', '>f4'), and checks the header and the file size.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace npy {

/// Raised for any malformed, unsupported or unreadable file; the message says which and why.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A float32 array in C (row-major) order.
struct Array {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

/// Number of elements of `shape` (1 for a scalar); throws Error on overflow or negative dimensions.
std::size_t element_count(const std::vector<int64_t>& shape);

/// "(4, 32, 32, 3)"-style text for messages.
std::string shape_to_string(const std::vector<int64_t>& shape);

/// Reads a float32, C-order .npy file. Throws Error with a precise message when the file is not one.
Array load_float32(const std::string& path);

/// Writes `data` (element_count(shape) floats) as a version 1.0 little-endian float32 .npy file.
void save_float32(const std::string& path, const std::vector<int64_t>& shape, const float* data);

}  // namespace npy
