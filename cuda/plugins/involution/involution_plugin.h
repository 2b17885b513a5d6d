// TensorRT IPluginV3 "CMIRInvolution" (namespace "cmir", version "1"): involution kernel aggregation through
// launch_involution (cuda/involution.cuh). Fields, defaults and layouts: export/plugin_schema.json.
#pragma once

#include "plugin_common.h"

namespace cmir_plugins {

class InvolutionPlugin final : public PluginV3Base {
 public:
  explicit InvolutionPlugin(const FieldValues& fields);
  InvolutionPlugin(const InvolutionPlugin&) = default;

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
  int32_t getNbOutputs() const noexcept override { return schema::involution::kNbOutputs; }
  // IPluginV3OneRuntime
  int32_t onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nb_inputs,
                        const nvinfer1::PluginTensorDesc* out, int32_t nb_outputs) noexcept override;
  int32_t enqueue(const nvinfer1::PluginTensorDesc* input_desc, const nvinfer1::PluginTensorDesc* output_desc,
                  const void* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;

  int32_t kernel_size() const { return fields_.get_int(schema::involution::kKernelSize); }
  int32_t stride() const { return fields_.get_int(schema::involution::kStride); }
  int32_t group_channels() const { return fields_.get_int(schema::involution::kGroupChannels); }

 private:
  // Empty string when x [B,C,H,W] / kernel [B,G*K*K,H',W'] / y [B,C,H',W'] agree with the fields; -1 dims
  // (unknown at build time) pass. `out` may be null.
  std::string check_dims(const nvinfer1::Dims& x, const nvinfer1::Dims& kernel, const nvinfer1::Dims* out) const;
};

nvinfer1::IPluginCreatorV3One* involution_creator();

}  // namespace cmir_plugins
