#include "involution_plugin.h"

#include <memory>
#include <stdexcept>

#include "involution.cuh"

namespace cmir_plugins {

namespace inv = schema::involution;

InvolutionPlugin::InvolutionPlugin(const FieldValues& fields) : PluginV3Base(inv::kName, inv::kVersion, fields) {}

nvinfer1::IPluginV3* InvolutionPlugin::create(const FieldValues& fields) {
  return std::make_unique<InvolutionPlugin>(fields).release();  // ownership passes to TensorRT / the caller
}

nvinfer1::IPluginV3* InvolutionPlugin::clone() noexcept {
  try {
    return std::make_unique<InvolutionPlugin>(*this).release();
  } catch (const std::exception& e) {
    error(std::string("clone failed: ") + e.what());
    return nullptr;
  }
}

std::string InvolutionPlugin::check_dims(const nvinfer1::Dims& x, const nvinfer1::Dims& kernel,
                                         const nvinfer1::Dims* out) const {
  if (x.nbDims != 4) return "input x must be 4-D [B, C, H, W], got " + std::to_string(x.nbDims) + "-D";
  if (kernel.nbDims != 4) {
    return "input kernel must be 4-D [B, G*K*K, H', W'], got " + std::to_string(kernel.nbDims) + "-D";
  }
  const int64_t k = kernel_size(), s = stride(), gc = group_channels();
  const int64_t b = x.d[0], c = x.d[1], h = x.d[2], w = x.d[3];
  auto known = [](int64_t v) { return v >= 0; };
  if (known(c) && c % gc != 0) {
    return "channels " + std::to_string(c) + " not divisible by group_channels " + std::to_string(gc);
  }
  if (known(c) && known(kernel.d[1]) && kernel.d[1] != (c / gc) * k * k) {
    return "kernel has " + std::to_string(kernel.d[1]) + " channels, expected G*K*K = " +
           std::to_string((c / gc) * k * k);
  }
  const int64_t ho = known(h) ? (h + s - 1) / s : -1, wo = known(w) ? (w + s - 1) / s : -1;
  if (known(b) && known(kernel.d[0]) && kernel.d[0] != b) return "kernel batch differs from x batch";
  if (known(ho) && known(kernel.d[2]) && kernel.d[2] != ho) return "kernel height must be ceil(H/stride)";
  if (known(wo) && known(kernel.d[3]) && kernel.d[3] != wo) return "kernel width must be ceil(W/stride)";
  if (out != nullptr) {
    if (out->nbDims != 4) return "output must be 4-D";
    const int64_t expect[4] = {b, c, ho, wo};
    for (int i = 0; i < 4; ++i) {
      if (known(expect[i]) && known(out->d[i]) && out->d[i] != expect[i]) return "output shape mismatch";
    }
  }
  return {};
}

int32_t InvolutionPlugin::configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nb_inputs,
                                          const nvinfer1::DynamicPluginTensorDesc* out,
                                          int32_t nb_outputs) noexcept {
  if (in == nullptr || out == nullptr || nb_inputs != inv::kNbInputs || nb_outputs != inv::kNbOutputs) {
    error("configurePlugin: expected 2 inputs and 1 output");
    return 1;
  }
  const std::string problem = check_dims(in[0].desc.dims, in[1].desc.dims, &out[0].desc.dims);
  if (!problem.empty()) {
    error("configurePlugin: " + problem);
    return 1;
  }
  return 0;
}

int32_t InvolutionPlugin::getOutputDataTypes(nvinfer1::DataType* output_types, int32_t nb_outputs,
                                             const nvinfer1::DataType* input_types,
                                             int32_t nb_inputs) const noexcept {
  if (output_types == nullptr || input_types == nullptr || nb_outputs != inv::kNbOutputs ||
      nb_inputs != inv::kNbInputs) {
    error("getOutputDataTypes: expected 2 inputs and 1 output");
    return 1;
  }
  CmirDType unused;
  if (!to_cmir_dtype(input_types[0], &unused) || input_types[1] != input_types[0]) {
    error(std::string("inputs must share one type of fp32/fp16/bf16, got ") + dtype_name(input_types[0]) + " and " +
          dtype_name(input_types[1]));
    return 1;
  }
  output_types[0] = input_types[0];  // strongly typed: the output follows the inputs
  return 0;
}

