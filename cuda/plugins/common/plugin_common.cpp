#include "plugin_common.h"

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace cmir_plugins {

namespace {

std::atomic<nvinfer1::ILoggerFinder*> g_logger_finder{nullptr};

// Attributes the ONNX parser uses to find a creator; they may reach createPlugin and carry no plugin state.
bool is_parser_attribute(const char* name) {
  return std::strcmp(name, "plugin_version") == 0 || std::strcmp(name, "plugin_namespace") == 0;
}

const char* field_type_name(nvinfer1::PluginFieldType t) {
  using T = nvinfer1::PluginFieldType;
  switch (t) {
    case T::kFLOAT16: return "float16";
    case T::kFLOAT32: return "float32";
    case T::kFLOAT64: return "float64";
    case T::kINT8: return "int8";
    case T::kINT16: return "int16";
    case T::kINT32: return "int32";
    case T::kINT64: return "int64";
    case T::kCHAR: return "char";
    case T::kDIMS: return "dims";
    case T::kBF16: return "bfloat16";
    default: return "other";
  }
}

// The field's single value as a double; integer fields accept only integer types (the ONNX parser gives int32,
// other producers int64), float fields float32/float64. Throws on a wrong type or length.
double read_scalar(const char* plugin, const schema::FieldSpec& spec, const nvinfer1::PluginField& f) {
  using T = nvinfer1::PluginFieldType;
  std::ostringstream where;
  where << plugin << ": field '" << spec.name << "'";
  if (f.data == nullptr) throw std::invalid_argument(where.str() + " has no data");
  if (f.length != 1) {
    throw std::invalid_argument(where.str() + " must hold exactly one value, got length " +
                                std::to_string(f.length));
  }
  if (spec.type == schema::FieldType::kInt32) {
    switch (f.type) {
      case T::kINT32: { int32_t v; std::memcpy(&v, f.data, sizeof v); return v; }
      case T::kINT64: { int64_t v; std::memcpy(&v, f.data, sizeof v); return static_cast<double>(v); }
      case T::kINT16: { int16_t v; std::memcpy(&v, f.data, sizeof v); return v; }
      case T::kINT8: { int8_t v; std::memcpy(&v, f.data, sizeof v); return v; }
      default: break;
    }
    throw std::invalid_argument(where.str() + " must be int32, got " + field_type_name(f.type));
  }
  switch (f.type) {
    case T::kFLOAT32: { float v; std::memcpy(&v, f.data, sizeof v); return v; }
    case T::kFLOAT64: { double v; std::memcpy(&v, f.data, sizeof v); return v; }
    default: break;
  }
  throw std::invalid_argument(where.str() + " must be float32, got " + field_type_name(f.type));
}

std::string format_value(const schema::FieldSpec& spec, int32_t i, float f) {
  if (spec.type == schema::FieldType::kInt32) return std::to_string(i);
  std::ostringstream os;
  os.precision(9);
  os << f;
  return os.str();
}

}  // namespace

void set_logger_finder(nvinfer1::ILoggerFinder* finder) noexcept { g_logger_finder.store(finder); }

void log_message(ILogger::Severity severity, const std::string& message) noexcept {
  try {
    const std::string text = "cmir_trt plugins: " + message;
    nvinfer1::ILoggerFinder* finder = g_logger_finder.load();
    ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
    if (logger != nullptr) {
      logger->log(severity, text.c_str());
    } else if (severity <= ILogger::Severity::kWARNING) {
      std::fprintf(stderr, "%s\n", text.c_str());
    }
  } catch (...) {
    // Logging must never throw out of a noexcept TensorRT callback.
  }
}

bool to_cmir_dtype(DataType type, CmirDType* out) noexcept {
  switch (type) {
    case DataType::kFLOAT: *out = CmirDType::kFloat32; return true;
    case DataType::kHALF: *out = CmirDType::kFloat16; return true;
    case DataType::kBF16: *out = CmirDType::kBFloat16; return true;
    default: return false;
  }
}

const char* dtype_name(DataType type) noexcept {
  switch (type) {
    case DataType::kFLOAT: return "fp32";
    case DataType::kHALF: return "fp16";
    case DataType::kBF16: return "bf16";
    case DataType::kINT8: return "int8";
    case DataType::kINT32: return "int32";
    case DataType::kINT64: return "int64";
    case DataType::kBOOL: return "bool";
    case DataType::kUINT8: return "uint8";
    default: return "other";
  }
}

bool dim_to_int(int64_t value, int* out) noexcept {
  if (value < 0 || value > std::numeric_limits<int>::max()) return false;
  *out = static_cast<int>(value);
  return true;
}

// ---------------------------------------------------------------- FieldValues

FieldValues::FieldValues(const char* plugin, const schema::FieldSpec* specs, int32_t count)
    : plugin_(plugin), specs_(specs), count_(count), ints_(static_cast<size_t>(count), 0),
      floats_(static_cast<size_t>(count), 0.0F) {
  for (int32_t i = 0; i < count_; ++i) {
    ints_[i] = static_cast<int32_t>(specs_[i].default_value);
    floats_[i] = static_cast<float>(specs_[i].default_value);
  }
}

// fields_ points into the source's storage; a copy rebuilds it lazily from its own values.
FieldValues::FieldValues(const FieldValues& other)
    : plugin_(other.plugin_), specs_(other.specs_), count_(other.count_), ints_(other.ints_),
      floats_(other.floats_) {}

FieldValues& FieldValues::operator=(const FieldValues& other) {
  if (this != &other) {
    plugin_ = other.plugin_;
    specs_ = other.specs_;
    count_ = other.count_;
    ints_ = other.ints_;
    floats_ = other.floats_;
    fields_.clear();
    fc_ = {};
  }
  return *this;
}

void FieldValues::parse(const nvinfer1::PluginFieldCollection* fc) {
  if (fc == nullptr) return;  // all defaults
  if (fc->nbFields < 0 || (fc->nbFields > 0 && fc->fields == nullptr)) {
    throw std::invalid_argument(std::string(plugin_) + ": malformed field collection (nbFields " +
                                std::to_string(fc->nbFields) + ")");
  }
  std::vector<bool> seen(static_cast<size_t>(count_), false);
  for (int32_t k = 0; k < fc->nbFields; ++k) {
    const nvinfer1::PluginField& f = fc->fields[k];
    if (f.name == nullptr) throw std::invalid_argument(std::string(plugin_) + ": a field has no name");
    int32_t index = -1;
    for (int32_t i = 0; i < count_; ++i) {
      if (std::strcmp(f.name, specs_[i].name) == 0) index = i;
    }
    if (index < 0) {
      if (is_parser_attribute(f.name)) continue;
      std::string known;
      for (int32_t i = 0; i < count_; ++i) known += std::string(i ? ", " : "") + specs_[i].name;
      throw std::invalid_argument(std::string(plugin_) + ": unknown field '" + f.name + "' (fields: " + known + ")");
    }
    if (seen[index]) throw std::invalid_argument(std::string(plugin_) + ": field '" + f.name + "' given twice");
    seen[index] = true;
    const schema::FieldSpec& spec = specs_[index];
    const double v = read_scalar(plugin_, spec, f);
    // !(a <= b) also rejects NaN.
    if (!(v >= spec.min_value && v <= spec.max_value)) {
      std::ostringstream os;
      os << plugin_ << ": field '" << spec.name << "' = " << v << " is outside [" << spec.min_value << ", "
         << spec.max_value << "]";
      throw std::invalid_argument(os.str());
    }
    if (spec.type == schema::FieldType::kInt32) {
      const auto iv = static_cast<int32_t>(v);
      if (spec.odd && iv % 2 == 0) {
        throw std::invalid_argument(std::string(plugin_) + ": field '" + spec.name + "' must be odd, got " +
                                    std::to_string(iv));
      }
      ints_[index] = iv;
    } else {
      floats_[index] = static_cast<float>(v);
    }
  }
  fields_.clear();
}

void FieldValues::set_int(int32_t index, int32_t value) {
  const schema::FieldSpec& spec = specs_[index];
  if (value < spec.min_value || value > spec.max_value) {
    throw std::invalid_argument(std::string(plugin_) + ": field '" + spec.name + "' out of range");
  }
  ints_.at(static_cast<size_t>(index)) = value;
  fields_.clear();
}

void FieldValues::rebuild() {
  fields_.clear();
  fields_.reserve(static_cast<size_t>(count_));
  for (int32_t i = 0; i < count_; ++i) {
    if (specs_[i].type == schema::FieldType::kInt32) {
      fields_.emplace_back(specs_[i].name, &ints_[i], nvinfer1::PluginFieldType::kINT32, 1);
    } else {
      fields_.emplace_back(specs_[i].name, &floats_[i], nvinfer1::PluginFieldType::kFLOAT32, 1);
    }
  }
  fc_.nbFields = static_cast<int32_t>(fields_.size());
  fc_.fields = fields_.data();
}

const nvinfer1::PluginFieldCollection* FieldValues::collection() {
  rebuild();
  return &fc_;
}

std::string FieldValues::describe() const {
  std::string s;
  for (int32_t i = 0; i < count_; ++i) {
    if (i) s += ",";
    s += std::string(specs_[i].name) + "=" + format_value(specs_[i], ints_[i], floats_[i]);
  }
  return s;
}

// ---------------------------------------------------------------- PluginV3Base

PluginV3Base::PluginV3Base(const char* name, const char* version, FieldValues fields)
    : name_(name), version_(version), fields_(std::move(fields)), description_(fields_.describe()) {}

nvinfer1::IPluginCapability* PluginV3Base::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

// Timing results depend on the attributes (shapes and formats TensorRT adds itself), so the description is the id.
char const* PluginV3Base::getTimingCacheID() noexcept { return description_.c_str(); }
char const* PluginV3Base::getMetadataString() noexcept { return description_.c_str(); }

// No per-context resources: a plain clone is the attached copy.
nvinfer1::IPluginV3* PluginV3Base::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept {
  return clone();
}

const nvinfer1::PluginFieldCollection* PluginV3Base::getFieldsToSerialize() noexcept {
  try {
    return fields_.collection();
  } catch (const std::exception& e) {
    error(e.what());
    return nullptr;
  }
}

bool PluginV3Base::same_type_linear(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* in_out) const noexcept {
  const nvinfer1::PluginTensorDesc& d = in_out[pos].desc;
  if (d.format != nvinfer1::TensorFormat::kLINEAR) return false;
  CmirDType unused;
  if (!to_cmir_dtype(d.type, &unused)) return false;
  return pos == 0 || d.type == in_out[0].desc.type;
}

void PluginV3Base::error(const std::string& message) const noexcept {
  log_message(ILogger::Severity::kERROR, std::string(name_) + " (" + description_ + "): " + message);
}

// ---------------------------------------------------------------- PluginCreator

PluginCreator::PluginCreator(const char* name, const char* version, const schema::FieldSpec* specs, int32_t count,
                             PluginFactory factory)
    : name_(name), version_(version), specs_(specs), count_(count), factory_(factory) {
  for (int32_t i = 0; i < count_; ++i) {
    const auto type = specs_[i].type == schema::FieldType::kInt32 ? nvinfer1::PluginFieldType::kINT32
                                                                  : nvinfer1::PluginFieldType::kFLOAT32;
    field_names_.emplace_back(specs_[i].name, nullptr, type, 1);
  }
  fc_.nbFields = static_cast<int32_t>(field_names_.size());
  fc_.fields = field_names_.data();
}

nvinfer1::IPluginV3* PluginCreator::createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                                 nvinfer1::TensorRTPhase phase) noexcept {
  try {
    FieldValues values(name_, specs_, count_);
    // Runtime phase: the collection is our own getFieldsToSerialize() output, which names every field.
    if (phase == nvinfer1::TensorRTPhase::kRUNTIME && (fc == nullptr || fc->nbFields != count_)) {
      throw std::invalid_argument(std::string(name_) + ": serialized plugin has " +
                                  std::to_string(fc ? fc->nbFields : 0) + " fields, expected " +
                                  std::to_string(count_) + " (engine built with another plugin version?)");
    }
    values.parse(fc);
    return factory_(values);
  } catch (const std::exception& e) {
    log_message(ILogger::Severity::kERROR,
                std::string("cannot create plugin '") + (name ? name : "") + "': " + e.what());
  } catch (...) {
    log_message(ILogger::Severity::kERROR, std::string("cannot create plugin of type ") + name_);
  }
  return nullptr;
}

}  // namespace cmir_plugins
