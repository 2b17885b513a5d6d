// Scalar references of the CPU kernels: the formulas as plain loops with float64 accumulation, one thread. The tests
// hold the vector kernels against these (and these against numpy/PyTorch); Isa::kScalar also runs them.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "cmir/cpu_kernels.hpp"

namespace cmir::cpu {
namespace {

void check_positive(const char* fn, std::initializer_list<int> dims) {
  for (int d : dims) {
    if (d <= 0) throw std::invalid_argument(std::string(fn) + ": dimensions must be positive");
  }
}

}  // namespace

void involution_nhwc_epilogue_ref(const float* x, const float* kernel, float* y, int batch, int height, int width,
                                  int channels, int kernel_size, int stride, int group_channels,
                                  const Epilogue& epilogue) {
  check_positive("involution_nhwc_ref", {batch, height, width, channels, kernel_size, stride, group_channels});
  if (kernel_size % 2 == 0 || channels % group_channels != 0) {
    throw std::invalid_argument("involution_nhwc_ref: kernel_size must be odd and channels % group_channels == 0");
  }
  const int ho_n = (height + stride - 1) / stride;
  const int wo_n = (width + stride - 1) / stride;
  const int pad = (kernel_size - 1) / 2;
  const int groups = channels / group_channels;
  const long kk = static_cast<long>(kernel_size) * kernel_size;
  for (int n = 0; n < batch; ++n) {
    for (int ho = 0; ho < ho_n; ++ho) {
      for (int wo = 0; wo < wo_n; ++wo) {
        const long pix = (static_cast<long>(n) * ho_n + ho) * wo_n + wo;
        for (int c = 0; c < channels; ++c) {
          const float* kc = kernel + (pix * groups + c / group_channels) * kk;
          double acc = 0.0;
          for (int kh = 0; kh < kernel_size; ++kh) {
            const int hi = ho * stride - pad + kh;
            if (hi < 0 || hi >= height) continue;
            for (int kw = 0; kw < kernel_size; ++kw) {
              const int wi = wo * stride - pad + kw;
              if (wi < 0 || wi >= width) continue;
              const long xi = ((static_cast<long>(n) * height + hi) * width + wi) * channels + c;
              acc += static_cast<double>(kc[kh * kernel_size + kw]) * static_cast<double>(x[xi]);
            }
          }
          if (epilogue.scale) acc *= epilogue.scale[c];
          if (epilogue.shift) acc += epilogue.shift[c];
          if (epilogue.relu && acc < 0.0) acc = 0.0;
          y[pix * channels + c] = static_cast<float>(acc);
        }
      }
    }
  }
}

void involution_nhwc_ref(const float* x, const float* kernel, float* y, int batch, int height, int width,
                         int channels, int kernel_size, int stride, int group_channels) {
  involution_nhwc_epilogue_ref(x, kernel, y, batch, height, width, channels, kernel_size, stride, group_channels,
                               Epilogue{});
}

void involution_fused_nhwc_ref(const float* x, const InvolutionGeneration& gen, float* y, int batch, int height,
                               int width, int channels, int kernel_size, int stride, int group_channels,
                               const Epilogue& epilogue) {
  check_positive("involution_fused_nhwc_ref",
                 {batch, height, width, channels, kernel_size, stride, group_channels, gen.hidden});
  if (kernel_size % 2 == 0 || channels % group_channels != 0) {
    throw std::invalid_argument(
        "involution_fused_nhwc_ref: kernel_size must be odd and channels % group_channels == 0");
  }
  const int ho_n = (height + stride - 1) / stride;
  const int wo_n = (width + stride - 1) / stride;
  const long c = channels, hid = gen.hidden;
  const long gkk = static_cast<long>(channels / group_channels) * kernel_size * kernel_size;
  // kernels [B, Ho, Wo, G*K*K], generated in float64 and rounded once, then the reference aggregation
  std::vector<float> kern(static_cast<std::size_t>(batch) * ho_n * wo_n * gkk);
  std::vector<double> pooled(c), h(hid);
  for (int n = 0; n < batch; ++n) {
    for (int ho = 0; ho < ho_n; ++ho) {
      for (int wo = 0; wo < wo_n; ++wo) {
        const int h0 = ho * stride, h1 = std::min(h0 + stride, height);
        const int w0 = wo * stride, w1 = std::min(w0 + stride, width);
        for (long ch = 0; ch < c; ++ch) {
          double s = 0.0;
          for (int hh = h0; hh < h1; ++hh) {
            for (int ww = w0; ww < w1; ++ww) s += x[((static_cast<long>(n) * height + hh) * width + ww) * c + ch];
          }
          pooled[ch] = s / static_cast<double>((h1 - h0) * (w1 - w0));
        }
        for (long j = 0; j < hid; ++j) {
          double s = gen.reduce_b[j];
          for (long ch = 0; ch < c; ++ch) s += pooled[ch] * static_cast<double>(gen.reduce_wt[ch * hid + j]);
          h[j] = (s > 0.0 || std::isnan(s)) ? s : 0.0;  // ReLU that keeps NaN, as the vector code
        }
        const long pix = (static_cast<long>(n) * ho_n + ho) * wo_n + wo;
        for (long j = 0; j < gkk; ++j) {
          double s = gen.span_b[j];
          for (long t = 0; t < hid; ++t) s += h[t] * static_cast<double>(gen.span_wt[t * gkk + j]);
          kern[pix * gkk + j] = static_cast<float>(s);
        }
      }
    }
  }
  involution_nhwc_epilogue_ref(x, kern.data(), y, batch, height, width, channels, kernel_size, stride, group_channels,
                               epilogue);
}

namespace {

// out[m, n] = a[m, k] . w[n, k]^T + b[n], float64.
void linear_ref(const double* a, const float* w, const float* b, double* out, long m, long n, long k) {
  for (long i = 0; i < m; ++i) {
    for (long j = 0; j < n; ++j) {
      double acc = b[j];
      for (long t = 0; t < k; ++t) acc += a[i * k + t] * static_cast<double>(w[j * k + t]);
      out[i * n + j] = acc;
    }
  }
}

// One direction for one batch item: LN(xq + O(MHA(Q xq, K xkv, V xkv))) -> out [N, C].
void cmam_direction_ref(const float* xq, const float* xkv, const float* wts, float* out, int tokens, int channels,
                        int dim, int heads, float eps) {
  const long n = tokens, c = channels, d = dim;
  const long dc = d * c;
  const float* wq = wts;
  const float* bq = wq + dc;
  const float* wk = bq + d;
  const float* bk = wk + dc;
  const float* wv = bk + d;
  const float* bv = wv + dc;
  const float* wo = bv + d;
  const float* bo = wo + dc;
  const float* gamma = bo + c;
  const float* beta = gamma + c;
  std::vector<double> q64(xq, xq + n * c), kv64(xkv, xkv + n * c);
  std::vector<double> q(n * d), k(n * d), v(n * d), o(n * d, 0.0), y(n * c), p(n);
  linear_ref(q64.data(), wq, bq, q.data(), n, d, c);
  linear_ref(kv64.data(), wk, bk, k.data(), n, d, c);
  linear_ref(kv64.data(), wv, bv, v.data(), n, d, c);
  const long hd = d / heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (int h = 0; h < heads; ++h) {
    for (long i = 0; i < n; ++i) {
      double mx = -INFINITY;
      for (long j = 0; j < n; ++j) {
        double s = 0.0;
        for (long t = 0; t < hd; ++t) s += q[i * d + h * hd + t] * k[j * d + h * hd + t];
        p[j] = s * scale;
        mx = std::fmax(mx, p[j]);
      }
      double sum = 0.0;
      for (long j = 0; j < n; ++j) {
        p[j] = std::exp(p[j] - mx);
        sum += p[j];
      }
      for (long j = 0; j < n; ++j) {
        for (long t = 0; t < hd; ++t) o[i * d + h * hd + t] += p[j] / sum * v[j * d + h * hd + t];
      }
    }
  }
  linear_ref(o.data(), wo, bo, y.data(), n, c, d);
  for (long i = 0; i < n; ++i) {
    double mean = 0.0;
    for (long t = 0; t < c; ++t) mean += q64[i * c + t] + y[i * c + t];
    mean /= static_cast<double>(c);
    double var = 0.0;
    for (long t = 0; t < c; ++t) {
      const double r = q64[i * c + t] + y[i * c + t] - mean;
      var += r * r;
    }
    var /= static_cast<double>(c);
    const double rstd = 1.0 / std::sqrt(var + static_cast<double>(eps));
    for (long t = 0; t < c; ++t) {
      out[i * c + t] = static_cast<float>((q64[i * c + t] + y[i * c + t] - mean) * rstd * gamma[t] + beta[t]);
    }
  }
}

}  // namespace

void cmam_ref(const float* art, const float* pv, const float* weights_art, const float* weights_pv, float* art_out,
              float* pv_out, int batch, int tokens, int channels, int dim, int heads, float eps) {
  check_positive("cmam_ref", {batch, tokens, channels, dim, heads});
  if (dim % heads != 0) throw std::invalid_argument("cmam_ref: dim must be a multiple of heads");
  const long per = static_cast<long>(tokens) * channels;
  // Results go to temporaries first so that in-place calls (art_out == art) read the original inputs.
  std::vector<float> ya(per), yp(per);
  for (int b = 0; b < batch; ++b) {
    cmam_direction_ref(art + b * per, pv + b * per, weights_art, ya.data(), tokens, channels, dim, heads, eps);
    cmam_direction_ref(pv + b * per, art + b * per, weights_pv, yp.data(), tokens, channels, dim, heads, eps);
    for (long i = 0; i < per; ++i) {
      art_out[b * per + i] = ya[i];
      pv_out[b * per + i] = yp[i];
    }
  }
}

void spatial_attention_nhwc_ref(const float* a, const float* p, const float* weight, float bias, int kernel_size,
                                float* att, float* a_out, float* p_out, int batch, int height, int width,
                                int channels) {
  check_positive("spatial_attention_nhwc_ref", {batch, height, width, channels, kernel_size});
  if (kernel_size % 2 == 0) throw std::invalid_argument("spatial_attention_nhwc_ref: kernel_size must be odd");
  if ((p == nullptr) != (p_out == nullptr)) {
    throw std::invalid_argument("spatial_attention_nhwc_ref: p and p_out must both be given or both be null");
  }
  const long hw = static_cast<long>(height) * width;
  const long c = channels;
  const int pad = (kernel_size - 1) / 2;
  const long kk = static_cast<long>(kernel_size) * kernel_size;
  std::vector<double> mean(hw), mx(hw);
  for (int b = 0; b < batch; ++b) {
    for (long i = 0; i < hw; ++i) {
      double s = 0.0, m = -INFINITY;
      for (long t = 0; t < c; ++t) {
        const double v = a[(b * hw + i) * c + t];
        s += v;
        m = std::fmax(m, v);
      }
      if (p) {
        for (long t = 0; t < c; ++t) {
          const double v = p[(b * hw + i) * c + t];
          s += v;
          m = std::fmax(m, v);
        }
      }
      mean[i] = s / static_cast<double>(p ? 2 * c : c);
      mx[i] = m;
    }
    for (int h = 0; h < height; ++h) {
      for (int w = 0; w < width; ++w) {
        double z = bias;
        for (int kh = 0; kh < kernel_size; ++kh) {
          const int hi = h - pad + kh;
          if (hi < 0 || hi >= height) continue;
          for (int kw = 0; kw < kernel_size; ++kw) {
            const int wi = w - pad + kw;
            if (wi < 0 || wi >= width) continue;
            const long s = static_cast<long>(hi) * width + wi;
            z += weight[kh * kernel_size + kw] * mean[s] + weight[kk + kh * kernel_size + kw] * mx[s];
          }
        }
        att[b * hw + static_cast<long>(h) * width + w] = static_cast<float>(1.0 / (1.0 + std::exp(-z)));
      }
    }
    for (long i = 0; i < hw; ++i) {
      const double s = att[b * hw + i];
      for (long t = 0; t < c; ++t) {
        const long idx = (b * hw + i) * c + t;
        a_out[idx] = static_cast<float>(a[idx] * s);
        if (p) p_out[idx] = static_cast<float>(p[idx] * s);
      }
    }
  }
}

}  // namespace cmir::cpu
