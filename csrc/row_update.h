// The row-update rules shared by every fused backward, CPU and CUDA: the same math as
// fnn_fast/optim.py (SparseRowOptimizer), applied to one row whose gradient has already been
// summed over every occurrence of that row in the batch. The per-element steps below are the one
// source of truth; update_row (CPU) and the CUDA kernels only arrange them over a row's columns.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FNN_FAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FNN_FAST_HOST_DEVICE inline
#endif

namespace fnn_fast {

enum class Rule : int64_t { kSGD = 0, kAdagrad = 1, kRowwiseAdagrad = 2, kAdam = 3 };

struct UpdateParams {
  Rule rule;
  float lr;
  float weight_decay;
  float eps;
  float beta1;
  float beta2;
  int64_t step;  // 1-based count of updates (Adam's bias correction)
};

// Optimizer state, row-major like the table. state1: Adagrad's sum [rows, dim], row-wise
// Adagrad's sum [rows], Adam's first moment [rows, dim]; state2: Adam's second moment.
struct OptimizerState {
  float* state1;
  float* state2;
};

// L2 weight decay joins the gradient (callers skip it when weight_decay is 0).
FNN_FAST_HOST_DEVICE float decayed(const UpdateParams& p, float g, float w) {
  return g + p.weight_decay * w;
}

FNN_FAST_HOST_DEVICE void sgd_step(const UpdateParams& p, float& w, float g) { w -= p.lr * g; }

FNN_FAST_HOST_DEVICE void adagrad_step(const UpdateParams& p, float& w, float& sum, float g) {
  sum += g * g;
  w -= p.lr * g / (sqrtf(sum) + p.eps);
}

// Row-wise Adagrad: the row's one state value grows by the mean of g^2 over its dim columns;
// returns the factor every column's gradient is scaled by.
FNN_FAST_HOST_DEVICE float rowwise_adagrad_scale(const UpdateParams& p, float& sum,
                                                 float sum_of_squares, int64_t dim) {
  sum += sum_of_squares / static_cast<float>(dim);
  return p.lr / (sqrtf(sum) + p.eps);
}

// Adam's bias-corrected step size, in double: beta^step for a large step.
FNN_FAST_HOST_DEVICE float adam_step_size(const UpdateParams& p) {
  const double t = static_cast<double>(p.step);
  return static_cast<float>(p.lr * sqrt(1.0 - pow(static_cast<double>(p.beta2), t)) /
                            (1.0 - pow(static_cast<double>(p.beta1), t)));
}

FNN_FAST_HOST_DEVICE void adam_step(const UpdateParams& p, float step_size, float& w, float& m,
                                    float& v, float g) {
  m += (g - m) * (1.0f - p.beta1);
  v += (g * g - v) * (1.0f - p.beta2);
  w -= step_size * m / (sqrtf(v) + p.eps);
}

// w: the row (dim), g: its summed gradient (dim; overwritten). row: the row's index.
inline void update_row(const UpdateParams& p, const OptimizerState& s, int64_t row, float* w,
                       float* g, int64_t dim) {
  if (p.weight_decay != 0.0f) {
    for (int64_t d = 0; d < dim; ++d) g[d] = decayed(p, g[d], w[d]);
  }
  switch (p.rule) {
    case Rule::kSGD:
      for (int64_t d = 0; d < dim; ++d) sgd_step(p, w[d], g[d]);
      break;
    case Rule::kAdagrad: {
      float* sum = s.state1 + row * dim;
      for (int64_t d = 0; d < dim; ++d) adagrad_step(p, w[d], sum[d], g[d]);
      break;
    }
    case Rule::kRowwiseAdagrad: {
      float sum_of_squares = 0.0f;
      for (int64_t d = 0; d < dim; ++d) sum_of_squares += g[d] * g[d];
      const float scale = rowwise_adagrad_scale(p, s.state1[row], sum_of_squares, dim);
      for (int64_t d = 0; d < dim; ++d) w[d] -= scale * g[d];
      break;
    }
    case Rule::kAdam: {
      float* m = s.state1 + row * dim;
      float* v = s.state2 + row * dim;
      const float step_size = adam_step_size(p);
      for (int64_t d = 0; d < dim; ++d) adam_step(p, step_size, w[d], m[d], v[d], g[d]);
      break;
    }
  }
}

}  // namespace fnn_fast
