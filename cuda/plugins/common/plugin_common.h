// Shared parts of cmir_trt's TensorRT plugins: logging through TensorRT's logger finder, schema-driven field
// parsing/serialisation, the IPluginV3 boilerplate and a generic IPluginCreatorV3One.
// Only TensorRT's headers are used (no libnvinfer symbol), so the library links without TensorRT installed.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cmir_plugin_schema.h"  // generated from export/plugin_schema.json
#include "common.cuh"            // CmirDType

namespace cmir_plugins {

using nvinfer1::DataType;
using nvinfer1::ILogger;

// Log through the ILogger found via setLoggerFinder(), or stderr when TensorRT gave none (e.g. in the harness).
void log_message(ILogger::Severity severity, const std::string& message) noexcept;
void set_logger_finder(nvinfer1::ILoggerFinder* finder) noexcept;

// Maps TensorRT's element type to the kernels' (false for types the kernels do not have).
bool to_cmir_dtype(DataType type, CmirDType* out) noexcept;
const char* dtype_name(DataType type) noexcept;

// The values of one plugin's fields, one per schema field, with defaults for the fields a collection omits.
// parse() checks names, types, lengths and ranges against the schema and throws std::invalid_argument naming the
// plugin and field; collection() exposes the values as a PluginFieldCollection pointing into this object.
class FieldValues {
 public:
  FieldValues(const char* plugin, const schema::FieldSpec* specs, int32_t count);
  FieldValues(const FieldValues& other);
  FieldValues& operator=(const FieldValues& other);

  void parse(const nvinfer1::PluginFieldCollection* fc);
  int32_t get_int(int32_t index) const { return ints_.at(static_cast<size_t>(index)); }
  float get_float(int32_t index) const { return floats_.at(static_cast<size_t>(index)); }
  void set_int(int32_t index, int32_t value);  // range-checked
  const nvinfer1::PluginFieldCollection* collection();
  std::string describe() const;  // "name=value,..." (metadata string, timing-cache id)

 private:
  void rebuild();
  const char* plugin_;
  const schema::FieldSpec* specs_;
  int32_t count_;
  std::vector<int32_t> ints_;  // slot i holds field i when it is an int32 field
  std::vector<float> floats_;  // slot i holds field i when it is a float32 field
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection fc_{};
};

// IPluginV3 with the three OneCore/OneBuild/OneRuntime capabilities. Subclasses implement the op-specific methods
// and clone(); names, capability lookup, field serialisation and attachToContext live here.
class PluginV3Base : public nvinfer1::IPluginV3,
                     public nvinfer1::IPluginV3OneCore,
                     public nvinfer1::IPluginV3OneBuild,
                     public nvinfer1::IPluginV3OneRuntime {
 public:
  PluginV3Base(const char* name, const char* version, FieldValues fields);
  ~PluginV3Base() override = default;
  PluginV3Base(const PluginV3Base&) = default;
  PluginV3Base& operator=(const PluginV3Base&) = delete;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  // IPluginV3OneCore
  const char* getPluginName() const noexcept override { return name_; }
  const char* getPluginVersion() const noexcept override { return version_; }
  const char* getPluginNamespace() const noexcept override { return schema::kNamespace; }
  // IPluginV3OneBuild (shared parts)
  char const* getTimingCacheID() noexcept override;
  char const* getMetadataString() noexcept override;
  // IPluginV3OneRuntime (shared parts)
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldsToSerialize() noexcept override;

 protected:
  // Every tensor: linear layout and the type of tensor 0, which must be one the kernels have.
  bool same_type_linear(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* in_out) const noexcept;
  // Report an error of this plugin instance (name + message) through the logger.
  void error(const std::string& message) const noexcept;

  const char* name_;
  const char* version_;
  FieldValues fields_;
  std::string description_;
};

// Factory of one plugin type from parsed fields (throws std::invalid_argument on inconsistent values).
using PluginFactory = nvinfer1::IPluginV3* (*)(const FieldValues& fields);

class PluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  PluginCreator(const char* name, const char* version, const schema::FieldSpec* specs, int32_t count,
                PluginFactory factory);
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override { return &fc_; }
  const char* getPluginName() const noexcept override { return name_; }
  const char* getPluginVersion() const noexcept override { return version_; }
  const char* getPluginNamespace() const noexcept override { return schema::kNamespace; }

 private:
  const char* name_;
  const char* version_;
  const schema::FieldSpec* specs_;
  int32_t count_;
  PluginFactory factory_;
  std::vector<nvinfer1::PluginField> field_names_;
  nvinfer1::PluginFieldCollection fc_{};
};

// Checked narrowing of a TensorRT dimension to the int the launchers take.
bool dim_to_int(int64_t value, int* out) noexcept;

}  // namespace cmir_plugins
