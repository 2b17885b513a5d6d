// TensorRT IPluginV3 "CMIRCrossModalAttention" (namespace "cmir", version "1"): CMAM in both directions through
// launch_cmam (cuda/cmam.cuh); scratch comes from TensorRT's workspace. Fields and layouts:
// export/plugin_schema.json.
#pragma once

#include "plugin_common.h"

namespace cmir_plugins {

class CmamPlugin final : public PluginV3Base {
 public:
  explicit CmamPlugin(const FieldValues& fields);
  CmamPlugin(const CmamPlugin&) = default;

  // Throws std::invalid_argument when dim is not a multiple of heads.
  static nvinfer1::IPluginV3* create(const FieldValues& fields);

  // IPluginV3
  nvinfer1::IPluginV3* clone() noexcept override;
  // IPluginV3OneBuild
  int32_t configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nb_inputs,
                          const nvinfer1::DynamicPluginTensorDesc* out, int32_t nb_outputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* output_types, int32_t nb_outputs,
                             const nvinfer1::DataType* input_types, int32_t nb_inputs) const noexcept override;
  int32_t getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nb_inputs,
                          const nvinfer1::DimsExprs* shape_inputs, int32_t nb_shape_inputs,
                          nvinfer1::DimsExprs* outputs, int32_t nb_outputs,
                          nvinfer1::IExprBuilder& expr_builder) noexcept override;
  bool supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* in_out, int32_t nb_inputs,
                                 int32_t nb_outputs) noexcept override;
  int32_t getNbOutputs() const noexcept override { return schema::cross_modal_attention::kNbOutputs; }
  size_t getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* inputs, int32_t nb_inputs,
                          const nvinfer1::DynamicPluginTensorDesc* outputs,
                          int32_t nb_outputs) const noexcept override;
  // IPluginV3OneRuntime
  int32_t onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nb_inputs,
                        const nvinfer1::PluginTensorDesc* out, int32_t nb_outputs) noexcept override;
  int32_t enqueue(const nvinfer1::PluginTensorDesc* input_desc, const nvinfer1::PluginTensorDesc* output_desc,
                  const void* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;

  int32_t heads() const { return fields_.get_int(schema::cross_modal_attention::kHeads); }
  int32_t dim() const { return fields_.get_int(schema::cross_modal_attention::kDim); }
  float eps() const { return fields_.get_float(schema::cross_modal_attention::kEps); }

 private:
  // Empty string when art/pv [B,C,H,W] (same shape), weights [4*dim*C + 3*dim + 3*C] and the outputs agree;
  // -1 dims pass. `outs` (2 entries) may be null.
  std::string check_dims(const nvinfer1::Dims* ins, const nvinfer1::Dims* outs) const;
};

nvinfer1::IPluginCreatorV3One* cmam_creator();

}  // namespace cmir_plugins