int32_t InvolutionPlugin::getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nb_inputs,
                                          const nvinfer1::DimsExprs* /*shape_inputs*/, int32_t nb_shape_inputs,
                                          nvinfer1::DimsExprs* outputs, int32_t nb_outputs,
                                          nvinfer1::IExprBuilder& expr_builder) noexcept {
  if (inputs == nullptr || outputs == nullptr || nb_inputs != inv::kNbInputs || nb_outputs != inv::kNbOutputs ||
      nb_shape_inputs != 0) {
    error("getOutputShapes: expected 2 inputs, 1 output, no shape inputs");
    return 1;
  }
  if (inputs[0].nbDims != 4 || inputs[1].nbDims != 4) {
    error("inputs must be 4-D (x [B,C,H,W], kernel [B,G*K*K,H',W'])");
    return 1;
  }
  // Static checks where the dimensions are build-time constants (channels usually are; batch is dynamic).
  nvinfer1::Dims x{}, k{};
  x.nbDims = k.nbDims = 4;
  for (int i = 0; i < 4; ++i) {
    x.d[i] = inputs[0].d[i]->isConstant() ? inputs[0].d[i]->getConstantValue() : -1;
    k.d[i] = inputs[1].d[i]->isConstant() ? inputs[1].d[i]->getConstantValue() : -1;
  }
  const std::string problem = check_dims(x, k, nullptr);
  if (!problem.empty()) {
    error("getOutputShapes: " + problem);
    return 1;
  }
  // y [B, C, ceil(H/s), ceil(W/s)], symbolic so that any batch (and spatial size) of the profile works.
  const nvinfer1::IDimensionExpr* s = expr_builder.constant(stride());
  outputs[0].nbDims = 4;
  outputs[0].d[0] = inputs[0].d[0];
  outputs[0].d[1] = inputs[0].d[1];
  outputs[0].d[2] = expr_builder.operation(nvinfer1::DimensionOperation::kCEIL_DIV, *inputs[0].d[2], *s);
  outputs[0].d[3] = expr_builder.operation(nvinfer1::DimensionOperation::kCEIL_DIV, *inputs[0].d[3], *s);
  if (outputs[0].d[2] == nullptr || outputs[0].d[3] == nullptr) {
    error("getOutputShapes: expression builder returned null");
    return 1;
  }
  return 0;
}

bool InvolutionPlugin::supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* in_out,
                                                 int32_t nb_inputs, int32_t nb_outputs) noexcept {
  if (in_out == nullptr || nb_inputs != inv::kNbInputs || nb_outputs != inv::kNbOutputs || pos < 0 ||
      pos >= nb_inputs + nb_outputs) {
    return false;
  }
  return same_type_linear(pos, in_out);
}

int32_t InvolutionPlugin::onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nb_inputs,
                                        const nvinfer1::PluginTensorDesc* out, int32_t nb_outputs) noexcept {
  if (in == nullptr || out == nullptr || nb_inputs != inv::kNbInputs || nb_outputs != inv::kNbOutputs) {
    error("onShapeChange: expected 2 inputs and 1 output");
    return 1;
  }
  const std::string problem = check_dims(in[0].dims, in[1].dims, &out[0].dims);
  if (!problem.empty()) {
    error("onShapeChange: " + problem);
    return 1;
  }
  return 0;
}

int32_t InvolutionPlugin::enqueue(const nvinfer1::PluginTensorDesc* input_desc,
                                  const nvinfer1::PluginTensorDesc* output_desc, const void* const* inputs,
                                  void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept {
  if (input_desc == nullptr || output_desc == nullptr || inputs == nullptr || outputs == nullptr) {
    error("enqueue: null descriptors or buffers");
    return 1;
  }
  const nvinfer1::Dims& xd = input_desc[0].dims;
  const std::string problem = check_dims(xd, input_desc[1].dims, &output_desc[0].dims);
  CmirDType dtype;
  int b = 0, c = 0, h = 0, w = 0;
  if (!problem.empty() || !to_cmir_dtype(input_desc[0].type, &dtype) ||
      input_desc[1].type != input_desc[0].type || output_desc[0].type != input_desc[0].type ||
      !dim_to_int(xd.d[0], &b) || !dim_to_int(xd.d[1], &c) || !dim_to_int(xd.d[2], &h) ||
      !dim_to_int(xd.d[3], &w)) {
    error("enqueue: bad tensors: " + (problem.empty() ? std::string("types or sizes") : problem));
    return 1;
  }
  if (b == 0 || c == 0 || h == 0 || w == 0) return 0;  // empty tensor: nothing to do
  const cudaError_t err = launch_involution(stream, dtype, inputs[0], inputs[1], outputs[0], b, c, h, w,
                                            kernel_size(), stride(), group_channels());
  if (err != cudaSuccess) {
    error(std::string("enqueue: launch_involution failed: ") + cudaGetErrorString(err));
    return 1;
  }
  return 0;
}

nvinfer1::IPluginCreatorV3One* involution_creator() {
  static PluginCreator creator(inv::kName, inv::kVersion, inv::kFields, inv::kNbFields, &InvolutionPlugin::create);
  return &creator;
}

}  // namespace cmir_plugins
