#include "cmam_plugin.h"

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>

#include "cmam.cuh"

namespace cmir_plugins {

namespace cm = schema::cross_modal_attention;

CmamPlugin::CmamPlugin(const FieldValues& fields) : PluginV3Base(cm::kName, cm::kVersion, fields) {}

nvinfer1::IPluginV3* CmamPlugin::create(const FieldValues& fields) {
  const int32_t heads = fields.get_int(cm::kHeads), dim = fields.get_int(cm::kDim);
  if (dim % heads != 0) {
    throw std::invalid_argument(std::string(cm::kName) + ": dim (" + std::to_string(dim) +
                                ") must be divisible by heads (" + std::to_string(heads) + ")");
  }
  // Refused here, where the user sees the field values, rather than at enqueue inside an engine.
  if (dim / heads > kCmamMaxHeadDim) {
    throw std::invalid_argument(std::string(cm::kName) + ": head_dim = dim / heads = " + std::to_string(dim) + " / " +
                                std::to_string(heads) + " = " + std::to_string(dim / heads) +
                                " exceeds the CUDA kernel's limit of " + std::to_string(kCmamMaxHeadDim) +
                                " (use more heads or a smaller dim)");
  }
  return std::make_unique<CmamPlugin>(fields).release();  // ownership passes to TensorRT / the caller
}

nvinfer1::IPluginV3* CmamPlugin::clone() noexcept {
  try {
    return std::make_unique<CmamPlugin>(*this).release();
  } catch (const std::exception& e) {
    error(std::string("clone failed: ") + e.what());
    return nullptr;
  }
}

namespace {

std::string dims_text(const nvinfer1::Dims& d) {
  std::string s = "[";
  for (int i = 0; i < d.nbDims; ++i) s += (i > 0 ? ", " : "") + std::to_string(d.d[i]);
  return s + "]";
}

}  // namespace

std::string CmamPlugin::check_dims(const nvinfer1::Dims* ins, const nvinfer1::Dims* outs) const {
  const nvinfer1::Dims& a = ins[0];
  const nvinfer1::Dims& p = ins[1];
  if (a.nbDims != 4 || p.nbDims != 4) return "art and pv must be 4-D [B, C, H, W]";
  for (int i = 0; i < 4; ++i) {
    if (a.d[i] >= 0 && p.d[i] >= 0 && a.d[i] != p.d[i]) return "art and pv must have one shape";
  }
  const int64_t c = a.d[1] >= 0 ? a.d[1] : p.d[1];
  for (int j = 2; j < 4; ++j) {
    const nvinfer1::Dims& wt = ins[j];
    if (wt.nbDims != 1) return "packed weights must be 1-D, got " + std::to_string(wt.nbDims) + "-D";
    if (c >= 0 && wt.d[0] >= 0) {
      const int64_t expect = 4 * int64_t{dim()} * c + 3 * int64_t{dim()} + 3 * c;
      if (wt.d[0] != expect) {
        return "packed weights have " + std::to_string(wt.d[0]) + " elements, expected 4*dim*C + 3*dim + 3*C = " +
               std::to_string(expect) + " (C = " + std::to_string(c) + ", dim = " + std::to_string(dim()) + ")";
      }
    }
  }
  // Sizes the launcher would refuse (known dimensions only; pass a profile's max shape to cover the whole range).
  if (a.d[0] > 0 && a.d[1] > 0 && a.d[2] > 0 && a.d[3] > 0) {
    auto clamp = [](int64_t v) { return static_cast<int>(std::min<int64_t>(v, int64_t{1} << 30)); };
    const char* unsupported =
        cmam_unsupported(clamp(a.d[0]), clamp(a.d[1]), clamp(a.d[2]), clamp(a.d[3]), dim(), heads());
    if (unsupported != nullptr) return std::string("shape [B, C, H, W] = ") + dims_text(a) + ": " + unsupported;
  }
  if (outs != nullptr) {
    for (int o = 0; o < 2; ++o) {
      if (outs[o].nbDims != 4) return "outputs must be 4-D";
      for (int i = 0; i < 4; ++i) {
        if (a.d[i] >= 0 && outs[o].d[i] >= 0 && outs[o].d[i] != a.d[i]) return "output shape differs from input";
      }
    }
  }
  return {};
}

int32_t CmamPlugin::configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nb_inputs,
                                    const nvinfer1::DynamicPluginTensorDesc* out, int32_t nb_outputs) noexcept {
  if (in == nullptr || out == nullptr || nb_inputs != cm::kNbInputs || nb_outputs != cm::kNbOutputs) {
    error("configurePlugin: expected 4 inputs and 2 outputs");
    return 1;
  }
  const nvinfer1::Dims ins[4] = {in[0].desc.dims, in[1].desc.dims, in[2].desc.dims, in[3].desc.dims};
  const nvinfer1::Dims outs[2] = {out[0].desc.dims, out[1].desc.dims};
  std::string problem = check_dims(ins, outs);
  if (problem.empty()) {  // the largest shape of the profile must be launchable too
    const nvinfer1::Dims max_ins[4] = {in[0].max, in[1].max, in[2].max, in[3].max};
    problem = check_dims(max_ins, nullptr);
  }
  if (!problem.empty()) {
    error("configurePlugin: " + problem);
    return 1;
  }
  return 0;
}

