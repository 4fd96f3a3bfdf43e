// onnx_infer: run an ONNX model exported by `lambda-export` with OpenCV DNN (tested with Debian 12's OpenCV 4.6).
//
//   onnx_infer MODEL.onnx INPUT.npy [-o OUTPUT.npy] [--input-name NAME] [--warmup N] [--runs N]
//
// Reads a float32 C-order .npy input (e.g. shape (4, 32, 32, 3), channels-last like the Keras model), runs the network,
// writes each output as .npy, prints the top class of every batch item and the latency.
// Exit status: 0 success, 1 runtime error (unreadable file, model OpenCV cannot load, inference failure), 2 bad usage.
#include <opencv2/core.hpp>
#include <opencv2/core/utility.hpp>
#include <opencv2/dnn.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "npy.hpp"

namespace {

constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;
constexpr std::size_t kMaxInputDims = 32;  // cv::Mat limit (CV_MAX_DIM)

const char* const kUsage =
    "usage: onnx_infer MODEL.onnx INPUT.npy [-o OUTPUT.npy] [--input-name NAME] [--warmup N] [--runs N]\n"
    "\n"
    "  MODEL.onnx         model exported by `lambda-export MODEL.h5 -o MODEL.onnx`\n"
    "  INPUT.npy          float32 C-order array, batch first (numpy.save(path, x.astype(numpy.float32)))\n"
    "  -o, --output PATH  write the output as .npy; a model with several outputs writes PATH_0.npy, PATH_1.npy, ...\n"
    "  --input-name NAME  graph input to feed (default: the first one)\n"
    "  --warmup N         untimed runs before timing (default 1)\n"
    "  --runs N           timed runs (default 10)\n";

struct Options {
  std::string model;
  std::string input;
  std::string output;
  std::string input_name;
  int warmup = 1;
  int runs = 10;
};

struct UsageError {
  std::string message;
};

int parse_count(const std::string& flag, const std::string& value, int minimum) {
  std::size_t used = 0;
  long parsed = 0;
  try {
    parsed = std::stol(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || value.empty() || parsed < minimum || parsed > 1000000) {
    throw UsageError{flag + " needs an integer in [" + std::to_string(minimum) + ", 1000000], got '" + value + "'"};
  }
  return static_cast<int>(parsed);
}

Options parse_args(int argc, char** argv) {
  Options options;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError{arg + " needs a value"};
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "-o" || arg == "--output") {
      options.output = value();
    } else if (arg == "--input-name") {
      options.input_name = value();
    } else if (arg == "--warmup") {
      options.warmup = parse_count(arg, value(), 0);
    } else if (arg == "--runs") {
      options.runs = parse_count(arg, value(), 1);
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw UsageError{"unknown option " + arg};
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 2) {
    throw UsageError{"expected MODEL.onnx and INPUT.npy, got " + std::to_string(positional.size()) + " positional argument(s)"};
  }
  options.model = positional[0];
  options.input = positional[1];
  return options;
}

std::string output_path(const std::string& base, std::size_t index, std::size_t count) {
  if (count == 1) return base;
  std::filesystem::path path(base);
  const std::string stem = path.extension() == ".npy" ? path.stem().string() : path.filename().string();
  return (path.parent_path() / (stem + "_" + std::to_string(index) + ".npy")).string();
}

std::vector<int64_t> mat_shape(const cv::Mat& mat) {
  std::vector<int64_t> shape;
  for (int d = 0; d < mat.dims; ++d) shape.push_back(mat.size[d]);
  return shape;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

int run(const Options& options) {
  // 1. Input.
  npy::Array input = npy::load_float32(options.input);
  if (input.shape.size() < 2 || input.shape.size() > kMaxInputDims) {
    std::cerr << "error: " << options.input << ": input must have 2 to " << kMaxInputDims << " dimensions (batch first), got "
              << npy::shape_to_string(input.shape) << "\n";
    return kExitRuntime;
  }
  std::vector<int> sizes;
  for (const int64_t dim : input.shape) {
    if (dim < 1 || dim > std::numeric_limits<int>::max()) {
      std::cerr << "error: " << options.input << ": unsupported dimension " << dim << " in shape "
                << npy::shape_to_string(input.shape) << "\n";
      return kExitRuntime;
    }
    sizes.push_back(static_cast<int>(dim));
  }
  const cv::Mat blob(static_cast<int>(sizes.size()), sizes.data(), CV_32F, input.data.data());

  // 2. Model.
  if (!std::filesystem::is_regular_file(options.model)) {
    std::cerr << "error: " << options.model << ": no such model file\n";
    return kExitRuntime;
  }
  cv::dnn::Net net;
  try {
    net = cv::dnn::readNetFromONNX(options.model);
  } catch (const cv::Exception& error) {
    std::cerr << "error: OpenCV " << CV_VERSION << " cannot load " << options.model << ": " << error.what()
              << "\n(export with the default `portable` target: static shapes apart from the batch)\n";
    return kExitRuntime;
  }
  if (net.empty()) {
    std::cerr << "error: " << options.model << ": OpenCV returned an empty network\n";
    return kExitRuntime;
  }
  net.setPreferableBackend(cv::dnn::DNN_BACKEND_OPENCV);
  net.setPreferableTarget(cv::dnn::DNN_TARGET_CPU);
  const std::vector<std::string> output_names = net.getUnconnectedOutLayersNames();

  // 3. Inference: warm-up runs (the first one allocates the layers), then timed runs.
  std::vector<cv::Mat> outputs;
  std::vector<double> timings_ms;
  using Clock = std::chrono::steady_clock;
  try {
    for (int i = 0; i < options.warmup + options.runs; ++i) {
      const auto start = Clock::now();
      net.setInput(blob, options.input_name);
      net.forward(outputs, output_names);
      const std::chrono::duration<double, std::milli> elapsed = Clock::now() - start;
      if (i >= options.warmup) timings_ms.push_back(elapsed.count());
    }
  } catch (const cv::Exception& error) {
    std::cerr << "error: inference failed for input " << npy::shape_to_string(input.shape) << ": " << error.what()
              << "\n(check that the input matches the model's input shape, batch first, channels last)\n";
    return kExitRuntime;
  }

  // 4. Report and write the outputs.
  std::cout << "model: " << options.model << " (OpenCV " << CV_VERSION << ", " << cv::getNumThreads() << " threads)\n";
  std::cout << "input: " << npy::shape_to_string(input.shape) << " float32\n";
  for (std::size_t k = 0; k < outputs.size(); ++k) {
    cv::Mat out = outputs[k];
    if (out.type() != CV_32F) out.convertTo(out, CV_32F);
    if (!out.isContinuous()) out = out.clone();
    const std::vector<int64_t> shape = mat_shape(out);
    std::cout << "output " << output_names[k] << ": " << npy::shape_to_string(shape) << "\n";
    if (!options.output.empty()) {
      const std::string path = output_path(options.output, k, outputs.size());
      npy::save_float32(path, shape, out.ptr<float>());
      std::cout << "wrote " << path << "\n";
    }
  }
  const cv::Mat& first = outputs.at(0);
  const auto batch = static_cast<std::size_t>(first.size[0]);
  const std::size_t per_item = batch ? first.total() / batch : 0;
  for (std::size_t b = 0; b < batch && per_item; ++b) {
    const float* row = first.ptr<float>() + b * per_item;
    const auto top = static_cast<std::size_t>(std::max_element(row, row + per_item) - row);
    std::printf("top class: item %zu -> class %zu (score %.6f)\n", b, top, row[top]);
  }
  const double mean = std::accumulate(timings_ms.begin(), timings_ms.end(), 0.0) / timings_ms.size();
  std::printf("latency: mean %.3f ms, median %.3f ms, min %.3f ms over %zu runs (batch %zu, %d warm-up)\n", mean,
              median(timings_ms), *std::min_element(timings_ms.begin(), timings_ms.end()), timings_ms.size(), batch,
              options.warmup);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  try {
    options = parse_args(argc, argv);
  } catch (const UsageError& error) {
    std::cerr << "error: " << error.message << "\n\n" << kUsage;
    return kExitUsage;
  }
  try {
    return run(options);
  } catch (const npy::Error& error) {
    std::cerr << "error: " << error.what() << "\n";
  } catch (const cv::Exception& error) {
    std::cerr << "error: OpenCV: " << error.what() << "\n";
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
  }
  return kExitRuntime;
}