int32_t CmamPlugin::getOutputDataTypes(nvinfer1::DataType* output_types, int32_t nb_outputs,
                                       const nvinfer1::DataType* input_types, int32_t nb_inputs) const noexcept {
  if (output_types == nullptr || input_types == nullptr || nb_outputs != cm::kNbOutputs ||
      nb_inputs != cm::kNbInputs) {
    error("getOutputDataTypes: expected 4 inputs and 2 outputs");
    return 1;
  }
  CmirDType unused;
  bool ok = to_cmir_dtype(input_types[0], &unused);
  for (int i = 1; i < nb_inputs; ++i) ok = ok && input_types[i] == input_types[0];
  if (!ok) {
    error(std::string("all inputs (weights included) must share one type of fp32/fp16/bf16; input 0 is ") +
          dtype_name(input_types[0]));
    return 1;
  }
  output_types[0] = output_types[1] = input_types[0];
  return 0;
}

int32_t CmamPlugin::getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nb_inputs,
                                    const nvinfer1::DimsExprs* /*shape_inputs*/, int32_t nb_shape_inputs,
                                    nvinfer1::DimsExprs* outputs, int32_t nb_outputs,
                                    nvinfer1::IExprBuilder& /*expr_builder*/) noexcept {
  if (inputs == nullptr || outputs == nullptr || nb_inputs != cm::kNbInputs || nb_outputs != cm::kNbOutputs ||
      nb_shape_inputs != 0) {
    error("getOutputShapes: expected 4 inputs, 2 outputs, no shape inputs");
    return 1;
  }
  nvinfer1::Dims ins[4];
  for (int j = 0; j < 4; ++j) {
    ins[j].nbDims = inputs[j].nbDims;
    if (inputs[j].nbDims < 0 || inputs[j].nbDims > nvinfer1::Dims::MAX_DIMS) {
      error("getOutputShapes: bad rank");
      return 1;
    }
    for (int i = 0; i < inputs[j].nbDims; ++i) {
      ins[j].d[i] = inputs[j].d[i]->isConstant() ? inputs[j].d[i]->getConstantValue() : -1;
    }
  }
  const std::string problem = check_dims(ins, nullptr);
  if (!problem.empty()) {
    error("getOutputShapes: " + problem);
    return 1;
  }
  outputs[0] = inputs[0];  // art_out: the shape of art (symbolic batch)
  outputs[1] = inputs[1];  // pv_out: the shape of pv
  return 0;
}

bool CmamPlugin::supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* in_out,
                                           int32_t nb_inputs, int32_t nb_outputs) noexcept {
  if (in_out == nullptr || nb_inputs != cm::kNbInputs || nb_outputs != cm::kNbOutputs || pos < 0 ||
      pos >= nb_inputs + nb_outputs) {
    return false;
  }
  return same_type_linear(pos, in_out);
}

size_t CmamPlugin::getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* inputs, int32_t nb_inputs,
                                    const nvinfer1::DynamicPluginTensorDesc* /*outputs*/,
                                    int32_t /*nb_outputs*/) const noexcept {
  if (inputs == nullptr || nb_inputs != cm::kNbInputs || inputs[0].max.nbDims != 4) return 0;
  CmirDType dtype;
  int b = 0, c = 0, h = 0, w = 0;
  const nvinfer1::Dims& m = inputs[0].max;  // enough for every shape of the profile
  if (!to_cmir_dtype(inputs[0].desc.type, &dtype) || !dim_to_int(m.d[0], &b) || !dim_to_int(m.d[1], &c) ||
      !dim_to_int(m.d[2], &h) || !dim_to_int(m.d[3], &w)) {
    return 0;
  }
  return cmam_workspace_size(dtype, b, c, h, w, dim(), heads());
}

int32_t CmamPlugin::onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nb_inputs,
                                  const nvinfer1::PluginTensorDesc* out, int32_t nb_outputs) noexcept {
  if (in == nullptr || out == nullptr || nb_inputs != cm::kNbInputs || nb_outputs != cm::kNbOutputs) {
    error("onShapeChange: expected 4 inputs and 2 outputs");
    return 1;
  }
  const nvinfer1::Dims ins[4] = {in[0].dims, in[1].dims, in[2].dims, in[3].dims};
  const nvinfer1::Dims outs[2] = {out[0].dims, out[1].dims};
  const std::string problem = check_dims(ins, outs);
  if (!problem.empty()) {
    error("onShapeChange: " + problem);
    return 1;
  }
  return 0;
}

int32_t CmamPlugin::enqueue(const nvinfer1::PluginTensorDesc* input_desc,
                            const nvinfer1::PluginTensorDesc* output_desc, const void* const* inputs,
                            void* const* outputs, void* workspace, cudaStream_t stream) noexcept {
  if (input_desc == nullptr || output_desc == nullptr || inputs == nullptr || outputs == nullptr) {
    error("enqueue: null descriptors or buffers");
    return 1;
  }
  const nvinfer1::Dims ins[4] = {input_desc[0].dims, input_desc[1].dims, input_desc[2].dims, input_desc[3].dims};
  const nvinfer1::Dims outs[2] = {output_desc[0].dims, output_desc[1].dims};
  const std::string problem = check_dims(ins, outs);
  CmirDType dtype;
  bool types_ok = to_cmir_dtype(input_desc[0].type, &dtype);
  for (int i = 1; i < 4; ++i) types_ok = types_ok && input_desc[i].type == input_desc[0].type;
  for (int i = 0; i < 2; ++i) types_ok = types_ok && output_desc[i].type == input_desc[0].type;
  int b = 0, c = 0, h = 0, w = 0;
  const nvinfer1::Dims& a = ins[0];
  if (!problem.empty() || !types_ok || !dim_to_int(a.d[0], &b) || !dim_to_int(a.d[1], &c) ||
      !dim_to_int(a.d[2], &h) || !dim_to_int(a.d[3], &w)) {
    error("enqueue: bad tensors: " + (problem.empty() ? std::string("types or sizes") : problem));
    return 1;
  }
  if (b == 0 || c == 0 || h == 0 || w == 0) return 0;  // empty tensor: nothing to do
  // The launcher's need for these exact sizes is <= what getWorkspaceSize reserved for the profile's maximum.
  const size_t ws_bytes = cmam_workspace_size(dtype, b, c, h, w, dim(), heads());
  if (ws_bytes > 0 && workspace == nullptr) {
    error("enqueue: TensorRT gave no workspace but " + std::to_string(ws_bytes) + " bytes are needed");
    return 1;
  }
  const cudaError_t err = launch_cmam(stream, dtype, inputs[0], inputs[1], inputs[2], inputs[3], outputs[0],
                                      outputs[1], workspace, ws_bytes, b, c, h, w, dim(), heads(), eps());
  if (err != cudaSuccess) {
    error(std::string("enqueue: launch_cmam failed: ") + cudaGetErrorString(err));
    return 1;
  }
  return 0;
}

nvinfer1::IPluginCreatorV3One* cmam_creator() {
  static PluginCreator creator(cm::kName, cm::kVersion, cm::kFields, cm::kNbFields, &CmamPlugin::create);
  return &creator;
}

}  // namespace cmir_plugins
